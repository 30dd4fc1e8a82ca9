"""Trains a small model with checkpoints; run as a subprocess by test_resume.

Two copies of a 2-layer MLP train in lockstep on the same synthetic data,
one with `fo.fanion(k=2)` (its Ky Fan warm-start subspaces live in the
optimizer state) and one with `fo.muon`. Every `--save-every` steps the
parameters, optimizer states and step are saved with orbax (synchronously),
and the line `saved step N` is printed once the checkpoint is committed.

On start the worker resumes from the newest checkpoint in `--ckpt` if there
is one (printing `restored step N`, else `fresh start`). A checkpoint that
cannot be restored (corrupted files, or saved for a model of another shape)
stops the worker with exit status 3 and a message naming the checkpoint
directory and step, before anything is written. The batch of step t depends
only on t, so a resumed run repeats an uninterrupted one bit for bit.

At the end, every parameter and optimizer-state leaf goes to `--out` (.npz,
keyed by tree path) and `done` is printed.

Usage:
  python resume_worker.py --ckpt DIR --out FILE.npz [--steps 20]
      [--save-every 4] [--width 16] [--step-delay 0]
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import fanion_optax as fo
from fanion_optax import catalogue

IN, OUT = 8, 4
EXIT_BAD_CHECKPOINT = 3


class CheckpointError(RuntimeError):
  """A checkpoint exists but does not fit this run."""


def init_params(width):
  k0, k1 = jax.random.split(jax.random.PRNGKey(0))
  return {
    'w0': jax.random.normal(k0, (IN, width)) / np.sqrt(IN),
    'b0': jnp.zeros((width,)),
    'w1': jax.random.normal(k1, (width, OUT)) / np.sqrt(width),
    'b1': jnp.zeros((OUT,)),
  }


def batch(step):
  """The data of step `step`: a function of the step alone."""
  kx, kw = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), step))
  x = jax.random.normal(kx, (32, IN))
  teacher = jax.random.normal(jax.random.PRNGKey(2), (IN, OUT))
  noise = 0.01 * jax.random.normal(kw, (32, OUT))
  return x, jnp.tanh(x @ teacher) + noise


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params['w0'] + params['b0'])
  return jnp.mean(jnp.square(h @ params['w1'] + params['b1'] - y))


OPTIMIZERS = {
  name: catalogue.OPTIMIZERS[name](weight_decay=0.1)
  for name in ('fanion', 'muon')
}


@functools.partial(jax.jit, static_argnums=0)
def initial_state(width):
  params = init_params(width)
  return {
    'models': {
      name: {'params': params, 'opt_state': tx.init(params)}
      for name, tx in OPTIMIZERS.items()
    },
    'step': jnp.zeros([], jnp.int32),
  }


def abstract_state(width):
  """Shapes and dtypes of `initial_state(width)`, computing nothing."""
  return jax.eval_shape(initial_state, width)


@jax.jit
def train_step(state):
  x, y = batch(state['step'])
  models = {}
  for name, tx in OPTIMIZERS.items():
    model = state['models'][name]
    grads = jax.grad(loss_fn)(model['params'], x, y)
    updates, opt_state = tx.update(grads, model['opt_state'], model['params'])
    models[name] = {
      'params': optax.apply_updates(model['params'], updates),
      'opt_state': opt_state,
    }
  return {'models': models, 'step': state['step'] + 1}


def _leaf_shapes(tree):
  """`{'models/muon/params/w0': shape}`; orbax metadata turns NamedTuples
  into dicts, so paths are compared by their names alone."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    fo.partition.path_name(path): tuple(leaf.shape) for path, leaf in leaves
  }


def restore_latest(directory, template):
  """`(step, state)` from the newest checkpoint, or `(None, None)`.

  `template` is the state's tree of `jax.ShapeDtypeStruct`s.

  Opened read-only: a failed restore writes nothing, so the other
  checkpoints stay as they were.

  Raises:
    CheckpointError: the checkpoint is unreadable or holds arrays whose
      shapes differ from `template`'s (the path and both shapes are named).
  """
  if not os.path.isdir(directory):
    return None, None
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(
    directory, item_handlers=ocp.StandardCheckpointHandler(), options=options
  ) as manager:
    step = manager.latest_step()
    if step is None:
      return None, None
    where = f'checkpoint step {step} in {directory}'
    try:
      stored_shapes = _leaf_shapes(manager.item_metadata(step))
    except Exception as err:  # noqa: BLE001 (orbax raises many types)
      raise CheckpointError(
        f'cannot read the metadata of {where}: {type(err).__name__}: {err}'
      ) from err
    expected = _leaf_shapes(template)
    for path in sorted(set(stored_shapes) | set(expected)):
      if stored_shapes.get(path) != expected.get(path):
        raise CheckpointError(
          f'{where} does not match this model: {path} has shape'
          f' {stored_shapes.get(path, "<missing>")} in the checkpoint but'
          f' {expected.get(path, "<missing>")} in the model.'
        )
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as err:  # noqa: BLE001
      raise CheckpointError(
        f'cannot restore {where} (corrupted or incomplete):'
        f' {type(err).__name__}: {err}'
      ) from err
  if int(state['step']) != step:
    raise CheckpointError(
      f'{where} holds step {int(state["step"])}, not {step}.'
    )
  return step, state


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ckpt', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--save-every', type=int, default=4)
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--step-delay', type=float, default=0.0)
  args = parser.parse_args(argv)

  directory = os.path.abspath(args.ckpt)
  try:
    step, state = restore_latest(directory, abstract_state(args.width))
  except CheckpointError as err:
    print(f'resume_worker: {err}', file=sys.stderr, flush=True)
    return EXIT_BAD_CHECKPOINT
  if state is None:
    state = initial_state(args.width)
    print('fresh start', flush=True)
  else:
    # Host copies: orbax's arrays are committed to the device, and jit
    # compiles the step again for committed arguments (same values).
    state = jax.device_get(state)
    print(f'restored step {step}', flush=True)

  options = ocp.CheckpointManagerOptions(
    max_to_keep=None, enable_async_checkpointing=False
  )
  with ocp.CheckpointManager(directory, options=options) as manager:
    while int(state['step']) < args.steps:
      state = train_step(state)
      step = int(state['step'])
      if step % args.save_every == 0:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        print(f'saved step {step}', flush=True)
      time.sleep(args.step_delay)

  leaves = jax.tree_util.tree_flatten_with_path(state['models'])[0]
  np.savez(
    args.out,
    **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves},
  )
  print('done', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
