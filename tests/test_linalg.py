"""`fanion_optax._linalg`: per-matrix CPU solvers and safe scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fanion_optax import _linalg


def test_per_matrix_svd_matches_numpy_over_leading_axes():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  s = _linalg.svd(x, compute_uv=False)
  np.testing.assert_allclose(
    s,
    np.linalg.svd(np.asarray(x, np.float64), compute_uv=False),
    rtol=1e-5,
    atol=1e-5,
  )
  u, s, vh = _linalg.svd(x, full_matrices=False)
  assert u.shape == (2, 3, 5, 4) and vh.shape == (2, 3, 4, 4)
  np.testing.assert_allclose((u * s[..., None, :]) @ vh, x, atol=1e-5)


def test_per_matrix_qr_matches_single_matrix_calls():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 3))
  q, r = _linalg.qr(x)
  for i in range(4):
    q_i, r_i = jnp.linalg.qr(x[i])
    np.testing.assert_allclose(q[i], q_i, atol=1e-6)
    np.testing.assert_allclose(r[i], r_i, atol=1e-6)


def _equations(jaxpr):
  """Every equation of `jaxpr`, those of inner jaxprs (loops, calls,
  branches) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


@pytest.mark.parametrize(
  'batch, shape',
  [((3,), (4, 2)), ((2, 2), (4, 2)), ((1,), (1, 4, 2)), ((), (4, 2))],
)
def test_per_matrix_makes_one_lapack_call_on_a_single_matrix_on_cpu(
  batch, shape
):
  assert jax.default_backend() == 'cpu'
  jaxpr = jax.make_jaxpr(_linalg.qr)(jnp.ones((*batch, 4, 2)))
  # One call in the program, on one matrix (inside a loop over the batch);
  # jnp.linalg.qr is a jitted function named "qr" around the LAPACK call.
  calls = [
    e.invars[0].aval.shape
    for e in _equations(jaxpr.jaxpr)
    if e.params.get('name') == 'qr'
  ]
  assert calls == [shape]


def _power_of_two_scaled(x):
  """NumPy reference: `x / 2^e` with `max|x| = f·2^e`, `f` in [0.5, 1)."""
  x = np.asarray(x, np.float64)
  peak = np.abs(x).max(axis=(-2, -1), keepdims=True)
  _, exponent = np.frexp(np.where(peak > 0, peak, 1.0))
  return x / np.exp2(exponent)


def test_max_abs_scaled_near_float32_max_under_jit():
  # 1 / 3e38 is subnormal in float32 (below ~1.18e-38) and flushes to zero,
  # so `x * (1 / max|x|)` would be all zeros.
  x = np.array([[3e38, -1.5e38, 0.0], [7.5e37, 3e38, -3e38]], np.float32)
  assert np.all(np.isfinite(x))
  y = np.asarray(jax.jit(_linalg.max_abs_scaled)(x))
  assert y.dtype == np.float32
  expected = _power_of_two_scaled(x)
  assert np.all(y[expected != 0] != 0)
  assert 0.5 <= np.abs(y).max() < 1.0
  np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)


def test_max_abs_scaled_per_matrix_of_a_batch():
  x = np.stack(
    [
      np.full((2, 3), 3e38, np.float32),
      np.array([[1.0, -4.0, 2.0], [0.0, 0.5, 3.0]], np.float32),
      np.zeros((2, 3), np.float32),
    ]
  )
  y = np.asarray(jax.jit(_linalg.max_abs_scaled)(x))
  np.testing.assert_allclose(y, _power_of_two_scaled(x), rtol=1e-6)
  np.testing.assert_array_equal(y[1], x[1] / 8.0)  # max 4 = 0.5·2^3
  assert np.all(y[2] == 0.0)


def test_max_abs_scaled_is_bitwise_scale_invariant_by_powers_of_two():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  scaled = jax.jit(_linalg.max_abs_scaled)
  base = np.asarray(scaled(x))
  for j in range(-100, 101, 7):
    np.testing.assert_array_equal(
      np.asarray(scaled(x * 2.0**j)), base, err_msg=f'2^{j}'
    )


def test_max_abs_scaled_of_an_empty_matrix_is_empty():
  y = _linalg.max_abs_scaled(jnp.zeros((0, 5)))
  assert y.shape == (0, 5) and y.dtype == jnp.float32
  y = jax.jit(_linalg.max_abs_scaled)(jnp.zeros((0, 5)))
  assert y.shape == (0, 5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
def test_peak_exponent_and_power_of_two_match_frexp_and_ldexp(dtype):
  info = jnp.finfo(dtype)
  normal = [float(info.tiny), 1.0, 0.75, 3.0, 1000.0, float(info.max)]
  peaks = jnp.asarray(normal, dtype)
  _, expected = np.frexp(np.asarray(peaks, np.float64))
  np.testing.assert_array_equal(_linalg.peak_exponent(peaks), expected)
  # Zero, subnormal and non-finite peaks are left unscaled (exponent of 1).
  odd = jnp.asarray([0.0, float(info.tiny) / 4, np.inf, np.nan], dtype)
  np.testing.assert_array_equal(_linalg.peak_exponent(odd), [1, 1, 1, 1])
  # Powers of two over the normal range, 0 below it and Inf above it.
  exponents = jnp.arange(int(info.minexp) - 3, int(info.maxexp) + 3)
  got = np.asarray(_linalg._power_of_two(exponents, dtype), np.float64)
  want = np.ldexp(1.0, np.asarray(exponents))
  want = np.where(want < float(info.tiny), 0.0, want)
  want = np.where(want > float(info.max), np.inf, want)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('k', [1, 2, 3, 5, 8, 37, 64, 100])
def test_lower_inverse_matches_numpy(k):
  rng = np.random.default_rng(k)
  x = rng.standard_normal((3, 4 * k + 8, k))
  lower = np.linalg.cholesky(np.swapaxes(x, -1, -2) @ x)
  got = jax.jit(_linalg._lower_inverse)(jnp.asarray(lower, jnp.float32))
  want = np.linalg.inv(lower)
  scale = np.abs(want).max(axis=(-2, -1), keepdims=True)
  np.testing.assert_allclose(np.asarray(got) / scale, want / scale, atol=2e-6)
  assert np.all(np.triu(np.asarray(got), 1) == 0)


def test_lower_inverse_is_matmuls_only():
  # No LAPACK/BLAS solver call: OpenBLAS threads oversubscribe a busy CPU.
  jaxpr = jax.make_jaxpr(_linalg._lower_inverse)(jnp.eye(16))
  names = {eqn.primitive.name for eqn in _equations(jaxpr.jaxpr)}
  assert 'dot_general' in names
  assert not names & {'triangular_solve', 'cholesky', 'lu', 'custom_call'}


# ---------------------------------------------------------------------------
# Cholesky-QR orthonormalisation.


def _planted(n, k, condition, rank=None, seed=0):
  """`(n, k)` float64 with singular values geometric from 1 to 1/condition."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.standard_normal((n, k)))
  v, _ = np.linalg.qr(rng.standard_normal((k, k)))
  s = np.geomspace(1.0, 1.0 / condition, k)
  if rank is not None:
    s[rank:] = 0.0
  return (u * s) @ v.T


def _check_thin_qr(x, q, r):
  q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
  k = q.shape[-1]
  np.testing.assert_allclose(
    np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(k), r.shape), atol=2e-6
  )
  scale = max(np.abs(x).max(), 1e-30)
  np.testing.assert_allclose(q @ r / scale, x / scale, atol=3e-6)


@pytest.mark.parametrize('condition', [1.0, 1e2, 1e4])
@pytest.mark.parametrize('n, k', [(300, 16), (3072, 64)])
def test_orthonormalize_is_cholesky_qr_on_well_conditioned_blocks(
  n, k, condition
):
  x = _planted(n, k, condition)
  q, r = _linalg.orthonormalize(jnp.asarray(x, jnp.float32))
  _check_thin_qr(x, q, r)
  # The Cholesky path: R is NumPy's R with its signs made positive.
  r_ref = np.linalg.qr(x)[1]
  r_ref *= np.sign(np.diag(r_ref))[:, None]
  np.testing.assert_allclose(r, r_ref, atol=1e-5 * condition)


@pytest.mark.parametrize(
  'n, k, condition, rank',
  [
    (300, 16, 1e6, None),
    (300, 16, 1e9, None),
    (300, 16, 1e3, 8),
    (300, 16, 1.0, 0),
    # At k = 64 the last pass's Gram can be within 0.5 of I entrywise and
    # still indefinite: an entrywise test let NaN through here.
    (3072, 64, 1e3, 20),
    (768, 64, 1e2, 1),
    (3072, 64, 1e9, None),
  ],
)
def test_orthonormalize_falls_back_on_ill_conditioned_and_rank_deficient(
  n, k, condition, rank
):
  x = _planted(n, k, condition, rank)
  q, r = _linalg.orthonormalize(jnp.asarray(x, jnp.float32))
  _check_thin_qr(x, q, r)


def test_orthonormalize_batch_and_jit():
  x = np.stack([_planted(40, 5, 10.0, seed=i) for i in range(3)])
  orthonormalize = jax.jit(_linalg.orthonormalize)
  clean = orthonormalize(jnp.asarray(x, jnp.float32))
  x[1] = 0.0  # one degenerate matrix takes Householder QR
  q, r = orthonormalize(jnp.asarray(x, jnp.float32))
  assert q.shape == (3, 40, 5) and r.shape == (3, 5, 5)
  _check_thin_qr(x, q, r)
  # Its neighbours keep their Cholesky-QR factors exactly.
  for i in (0, 2):
    np.testing.assert_array_equal(q[i], clean[0][i])
    np.testing.assert_array_equal(r[i], clean[1][i])


def test_orthonormalize_propagates_nan():
  x = jnp.asarray(_planted(30, 4, 1.0), jnp.float32).at[3, 2].set(jnp.nan)
  q, _ = _linalg.orthonormalize(x)
  assert q.shape == (30, 4) and np.isnan(np.asarray(q)).any()
