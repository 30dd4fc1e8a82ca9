"""Optimizer states save and restore with orbax-checkpoint; resuming is exact.

A run of `STEPS` steps is checkpointed to disk after `RESUME_AT` steps; a
run resumed from that checkpoint in fresh objects (a new optimizer, a new
jitted step, a new checkpoint manager, and for NNX a new model and
`nnx.Optimizer`) ends with the same parameters and optimizer state as the
uninterrupted run, bit for bit. The states checkpointed hold everything the next steps need: momentum,
AdamW moments, step counts, the warm-started Ky Fan subspaces (the Fanions'
LMO state), `skip_nonfinite`'s counters and `optax.inject_hyperparams`'
hyperparameters.

The optimizers route leaves with `None` in the other branch's state (no
`optax.MaskedNode`): orbax-checkpoint 0.12 saves trees with `None` leaves and
restores them as `None` when the restore target has `None` there. Restoring
without a target loses the optimizer's NamedTuples (they come back as dicts
and lists), so the tests always restore into `jax.eval_shape(tx.init,
params)` or a live state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from tiers import tiered

import fanion_optax as fo
from fanion_optax import catalogue

STEPS = 6
RESUME_AT = 3
NAN_STEP = 1  # for skip_nonfinite: a step with NaN gradients, before saving
EXCLUDE = (r'^embed', r'^head')
VOCAB, DIM, HIDDEN, OUT = 12, 8, 16, 4

# Each leaf kind: 2-D hidden kernels -> LMO; embed/head -> AdamW (excluded);
# biases -> AdamW. The states thus hold None leaves on both branches.
OPTIMIZERS = {
  **{
    name: functools.partial(
      catalogue.OPTIMIZERS[name], weight_decay=0.1, exclude=EXCLUDE
    )
    for name in ('muon', 'fanion', 'f_muon', 's_fanion')
  },
  'fanion_skip_nonfinite': lambda: fo.skip_nonfinite(
    catalogue.OPTIMIZERS['fanion'](weight_decay=0.1, exclude=EXCLUDE)
  ),
  # Injected hyperparameters: a scheduled learning rate (its value at the
  # restored count) and a weight decay changed in the state during the run.
  'fanion_inject_hyperparams': lambda: optax.inject_hyperparams(
    fo.fanion, static_args=('k',)
  )(
    learning_rate=optax.cosine_decay_schedule(0.02, STEPS),
    k=2,
    weight_decay=0.1,
    exclude=EXCLUDE,
  ),
}
NNX_OPTIMIZERS = (
  'muon',
  'fanion',
  'f_muon',
  's_fanion',
  'fanion_skip_nonfinite',
)


def _is_none(x):
  return x is None


def _structure(tree):
  return jax.tree.structure(tree, is_leaf=_is_none)


def _assert_trees_equal(a, b):
  """Same structure (None leaves included) and bitwise-equal arrays."""
  assert _structure(a) == _structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _count_none(tree):
  return sum(x is None for x in jax.tree.leaves(tree, is_leaf=_is_none))


def _poison(name, step):
  """Whether step `step` feeds NaN gradients (skip_nonfinite runs only)."""
  return name.endswith('skip_nonfinite') and step == NAN_STEP


def _edit_state(name, state, step):
  """Changes an injected hyperparameter mid-run (both runs do the same)."""
  if name.endswith('inject_hyperparams') and step == RESUME_AT - 1:
    state.hyperparams['weight_decay'] = jnp.asarray(0.05, jnp.float32)
  return state


# ---------------------------------------------------------------------------
# Plain pytrees.


def _params():
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  return {
    'embed': jax.random.normal(keys[0], (VOCAB, DIM)),
    'hidden1': {
      'kernel': jax.random.normal(keys[1], (DIM, HIDDEN)) * 0.3,
      'bias': jnp.zeros((HIDDEN,)),
    },
    'hidden2': {
      'kernel': jax.random.normal(keys[2], (HIDDEN, HIDDEN)) * 0.3,
      'bias': jnp.zeros((HIDDEN,)),
    },
    'head': {
      'kernel': jax.random.normal(keys[3], (HIDDEN, OUT)) * 0.3,
      'bias': jnp.zeros((OUT,)),
    },
  }


def _batch(step):
  key_x, key_y = jax.random.split(jax.random.PRNGKey(1000 + step))
  return (
    jax.random.randint(key_x, (16,), 0, VOCAB),
    jax.random.normal(key_y, (16, OUT)),
  )


def _loss(params, tokens, targets):
  x = params['embed'][tokens]
  for name in ('hidden1', 'hidden2'):
    x = jnp.tanh(x @ params[name]['kernel'] + params[name]['bias'])
  out = x @ params['head']['kernel'] + params['head']['bias']
  return jnp.mean((out - targets) ** 2)


def _make_step(tx):
  @jax.jit
  def step(params, state, tokens, targets, poison):
    grads = jax.grad(_loss)(params, tokens, targets)
    grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g), grads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _train(name, step_fn, params, state, start, stop):
  for t in range(start, stop):
    params, state = step_fn(params, state, *_batch(t), _poison(name, t))
    state = _edit_state(name, state, t)
  return params, state


def _save(directory, step, tree):
  with ocp.CheckpointManager(directory) as manager:
    manager.save(step, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()


def _restore(directory, target):
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    return step, manager.restore(step, args=ocp.args.StandardRestore(target))


@pytest.mark.parametrize(
  'name', tiered(OPTIMIZERS, fast={'fanion_inject_hyperparams'})
)
def test_pytree_resume_from_disk_is_bitwise_identical(name, tmp_path):
  make = OPTIMIZERS[name]
  params0 = _params()

  # RESUME_AT steps, then everything goes to disk; the same objects then
  # carry on uninterrupted to STEPS.
  tx = make()
  step_fn = _make_step(tx)
  params, state = _train(name, step_fn, params0, tx.init(params0), 0, RESUME_AT)
  assert _count_none(state) > 0  # the fallback masks are None leaves
  _save(tmp_path / 'ckpt', RESUME_AT, {'params': params, 'opt_state': state})
  saved_state = state
  full_params, full_state = _train(
    name, step_fn, params, state, RESUME_AT, STEPS
  )
  del tx, step_fn, params, state

  # Fresh objects: a new optimizer, abstract targets, a new jitted step.
  tx = make()
  target = {
    'params': jax.eval_shape(_params),
    'opt_state': jax.eval_shape(tx.init, params0),
  }
  step, restored = _restore(tmp_path / 'ckpt', target)
  assert step == RESUME_AT
  _assert_trees_equal(restored['opt_state'], saved_state)
  assert type(restored['opt_state']) is type(saved_state)
  params, state = _train(
    name,
    _make_step(tx),
    restored['params'],
    restored['opt_state'],
    RESUME_AT,
    STEPS,
  )

  _assert_trees_equal(params, full_params)
  _assert_trees_equal(state, full_state)
  _check_special_state(name, saved_state, state)


def _check_special_state(name, saved, final):
  """The parts of the state this test is about were really exercised."""
  if name.endswith('skip_nonfinite'):
    assert int(saved.skipped) == 1 and int(final.skipped) == 1
    inner = final.inner_state
  elif name.endswith('inject_hyperparams'):
    np.testing.assert_allclose(saved.hyperparams['weight_decay'], 0.05)
    np.testing.assert_allclose(final.hyperparams['weight_decay'], 0.05)
    schedule = optax.cosine_decay_schedule(0.02, STEPS)
    np.testing.assert_allclose(
      final.hyperparams['learning_rate'], schedule(STEPS - 1), rtol=1e-6
    )
    inner = final.inner_state
  else:
    inner = final
  lion_state = inner.matrices[0]
  assert int(lion_state.count) == STEPS - (
    1 if name.endswith('skip_nonfinite') else 0
  )
  if 'fanion' in name:
    # The warm-started right subspaces moved away from the cold start.
    subspaces = jax.tree.leaves(lion_state.lmo_state)
    assert subspaces
    for q in subspaces:
      cold = fo.lowrank.initial_subspace(
        (q.shape[0], q.shape[1], q.shape[1]), q.shape[2]
      )
      if q.shape[1] > q.shape[2]:
        assert not np.allclose(q, cold)


def test_orbax_keeps_none_leaves_and_empty_states(tmp_path):
  """Exactly what orbax does with the None leaves of a routed state."""
  params = _params()
  tx = fo.skip_nonfinite(fo.fanion(0.02, 2, exclude=EXCLUDE))
  state = tx.init(params)
  inner = state.inner_state
  # Matrix momentum is None for AdamW's leaves, AdamW's moments are None for
  # the LMO's leaves.
  assert inner.matrices[0].mu['embed'] is None
  assert inner.matrices[0].mu['hidden1']['bias'] is None
  assert inner.fallback[0].mu['hidden1']['kernel'] is None
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'state', state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(
    tmp_path / 'state', jax.eval_shape(tx.init, params)
  )
  _assert_trees_equal(restored, state)
  assert isinstance(restored, fo.transforms.SkipNonfiniteState)
  # Without a target the NamedTuples come back as dicts and lists (None
  # leaves and empty states as None): restore into a target instead.
  raw = checkpointer.restore(tmp_path / 'state')
  assert isinstance(raw, dict)
  assert raw['inner_state']['matrices'][0]['mu']['embed'] is None
  assert raw['inner_state']['matrices'][1] is None  # optax.EmptyState()
  np.testing.assert_array_equal(
    raw['inner_state']['matrices'][0]['mu']['hidden1']['kernel'],
    inner.matrices[0].mu['hidden1']['kernel'],
  )
  # The live state (concrete arrays) also works as the target.
  again = checkpointer.restore(tmp_path / 'state', tx.init(params))
  _assert_trees_equal(again, state)
  checkpointer.close()


# ---------------------------------------------------------------------------
# Flax NNX: nnx.Optimizer, saved with nnx.state and restored with nnx.update.


class Net(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
    self.hidden1 = nnx.Linear(DIM, HIDDEN, rngs=rngs)
    self.hidden2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
    self.head = nnx.Linear(HIDDEN, OUT, rngs=rngs)

  def __call__(self, tokens):
    x = jnp.tanh(self.hidden1(self.embed(tokens)))
    return self.head(jnp.tanh(self.hidden2(x)))


def _nnx_loss(model, tokens, targets):
  return jnp.mean((model(tokens) - targets) ** 2)


@nnx.jit
def _nnx_step(model, optimizer, tokens, targets, poison):
  grads = nnx.grad(_nnx_loss)(model, tokens, targets)
  grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g), grads)
  optimizer.update(model, grads)


def _nnx_train(name, model, optimizer, start, stop):
  for t in range(start, stop):
    _nnx_step(model, optimizer, *_batch(t), _poison(name, t))


def _nnx_objects(name, seed=0):
  model = Net(nnx.Rngs(seed))
  return model, nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)


def _nnx_arrays(model, optimizer):
  """Pure arrays (None kept) of the model's parameters and optimizer."""
  return nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(
    nnx.state(optimizer)
  )


@pytest.mark.parametrize('name', tiered(NNX_OPTIMIZERS, fast=()))
def test_nnx_resume_from_disk_is_bitwise_identical(name, tmp_path):
  model, optimizer = _nnx_objects(name)
  _nnx_train(name, model, optimizer, 0, RESUME_AT)
  saved = {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)}
  assert _count_none(nnx.to_pure_dict(saved['optimizer'])) > 0
  saved_arrays = _nnx_arrays(model, optimizer)
  _save(tmp_path / 'ckpt', RESUME_AT, saved)
  # The same objects carry on uninterrupted.
  _nnx_train(name, model, optimizer, RESUME_AT, STEPS)
  full = _nnx_arrays(model, optimizer)
  del model, optimizer, saved

  # Fresh objects with different initial weights; the abstract target comes
  # from nnx.eval_shape, so nothing is computed before the restore.
  abstract_model, abstract_optimizer = nnx.eval_shape(
    lambda: _nnx_objects(name, seed=1)
  )
  target = {
    'model': nnx.state(abstract_model),
    'optimizer': nnx.state(abstract_optimizer),
  }
  step, restored = _restore(tmp_path / 'ckpt', target)
  assert step == RESUME_AT
  model, optimizer = _nnx_objects(name, seed=1)
  nnx.update(model, restored['model'])
  nnx.update(optimizer, restored['optimizer'])
  _assert_trees_equal(_nnx_arrays(model, optimizer), saved_arrays)
  assert int(optimizer.step[...]) == RESUME_AT

  _nnx_train(name, model, optimizer, RESUME_AT, STEPS)
  _assert_trees_equal(_nnx_arrays(model, optimizer), full)
  if name.endswith('skip_nonfinite'):
    assert int(optimizer.opt_state.skipped[...]) == 1
