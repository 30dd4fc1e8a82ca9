"""One process of the multi-host test (run by tests/test_multihost.py).

    python multihost_worker.py OUT.npz                      # single process
    python multihost_worker.py OUT.npz PROC NPROCS PORT     # under jax.distributed

Trains a small MLP for a few steps with `muon` and `f_muon`; in the
multi-process run the parameters are FSDP-sharded over a global mesh of every
process's CPU devices and the optimizers split the orthogonalisation work
(`split=fo.distributed.over_mesh(mesh)`). `fanion` trains on the whole batch
in the single process and, in the multi-process run, with compressed data
parallelism (`split=fo.distributed.compressed`): every device's gradient of
its share of the batch, per-device momenta, thin all-reduces across the
processes. Process 0 writes the final parameters to OUT.npz.
"""

import os
import sys

LOCAL_DEVICES = 4
os.environ['XLA_FLAGS'] = (
  f'--xla_force_host_platform_device_count={LOCAL_DEVICES}'
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import fanion_optax as fo  # noqa: E402

STEPS = 4


def initial_params():
  rng = np.random.default_rng(0)
  params = {
    f'hidden{i}': rng.normal(size=(16, 16)).astype(np.float32) * 0.3
    for i in range(6)
  }
  params['out'] = rng.normal(size=(16, 8)).astype(np.float32) * 0.3
  params['bias'] = np.zeros(16, np.float32)
  return params


def data():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 16)).astype(np.float32)
  y = rng.normal(size=(64, 8)).astype(np.float32)
  return x, y


def loss_fn(params, x, y):
  h = x
  for i in range(6):
    h = jnp.tanh(h @ params[f'hidden{i}'] + params['bias'])
  return jnp.mean((h @ params['out'] - y) ** 2)


def make_optimizer(name, mesh):
  split = None if mesh is None else fo.distributed.over_mesh(mesh)
  if name == 'muon':
    return fo.muon(0.05, weight_decay=0.1, split=split)
  if name == 'fanion':  # the one-device reference of `train_compressed`
    return fo.fanion(0.05, 2, weight_decay=0.1)
  return fo.f_muon(0.05, weight_decay=0.1, split=split)


def train_compressed(mesh):
  """Fanion-k, each device on its rows of the batch, inside `shard_map`."""
  params = initial_params()
  x, y = data()
  tx = fo.fanion(
    0.05, 2, weight_decay=0.1, split=fo.distributed.compressed('d')
  )
  lion_k = fo.transforms.ScaleByLionKState
  is_lion_k = lambda n: isinstance(n, lion_k)

  def specs(node):
    if is_lion_k(node):
      return node._replace(
        count=P(),
        mu=jax.tree.map(lambda _: P('d'), node.mu),
        lmo_state=jax.tree.map(lambda _: P(), node.lmo_state),
      )
    return jax.tree.map(lambda _: P(), node)

  state_specs = jax.tree.map(specs, tx.init(params), is_leaf=is_lion_k)
  shardings = lambda t: jax.tree.map(lambda p: NamedSharding(mesh, p), t)
  devices = jax.device_count()

  def init():
    # Every device's momentum, stacked along axis 0.
    tile = lambda m: jnp.concatenate([m] * devices, axis=0)
    return jax.tree.map(
      lambda n: n._replace(mu=jax.tree.map(tile, n.mu)) if is_lion_k(n) else n,
      tx.init(params),
      is_leaf=is_lion_k,
    )

  state = jax.jit(init, out_shardings=shardings(state_specs))()
  replicated = NamedSharding(mesh, P())
  params = jax.jit(lambda: params, out_shardings=replicated)()
  rows = NamedSharding(mesh, P('d'))
  x, y = (
    jax.make_array_from_callback(a.shape, rows, lambda i, a=a: a[i])
    for a in (x, y)
  )

  def local_step(params, state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)  # this device's rows only
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(
    jax.shard_map(
      local_step,
      mesh=mesh,
      in_specs=(P(), state_specs, P('d'), P('d')),
      out_specs=(P(), state_specs),
    )
  )
  for _ in range(STEPS):
    params, state = step(params, state, x, y)
  return params


def train(name, mesh=None, place=None):
  params = initial_params()
  x, y = data()
  tx = make_optimizer(name, mesh)
  state = tx.init(params)

  def step(params, state):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if place is None:
    step = jax.jit(step)
  else:
    # The state placed like the parameters, and the step's outputs pinned to
    # the inputs' shardings, so that every call runs the first call's
    # program (GSPMD laid the momenta out anew, and the second call
    # compiled again).
    params, state = place((params, jax.device_get(state)))
    step = jax.jit(
      step, out_shardings=jax.tree.map(lambda a: a.sharding, (params, state))
    )
  for _ in range(STEPS):
    params, state = step(params, state)
  return params


def main(argv):
  out = argv[1]
  if len(argv) == 2:
    results = {name: train(name) for name in ('muon', 'f_muon', 'fanion')}
  else:
    proc, nprocs, port = int(argv[2]), int(argv[3]), int(argv[4])
    jax.distributed.initialize(
      f'localhost:{port}', num_processes=nprocs, process_id=proc
    )
    assert jax.process_count() == nprocs
    assert jax.device_count() == nprocs * LOCAL_DEVICES
    mesh = jax.make_mesh(
      (jax.device_count(),), ('fsdp',), axis_types=(jax.sharding.AxisType.Auto,)
    )

    def place(tree):
      def put(x):
        sharded = x.ndim and x.shape[0] % jax.device_count() == 0
        spec = P('fsdp') if sharded else P()
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(
          x.shape, sharding, lambda idx: x[idx]
        )

      return jax.tree.map(put, tree)

    results = {}
    for name in ('muon', 'f_muon'):
      params = train(name, mesh, place)
      results[name] = multihost_utils.process_allgather(params, tiled=True)
    results['fanion'] = multihost_utils.process_allgather(
      train_compressed(
        jax.make_mesh(
          (jax.device_count(),),
          ('d',),
          axis_types=(jax.sharding.AxisType.Auto,),
        )
      ),
      tiled=True,
    )
  if jax.process_index() == 0:
    flat = {
      f'{name}/{key}': np.asarray(value)
      for name, tree in results.items()
      for key, value in tree.items()
    }
    np.savez(out, **flat)
  if len(argv) > 2:
    jax.distributed.shutdown()


if __name__ == '__main__':
  main(sys.argv)
