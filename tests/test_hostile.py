"""Hostile input found by adversarial testing (the API 1.0 issue's list).

Each test names the item it covers; each failed on the 0.1 code.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiers import tiered

import fanion_optax as fo
from fanion_optax import catalogue
from fanion_optax import diagnostics

INF = float('inf')

# The catalogue's optimizers (solver variants aside) and LMOs.
PRESETS = {
  name: functools.partial(catalogue.OPTIMIZERS[name], weight_decay=0.1)
  for name in catalogue.PRESETS
}
LMOS = {name: make() for name, make in catalogue.LMOS.items()}
# Huber-nuclear's direction depends on the scale of G by design.
SCALE_INVARIANT_LMOS = sorted(set(LMOS) - {'huber_nuclear'})


def _params():
  key = jax.random.PRNGKey(0)
  return {'w': jax.random.normal(key, (6, 4)), 'b': jnp.zeros(4)}


def _grads(params, seed=1):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten(
    [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


# 1. Donation of a skip_nonfinite state.


@pytest.mark.parametrize(
  'name', tiered(sorted(PRESETS), fast={'muon', 'fanion'})
)
def test_state_buffers_are_distinct_and_donatable(name):
  tx = fo.skip_nonfinite(PRESETS[name]())
  params = _params()
  state = tx.init(params)
  pointers = [
    x.unsafe_buffer_pointer() for x in jax.tree.leaves(state) if x.size
  ]
  assert len(pointers) == len(set(pointers)), 'state leaves share a buffer'

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  donating = jax.jit(step, donate_argnums=(0, 1))
  reference_params, reference_state = params, state
  params, state = jax.tree.map(jnp.copy, (params, state))
  for seed in range(2):
    grads = _grads(params, seed)
    params, state = donating(params, state, grads)
    reference_params, reference_state = step(
      reference_params, reference_state, grads
    )
  np.testing.assert_allclose(params['w'], reference_params['w'], rtol=1e-6)
  assert int(state.skipped) == 0


# 2. Zero-size leaves.


@pytest.mark.parametrize(
  'name', tiered(sorted(PRESETS), fast={'muon', 'fanion'})
)
def test_zero_size_leaves_get_empty_updates(name):
  tx = PRESETS[name]()
  base = _params()
  params = dict(
    base,
    rows=jnp.zeros((0, 5)),
    cols=jnp.zeros((5, 0)),
    stack=jnp.zeros((3, 0, 4)),
  )
  grads = dict(
    _grads(base),
    rows=jnp.zeros((0, 5)),
    cols=jnp.zeros((5, 0)),
    stack=jnp.zeros((3, 0, 4)),
  )
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for key in ('rows', 'cols', 'stack'):
    assert updates[key].shape == params[key].shape
  expected, _ = jax.jit(tx.update)(_grads(base), tx.init(base), base)
  np.testing.assert_allclose(updates['w'], expected['w'], rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(updates['w']))


@pytest.mark.parametrize('shape', [(0, 5), (5, 0), (2, 0, 3)])
def test_zero_size_kernels(shape):
  g = jnp.zeros(shape)
  assert fo.polar_factor(g).shape == shape
  assert fo.polar_factor(g, polar_method='svd').shape == shape
  assert fo.top_k_polar(g, 2).shape == shape
  assert fo.top_k_polar(g, 2, top_k_method='svd').shape == shape
  for name, lmo in LMOS.items():
    assert lmo(g).shape == shape, name
    state = lmo.init(shape)
    direction, _ = lmo.update(g, state)
    assert direction.shape == shape, name
    if getattr(lmo, 'value', True) is None:
      continue  # a spectral function given no h= has no dual norm
    np.testing.assert_array_equal(
      np.asarray(lmo.dual_norm(g)), np.zeros(shape[:-2]), err_msg=name
    )
  np.testing.assert_array_equal(fo.lmo.spectral().norm(g), np.zeros(shape[:-2]))


def test_zero_size_constraint_report():
  params = {'w': 0.1 * jnp.eye(4), 'e': jnp.zeros((0, 5))}
  report = diagnostics.constraint_report(
    params, fo.lmo.spectral(), weight_decay=0.5
  )
  assert report['w'].holds and report['e'].holds
  np.testing.assert_array_equal(report['e'].norm, [0.0])


# 3. Integer parameters.


@pytest.mark.parametrize(
  'name', tiered(sorted(PRESETS), fast={'muon', 'fanion'})
)
def test_integer_parameters_are_refused_by_path(name):
  tx = PRESETS[name]()
  with pytest.raises(TypeError, match=r"'layer/w'.*int32"):
    tx.init({'layer': {'w': jnp.ones((3, 4), jnp.int32)}})
  with pytest.raises(TypeError, match=r"'count'.*int32"):
    tx.init({'w': jnp.ones((3, 4)), 'count': jnp.zeros(3, jnp.int32)})


def test_integer_parameters_refused_by_transforms():
  with pytest.raises(TypeError, match=r"'w'.*bool"):
    fo.scale_by_lion_k(fo.lmo.spectral()).init({'w': jnp.ones((3, 4), bool)})


# 4. Huge finite gradients.


@pytest.mark.parametrize('name', SCALE_INVARIANT_LMOS)
def test_huge_entries_keep_the_direction(name):
  lmo = LMOS[name]
  g = jax.random.normal(jax.random.PRNGKey(3), (6, 4))
  g = g / jnp.max(jnp.abs(g))
  huge = g * 3.0e38  # every entry finite, the largest 3e38
  assert np.all(np.isfinite(huge))
  expected = jax.jit(lmo)(g * 1e-3)
  got = jax.jit(lmo)(huge)
  assert float(jnp.max(jnp.abs(got))) > 0
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)


def test_huge_gradients_in_the_optimizer():
  params = _params()
  grads = jax.tree.map(lambda g: g / jnp.max(jnp.abs(g)), _grads(params))
  tx = fo.muon(0.02, fallback=optax.sgd(1.0))
  small, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  huge_grads = {'w': grads['w'] * 3e38, 'b': grads['b']}
  huge, _ = jax.jit(tx.update)(huge_grads, tx.init(params), params)
  np.testing.assert_allclose(huge['w'], small['w'], rtol=2e-4, atol=1e-7)


# 5. A zero input keeps the Fanion warm start.


def _decaying(m, n, seed=0):
  ku, kv = jax.random.split(jax.random.PRNGKey(seed))
  u, _ = jnp.linalg.qr(jax.random.normal(ku, (m, m)))
  v, _ = jnp.linalg.qr(jax.random.normal(kv, (n, n)))
  r = min(m, n)
  s = 0.8 ** jnp.arange(r)
  return (u[:, :r] * s) @ v[:, :r].T


def _captured(g, d, k):
  s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
  return float(np.sum(np.asarray(g) * np.asarray(d)) / np.sum(s[:k]))


@pytest.mark.slow
def test_zero_input_keeps_the_warm_subspace():
  k = 4
  lmo = fo.lmo.ky_fan(k)
  g = _decaying(48, 32)
  state = lmo.init(g.shape)
  _, state = lmo.update(g, state)
  direction, kept = lmo.update(jnp.zeros_like(g), state)
  np.testing.assert_array_equal(direction, 0.0)
  np.testing.assert_array_equal(kept, state)
  warm, _ = lmo.update(g, kept)
  assert _captured(g, warm, k) > 0.99


def test_zero_momentum_step_keeps_fanion_subspace():
  k = 4
  tx = fo.fanion(0.1, k, momentum=0.0, nesterov=False, fallback=optax.sgd(1))
  g = _decaying(48, 32)
  params = {'w': jnp.zeros_like(g)}
  state = tx.init(params)
  _, state = tx.update({'w': g}, state, params)
  _, state = tx.update({'w': jnp.zeros_like(g)}, state, params)
  updates, _ = tx.update({'w': g}, state, params)
  direction = -updates['w'] / 0.1 / math.sqrt(max(1, 32 / 48))
  assert _captured(g, direction, k) > 0.99


# 6./7. Hyperparameters must be finite real scalars.


@pytest.mark.parametrize(
  'build, name',
  [
    (lambda: fo.muon(INF), 'learning_rate'),
    (lambda: fo.muon(float('nan')), 'learning_rate'),
    (lambda: fo.muon(0.02, weight_decay=INF), 'weight_decay'),
    (lambda: fo.muon(0.02, momentum=-INF), 'momentum'),
    (lambda: fo.s_muon(0.02, sign_scale=INF), 'sign_scale'),
    (lambda: fo.f_muon(0.02, alpha=INF, allow_extrapolation=True), 'alpha'),
    (lambda: fo.lmo.sign(INF), 'scale'),
    (lambda: fo.lmo.mix((INF, fo.lmo.spectral())), 'terms[0] weight'),
    (lambda: fo.lmo.spectral(eps=INF), 'eps'),
    (lambda: fo.lmo.ky_fan(2, eps=float('nan')), 'eps'),
    (lambda: fo.lmo.huber_nuclear(INF), 'delta'),
    (lambda: fo.lmo.schatten(INF), 'p'),
    (lambda: fo.lion_k(0.1, fo.lmo.sign(), b1=INF), 'b1'),
    (lambda: fo.adamw_fallback(eps=INF), 'eps'),
    (lambda: fo.polar_factor(jnp.ones((2, 2)), eps=INF), 'eps'),
  ],
)
def test_non_finite_hyperparameters_are_refused(build, name):
  with pytest.raises(ValueError, match=r'must be a finite real number') as e:
    build()
  assert str(e.value).startswith(name), str(e.value)


@pytest.mark.parametrize(
  'build, name',
  [
    (lambda: fo.muon(jnp.array([0.1, 0.2])), 'learning_rate'),
    (lambda: fo.muon(0.02, momentum=np.array([0.9, 0.9])), 'momentum'),
    (lambda: fo.muon(0.02, weight_decay=jnp.ones((2, 2))), 'weight_decay'),
    (lambda: fo.lmo.sign(jnp.array([1.0, 2.0])), 'scale'),
    (lambda: fo.muon(True), 'learning_rate'),
    (lambda: fo.muon('0.02'), 'learning_rate'),
  ],
)
def test_non_scalar_hyperparameters_are_refused(build, name):
  with pytest.raises(TypeError) as e:
    build()
  assert str(e.value).startswith(name), str(e.value)


def test_zero_d_arrays_and_schedules_are_accepted():
  params = _params()
  for tx in (
    fo.muon(jnp.array(0.02), weight_decay=np.float32(0.1)),
    fo.muon(
      optax.linear_schedule(0.0, 0.02, 10), weight_decay=lambda count: 0.1
    ),
  ):
    updates, _ = tx.update(_grads(params), tx.init(params), params)
    assert np.all(np.isfinite(updates['w']))


# 8. Non-finite coefficient rows.


@pytest.mark.parametrize(
  'rows', [[(float('nan'), 0.0, 0.0)], [(1.5, -0.5, 0.0), (INF, 0.0, 0.0)]]
)
def test_non_finite_rows_are_refused(rows):
  with pytest.raises(ValueError, match='polar_method.*finite'):
    fo.polar_factor(jnp.ones((3, 2)), polar_method=rows)
  with pytest.raises(ValueError, match='polar_method.*finite'):
    fo.muon(0.02, polar_method=rows)


# 9. polar_factor(None).


@pytest.mark.parametrize('bad', [None, 'abc', {'w': 1}])
def test_polar_factor_names_its_argument(bad):
  with pytest.raises(TypeError, match=r'^g must be an array'):
    fo.polar_factor(bad)


# 10. constraint_report with schedules.


def test_constraint_report_evaluates_schedules_at_step():
  params = {'w': 3.0 * jnp.eye(4)}
  decay = optax.linear_schedule(0.5, 1.5, 10)
  lr = optax.constant_schedule(0.1)
  report = diagnostics.constraint_report(
    params, fo.lmo.spectral(), weight_decay=decay, learning_rate=lr, step=10
  )
  assert report['w'].radius == pytest.approx(1 / 1.5)
  assert report['w'].contraction == pytest.approx(1 - 0.1 * 1.5)
  with pytest.raises(ValueError, match='weight_decay is a schedule: pass'):
    diagnostics.constraint_report(params, fo.lmo.spectral(), weight_decay=decay)
  with pytest.raises(ValueError, match='learning_rate is a schedule: pass'):
    diagnostics.constraint_report(
      params, fo.lmo.spectral(), weight_decay=0.5, learning_rate=lr
    )


# 11. Half-precision parameters and the default fallback.


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_default_fallback_is_finite_for_half_precision(dtype):
  params = {'w': jnp.ones((4, 3), dtype), 'b': jnp.ones(3, dtype)}
  grads = {'w': jnp.full((4, 3), 1e-4, dtype), 'b': jnp.full(3, 1e-4, dtype)}
  tx = fo.muon(0.02)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    assert updates['b'].dtype == dtype
    assert np.all(np.isfinite(np.asarray(updates['b'], np.float32)))
    assert np.all(np.isfinite(np.asarray(updates['w'], np.float32)))
  # The fallback's arithmetic is AdamW's in float32, rounded once.
  ref = optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8)
  p32 = {'b': params['b'].astype(jnp.float32)}
  ref_state = ref.init(p32)
  for _ in range(3):
    expected, ref_state = ref.update(
      {'b': grads['b'].astype(jnp.float32)}, ref_state, p32
    )
  np.testing.assert_allclose(
    np.asarray(updates['b'], np.float32),
    np.asarray(expected['b'].astype(dtype), np.float32),
  )


# 12. An exact top-k method stays exact at full rank.


@pytest.mark.parametrize('shape, k', [((5, 3), 3), ((3, 5), 4), ((4, 4), 9)])
def test_ky_fan_svd_is_exact_at_full_rank(shape, k):
  g = jax.random.normal(jax.random.PRNGKey(7), shape)
  u, s, vh = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  exact = u @ vh
  lmo = fo.lmo.ky_fan(k, top_k_method='svd')
  np.testing.assert_allclose(lmo(g), exact, atol=2e-6)
  direction, _ = lmo.update(g, lmo.init(shape))
  np.testing.assert_allclose(direction, exact, atol=2e-6)


# 14. constraint_report's tolerance and the compute dtype's rounding.


def test_constraint_report_tolerates_bf16_rounding():
  bound = fo.singular_value_bound('polar_express', 5)
  decay = 2.0
  # σ₁ 0.26 % above the widened ball: inside bfloat16 rounding (2⁻⁷), not
  # inside float32's.
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(5), (8, 8)))
  params = {'w': q * bound * 1.0026 / decay}
  for compute_dtype, holds in ((jnp.bfloat16, True), (None, False)):
    lmo = fo.lmo.spectral(compute_dtype=compute_dtype)
    report = diagnostics.constraint_report(params, lmo, weight_decay=decay)
    assert report['w'].holds is holds, compute_dtype


@pytest.mark.slow
def test_bf16_muon_steady_state_passes_the_report():
  lmo = fo.lmo.spectral(compute_dtype=jnp.bfloat16)
  decay = 1.0
  tx = fo.lion_k(0.1, lmo, 0.0, 0.0, weight_decay=decay, shape_scale=None)
  params = {'w': jnp.zeros((24, 16))}
  grads = {'w': -_decaying(24, 16)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(150):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if step >= 100:
      report = diagnostics.constraint_report(params, lmo, weight_decay=decay)
      assert report['w'].holds, (step, report['w'].norm)
