"""Tests for `fanion_optax.lowrank`: top-k singular subspaces, `U_k V_kᵀ`.

References are NumPy float64 SVDs of matrices with a constructed spectrum.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gapped_spectrum
from reference import gaussian
from reference import np_top_k
from reference import singular_values
from reference import with_spectrum
from reference import x64

from fanion_optax import top_k_polar
from fanion_optax.lowrank import initial_subspace

WIDE = (12, 20)
TALL = (20, 12)
BATCH = (2, 3, 6, 10)
METHODS = ('svd', 'subspace')


def _distinct(shape):
  return np.linspace(3.0, 0.5, min(shape[-2:]))


def _np_right_projector(g, k):
  _, _, vh = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  v = np.swapaxes(vh[..., :k, :], -1, -2)
  return v @ np.swapaxes(v, -1, -2)


def _ky_fan(g, k):
  return singular_values(g)[..., :k].sum(-1)


# ---------------------------------------------------------------------------
# Exact answers.


@pytest.mark.parametrize('shape', [WIDE, TALL, BATCH])
@pytest.mark.parametrize('k', [1, 3, 'min'])
def test_svd_matches_numpy_top_k(shape, k):
  k = min(shape[-2:]) if k == 'min' else k
  g = with_spectrum(shape, _distinct(shape), seed=1)
  d = top_k_polar(g, k, top_k_method='svd')
  assert d.shape == shape and d.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, k), atol=1e-5)
  s = singular_values(d)
  np.testing.assert_allclose(s[..., :k], 1.0, atol=1e-5)
  np.testing.assert_allclose(s[..., k:], 0.0, atol=1e-5)


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('shape', [WIDE, TALL, BATCH])
@pytest.mark.parametrize('extra', [0, 3])
def test_k_at_least_min_is_full_polar_factor(method, shape, extra):
  k = min(shape[-2:]) + extra
  g = gaussian(shape, seed=2)
  d, state = top_k_polar(g, k, top_k_method=method, return_state=True)
  u, _, vh = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(np.asarray(d), u @ vh, atol=2e-5)
  assert state.shape == (*shape[:-2], shape[-1], min(shape[-2:]))


@pytest.mark.parametrize('shape', [WIDE, TALL, BATCH])
def test_subspace_cold_start_with_spectral_gap(shape):
  g = with_spectrum(shape, gapped_spectrum(shape), seed=3)
  d, state = top_k_polar(g, 3, top_k_method='subspace', return_state=True)
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, 3), atol=1e-4)
  assert state.shape == (*shape[:-2], shape[-1], 3)
  assert state.dtype == jnp.float32
  # The state spans the top-3 right singular subspace, orthonormally.
  v = np.asarray(state, np.float64)
  vt = np.swapaxes(v, -1, -2)
  np.testing.assert_allclose(
    vt @ v, np.broadcast_to(np.eye(3), vt.shape[:-2] + (3, 3)), atol=1e-5
  )
  np.testing.assert_allclose(v @ vt, _np_right_projector(g, 3), atol=1e-4)


def test_subspace_agrees_with_svd_method():
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=4)
  np.testing.assert_allclose(
    np.asarray(top_k_polar(g, 3)),
    np.asarray(top_k_polar(g, 3, top_k_method='svd')),
    atol=1e-4,
  )


@pytest.mark.parametrize('shape', [WIDE, TALL])
def test_exact_state_with_zero_iterations_is_exact(shape):
  # Rayleigh–Ritz alone recovers U_k V_kᵀ from the exact right subspace.
  g = with_spectrum(shape, _distinct(shape), seed=5)
  _, _, vh = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  state = jnp.asarray(vh[:4].T, jnp.float32)
  d = top_k_polar(g, 4, state=state, subspace_iters=0)
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, 4), atol=1e-5)


_PLANTED = {
  # top 8 well separated from the rest
  'gapped': np.concatenate(
    [np.geomspace(10, 5, 8), 0.5 * 0.9 ** np.arange(88)]
  ),
  # condition 100 inside the top 8, a tail down to 1e-7
  'ill_conditioned': np.concatenate(
    [np.geomspace(1, 1e-2, 8), np.geomspace(1e-3, 1e-7, 88)]
  ),
  # rank 5 < k: the direction is U_5 V_5ᵀ
  'rank_deficient': np.geomspace(1, 0.1, 5),
}


@pytest.mark.parametrize(
  'spectrum, dtype',
  [(s, jnp.float32) for s in _PLANTED]
  # bf16 rounding makes a rank-5 matrix full rank: no bf16 rank_deficient.
  + [('gapped', jnp.bfloat16), ('ill_conditioned', jnp.bfloat16)],
)
def test_subspace_matches_exact_top_k_on_planted_spectra(spectrum, dtype):
  sigma = _PLANTED[spectrum]
  g = jnp.asarray(with_spectrum((96, 160), sigma, seed=11), dtype)
  d = top_k_polar(g, 8, subspace_iters=30)
  assert d.dtype == dtype
  reference = np_top_k(np.asarray(g, np.float64), min(8, len(sigma)))
  atol = 1e-4 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(d, np.float64), reference, atol=atol)


_LAPACK = {'svd', 'qr', 'geqrf', 'householder_product', 'cholesky', 'eigh'}
_LAPACK |= {'triangular_solve', 'lu'}


def _solver_shapes(jaxpr, shapes):
  """Operand shapes of the solver calls, outside the fallback branches."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in _LAPACK:
      shapes.update(v.aval.shape[-2:] for v in eqn.invars)
    for name, value in eqn.params.items():
      subs = value if isinstance(value, (tuple, list)) else (value,)
      if eqn.primitive.name == 'cond' and name == 'branches':
        subs = subs[1:]  # branches[0] is the false branch: Householder QR
      for sub in subs:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          _solver_shapes(inner, shapes)
  return shapes


@pytest.mark.parametrize('cold', [True, False])
def test_subspace_iteration_gives_lapack_only_k_by_k_blocks(cold):
  g = jnp.ones((2, 30, 50))
  state = jnp.zeros((2, 50, 4)) if cold else jnp.ones((2, 50, 4))
  jaxpr = jax.make_jaxpr(lambda g, s: top_k_polar(g, 4, state=s))(g, state)
  assert _solver_shapes(jaxpr.jaxpr, set()) == {(4, 4)}


# ---------------------------------------------------------------------------
# Warm start.


def test_warm_start_tracks_drift_with_spectral_gap():
  k = 3
  g0 = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=6)
  drift = gaussian(WIDE, seed=7)
  d, state = top_k_polar(g0, k, return_state=True)
  for t in range(1, 11):
    g = g0 + np.float32(0.01 * t) * drift
    d, state = top_k_polar(g, k, state=state, return_state=True)
    assert np.all(np.isfinite(np.asarray(state)))
    np.testing.assert_allclose(np.asarray(d), np_top_k(g, k), atol=1e-4)
    capture = np.sum(g * np.asarray(d, np.float64)) / _ky_fan(g, k)
    assert capture >= 0.999


def test_warm_start_converges_where_cold_start_does_not():
  # A Gaussian has small spectral gaps: two cold iterations capture only
  # ~91% of the Ky Fan norm (measured), while the warm start keeps
  # improving along the drifting sequence (1 - capture ~ 5e-6 measured).
  k = 3
  g0 = gaussian(WIDE, seed=3)
  drift = gaussian(WIDE, seed=8)
  _, state = top_k_polar(g0, k, return_state=True)
  for t in range(1, 21):
    g = g0 + np.float32(0.01 * t) * drift
    d, state = top_k_polar(g, k, state=state, return_state=True)
    if t >= 10:
      capture = np.sum(g * np.asarray(d, np.float64)) / _ky_fan(g, k)
      assert capture >= 0.9999
      np.testing.assert_allclose(np.asarray(d), np_top_k(g, k), atol=1e-2)
  cold = top_k_polar(g, k, subspace_iters=2)
  assert np.sum(g * np.asarray(cold, np.float64)) / _ky_fan(g, k) < 0.99


# ---------------------------------------------------------------------------
# Degenerate inputs.


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('shape', [WIDE, TALL, BATCH])
def test_zero_matrix(method, shape):
  d, state = top_k_polar(
    jnp.zeros(shape), 3, top_k_method=method, return_state=True
  )
  assert np.all(np.asarray(d) == 0.0)
  assert state.shape == (*shape[:-2], shape[-1], 3)
  assert np.all(np.isfinite(np.asarray(state)))


def test_state_after_zero_matrix_is_still_a_usable_warm_start():
  _, state = top_k_polar(jnp.zeros(WIDE), 3, return_state=True)
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=9)
  d = top_k_polar(g, 3, state=state, subspace_iters=6)
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, 3), atol=1e-4)


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('k', [3, 12])
@pytest.mark.parametrize('shape', [WIDE, TALL])
def test_rank_deficient_input_gives_rank_r_output(method, k, shape):
  g = with_spectrum(shape, [3.0, 1.0], seed=10)  # rank 2
  d = np.asarray(top_k_polar(g, k, top_k_method=method))
  assert np.all(np.isfinite(d))
  s = singular_values(d)
  np.testing.assert_allclose(s[:2], 1.0, atol=1e-5)
  np.testing.assert_allclose(s[2:], 0.0, atol=1e-5)
  np.testing.assert_allclose(d, np_top_k(g, 2), atol=1e-5)


def test_rank_deficient_gradient_at_gpt2_size():
  # A rank-20 768×3072 matrix and k = 64: 44 directions of the subspace
  # are numerically null in every iteration.
  rng = np.random.default_rng(0)
  g = rng.standard_normal((768, 20)) @ rng.standard_normal((20, 3072))
  d = np.asarray(top_k_polar(jnp.asarray(g, jnp.float32), 64))
  np.testing.assert_allclose(d, np_top_k(g, 20), atol=1e-5)


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize(
  'spectrum,k,ky_fan',
  [
    ('ones', 3, 3.0),
    ('plateau', 3, 7.0),  # k cuts through the plateau [2, 2, 2]
  ],
)
def test_duplicated_singular_values(method, spectrum, k, ky_fan):
  sigma = {'ones': np.ones(12), 'plateau': [3.0, 2.0, 2.0, 2.0] + [1.0] * 8}[
    spectrum
  ]
  g = with_spectrum(WIDE, sigma, seed=11)
  d = np.asarray(top_k_polar(g, k, top_k_method=method), np.float64)
  assert np.all(np.isfinite(d))
  s = singular_values(d)
  np.testing.assert_allclose(s[:k], 1.0, atol=1e-4)
  np.testing.assert_allclose(s[k:], 0.0, atol=1e-4)
  # Any top-k choice within the plateau attains the Ky Fan-k norm.
  np.testing.assert_allclose(np.sum(g * d), ky_fan, rtol=1e-4)


@pytest.mark.parametrize('method', METHODS)
def test_identity_matrix(method):
  d = np.asarray(
    top_k_polar(jnp.eye(*WIDE), 3, top_k_method=method), np.float64
  )
  s = singular_values(d)
  np.testing.assert_allclose(s, [1.0] * 3 + [0.0] * 9, atol=1e-5)
  # Its square block is a rank-3 orthogonal projector; the rest is zero.
  p = d[:, :12]
  np.testing.assert_allclose(p, p.T, atol=1e-5)
  np.testing.assert_allclose(p @ p, p, atol=1e-5)
  np.testing.assert_allclose(d[:, 12:], 0.0, atol=1e-6)


# ---------------------------------------------------------------------------
# The cold start.


@pytest.mark.parametrize(
  'shape,k,cols',
  [
    (WIDE, 3, 3),
    (TALL, 3, 3),
    (BATCH, 3, 3),
    (BATCH, 8, 6),  # k clipped to min(m, n)
  ],
)
def test_initial_subspace_is_orthonormal_and_deterministic(shape, k, cols):
  q = initial_subspace(shape, k)
  n = shape[-1]
  assert q.shape == (*shape[:-2], n, cols)
  assert q.dtype == jnp.float32
  q = np.asarray(q, np.float64)
  qtq = np.swapaxes(q, -1, -2) @ q
  np.testing.assert_allclose(
    qtq, np.broadcast_to(np.eye(cols), qtq.shape), atol=1e-5
  )
  np.testing.assert_array_equal(
    np.asarray(initial_subspace(shape, k)), q.astype(np.float32)
  )
  # The same subspace for every matrix of the batch.
  flat = q.reshape(-1, n, cols)
  for i in range(flat.shape[0]):
    np.testing.assert_array_equal(flat[i], flat[0])


def test_initial_subspace_is_at_least_float32():
  assert initial_subspace(WIDE, 3, jnp.bfloat16).dtype == jnp.float32
  assert initial_subspace(WIDE, 3, jnp.float16).dtype == jnp.float32


# ---------------------------------------------------------------------------
# Invariances, dtypes, transformations.


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('scale', [1e-20, 1e-3, 7.0, 1e20])
def test_degree_zero_homogeneity(method, scale):
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=12)
  base = np.asarray(top_k_polar(g, 3, top_k_method=method))
  scaled = np.asarray(
    top_k_polar(np.float32(scale) * g, 3, top_k_method=method)
  )
  np.testing.assert_allclose(scaled, base, atol=1e-5)


@pytest.mark.parametrize('method', METHODS)
def test_oddness(method):
  g = with_spectrum(TALL, gapped_spectrum(TALL), seed=13)
  np.testing.assert_allclose(
    np.asarray(top_k_polar(-g, 3, top_k_method=method)),
    -np.asarray(top_k_polar(g, 3, top_k_method=method)),
    atol=1e-5,
  )


@pytest.mark.parametrize('method', METHODS)
def test_batched_matches_per_matrix(method):
  g = with_spectrum(BATCH, gapped_spectrum(BATCH), seed=14)
  d, state = top_k_polar(g, 3, top_k_method=method, return_state=True)
  assert d.shape == BATCH and state.shape == (2, 3, 10, 3)
  for i in range(2):
    for j in range(3):
      dij, sij = top_k_polar(g[i, j], 3, top_k_method=method, return_state=True)
      np.testing.assert_allclose(
        np.asarray(d[i, j]), np.asarray(dij), atol=1e-5
      )
      np.testing.assert_allclose(
        np.asarray(state[i, j]) @ np.asarray(state[i, j]).T,
        np.asarray(sij) @ np.asarray(sij).T,
        atol=1e-5,
      )
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, 3), atol=1e-4)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('method', METHODS)
def test_half_precision_inputs(method, dtype):
  g = jnp.asarray(with_spectrum(WIDE, gapped_spectrum(WIDE), seed=15), dtype)
  d, state = top_k_polar(g, 3, top_k_method=method, return_state=True)
  assert d.dtype == dtype and d.shape == WIDE
  assert state.dtype == jnp.float32
  ref = np_top_k(np.asarray(g.astype(jnp.float32)), 3)
  atol = 8e-3 if dtype == jnp.bfloat16 else 1e-3
  np.testing.assert_allclose(np.asarray(d.astype(jnp.float32)), ref, atol=atol)


def test_compute_dtype_is_at_least_float32():
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=16)
  np.testing.assert_array_equal(
    np.asarray(top_k_polar(g, 3, compute_dtype=jnp.bfloat16)),
    np.asarray(top_k_polar(g, 3)),
  )


@pytest.mark.parametrize('method', METHODS)
def test_float64_under_x64(method):
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=17).astype(np.float64)
  g = g + 1e-3 * np.random.default_rng(18).standard_normal(WIDE)
  with x64():
    d, state = top_k_polar(
      jnp.asarray(g),
      3,
      top_k_method=method,
      subspace_iters=20,
      return_state=True,
    )
    assert d.dtype == jnp.float64
    assert state.dtype == jnp.float32
    d = np.asarray(d)
  np.testing.assert_allclose(d, np_top_k(g, 3), atol=1e-10)


@pytest.mark.parametrize('method', METHODS)
def test_jit(method):
  g = with_spectrum(BATCH, gapped_spectrum(BATCH), seed=19)
  f = jax.jit(
    functools.partial(top_k_polar, k=3, top_k_method=method, return_state=True)
  )
  d, state = f(g)
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, 3), atol=1e-4)
  g2 = g + np.float32(0.01) * gaussian(BATCH, seed=20)
  d2, state2 = f(g2, state=state)
  np.testing.assert_allclose(np.asarray(d2), np_top_k(g2, 3), atol=1e-4)
  assert state2.shape == state.shape


# ---------------------------------------------------------------------------
# Bad input.


def test_wrong_state_shape_raises():
  g = gaussian(WIDE)
  with pytest.raises(ValueError, match='state'):
    top_k_polar(g, 3, state=jnp.zeros((20, 2)))
  with pytest.raises(ValueError, match='state'):
    top_k_polar(g, 3, state=jnp.zeros((12, 3)))
  with pytest.raises(ValueError, match='state'):
    top_k_polar(gaussian(BATCH), 3, state=jnp.zeros((10, 3)))


@pytest.mark.parametrize(
  'k,error',
  [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_bad_k_raises(k, error):
  with pytest.raises(error, match='k'):
    top_k_polar(gaussian(WIDE), k)


def test_unknown_method_raises():
  with pytest.raises(ValueError, match='top_k_method'):
    top_k_polar(gaussian(WIDE), 2, top_k_method='power')


def test_negative_iters_raises():
  with pytest.raises(ValueError, match='subspace_iters'):
    top_k_polar(gaussian(WIDE), 2, subspace_iters=-1)


def test_non_matrix_input_raises():
  with pytest.raises(ValueError, match='g must be a matrix'):
    top_k_polar(np.ones(5, np.float32), 2)
  with pytest.raises(TypeError, match='g must have a floating dtype'):
    top_k_polar(np.ones(WIDE, np.int32), 2)
