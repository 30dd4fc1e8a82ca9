"""NorMuon (Li et al., arXiv:2510.05491) against a NumPy Algorithm 1.

`np_normuon` re-implements the paper's Algorithm 1 in float64 with exact SVD
polar factors, in Flax's `(fan_in, fan_out)` layout: a neuron is a column
(the paper's row of PyTorch's `(out, in)` weight), so the second moment is a
mean over the fan-in axis.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fanion_optax as fo


def np_neuron_normalize(o, v, beta2, eps):
  """Lines 5–7 of Algorithm 1 on a `(fan_in, fan_out)` direction `o`.

  Returns `(0.2·√(mn)·Ô/‖Ô‖_F, v)`: the step `η̂·Ô` divided by `η`.
  """
  m, n = o.shape
  v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=0)
  o_hat = o / (np.sqrt(v) + eps)
  return 0.2 * np.sqrt(m * n) * o_hat / np.linalg.norm(o_hat), v


def np_normuon(w, grads, lr, beta1, beta2, eps, weight_decay, nesterov):
  """Algorithm 1 of Li et al. in float64; the parameters after each step.

  With `nesterov` the direction is `β1·M_t + (1 − β1)·g_t`, as in the
  authors' released code and Muon (Algorithm 1 orthogonalises `M_t`).
  """
  w = np.asarray(w, np.float64)
  momentum = np.zeros_like(w)
  v = np.zeros(w.shape[1])
  out = []
  for g in grads:
    g = np.asarray(g, np.float64)
    momentum = beta1 * momentum + (1 - beta1) * g
    direction = beta1 * momentum + (1 - beta1) * g if nesterov else momentum
    step, v = np_neuron_normalize(reference.np_polar(direction), v, beta2, eps)
    w = w - lr * weight_decay * w - lr * step
    out.append(w)
  return out


def _run(tx, params, grads):
  update = jax.jit(tx.update)
  state = tx.init(params)
  trajectory = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory, state


SHAPES = {'wide': (8, 16), 'tall': (16, 8)}


def _params_and_grads(steps, seed=0):
  params = {
    k: jnp.asarray(reference.gaussian(s, seed + i))
    for i, (k, s) in enumerate(SHAPES.items())
  }
  grads = [
    {
      k: jnp.asarray(reference.gaussian(s, 100 + 10 * t + i))
      for i, (k, s) in enumerate(SHAPES.items())
    }
    for t in range(steps)
  ]
  return params, grads


@pytest.mark.parametrize('nesterov', [False, True])
def test_normuon_matches_numpy_algorithm_1(nesterov):
  lr, beta1, beta2, eps, wd = 0.01, 0.9, 0.95, 1e-8, 0.1
  params, grads = _params_and_grads(steps=12)
  tx = fo.normuon(
    lr,
    momentum=beta1,
    nesterov=nesterov,
    polar_method='svd',
    neuron_b2=beta2,
    weight_decay=wd,
  )
  got, _ = _run(tx, params, grads)
  for key in SHAPES:
    want = np_normuon(
      params[key],
      [g[key] for g in grads],
      lr,
      beta1,
      beta2,
      eps,
      wd,
      nesterov,
    )
    for t, (p, w) in enumerate(zip(got, want)):
      np.testing.assert_allclose(
        p[key], w, rtol=1e-5, atol=1e-6, err_msg=f'{key}, step {t}'
      )
  # The parameters moved well beyond the tolerance.
  assert np.abs(got[-1]['wide'] - params['wide']).max() > 1e-2


def test_preset_defaults_are_muon_momentum_and_rms_matched_step():
  # One step from zero momentum: M = (1 − μ²)·g with Nesterov μ = 0.95, and
  # the direction is its polar factor; no shape factor on top of RMS 0.2.
  params, grads = _params_and_grads(steps=1)
  tx = fo.normuon(0.1, polar_method='svd')
  updates, state = jax.jit(tx.update)(grads[0], tx.init(params), params)
  for key in SHAPES:
    g = np.asarray(grads[0][key], np.float64)
    want, _ = np_neuron_normalize(reference.np_polar(g), 0.0, 0.95, 1e-8)
    np.testing.assert_allclose(updates[key], -0.1 * want, rtol=1e-5, atol=1e-7)
    rms = np.sqrt(np.mean(np.square(np.asarray(updates[key]))))
    np.testing.assert_allclose(rms, 0.1 * 0.2, rtol=1e-5)
  np.testing.assert_allclose(
    state.matrices[0].mu['wide'], (1 - 0.95) * grads[0]['wide'], rtol=1e-6
  )


def test_follows_a_non_spectral_lmo():
  lmo = fo.lmo.ky_fan(2, top_k_method='svd')
  beta2, eps = 0.8, 1e-8
  tx = optax.chain(
    fo.scale_by_lmo(lmo), fo.scale_by_neuron_norm(b2=beta2, eps=eps)
  )
  _, grads = _params_and_grads(steps=6)
  state = tx.init(grads[0])
  update = jax.jit(tx.update)
  v = {key: np.zeros(s[1]) for key, s in SHAPES.items()}
  for g in grads:
    out, state = update(g, state)
    for key in SHAPES:
      direction = reference.np_top_k(np.asarray(g[key], np.float64), 2)
      want, v[key] = np_neuron_normalize(direction, v[key], beta2, eps)
      np.testing.assert_allclose(out[key], want, rtol=2e-5, atol=1e-6)
  # The state holds one second moment per neuron (column), tree order.
  nu = state[1].nu
  assert [x.shape for x in nu] == [(1, 1, 8), (1, 1, 16)]
  np.testing.assert_allclose(nu[0][0, 0], v['tall'], rtol=2e-5)
  np.testing.assert_allclose(nu[1][0, 0], v['wide'], rtol=2e-5)
  assert all(x.dtype == jnp.float32 for x in nu)


def test_the_pipeline_option_follows_any_preset():
  # fanion with neuron_b2 is Ky Fan-2 then the neuron normalisation.
  lr, beta2 = 0.05, 0.9
  params, grads = _params_and_grads(steps=3)
  got, _ = _run(
    fo.fanion(
      lr,
      2,
      top_k_method='svd',
      momentum=0.9,
      nesterov=False,
      neuron_b2=beta2,
      shape_scale=None,
    ),
    params,
    grads,
  )
  for key in SHAPES:
    w = np.asarray(params[key], np.float64)
    momentum = np.zeros_like(w)
    v = np.zeros(w.shape[1])
    for t, g in enumerate(grads):
      momentum = 0.9 * momentum + 0.1 * np.asarray(g[key], np.float64)
      step, v = np_neuron_normalize(
        reference.np_top_k(momentum, 2), v, beta2, 1e-8
      )
      w = w - lr * step
      np.testing.assert_allclose(got[t][key], w, rtol=1e-5, atol=1e-6)


def test_batched_and_conv_kernels_have_their_own_neurons():
  # A stack of 3 matrices (axis 0 a batch axis) and a conv kernel whose
  # fan-in is kh·kw·in: every matrix of the stack has its own neurons and
  # its own ‖Ô‖_F.
  dims = {
    'stack': fo.DimensionNumbers(1, 2),
    'conv': fo.DimensionNumbers((0, 1, 2), 3),
  }
  shapes = {'stack': (3, 4, 6), 'conv': (3, 3, 2, 5)}
  tx = fo.scale_by_neuron_norm(b2=0.5, dimension_numbers=dims)
  rng = np.random.default_rng(3)
  o = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  o['stack'][1] *= 100.0  # a matrix far larger than its neighbours
  out, state = jax.jit(tx.update)(
    jax.tree.map(jnp.asarray, o), tx.init(jax.tree.map(jnp.asarray, o))
  )
  for i in range(3):
    want, v = np_neuron_normalize(
      o['stack'][i].astype(np.float64), 0.0, 0.5, 1e-8
    )
    np.testing.assert_allclose(out['stack'][i], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.nu[1][i, 0], v, rtol=1e-5)
  want, v = np_neuron_normalize(
    o['conv'].reshape(18, 5).astype(np.float64), 0.0, 0.5, 1e-8
  )
  np.testing.assert_allclose(
    out['conv'], want.reshape(3, 3, 2, 5), rtol=1e-5, atol=1e-7
  )
  assert state.nu[0].shape == (1, 1, 5)
  np.testing.assert_allclose(state.nu[0][0, 0], v, rtol=1e-5)


def test_a_neuron_is_a_column_of_the_flax_kernel():
  # Rows and columns of very different sizes. With b2 = 0 the second moment
  # is this step's: every column (neuron) of the output gets the same RMS,
  # 0.2, whatever its input size; the rows keep their relative sizes.
  rng = np.random.default_rng(5)
  rows = np.array([1.0, 3.0, 9.0, 27.0])[:, None]
  cols = np.array([1.0, 10.0, 100.0, 0.1, 5.0, 2.0])[None, :]
  o = (rows * np.sign(rng.standard_normal((4, 6))) * cols).astype(np.float32)
  tx = fo.scale_by_neuron_norm(b2=0.0)
  out, _ = jax.jit(tx.update)({'w': jnp.asarray(o)}, tx.init({'w': o}))
  out = np.asarray(out['w'], np.float64)
  column_rms = np.sqrt(np.mean(out**2, axis=0))
  row_rms = np.sqrt(np.mean(out**2, axis=1))
  np.testing.assert_allclose(column_rms, 0.2, rtol=1e-5)
  # Row normalisation would have equalised these instead.
  assert row_rms.max() / row_rms.min() > 10
  # Each column is its input column, rescaled.
  ratio = out / o
  np.testing.assert_allclose(ratio, np.tile(ratio[0], (4, 1)), rtol=1e-5)


def test_zero_gradient_gives_zero_step_and_finite_state():
  tx = fo.normuon(0.1, weight_decay=0.5, polar_method='svd')
  params, _ = _params_and_grads(steps=0)
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(2):
    updates, state = update(zeros, state, params)
    for key in SHAPES:  # only the decay −η·λ·X is left
      np.testing.assert_allclose(
        updates[key], -0.1 * 0.5 * params[key], rtol=1e-6
      )
  assert all(
    bool(jnp.all(jnp.isfinite(x))) and not bool(jnp.any(x))
    for x in state.matrices[1].nu
  )
  # The transformation alone: zero in, zero out.
  tx = fo.scale_by_neuron_norm()
  out, state = jax.jit(tx.update)(zeros, tx.init(zeros))
  assert all(not bool(jnp.any(x)) for x in jax.tree.leaves((out, state.nu)))


def test_bf16_params_stay_finite():
  params, grads = _params_and_grads(steps=4)
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  grads = [jax.tree.map(lambda x: x.astype(jnp.bfloat16), g) for g in grads]
  trajectory, state = _run(fo.normuon(0.05, weight_decay=0.1), params, grads)
  for p in trajectory[-1].values():
    assert p.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(p, np.float32)))
  assert all(x.dtype == jnp.float32 for x in state.matrices[1].nu)
  moved = np.asarray(trajectory[-1]['wide'], np.float32) - np.asarray(
    params['wide'], np.float32
  )
  assert np.abs(moved).max() > 0.05


def test_zero_size_and_one_column_leaves():
  params = {
    'rows': jnp.zeros((0, 5)),
    'cols': jnp.zeros((5, 0)),
    'column': jnp.ones((6, 1)),
  }
  grads = {
    'rows': jnp.zeros((0, 5)),
    'cols': jnp.zeros((5, 0)),
    'column': jnp.arange(6.0).reshape(6, 1),
  }
  tx = fo.normuon(0.1, polar_method='svd')
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert all(updates[k].shape == params[k].shape for k in params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
  # A single neuron: its update is the polar factor g/‖g‖ at RMS 0.2.
  g = np.arange(6.0)[:, None]
  np.testing.assert_allclose(
    updates['column'], -0.1 * 0.2 * np.sqrt(6) * g / np.linalg.norm(g), 1e-5
  )


def test_non_finite_direction_keeps_the_last_finite_second_moment():
  tx = fo.scale_by_neuron_norm(b2=0.5)
  rng = np.random.default_rng(1)
  first = {'w': jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}
  update = jax.jit(tx.update)
  _, state = update(first, tx.init(first))
  bad = {'w': first['w'].at[1, 2].set(jnp.nan)}
  out, new_state = update(bad, state)
  # The update is NaN (skip_nonfinite skips such a step); the moments of
  # the finite neurons move on, the NaN one keeps its last value.
  assert np.all(np.isnan(np.asarray(out['w'])))
  old, new = np.asarray(state.nu[0]), np.asarray(new_state.nu[0])
  assert np.all(np.isfinite(new)) and new[0, 0, 2] == old[0, 0, 2]
  assert np.all(new[0, 0, :2] != old[0, 0, :2])
  # Wrapped, the whole step is skipped.
  wrapped = fo.skip_nonfinite(fo.normuon(0.1))
  state = wrapped.init(first)
  updates, state = jax.jit(wrapped.update)(bad, state, first)
  assert int(state.skipped) == 1 and not bool(jnp.any(updates['w']))


@pytest.mark.slow
def test_inject_hyperparams_exposes_neuron_b2():
  params, grads = _params_and_grads(steps=3)
  for wrapper in (optax.inject_hyperparams, fo.inject_hyperparams):
    state = wrapper(fo.normuon)(learning_rate=0.05).init(params)
    np.testing.assert_allclose(state.hyperparams['neuron_b2'], 0.95)
  injected = fo.inject_hyperparams(fo.normuon)(
    learning_rate=0.05, polar_method='svd'
  )
  got, state = _run(injected, params, grads)
  want, _ = _run(fo.normuon(0.05, polar_method='svd'), params, grads)
  for key in SHAPES:
    np.testing.assert_allclose(
      got[-1][key], want[-1][key], rtol=1e-5, atol=1e-7
    )
  # The injected β₂ is the one used: with 0 the moment is this step's
  # mean(O⊙O), with 0.95 it is 0.95·ν + 0.05·mean(O⊙O).
  hp = dict(state.hyperparams, neuron_b2=jnp.asarray(0.0))
  update = jax.jit(injected.update)
  _, fresh = update(grads[0], state._replace(hyperparams=hp), params)
  _, decayed = update(grads[0], state, params)
  nu = np.asarray(state.inner_state.matrices[1].nu[0])
  fresh = np.asarray(fresh.inner_state.matrices[1].nu[0])
  decayed = np.asarray(decayed.inner_state.matrices[1].nu[0])
  np.testing.assert_allclose(decayed, 0.95 * nu + 0.05 * fresh, rtol=1e-5)
  assert not np.allclose(fresh, decayed, rtol=1e-2)
  # Muon has the option off: nothing to inject.
  muon = fo.inject_hyperparams(fo.muon)(learning_rate=0.02)
  assert 'neuron_b2' not in muon.init(params).hyperparams


@pytest.mark.parametrize(
  'make, error, match',
  [
    (lambda: fo.normuon(0.1, neuron_b2=1.0), ValueError, 'neuron_b2'),
    (lambda: fo.normuon(0.1, neuron_b2=-0.1), ValueError, 'neuron_b2'),
    (lambda: fo.muon(0.1, neuron_b2='0.9'), TypeError, 'neuron_b2'),
    (lambda: fo.normuon(0.1, neuron_eps=-1e-8), ValueError, 'neuron_eps'),
    (lambda: fo.normuon(0.1, neuron_eps=jnp.nan), ValueError, 'neuron_eps'),
    (lambda: fo.scale_by_neuron_norm(b2=1.5), ValueError, r'\bb2\b'),
    (lambda: fo.scale_by_neuron_norm(eps=-1.0), ValueError, r'\beps\b'),
    (lambda: fo.scale_by_neuron_norm(eps=(1, 2)), TypeError, r'\beps\b'),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_non_matrix_leaves_are_refused_by_the_transformation():
  tx = fo.scale_by_neuron_norm()
  with pytest.raises(ValueError, match="'b'"):
    tx.init({'w': jnp.ones((2, 3)), 'b': jnp.ones(3)})


def test_each_block_of_a_split_leaf_has_its_own_neurons():
  # A grouped-query QKV kernel (d, d + 2·d_kv) and a head-packed output
  # projection (3·d_h, d): each block follows Algorithm 1 on its own, with
  # its own neurons, ‖Ô‖_F and √(mn).
  dims = {
    'qkv': fo.DimensionNumbers(0, 1, output_blocks=(8, 4, 4)),
    'proj': fo.DimensionNumbers(0, 1, reduction_blocks=3),
  }
  rng = np.random.default_rng(11)
  fused = {
    'qkv': rng.standard_normal((8, 16)).astype(np.float32),
    'proj': rng.standard_normal((12, 8)).astype(np.float32),
  }
  grads = [
    {
      k: rng.standard_normal(v.shape).astype(np.float32)
      for k, v in fused.items()
    }
    for _ in range(3)
  ]
  blocks = {
    'qkv': [np.s_[:, :8], np.s_[:, 8:12], np.s_[:, 12:]],
    'proj': [np.s_[4 * i : 4 * i + 4] for i in range(3)],
  }
  tx = fo.normuon(0.05, polar_method='svd', dimension_numbers=dims)
  got, state = _run(
    tx,
    jax.tree.map(jnp.asarray, fused),
    [jax.tree.map(jnp.asarray, g) for g in grads],
  )
  for key, cuts in blocks.items():
    for cut in cuts:
      want = np_normuon(
        fused[key][cut],
        [g[key][cut] for g in grads],
        0.05,
        0.95,
        0.95,
        1e-8,
        0.0,
        nesterov=True,
      )
      for p, w in zip(got, want):
        np.testing.assert_allclose(
          np.asarray(p[key])[cut], w, rtol=1e-5, atol=1e-6
        )
  # Tree order: proj (one stack of 3 blocks), then qkv (a (8, 8) block and
  # a stack of two (8, 4) blocks).
  nu = state.matrices[1].nu
  assert [x.shape for x in nu] == [(3, 1, 8), (1, 1, 8), (2, 1, 4)]


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (emulated) devices')
def test_sharded_jit_with_explicit_axes_matches_unsharded():
  # Reshaping a sharded axis is a type error under explicit sharding: the
  # normalisation must see whole matrices and reshard its output back.
  mesh = jax.make_mesh((8,), ('model',), axis_types=(AxisType.Explicit,))
  params, grads = _params_and_grads(steps=2)
  want, want_state = _run(fo.normuon(0.05), params, grads)
  shard = lambda t: jax.tree.map(
    lambda x: jax.device_put(x, NamedSharding(mesh, P(None, 'model'))), t
  )
  tx = fo.normuon(0.05, split=fo.distributed.over_mesh(mesh, 'model'))
  got, state = _run(tx, shard(params), [shard(g) for g in grads])
  for key in SHAPES:
    np.testing.assert_allclose(
      got[-1][key], want[-1][key], rtol=1e-5, atol=1e-6
    )
    assert got[-1][key].sharding.is_equivalent_to(
      shard(params)[key].sharding, 2
    )
  for a, b in zip(state.matrices[1].nu, want_state.matrices[1].nu):
    np.testing.assert_allclose(a, b, rtol=1e-5)
