"""Adaptive dual-norm scaling: the direction `⟨N, lmo(N)⟩·lmo(N)` (SPEC §2.5).

For an exact LMO `⟨N, lmo(N)⟩ = ‖N‖_†`, so the references are the closed
forms of the LMO table; for Muon it is `optax.contrib.muon(adaptive=True)`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import gaussian
from reference import np_polar
from reference import svd
from tiers import tiered

import fanion_optax as fo

N_DEV = 8
DN = fo.DimensionNumbers
ETA = 0.01


def assert_close(actual, expected, rtol=2e-5):
  """Entrywise, with float32 rounding relative to the largest entry."""
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(
    np.asarray(actual, np.float64),
    expected,
    rtol=rtol,
    atol=rtol * np.max(np.abs(expected)),
  )


# ---------------------------------------------------------------------------
# Against optax's adaptive Muon.


def _optax_muon(lr, beta, nesterov):
  return optax.contrib.muon(lr, beta=beta, nesterov=nesterov, adaptive=True)


def _ours(lr, beta, nesterov):
  return fo.muon(
    lr,
    momentum=beta,
    nesterov=nesterov,
    polar_method='newton_schulz',
    adaptive=True,
  )


def _updates(tx, params, grads):
  """The update of every step for a fixed sequence of gradients."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(g, state, params)
    out.append(np.asarray(u['w'], np.float64))
  return out


@pytest.mark.parametrize('shape,nesterov', [((8, 16), True), ((16, 8), False)])
def test_matches_optax_without_momentum(shape, nesterov):
  """β = 0: no bias correction, optax's and our steps are the same."""
  x0 = jnp.asarray(gaussian(shape, seed=0))
  noise = [jnp.asarray(gaussian(shape, seed=t + 1)) for t in range(4)]

  def trajectory(tx):
    params = {'w': x0}
    state = tx.init(params)

    @jax.jit
    def step(params, state, n):
      updates, state = tx.update({'w': params['w'] + n}, state, params)
      return optax.apply_updates(params, updates), state

    for n in noise:
      params, state = step(params, state, n)
    return params['w']

  ours = trajectory(_ours(0.1, 0.0, nesterov))
  assert_close(ours, trajectory(_optax_muon(0.1, 0.0, nesterov)))
  assert np.max(np.abs(ours - x0)) > 0.1


def test_matches_optax_up_to_its_bias_correction():
  """Without Nesterov optax's momentum is ours over `1 − β^t`, and the
  adaptive scale is linear in it: ours = `(1 − β^t)` · optax's."""
  beta, shape = 0.9, (8, 16)
  params = {'w': jnp.zeros(shape)}
  grads = [{'w': jnp.asarray(gaussian(shape, seed=t))} for t in range(5)]
  ours = _updates(_ours(0.1, beta, False), params, grads)
  theirs = _updates(_optax_muon(0.1, beta, False), params, grads)
  for t, (a, b) in enumerate(zip(ours, theirs), start=1):
    assert_close(a, (1 - beta**t) * b)


def test_matches_optax_nesterov_once_bias_correction_vanishes():
  beta, shape = 0.5, (8, 16)
  params = {'w': jnp.zeros(shape)}
  grads = [{'w': jnp.asarray(gaussian(shape, seed=t))} for t in range(30)]
  ours = _updates(_ours(0.1, beta, True), params, grads)
  theirs = _updates(_optax_muon(0.1, beta, True), params, grads)
  for a, b in zip(ours[-5:], theirs[-5:]):
    assert_close(a, b)


# ---------------------------------------------------------------------------
# Closed forms, per matrix of a (batch, m, n) leaf.


def _top_2(n):
  u, s, vh = svd(n)
  return np.sum(s[:2]) * u[:, :2] @ vh[:2]


def _nuclear(n):
  return np.sum(svd(n)[1]) * np_polar(n)


def _frobenius(n):
  return n


def _sign(n):
  return ETA * np.sum(np.abs(n)) * ETA * np.sign(n)


def _mix(n):
  # ⟨N, Σαᵢ lmoᵢ(N)⟩ = Σαᵢ‖N‖_†ᵢ multiplies Σαᵢ lmoᵢ(N).
  s = svd(n)[1]
  dual = 0.3 * np.sum(s[:2]) + 0.7 * np.linalg.norm(n)
  u, _, vh = svd(n)
  return dual * (0.3 * u[:, :2] @ vh[:2] + 0.7 * n / np.linalg.norm(n))


CLOSED_FORMS = {
  'ky_fan_svd': (lambda: fo.lmo.ky_fan(2, top_k_method='svd'), _top_2),
  'spectral_svd': (lambda: fo.lmo.spectral(polar_method='svd'), _nuclear),
  'frobenius': (fo.lmo.frobenius, _frobenius),
  'sign': (lambda: fo.lmo.sign(ETA), _sign),
  'f_fanion_mix': (
    lambda: fo.lmo.mix(
      (0.3, fo.lmo.ky_fan(2, top_k_method='svd')), (0.7, fo.lmo.frobenius())
    ),
    _mix,
  ),
}


def _reference(name, n):
  return CLOSED_FORMS[name][1](n)


@pytest.mark.parametrize('name', list(CLOSED_FORMS))
def test_scale_by_lmo_closed_forms(name):
  x = gaussian((3, 8, 12), seed=1) * np.array([1.0, 10.0, 0.1])[:, None, None]
  tx = fo.scale_by_lmo(
    CLOSED_FORMS[name][0](), adaptive=True, dimension_numbers=DN(1, 2)
  )
  out, _ = tx.update({'w': jnp.asarray(x)}, tx.init({'w': jnp.asarray(x)}))
  for i in range(3):
    assert_close(out['w'][i], _reference(name, x[i].astype(np.float64)))


@pytest.mark.parametrize(
  'name',
  tiered(['ky_fan_svd', 'sign', 'f_fanion_mix'], fast={'sign', 'f_fanion_mix'}),
)
def test_lion_k_scales_by_the_dual_norm_of_n(name):
  """Three Lion-𝒦 steps against a NumPy Lion-𝒦 with the closed form."""
  b1, b2, lr, shape = 0.8, 0.9, 0.01, (8, 12)
  tx = fo.lion_k(
    lr, CLOSED_FORMS[name][0](), b1, b2, shape_scale=None, adaptive=True
  )
  x = gaussian(shape, seed=2)
  params = {'w': jnp.asarray(x)}
  state = tx.init(params)
  xr, m = x.astype(np.float64), np.zeros(shape)
  for t in range(3):
    g = gaussian(shape, seed=10 + t)
    updates, state = tx.update({'w': jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    n = b1 * m + (1 - b1) * g
    m = b2 * m + (1 - b2) * g
    xr = xr - lr * _reference(name, n)
  assert_close(params['w'], xr)


def test_zero_and_nonfinite_inputs():
  tx = fo.scale_by_lmo(fo.lmo.ky_fan(2, top_k_method='svd'), adaptive=True)
  zeros = {'w': jnp.zeros((8, 12))}
  out, _ = tx.update(zeros, tx.init(zeros))
  assert np.all(np.asarray(out['w']) == 0)
  tiny = {'w': jnp.full((8, 12), 1e-30)}
  out, _ = tx.update(tiny, tx.init(tiny))
  assert np.all(np.isfinite(np.asarray(out['w'])))
  nan = {'w': jnp.full((8, 12), jnp.nan)}
  out, _ = tx.update(nan, tx.init(nan))
  assert np.all(np.isnan(np.asarray(out['w'])))


def test_blocks_are_scaled_separately():
  """A fused (8, 3·8) kernel with `output_blocks=3` equals three leaves."""
  x = gaussian((8, 24), seed=3) * np.repeat([1.0, 5.0, 0.2], 8)
  lmo = fo.lmo.spectral(polar_method='svd')
  fused = fo.scale_by_lmo(
    lmo, adaptive=True, dimension_numbers=DN(0, 1, output_blocks=3)
  )
  out, _ = fused.update(
    {'w': jnp.asarray(x)}, fused.init({'w': jnp.asarray(x)})
  )
  for i in range(3):
    block = x[:, 8 * i : 8 * (i + 1)].astype(np.float64)
    assert_close(out['w'][:, 8 * i : 8 * (i + 1)], _nuclear(block))


def test_adaptive_must_be_a_bool():
  with pytest.raises(TypeError, match='adaptive'):
    fo.muon(0.02, adaptive=1)
  with pytest.raises(TypeError, match='adaptive'):
    fo.scale_by_lmo(fo.lmo.frobenius(), adaptive='no')


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < N_DEV, reason='needs 8 devices')
def test_pmap_split_equals_single_device():
  shapes = {'a': (8, 16), 'b': (8, 16), 'c': (16, 8)}
  params = {
    name: jnp.asarray(gaussian(s, seed=i))
    for i, (name, s) in enumerate(shapes.items())
  }
  grads = {
    name: jnp.asarray(gaussian(s, seed=10 + i))
    for i, (name, s) in enumerate(shapes.items())
  }
  single = fo.muon(0.1, adaptive=True)
  want, _ = single.update(grads, single.init(params), params)
  split = fo.muon(0.1, adaptive=True, split=fo.distributed.over_axis('d'))
  replicate = lambda t: jax.tree.map(
    lambda x: jnp.broadcast_to(x, (N_DEV,) + x.shape), t
  )
  got, _ = jax.pmap(split.update, axis_name='d')(
    replicate(grads), replicate(split.init(params)), replicate(params)
  )
  for name in shapes:
    assert_close(np.asarray(got[name])[N_DEV - 1], want[name])
