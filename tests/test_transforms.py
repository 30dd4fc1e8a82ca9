"""Tests for `fanion_optax.transforms`.

References: the Lion-𝒦 recursion of SPEC.md §2.2 written in NumPy (float64),
NumPy SVDs for `U Vᵀ` and `U_k V_kᵀ`, and closed-form shape factors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import np_polar
from reference import np_top_k

import fanion_optax as fo
from fanion_optax import transforms
from fanion_optax.partition import DimensionNumbers as DN


def _rand(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np_sign(x):
  return np.sign(np.asarray(x, np.float64))


def _np_lion_k(grads, lmo_fn, b1, b2):
  """Directions of Lion-𝒦 (SPEC §2.2) for a list of gradients of one leaf."""
  m = np.zeros_like(grads[0], dtype=np.float64)
  out = []
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    beta1 = b1(t) if callable(b1) else b1
    beta2 = b2(t) if callable(b2) else b2
    out.append(lmo_fn(beta1 * m + (1 - beta1) * g))
    m = beta2 * m + (1 - beta2) * g
  return out


@pytest.mark.parametrize(
  'b1,b2',
  [
    (0.9, 0.99),
    (0.0, 0.5),
    (lambda t: 0.5 + 0.1 * t, lambda t: 0.9 - 0.1 * t),
  ],
)
def test_lion_k_sign_matches_numpy(b1, b2):
  shapes = {'a': (4, 6), 'b': (3, 5, 2)}
  grads = [
    {k: _rand(s, 10 * t + i) for i, (k, s) in enumerate(shapes.items())}
    for t in range(4)
  ]
  tx = fo.scale_by_lion_k(
    fo.lmo.sign(), b1, b2, dimension_numbers={'a': DN(), 'b': DN(1, 2)}
  )
  state = tx.init(
    jax.tree.map(jnp.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
  )
  outs = []
  for g in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state)
    outs.append(updates)
  assert int(state.count) == 4
  for key in shapes:
    expected = _np_lion_k([g[key] for g in grads], _np_sign, b1, b2)
    for got, want in zip(outs, expected):
      np.testing.assert_array_equal(np.asarray(got[key]), want)


def test_lion_k_momentum_state_matches_numpy():
  grads = [_rand((4, 6), t) for t in range(3)]
  tx = fo.scale_by_lion_k(fo.lmo.sign(), 0.3, 0.8)
  state = tx.init({'w': jnp.zeros((4, 6))})
  m = np.zeros((4, 6))
  for g in grads:
    _, state = tx.update({'w': jnp.asarray(g)}, state)
    m = 0.8 * m + 0.2 * g
  np.testing.assert_allclose(np.asarray(state.mu['w']), m, rtol=1e-6, atol=1e-7)


def test_lion_k_spectral_per_stacked_matrix():
  shape = (3, 5, 7)
  grads = [_rand(shape, t) for t in range(3)]
  tx = fo.scale_by_lion_k(
    fo.lmo.spectral(polar_method='svd'), 0.81, 0.9, dimension_numbers=DN(1, 2)
  )
  state = tx.init({'x': jnp.zeros(shape)})
  expected = _np_lion_k(grads, np_polar, 0.81, 0.9)
  for g, want in zip(grads, expected):
    updates, state = tx.update({'x': jnp.asarray(g)}, state)
    np.testing.assert_allclose(np.asarray(updates['x']), want, atol=2e-5)
    # Each stacked matrix is orthogonalised on its own: all σ = 1.
    sv = np.linalg.svd(np.asarray(updates['x'], np.float64), compute_uv=False)
    np.testing.assert_allclose(sv, 1.0, atol=1e-5)


def test_lion_k_conv_kernel_uses_matrix_view():
  shape = (3, 3, 4, 8)
  g = _rand(shape, 3)
  tx = fo.scale_by_lion_k(
    fo.lmo.spectral(polar_method='svd'),
    0.0,
    0.0,
    dimension_numbers=DN((0, 1, 2), 3),
  )
  updates, _ = tx.update({'k': jnp.asarray(g)}, tx.init({'k': g}))
  want = np_polar(g.reshape(36, 8)).reshape(shape)
  np.testing.assert_allclose(np.asarray(updates['k']), want, atol=2e-5)


def test_lion_k_rejects_vector_without_dimension_numbers():
  tx = fo.scale_by_lion_k(fo.lmo.sign())
  with pytest.raises(ValueError, match=r"'b'.*no dimension numbers"):
    tx.init({'w': jnp.zeros((2, 3)), 'b': jnp.zeros(3)})


def test_lion_k_argument_checks():
  with pytest.raises(TypeError, match='lmo'):
    fo.scale_by_lion_k(jnp.sign)
  with pytest.raises(ValueError, match='b1'):
    fo.scale_by_lion_k(fo.lmo.sign(), b1=1.5)
  with pytest.raises(ValueError, match='b2'):
    fo.scale_by_lion_k(fo.lmo.sign(), b2=-0.1)
  with pytest.raises(TypeError, match='lmo'):
    fo.scale_by_lmo('spectral')


def test_lion_k_dtypes_and_mu_dtype():
  params = {'w': jnp.zeros((4, 6), jnp.bfloat16)}
  grads = {'w': jnp.asarray(_rand((4, 6), 0), jnp.bfloat16)}
  for mu_dtype, want in ((None, jnp.bfloat16), (jnp.float32, jnp.float32)):
    tx = fo.scale_by_lion_k(fo.lmo.spectral(), mu_dtype=mu_dtype)
    state = tx.init(params)
    assert state.mu['w'].dtype == want
    updates, state = tx.update(grads, state)
    assert updates['w'].dtype == jnp.bfloat16
    assert state.mu['w'].dtype == want


def test_lion_k_zero_gradient_gives_zero_update():
  for lmo in (
    fo.lmo.spectral(),
    fo.lmo.spectral(polar_method='svd'),
    fo.lmo.frobenius(),
    fo.lmo.ky_fan(2),
    fo.lmo.sign(),
  ):
    tx = fo.scale_by_lion_k(lmo)
    params = {'w': jnp.zeros((5, 7))}
    updates, _ = tx.update(params, tx.init(params))
    np.testing.assert_array_equal(np.asarray(updates['w']), 0.0)


def test_ky_fan_subspace_state_shapes_change_and_nan_guard():
  k = 2
  shapes = {'w': (6, 10), 'stack': (3, 5, 7)}
  specs = {'w': DN(), 'stack': DN(1, 2)}
  tx = fo.scale_by_lion_k(fo.lmo.ky_fan(k), 0.5, 0.9, dimension_numbers=specs)
  params = {k_: jnp.zeros(s) for k_, s in shapes.items()}
  state = tx.init(params)
  # One state per matrix leaf in tree order ('stack', 'w'): (batch, n, k).
  assert [s.shape for s in state.lmo_state] == [(3, 7, k), (1, 10, k)]
  previous = state.lmo_state
  for t in range(3):
    grads = {
      k_: jnp.asarray(_rand(s, 100 + t + 7 * i))
      for i, (k_, s) in enumerate(shapes.items())
    }
    _, state = tx.update(grads, state)
    for old, new in zip(previous, state.lmo_state):
      assert new.shape == old.shape and new.dtype == jnp.float32
      assert not np.allclose(np.asarray(old), np.asarray(new), atol=1e-3)
      # Orthonormal columns.
      gram = np.einsum('bnk,bnj->bkj', np.asarray(new), np.asarray(new))
      np.testing.assert_allclose(
        gram, np.broadcast_to(np.eye(k), gram.shape), atol=1e-5
      )
    previous = state.lmo_state
  bad = {
    'w': jnp.full((6, 10), jnp.nan),
    'stack': jnp.asarray(_rand((3, 5, 7), 9)),
  }
  _, state = tx.update(bad, state)
  for s in state.lmo_state:
    assert np.all(np.isfinite(np.asarray(s)))
  # The NaN leaf keeps its previous subspace; the finite one moves on.
  np.testing.assert_array_equal(
    np.asarray(state.lmo_state[1]), np.asarray(previous[1])
  )
  assert not np.allclose(
    np.asarray(state.lmo_state[0]), np.asarray(previous[0]), atol=1e-3
  )


def test_scale_by_lmo_follows_momentum():
  grads = [_rand((4, 6), t) for t in range(3)]
  tx = optax.chain(optax.trace(0.9), fo.scale_by_lmo(fo.lmo.frobenius()))
  state = tx.init({'w': jnp.zeros((4, 6))})
  acc = np.zeros((4, 6))
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g)}, state)
    acc = 0.9 * acc + g
    np.testing.assert_allclose(
      np.asarray(updates['w']), acc / np.linalg.norm(acc), atol=1e-6
    )


def test_scale_by_lmo_ky_fan_svd_and_state():
  g = _rand((2, 6, 9), 4)
  tx = fo.scale_by_lmo(
    fo.lmo.ky_fan(3, top_k_method='svd'), dimension_numbers=DN(1, 2)
  )
  state = tx.init({'x': jnp.zeros(g.shape)})
  assert state.lmo_state == (None,)
  updates, _ = tx.update({'x': jnp.asarray(g)}, state)
  np.testing.assert_allclose(
    np.asarray(updates['x']), np_top_k(g, 3), atol=2e-5
  )
  warm = fo.scale_by_lmo(fo.lmo.ky_fan(3), dimension_numbers=DN(1, 2))
  assert warm.init({'x': jnp.zeros(g.shape)}).lmo_state[0].shape == (2, 9, 3)


@pytest.mark.parametrize('mode', ['muon', 'rms', None])
def test_scale_by_shape(mode):
  shapes = {
    'wide': (6, 10),
    'tall': (10, 6),
    'conv': (3, 3, 4, 8),
    'stack': (2, 5, 20),
  }
  specs = {
    'wide': DN(),
    'tall': DN(),
    'conv': DN((0, 1, 2), 3),
    'stack': DN(1, 2),
  }
  fans = {'wide': (6, 10), 'tall': (10, 6), 'conv': (36, 8), 'stack': (5, 20)}
  expected = {
    'muon': lambda i, o: math.sqrt(max(1.0, o / i)),
    'rms': lambda i, o: 0.2 * math.sqrt(max(i, o)),
    None: lambda i, o: 1.0,
  }[mode]
  tx = fo.scale_by_shape(mode, dimension_numbers=specs)
  ups = {k: jnp.asarray(_rand(s, i)) for i, (k, s) in enumerate(shapes.items())}
  out, _ = tx.update(ups, tx.init(ups))
  for key in shapes:
    np.testing.assert_allclose(
      np.asarray(out[key]),
      np.asarray(ups[key]) * expected(*fans[key]),
      rtol=1e-6,
    )


def test_scale_by_shape_rejects_unknown_mode():
  with pytest.raises(ValueError, match='shape_scale'):
    fo.scale_by_shape('frobenius')


def test_scale_by_shape_keeps_bf16():
  u = {'w': jnp.ones((3, 12), jnp.bfloat16)}
  out, _ = fo.scale_by_shape('muon').update(u, optax.EmptyState())
  assert out['w'].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out['w'], np.float32), 2.0)


def test_add_decayed_weights_constant_schedule_and_mask():
  params = {
    'a': jnp.asarray(_rand((3, 4), 0)),
    'b': jnp.asarray(_rand((4,), 1)),
    'c': {'d': jnp.asarray(_rand((2, 2), 2))},
  }
  ups = jax.tree.map(jnp.ones_like, params)
  tx = fo.add_decayed_weights(0.1)
  out, state = tx.update(ups, tx.init(params), params)
  jax.tree.map(
    lambda o, p: np.testing.assert_allclose(
      o, 1.0 + 0.1 * np.asarray(p), rtol=1e-6
    ),
    out,
    params,
  )
  assert int(state.count) == 1
  # Schedule: λ_t = 0.5 t.
  tx = fo.add_decayed_weights(lambda t: 0.5 * t)
  state = tx.init(params)
  for t in range(3):
    out, state = tx.update(ups, state, params)
    np.testing.assert_allclose(
      out['a'], 1 + 0.5 * t * np.asarray(params['a']), rtol=1e-6
    )
  # Masks: a tree, a prefix tree and a callable.
  masks = [
    {'a': True, 'b': False, 'c': {'d': False}},
    {'a': True, 'b': False, 'c': False},
    lambda p: jax.tree.map(lambda x: x.shape == (3, 4), p),
  ]
  for mask in masks:
    tx = fo.add_decayed_weights(0.1, mask)
    out, _ = tx.update(ups, tx.init(params), params)
    np.testing.assert_allclose(
      out['a'], 1 + 0.1 * np.asarray(params['a']), rtol=1e-6
    )
    np.testing.assert_array_equal(out['b'], 1.0)
    np.testing.assert_array_equal(out['c']['d'], 1.0)


def test_add_decayed_weights_skips_none_and_checks_args():
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  ups = {'w': jnp.zeros((2, 2)), 'b': None}
  tx = fo.add_decayed_weights(0.5)
  out, _ = tx.update(ups, tx.init(params), {'w': params['w'], 'b': None})
  assert out['b'] is None
  np.testing.assert_allclose(out['w'], 0.5)
  with pytest.raises(ValueError, match='params'):
    tx.update(ups, tx.init(params))
  with pytest.raises(ValueError, match='weight_decay'):
    fo.add_decayed_weights(-0.1)


def test_add_decayed_weights_keeps_dtype():
  params = {'w': jnp.ones((2, 2), jnp.bfloat16)}
  tx = fo.add_decayed_weights(0.25)
  out, _ = tx.update(params, tx.init(params), params)
  assert out['w'].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out['w'], np.float32), 1.25)


def test_transforms_chain_is_lion_k_update():
  """scale_by_lion_k → shape → decay → lr reproduces SPEC §2.2 by hand."""
  lr, wd = 0.1, 0.3
  x = _rand((6, 10), 0).astype(np.float64)
  grads = [_rand((6, 10), 1 + t) for t in range(3)]
  tx = optax.chain(
    fo.scale_by_lion_k(fo.lmo.spectral(polar_method='svd'), 0.9, 0.95),
    fo.scale_by_shape('muon'),
    fo.add_decayed_weights(wd),
    optax.scale_by_learning_rate(lr),
  )
  params = {'w': jnp.asarray(x, jnp.float32)}
  state = tx.init(params)
  dirs = _np_lion_k(grads, np_polar, 0.9, 0.95)
  s = math.sqrt(10 / 6)
  for g, d in zip(grads, dirs):
    updates, state = tx.update({'w': jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    x = x - lr * (s * d + wd * x)
    np.testing.assert_allclose(np.asarray(params['w']), x, atol=2e-5)


def test_state_types_are_named_tuples():
  params = {'w': jnp.zeros((3, 4))}
  assert isinstance(
    fo.scale_by_lion_k(fo.lmo.sign()).init(params), transforms.ScaleByLionKState
  )
  assert isinstance(
    fo.scale_by_lmo(fo.lmo.sign()).init(params), transforms.ScaleByLmoState
  )
  assert isinstance(
    fo.add_decayed_weights(0.1).init(params), transforms.AddDecayedWeightsState
  )


def test_skip_nonfinite_wrapper():
  b1, b2, lr = 0.5, 0.9, 0.1
  g1, g2 = _rand((6, 10), 1), _rand((6, 10), 2)
  tx = fo.skip_nonfinite(
    optax.chain(fo.scale_by_lion_k(fo.lmo.sign(), b1, b2), optax.scale(-lr))
  )
  state = tx.init({'w': jnp.zeros((6, 10))})
  assert int(state.skipped) == 0 and int(state.consecutive) == 0
  expected = _np_lion_k([g1, g2], _np_sign, b1, b2)
  updates, state = tx.update({'w': jnp.asarray(g1)}, state)
  np.testing.assert_allclose(
    np.asarray(updates['w']), -lr * expected[0], rtol=1e-7
  )
  kept = state.inner_state
  for count, value in enumerate((np.nan, np.inf), start=1):
    bad = g2.copy()
    bad[2, 3] = value
    updates, state = tx.update({'w': jnp.asarray(bad)}, state)
    np.testing.assert_array_equal(np.asarray(updates['w']), 0.0)
    assert int(state.skipped) == count and int(state.consecutive) == count
    np.testing.assert_array_equal(
      np.asarray(state.inner_state[0].mu['w']), np.asarray(kept[0].mu['w'])
    )
    assert int(state.inner_state[0].count) == 1
  updates, state = tx.update({'w': jnp.asarray(g2)}, state)
  np.testing.assert_allclose(
    np.asarray(updates['w']), -lr * expected[1], rtol=1e-7
  )
  assert int(state.skipped) == 2 and int(state.consecutive) == 0


def test_skip_nonfinite_catches_nonfinite_updates_of_finite_grads():
  tx = fo.skip_nonfinite(optax.scale(np.inf))
  params = {'w': jnp.ones((2, 3))}
  updates, state = tx.update(params, tx.init(params))
  np.testing.assert_array_equal(np.asarray(updates['w']), 0.0)
  assert int(state.skipped) == 1
