"""Non-finite gradients: the `skip_nonfinite` policy and what happens without.

With `fo.skip_nonfinite(tx)` (around any optimizer of the package or any
optax transformation) a step whose gradients or updates hold NaN/Inf
returns zero updates, leaves the inner state bit for bit as it was and
counts the skip (`skipped` in total, `consecutive` since the last applied
step). The next finite step is exactly the step that would have followed
had the bad one never arrived.

Without it (documented in `fo.lion_k`):

* a NaN or ±Inf entry in a matrix gradient makes the *whole* update of that
  leaf NaN for every LMO that normalises by the matrix (spectral, Ky Fan,
  Frobenius, Schatten and their mixtures), because the max-abs/Frobenius
  normaliser is NaN/Inf; the sign LMO is elementwise: NaN only at that entry
  and ±Inf gives the finite ±η;
* the momentum turns non-finite at that entry only, so every later update
  of the leaf stays NaN (spectral family) until the momentum is reset;
* other leaves, including same-shape matrices batched with it, are
  unaffected, and the Ky Fan warm-start subspace of the affected matrix
  keeps its last finite value;
* zero gradients give zero directions (never NaN).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiers import tiered

import fanion_optax as fo
from fanion_optax import catalogue

OPTIMIZERS = catalogue.OPTIMIZERS


def _optimizer(name, **overrides):
  """The catalogue's entry with weight decay 0.1 unless overridden."""
  return OPTIMIZERS[name](**{'weight_decay': 0.1, **overrides})


# 'w' and 'v' share a shape: the LMO runs on them as one (2, 6, 4) stack.
SHAPES = {'w': (6, 4), 'v': (6, 4), 'u': (3, 5), 'b': (4,)}


def _tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {
    k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
    for k, s in SHAPES.items()
  }


def _with(tree, leaf, value, index=(1, 2)):
  out = dict(tree)
  out[leaf] = tree[leaf].at[index].set(value)
  return out


def _assert_trees_equal(a, b):
  assert jax.tree.structure(
    a, is_leaf=lambda x: x is None
  ) == jax.tree.structure(b, is_leaf=lambda x: x is None)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------
# fo.skip_nonfinite(tx).


@pytest.mark.parametrize('name', tiered(sorted(OPTIMIZERS)))
def test_skip_leaves_params_and_state_untouched_under_jit(name):
  tx = fo.skip_nonfinite(_optimizer(name))
  update = jax.jit(tx.update)
  apply = jax.jit(optax.apply_updates)
  good = [_tree(10 + i) for i in range(3)]
  bad = [
    ('matrix NaN', _with(good[1], 'w', jnp.nan)),
    ('stacked matrix +Inf', _with(good[1], 'v', jnp.inf)),
    ('fallback -Inf', _with(good[1], 'b', -jnp.inf, index=0)),
    (
      'matrix NaN and fallback NaN',
      _with(_with(good[1], 'u', jnp.nan), 'b', jnp.nan, index=1),
    ),
  ]

  def run(steps):
    params = _tree(0)
    state = tx.init(params)
    history = []
    for grads in steps:
      updates, new_state = update(grads, state, params)
      history.append((params, state, updates, new_state))
      params, state = apply(params, updates), new_state
    return params, state, history

  # Reference: only the finite steps.
  ref_params, ref_state, _ = run(good)
  # The same finite steps with bad ones in between (two in a row once).
  steps = [
    good[0],
    bad[0][1],
    good[1],
    bad[1][1],
    bad[2][1],
    bad[3][1],
    good[2],
  ]
  params, state, history = run(steps)
  expected = [(0, 0), (1, 1), (1, 0), (2, 1), (3, 2), (4, 3), (4, 0)]
  for (before, old, updates, new), grads, (skipped, consecutive) in zip(
    history, steps, expected
  ):
    assert int(new.skipped) == skipped and int(new.consecutive) == consecutive
    if _all_finite(grads):
      assert _all_finite(updates)
      continue
    # Skipped: zero updates, parameters and inner state bit for bit.
    for u in jax.tree.leaves(updates):
      assert not np.any(np.asarray(u))
    _assert_trees_equal(new.inner_state, old.inner_state)
    _assert_trees_equal(apply(before, updates), before)
  # The good steps went as if the bad ones had never arrived.
  _assert_trees_equal(params, ref_params)
  _assert_trees_equal(state.inner_state, ref_state.inner_state)
  assert int(ref_state.skipped) == 0 and int(state.skipped) == 4
  assert int(state.consecutive) == 0


@pytest.mark.slow
def test_skip_keeps_fanion_warm_start_and_counts():
  tx = fo.skip_nonfinite(fo.fanion(0.05, 2))
  params = _tree(0)
  state = tx.init(params)
  _, state = tx.update(_tree(1), state, params)
  subspaces = state.inner_state.matrices[0].lmo_state
  assert len(subspaces) == 3 and all(s is not None for s in subspaces)
  _, skipped = tx.update(_with(_tree(2), 'w', jnp.nan), state, params)
  _assert_trees_equal(skipped.inner_state.matrices[0].lmo_state, subspaces)
  assert int(skipped.skipped) == 1 and int(skipped.consecutive) == 1


def test_skip_nonfinite_wraps_any_optax_transformation():
  txs = {
    'adam': optax.adam(0.1),
    'sgd-momentum-clip': optax.chain(
      optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)
    ),
    'adamw-schedule': optax.adamw(
      optax.linear_schedule(0.1, 0.0, 10), weight_decay=0.1
    ),
  }
  for name, inner in txs.items():
    tx = fo.skip_nonfinite(inner)
    update = jax.jit(tx.update)
    params = _tree(0)
    state = tx.init(params)
    ref_state = inner.init(params)
    ref_params = params
    ref_update = jax.jit(inner.update)  # eager rounding may differ from jit
    for i in range(3):
      ref_updates, ref_state = ref_update(_tree(i + 1), ref_state, ref_params)
      ref_params = optax.apply_updates(ref_params, ref_updates)
    for i, grads in enumerate(
      [_tree(1), _with(_tree(9), 'b', jnp.nan, 0), _tree(2), _tree(3)]
    ):
      updates, new_state = update(grads, state, params)
      if i == 1:
        assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
        _assert_trees_equal(new_state.inner_state, state.inner_state)
      params, state = optax.apply_updates(params, updates), new_state
    _assert_trees_equal(params, ref_params)
    _assert_trees_equal(state.inner_state, ref_state)
    assert int(state.skipped) == 1 and int(state.consecutive) == 0, name


def test_skip_nonfinite_catches_nonfinite_updates_from_finite_grads():
  tx = fo.skip_nonfinite(optax.scale(1e30))
  params = {'w': jnp.ones((2, 2))}
  state = tx.init(params)
  updates, state = tx.update({'w': jnp.full((2, 2), 1e10)}, state, params)
  assert int(state.skipped) == 1
  np.testing.assert_array_equal(updates['w'], np.zeros((2, 2)))
  updates, state = tx.update({'w': jnp.full((2, 2), 1.0)}, state, params)
  assert int(state.skipped) == 1 and int(state.consecutive) == 0
  np.testing.assert_array_equal(updates['w'], np.full((2, 2), 1e30, np.float32))


def test_skip_nonfinite_state_and_extra_args():
  tx = fo.skip_nonfinite(
    optax.chain(optax.adam(0.1), optax.contrib.reduce_on_plateau())
  )
  params = {'w': jnp.ones((2, 2))}
  state = tx.init(params)
  assert isinstance(state, fo.transforms.SkipNonfiniteState)
  assert state.skipped.dtype == jnp.int32 and state.consecutive.shape == ()
  # `value` reaches reduce_on_plateau through the wrapper.
  updates, state = tx.update(
    {'w': jnp.ones((2, 2))}, state, params, value=jnp.asarray(1.0)
  )
  assert _all_finite(updates) and int(state.skipped) == 0
  # A finite update with a NaN `value` is not a skip: only the gradients
  # and the updates are inspected.
  _, state = tx.update(
    {'w': jnp.ones((2, 2))}, state, params, value=jnp.asarray(jnp.nan)
  )
  assert int(state.skipped) == 0


# ---------------------------------------------------------------------------
# Without skip_nonfinite.

NORMALISING = sorted(set(OPTIMIZERS) - {'lion'})


@pytest.mark.parametrize(
  'bad',
  [
    jnp.nan,
    pytest.param(jnp.inf, marks=pytest.mark.slow),
    pytest.param(-jnp.inf, marks=pytest.mark.slow),
  ],
)
@pytest.mark.parametrize('name', tiered(NORMALISING))
def test_without_skip_nonfinite_entry_poisons_its_leaf(name, bad):
  tx = _optimizer(name)
  params = _tree(0)
  state = tx.init(params)
  _, state = tx.update(_tree(1), state, params)
  updates, new_state = tx.update(_with(_tree(2), 'w', bad), state, params)
  # Every entry of the affected leaf is NaN (its normaliser is NaN/Inf)...
  assert np.all(np.isnan(np.asarray(updates['w'])))
  # ...and nothing else: the same-shape matrix of the same stack, the
  # other matrix and the fallback leaf.
  for key in ('v', 'u', 'b'):
    assert _all_finite(updates[key]), key
  mu = new_state.matrices[0].mu
  finite = np.isfinite(np.asarray(mu['w']))
  assert not finite[1, 2] and finite.sum() == finite.size - 1
  assert _all_finite(mu['v']) and _all_finite(mu['u'])
  # The poisoned momentum keeps the leaf's updates NaN afterwards.
  updates, _ = tx.update(_tree(3), new_state, params)
  assert np.all(np.isnan(np.asarray(updates['w'])))
  assert _all_finite({k: updates[k] for k in ('v', 'u', 'b')})


@pytest.mark.parametrize('name', ['fanion', 'f_fanion', 's_fanion', 'neon'])
def test_without_skip_ky_fan_subspace_keeps_last_finite_value(name):
  tx = _optimizer(name)
  params = _tree(0)
  state = tx.init(params)
  _, state = tx.update(_tree(1), state, params)
  _, new_state = tx.update(_with(_tree(2), 'w', jnp.nan), state, params)

  def subspaces(s):
    # Mixtures keep (ky_fan state, sign/frobenius state=None) per leaf.
    return [
      x[0] if isinstance(x, tuple) else x for x in s.matrices[0].lmo_state
    ]

  # Leaf order: 'u', 'v', 'w'.
  old, new = subspaces(state), subspaces(new_state)
  assert all(x is not None and _all_finite(x) for x in new)
  np.testing.assert_array_equal(np.asarray(new[2]), np.asarray(old[2]))
  assert not np.array_equal(np.asarray(new[1]), np.asarray(old[1]))


def test_without_skip_sign_lmo_is_elementwise():
  tx = _optimizer('lion')
  params = _tree(0)
  state = tx.init(params)
  grads = _with(_with(_tree(2), 'w', jnp.nan), 'w', jnp.inf, index=(0, 0))
  updates, new_state = tx.update(grads, state, params)
  w = np.asarray(updates['w'])
  assert np.isnan(w[1, 2]) and np.isfinite(np.delete(w.ravel(), 6)).all()
  # +Inf gives the finite sign step +η (η = 1, learning rate 0.01), plus
  # the decay 0.01 * 0.1 * w.
  np.testing.assert_allclose(
    w[0, 0], -0.01 * (1 + 0.1 * params['w'][0, 0]), rtol=1e-6
  )
  mu = np.asarray(new_state.matrices[0].mu['w'])
  assert np.isnan(mu[1, 2]) and np.isinf(mu[0, 0])


def test_without_skip_fallback_nan_is_elementwise():
  tx = _optimizer('muon')
  params = _tree(0)
  updates, _ = tx.update(
    _with(_tree(1), 'b', jnp.nan, index=2), tx.init(params), params
  )
  b = np.asarray(updates['b'])
  assert np.isnan(b[2]) and np.isfinite(np.delete(b, 2)).all()
  assert _all_finite({k: updates[k] for k in ('w', 'v', 'u')})


# ---------------------------------------------------------------------------
# Zero gradients.

ZERO_LMOS = {name: make() for name, make in catalogue.LMOS.items()}


@pytest.mark.parametrize('name', sorted(ZERO_LMOS))
def test_zero_matrix_gives_zero_direction(name):
  oracle = ZERO_LMOS[name]
  g = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32)
  g[1] = 0.0  # one zero matrix inside a batch
  g = jnp.asarray(g)
  for out in (oracle(g), oracle.update(g, oracle.init(g.shape))[0]):
    out = np.asarray(out)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], np.zeros((6, 4)))
    assert np.abs(out[0]).max() > 0.1 and np.abs(out[2]).max() > 0.1
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    zero = oracle(jnp.zeros((5, 7), dtype))
    assert zero.dtype == dtype
    np.testing.assert_array_equal(
      np.asarray(zero, np.float32), np.zeros((5, 7))
    )


@pytest.mark.parametrize('name', tiered(sorted(OPTIMIZERS)))
def test_zero_gradients_give_zero_updates(name):
  # No decay: zero gradients and zero momentum give exactly zero updates.
  tx = _optimizer(name, weight_decay=0.0)
  params = _tree(0)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):
    updates, state = tx.update(zeros, state, params)
    for key, u in updates.items():
      np.testing.assert_array_equal(
        np.asarray(u), np.zeros(SHAPES[key]), err_msg=key
      )
  assert _all_finite(state)


def test_skip_also_inspects_the_new_state():
  # Finite gradients of 1e20 would overflow the AdamW fallback's second
  # moment (g² > 3.4e38) and freeze the leaf for good; the step is skipped.
  tx = fo.skip_nonfinite(fo.muon(0.05))
  params = {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}
  state0 = tx.init(params)
  updates, state = tx.update(
    {'w': jnp.ones((4, 3)), 'b': jnp.full(3, 1e20)}, state0, params
  )
  assert int(state.skipped) == 1
  np.testing.assert_array_equal(np.asarray(updates['b']), np.zeros(3))
  for a, b in zip(
    jax.tree.leaves(state.inner_state), jax.tree.leaves(state0.inner_state)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  updates, state = tx.update(
    {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}, state, params
  )
  assert int(state.consecutive) == 0
  assert np.all(np.isfinite(np.asarray(state.inner_state.fallback[0].nu['b'])))
  assert np.all(np.asarray(updates['b']) != 0)
