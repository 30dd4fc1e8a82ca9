"""Error feedback for low-rank LMOs (Dion / Orth-Dion, SPEC §2.4).

The reference is a plain float64 NumPy re-implementation of Dion's
Algorithm 1 (Ahn et al., arXiv:2504.05295) with the right factor
orthonormalised (Orth-Dion) and an exact SVD in place of the power step:

    B = M + G;  P = U_k(B);  R = Bᵀ P;  M ← B − (1 − μ)·P Rᵀ
    X ← X − lr·(P·orth(R)ᵀ + λ·X)

`orth(R)` is R's polar factor, so `P·orth(R)ᵀ = U_k V_kᵀ` of B.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gaussian
from reference import np_polar
from reference import svd
from reference import with_spectrum

import fanion_optax as fo
from fanion_optax import lowrank

N_DEV = 8
STEPS = 24
LR = 0.05
MU = 0.9
EF = {'error_feedback': True}
NO_EF = {'error_feedback': False}


def _np_sign(x):
  return np.sign(x)


def _np_frobenius(x):
  return x / np.linalg.norm(x)


def dion_reference(
  x0, noise, k, *, mu=MU, lr=LR, weight_decay=0.0, alpha=1.0, secondary=None
):
  """Orth-Dion with exact top-k SVD; `alpha < 1` adds `(1−α)·secondary(B)`.

  The gradient at step t is `X_t − T + noise[t]` with `T = 0.5` (a quadratic
  pulled towards a constant, with fixed noise), so the trajectory depends on
  every previous step.
  """
  x = np.asarray(x0, np.float64)
  m = np.zeros_like(x)
  for n_t in noise:
    g = x - 0.5 + n_t
    b = m + g
    u, _, _ = svd(b)
    p = u[:, :k]
    r = b.T @ p
    m = b - (1 - mu) * p @ r.T
    direction = alpha * p @ np_polar(r).T
    if secondary is not None:
      direction = direction + (1 - alpha) * secondary(b)
    x = x - lr * (direction + weight_decay * x)
  return x


def _noise(shape, steps=STEPS, seed=1):
  return [gaussian(shape, seed=seed + t) for t in range(steps)]


def run(tx, x0, noise, pull=1.0):
  """`tx` on `{'w': x}` with the gradients of `dion_reference` (`pull=1`),
  or the gradients `noise` (`pull=0`)."""
  params = {'w': jnp.asarray(x0)}
  state = tx.init(params)

  @jax.jit
  def step(params, state, n):
    grads = {'w': pull * (params['w'] - 0.5) + n}
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), state

  for n in noise:
    params, state = step(params, state, jnp.asarray(n))
  return np.asarray(params['w'], np.float64), state


def _fanion(k, lr=LR, **kwargs):
  options = dict(
    momentum=MU,
    nesterov=False,
    top_k_method='svd',
    shape_scale=None,
    error_feedback=True,
  )
  return fo.fanion(lr, k, **{**options, **kwargs})


# ---------------------------------------------------------------------------
# Against Orth-Dion.


_DION_CASES = [
  # Both orientations, both ranks and both decays run in the fast tier;
  # the other combinations are slow.
  pytest.param(shape, k, weight_decay, marks=[] if fast else [pytest.mark.slow])
  for shape, k, weight_decay, fast in (
    ((16, 24), 2, 0.1, True),
    ((24, 16), 4, 0.0, True),
    ((16, 24), 2, 0.0, False),
    ((16, 24), 4, 0.0, False),
    ((16, 24), 4, 0.1, False),
    ((24, 16), 2, 0.0, False),
    ((24, 16), 2, 0.1, False),
    ((24, 16), 4, 0.1, False),
  )
]


@pytest.mark.parametrize('shape,k,weight_decay', _DION_CASES)
def test_matches_orth_dion(shape, k, weight_decay):
  x0 = gaussian(shape, seed=0)
  noise = _noise(shape)
  ours, _ = run(_fanion(k, weight_decay=weight_decay), x0, noise)
  expected = dion_reference(x0, noise, k, weight_decay=weight_decay)
  np.testing.assert_allclose(ours, expected, atol=2e-5, rtol=1e-5)


def test_without_feedback_differs_from_orth_dion():
  """The comparison above is sensitive: plain Fanion-k is far from it."""
  shape, k = (16, 24), 2
  x0, noise = gaussian(shape, seed=0), _noise(shape)
  plain, _ = run(_fanion(k, error_feedback=False), x0, noise)
  expected = dion_reference(x0, noise, k)
  assert np.max(np.abs(plain - expected)) > 1e-2


def test_momentum_is_dion_buffer_times_one_minus_mu_over_mu():
  """After the same steps, `M_ours = (1 − μ)/μ · M_Dion` (the docstring)."""
  shape, k, steps = (16, 24), 3, 5
  x0, noise = gaussian(shape, seed=0), _noise(shape, steps=steps)
  _, state = run(_fanion(k, lr=0.0), x0, noise)
  m = np.zeros(shape)
  for n_t in noise:  # X stays x0 with a zero learning rate
    b = m + (np.asarray(x0, np.float64) - 0.5 + n_t)
    u = svd(b)[0][:, :k]
    m = b - (1 - MU) * u @ (u.T @ b)
  mu = np.asarray(state.matrices[0].mu['w'], np.float64)
  np.testing.assert_allclose(mu, (1 - MU) / MU * m, atol=1e-5, rtol=1e-5)


def test_nesterov_follows_the_documented_recursion():
  """b1 = μ², b2 = μ: `M ← Π(E) + (I − Π)(E)/b2`, Π from lmo(N)'s U_k."""
  shape, k = (16, 24), 2
  x0, noise = gaussian(shape, seed=0), _noise(shape, steps=12)
  ours, _ = run(_fanion(k, nesterov=True), x0, noise)
  b1, b2 = MU * MU, MU
  x = np.asarray(x0, np.float64)
  m = np.zeros_like(x)
  for n_t in noise:
    g = x - 0.5 + n_t
    n = b1 * m + (1 - b1) * g
    e = b2 * m + (1 - b2) * g
    u, _, vh = svd(n)
    p = u[:, :k]
    used = p @ (p.T @ e)
    m = used + (e - used) / b2
    x = x - LR * (p @ vh[:k])
  np.testing.assert_allclose(ours, x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('preset', ['f_fanion', 's_fanion'])
def test_mixture_feeds_back_its_ky_fan_subspace(preset):
  shape, k, alpha, eta = (16, 24), 2, 0.6, 0.01
  x0, noise = gaussian(shape, seed=0), _noise(shape, steps=16)
  extra = {'sign_scale': eta} if preset == 's_fanion' else {}
  tx = getattr(fo, preset)(
    LR,
    k,
    alpha,
    momentum=MU,
    nesterov=False,
    top_k_method='svd',
    shape_scale=None,
    error_feedback=True,
    **extra,
  )
  ours, _ = run(tx, x0, noise)
  secondary = (
    (lambda b: eta * _np_sign(b)) if preset == 's_fanion' else _np_frobenius
  )
  expected = dion_reference(x0, noise, k, alpha=alpha, secondary=secondary)
  np.testing.assert_allclose(ours, expected, atol=2e-5, rtol=1e-5)


def test_subspace_iteration_converges_to_the_svd_result():
  """With a spectral gap after k the subspace iteration finds the same P.

  The gradients do not depend on the parameters: with feedback the unused
  momentum grows until it overtakes the top-k, and near such a crossing
  the top-k subspace is ill-conditioned for both methods."""
  shape, k = (16, 24), 2
  base = with_spectrum(shape, [10.0, 8.0, 1.0, 0.5, 0.25], seed=0)
  noise = [base + 0.1 * gaussian(shape, seed=100 + t) for t in range(12)]
  x0 = gaussian(shape, seed=0)
  exact, _ = run(_fanion(k), x0, noise, pull=0.0)
  subspace, state = run(
    _fanion(k, top_k_method='subspace', subspace_iters=20), x0, noise, pull=0
  )
  np.testing.assert_allclose(subspace, exact, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(state.matrices[0].lmo_state[0])))


@pytest.mark.parametrize('shape', [(16, 24), (24, 16), (1, 8)])
@pytest.mark.parametrize('nesterov', [False, True])
def test_full_rank_ky_fan_is_plain_lion_k(shape, nesterov):
  """k ≥ min(m, n): the direction is the polar factor, Π = I, no change."""
  x0, noise = gaussian(shape, seed=0), _noise(shape, steps=6)
  k = min(shape)
  with_ef, state_ef = run(_fanion(k, nesterov=nesterov), x0, noise)
  plain, state = run(
    _fanion(k, nesterov=nesterov, error_feedback=False), x0, noise
  )
  np.testing.assert_array_equal(with_ef, plain)
  np.testing.assert_array_equal(
    state_ef.matrices[0].mu['w'], state.matrices[0].mu['w']
  )


# ---------------------------------------------------------------------------
# The basis the LMOs report.


@pytest.mark.parametrize('method', ['svd', 'subspace'])
@pytest.mark.parametrize('shape', [(16, 24), (2, 24, 16)])
def test_basis_is_the_left_factor_of_the_direction(method, shape):
  sigma = [10.0, 9.0, 8.0, 1.0, 0.5, 0.25]
  g = with_spectrum(shape, sigma, seed=3)
  d, basis, _ = jax.jit(
    lambda g: lowrank.top_k_polar_with_basis(
      g, 3, top_k_method=method, subspace_iters=20
    )
  )(g)
  u = svd(g)[0][..., :3]
  np.testing.assert_allclose(
    np.asarray(basis @ jnp.swapaxes(basis, -1, -2)),
    u @ np.swapaxes(u, -1, -2),
    atol=1e-5,
  )
  # `basis` is the direction's left factor: Π(D) = D.
  np.testing.assert_allclose(
    np.asarray(basis @ (jnp.swapaxes(basis, -1, -2) @ d)), d, atol=1e-5
  )


def test_basis_of_rank_deficient_and_zero_input():
  basis_of = jax.jit(
    lambda g: lowrank.top_k_polar_with_basis(g, 4, top_k_method='svd')[1]
  )
  g = with_spectrum((16, 24), [3.0, 1.0], seed=4)  # rank 2 < k = 4
  norms = np.linalg.norm(np.asarray(basis_of(g)), axis=0)
  np.testing.assert_allclose(norms, [1.0, 1.0, 0.0, 0.0], atol=1e-6)
  assert np.all(np.asarray(basis_of(jnp.zeros((16, 24)))) == 0)


def test_lmo_low_rank_flags():
  ky = fo.lmo.ky_fan(2)
  assert ky.low_rank
  assert fo.lmo.mix((0.5, ky), (0.5, fo.lmo.frobenius())).low_rank
  assert not fo.lmo.mix((0.5, ky), (0.5, fo.lmo.ky_fan(3))).low_rank
  for full in (
    fo.lmo.spectral(),
    fo.lmo.frobenius(),
    fo.lmo.sign(),
    fo.lmo.schatten(3.0),
    fo.lmo.mix((0.5, fo.lmo.spectral()), (0.5, fo.lmo.sign())),
  ):
    assert not full.low_rank
    with pytest.raises(ValueError, match='low-rank LMO'):
      full.update_with_basis(jnp.ones((4, 4)), full.init((4, 4)))


# ---------------------------------------------------------------------------
# Errors, raised where the optimizer is built.


@pytest.mark.parametrize(
  'build,name',
  [
    (lambda: fo.muon(0.02, error_feedback=True), 'Spectral'),
    (lambda: fo.f_muon(0.02, error_feedback=True), 'Mixture'),
    (lambda: fo.lion_k(0.02, fo.lmo.sign(), error_feedback=True), 'Sign'),
    (
      lambda: fo.lion_k(0.02, fo.lmo.frobenius(), error_feedback=True),
      'Frobenius',
    ),
    (
      lambda: fo.lion_k(0.02, fo.lmo.schatten(3.0), error_feedback=True),
      'schatten',
    ),
    (
      lambda: fo.scale_by_lion_k(
        fo.lmo.mix((0.5, fo.lmo.ky_fan(1)), (0.5, fo.lmo.ky_fan(2))),
        error_feedback=True,
      ),
      'Mixture',
    ),
  ],
)
def test_full_rank_lmo_rejects_error_feedback(build, name):
  with pytest.raises(ValueError, match=f'error_feedback=True.*{name}') as e:
    build()
  assert 'ky_fan' in str(e.value)


@pytest.mark.parametrize(
  'build',
  [
    lambda: fo.fanion(0.02, 2, momentum=0.0, nesterov=False, **EF),
    lambda: fo.lion_k(0.02, fo.lmo.ky_fan(2), 0.9, 0.0, **EF),
    lambda: fo.scale_by_lion_k(fo.lmo.ky_fan(2), b2=jnp.float32(0.0), **EF),
  ],
)
def test_zero_b2_rejects_error_feedback(build):
  with pytest.raises(ValueError, match='b2'):
    build()


def test_error_feedback_must_be_a_bool():
  with pytest.raises(TypeError, match='error_feedback'):
    fo.fanion(0.02, 2, error_feedback='yes')


def test_options_are_structural_and_listed():
  assert {'error_feedback', 'adaptive'} <= set(fo.pipeline.STRUCTURAL_ARGS)
  assert 'error_feedback' in fo.fanion.__doc__
  tx = fo.inject_hyperparams(fo.fanion)(
    learning_rate=0.1, k=2, top_k_method='svd', error_feedback=True
  )
  params = {'w': jnp.asarray(gaussian((8, 16), seed=8))}
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  assert np.all(np.isfinite(np.asarray(updates['w'])))


# ---------------------------------------------------------------------------
# Degenerate inputs: no worse than without error feedback.


@pytest.mark.parametrize('method', ['svd', 'subspace'])
def test_zero_gradient_keeps_state_finite(method):
  tx = _fanion(2, top_k_method=method, nesterov=True)
  update = jax.jit(tx.update)
  params = {'w': jnp.ones((8, 16))}
  state = tx.init(params)
  zeros = {'w': jnp.zeros((8, 16))}
  updates, state = update(zeros, state, params)
  assert np.all(np.asarray(updates['w']) == 0)
  assert np.all(np.asarray(state.matrices[0].mu['w']) == 0)
  g = {'w': jnp.asarray(gaussian((8, 16), seed=5))}
  _, state = update(g, state, params)
  updates, state = update(zeros, state, params)
  for leaf in jax.tree.leaves((updates, state)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert np.any(np.asarray(updates['w']) != 0)


@pytest.mark.parametrize('method', ['svd', 'subspace'])
def test_nan_gradient_corrupts_only_its_own_matrix(method):
  """Two same-shape leaves share a stack: NaN in one leaves the other as
  without the NaN. The NaN leaf's momentum is NaN, as without feedback
  (`b2·M + (1 − b2)·NaN`), and its warm start is kept."""
  shape = (8, 16)
  params = {'a': jnp.ones(shape), 'b': jnp.ones(shape)}
  good = jnp.asarray(gaussian(shape, seed=6))
  b_grad = jnp.asarray(gaussian(shape, seed=7))
  tx = _fanion(2, top_k_method=method)
  update = jax.jit(tx.update)
  _, before = update({'a': good, 'b': b_grad}, tx.init(params), params)
  nan = jnp.full(shape, jnp.nan)
  updates, state = update({'a': nan, 'b': b_grad}, before, params)
  clean_updates, clean_state = update({'a': good, 'b': b_grad}, before, params)
  np.testing.assert_array_equal(updates['b'], clean_updates['b'])
  inner, clean = state.matrices[0], clean_state.matrices[0]
  np.testing.assert_array_equal(inner.mu['b'], clean.mu['b'])
  assert np.all(np.isnan(np.asarray(inner.mu['a'])))
  if method == 'subspace':
    np.testing.assert_array_equal(
      inner.lmo_state[0], before.matrices[0].lmo_state[0]
    )


def test_bfloat16_momentum_stays_finite():
  tx = _fanion(2, nesterov=True, mu_dtype=jnp.bfloat16)
  update = jax.jit(tx.update)
  params = {'w': jnp.ones((8, 16), jnp.bfloat16)}
  state = tx.init(params)
  for t in range(5):
    g = {'w': jnp.asarray(gaussian((8, 16), seed=t), jnp.bfloat16)}
    updates, state = update(g, state, params)
  assert state.matrices[0].mu['w'].dtype == jnp.bfloat16
  assert updates['w'].dtype == jnp.bfloat16
  for leaf in jax.tree.leaves((updates, state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


# ---------------------------------------------------------------------------
# Split across devices.


def _params_and_grads(shapes, steps):
  """Gaussian parameters and `steps` gradient trees with fixed seeds."""

  def tree(offset):
    return {
      name: jnp.asarray(gaussian(s, seed=offset + i))
      for i, (name, s) in enumerate(shapes.items())
    }

  return tree(0), [tree(10 * t) for t in range(steps)]


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < N_DEV, reason='needs 8 devices')
@pytest.mark.parametrize('method', ['svd', 'subspace'])
def test_pmap_split_equals_single_device(method):
  shapes = {'a': (8, 16), 'b': (8, 16), 'c': (16, 8), 'd': (3, 5)}
  params, grads = _params_and_grads(shapes, steps=3)

  def trajectory(tx, update, p, state):
    for g in grads:
      updates, state = update(g, state, p)
      p = jax.tree.map(lambda a, u: a + u, p, updates)
    return p, state

  single = _fanion(2, top_k_method=method, nesterov=True, weight_decay=0.1)
  ref, ref_state = trajectory(
    single, jax.jit(single.update), params, single.init(params)
  )
  split = _fanion(
    2,
    top_k_method=method,
    nesterov=True,
    weight_decay=0.1,
    split=fo.distributed.over_axis('d'),
  )
  replicate = lambda t: jax.tree.map(
    lambda x: jnp.broadcast_to(x, (N_DEV,) + x.shape), t
  )
  grads = [replicate(g) for g in grads]
  p, state = trajectory(
    split,
    jax.pmap(split.update, axis_name='d'),
    replicate(params),
    replicate(split.init(params)),
  )
  for got, want in zip(
    jax.tree.leaves((p, state)), jax.tree.leaves((ref, ref_state))
  ):
    np.testing.assert_allclose(
      np.asarray(got)[N_DEV - 1], np.asarray(want), atol=1e-5, rtol=1e-4
    )


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < N_DEV, reason='needs 8 devices')
@pytest.mark.parametrize('axis_type', ['Auto', 'Explicit'])
def test_sharded_jit_split_equals_single_device(axis_type):
  axis_type = getattr(jax.sharding.AxisType, axis_type)
  mesh = jax.make_mesh((N_DEV,), ('model',), axis_types=(axis_type,))
  shapes = {f'w{i}': (12, 24) for i in range(3)} | {'stack': (3, 12, 24)}
  dims = {'stack': fo.DimensionNumbers(1, 2)} | {
    f'w{i}': fo.DimensionNumbers() for i in range(3)
  }
  params, grads = _params_and_grads(shapes, steps=2)

  def shard(tree):
    return jax.tree.map(
      lambda x: jax.device_put(
        x,
        jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(*[None] * (x.ndim - 1), 'model')
        ),
      ),
      tree,
    )

  def trajectory(split, p, grads):
    tx = _fanion(
      2,
      nesterov=True,
      top_k_method='subspace',
      dimension_numbers=dims,
      split=split,
    )
    state, update = tx.init(p), jax.jit(tx.update)
    for g in grads:
      updates, state = update(g, state, p)
      p = jax.tree.map(lambda a, u: a + u, p, updates)
    return p, state

  want = trajectory(None, params, grads)
  got = trajectory(
    fo.distributed.over_mesh(mesh), shard(params), [shard(g) for g in grads]
  )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4
    )
