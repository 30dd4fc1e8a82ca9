"""Data-parallel (pmap) and FSDP-sharded (jit over a mesh) training with Muon.

    python examples/distributed_train.py            # ~1 minute on 2 CPU cores
    python examples/distributed_train.py --quick    # ~15 s

A template for a real multi-device run, runnable on a laptop: on a CPU-only
machine the script asks XLA for 8 emulated host devices (it sets
`XLA_FLAGS=--xla_force_host_platform_device_count=8` before JAX starts, unless
XLA_FLAGS already sets a device count or an accelerator is in use). It trains
the same Flax Linen MLP on the same batches four ways and checks that the
losses agree to float tolerance:

0. one device, `jax.jit` — the reference;
a. data parallel: `jax.pmap(..., axis_name='batch')`, each device a slice of
   the batch, gradients `jax.lax.pmean`-ed, and `fo.muon(...,
   split=fo.distributed.over_axis('batch'))` splitting the orthogonalisation
   work: each device runs Newton–Schulz on 1/n of the matrices and an
   all-gather shares the results;
b. FSDP: `jax.jit` over a `jax.make_mesh((n,), ('fsdp',))` mesh, every
   parameter (and so the optimizer state) sharded along a divisible axis, the
   batch sharded over the mesh, and `fo.muon(...,
   split=fo.distributed.over_mesh(mesh))`, which moves whole matrices to
   owner devices and orthogonalises them locally (`shard_map`) instead of
   letting GSPMD split every Newton–Schulz matmul;
c. a 2-D `('data', 'model')` mesh: kernels sharded over both axes, the batch
   over 'data', and `fo.muon(..., split=fo.distributed.over_mesh(mesh,
   'data'))` choosing the mesh axes the matrices are split over.

On a real pod (TPU slice, multi-node GPU) the same code runs with one process
per host; see the comments marked "On a pod".
"""

from __future__ import annotations

import importlib.util
import os

DEVICES = 8


def emulate_cpu_devices(count: int = DEVICES) -> bool:
  """Asks XLA for `count` host devices; must run before JAX is imported.

  Does nothing when XLA_FLAGS already sets a device count (for example the
  test suite's 8), when `JAX_PLATFORMS` names something other than the CPU,
  or when an accelerator plugin (CUDA, ROCm, TPU) is installed and the CPU
  was not asked for: there the real devices are used.

  Returns:
    Whether the flag was set.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_force_host_platform_device_count' in flags:
    return False
  platforms = os.environ.get('JAX_PLATFORMS', '').lower()
  if platforms and platforms != 'cpu':
    return False
  if not platforms:
    plugins = (
      'jax_cuda12_plugin',
      'jax_cuda13_plugin',
      'jax_rocm60_plugin',
      'jax_rocm7_plugin',
      'libtpu',
    )
    if any(importlib.util.find_spec(p) is not None for p in plugins):
      return False
  os.environ['XLA_FLAGS'] = (
    f'{flags} --xla_force_host_platform_device_count={count}'
  ).strip()
  return True


# On a pod: delete this line; every host sees its real accelerators.
EMULATED = emulate_cpu_devices()

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import fanion_optax as fo  # noqa: E402

# On a pod, first thing after the imports, in every process:
#   jax.distributed.initialize()   # coordinator/process ids from the
#                                  # environment (TPU, SLURM, Open MPI) or
#                                  # passed explicitly
# jax.devices() then lists every device of every host, and
# jax.local_devices() this host's.

EXCLUDE = (r'^head/',)  # the output layer goes to the AdamW fallback


class MLP(nn.Module):
  """`layers` GELU Dense layers of width `hidden`, then a linear head."""

  hidden: int
  layers: int
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.layers):
      x = nn.gelu(nn.Dense(self.hidden, name=f'hidden_{i}')(x))
    return nn.Dense(self.out, name='head')(x)


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
  """A regression data set: inputs and a random teacher network's outputs."""
  rng = np.random.default_rng(args.seed)
  x = rng.standard_normal((args.data_size, args.in_dim)).astype(np.float32)
  w1 = rng.standard_normal((args.in_dim, 64)) / np.sqrt(args.in_dim)
  w2 = rng.standard_normal((64, args.out_dim)) / np.sqrt(64)
  y = (np.tanh(x @ w1) @ w2).astype(np.float32)
  return x, y


def batch_indices(args: argparse.Namespace) -> np.ndarray:
  """The same `(steps, batch)` example indices for every run."""
  rng = np.random.default_rng(args.seed + 1)
  return rng.integers(0, args.data_size, size=(args.steps, args.batch))


def make_optimizer(
  args: argparse.Namespace, split: fo.distributed.Split = None
) -> optax.GradientTransformation:
  """Muon; `split`: `over_axis(name)` (pmap), `over_mesh(mesh, axes)`, None.

  The fallback is AdamW at `--adam-lr` with `b2 = 0.999` (the default
  `fo.adamw_fallback()` is AdamW at 3e-4 with `b2 = 0.95`).
  """
  return fo.muon(
    args.lr,
    weight_decay=args.weight_decay,
    exclude=EXCLUDE,
    fallback=fo.adamw_fallback(args.adam_lr, b2=0.999),
    split=split,
  )


def init_params(args: argparse.Namespace) -> Any:
  """The initial parameters (one compiled init, shared by every run)."""
  model = MLP(args.hidden, args.layers, args.out_dim)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, args.in_dim))))
  return jax.device_get(init(jax.random.PRNGKey(args.seed))['params'])


def loss_fn(params: Any, x: jax.Array, y: jax.Array, args) -> jax.Array:
  model = MLP(args.hidden, args.layers, args.out_dim)
  return jnp.mean((model.apply({'params': params}, x) - y) ** 2)


def run_single_device(args, data, indices, params) -> dict[str, Any]:
  """The reference: the whole batch on one device."""
  x_all, y_all = data
  tx = make_optimizer(args)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, args)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for idx in indices:
    params, opt_state, loss = step(params, opt_state, x_all[idx], y_all[idx])
    losses.append(float(loss))
  return {'losses': np.array(losses), 'params': params}


def run_pmap(args, data, indices, params) -> dict[str, Any]:
  """Data parallel: replicated parameters, the batch split over devices."""
  x_all, y_all = data
  n = jax.local_device_count()
  # over_axis: each device orthogonalises 1/n of the matrices, then an
  # all_gather gives every device every direction (same update as one device).
  tx = make_optimizer(args, fo.distributed.over_axis('batch'))
  opt_state = tx.init(params)
  # pmap's layout: a leading axis of size n, one slice per local device.
  # Placing inputs that way up front (the layout pmap returns) means the step
  # compiles once rather than again at the second call.
  per_device = NamedSharding(
    jax.sharding.Mesh(jax.local_devices(), ('batch',)), P('batch')
  )
  shard = lambda t: jax.device_put(t, per_device)
  replicate = lambda t: shard(
    jax.tree.map(lambda a: np.broadcast_to(a, (n,) + np.shape(a)), t)
  )
  params, opt_state = replicate(params), replicate(opt_state)

  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, args)
    # Equal shards and a mean loss: the mean of the shard gradients is the
    # full-batch gradient, identical on every device.
    grads = jax.lax.pmean(grads, axis_name='batch')
    loss = jax.lax.pmean(loss, axis_name='batch')
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  p_step = jax.pmap(step, axis_name='batch', donate_argnums=(0, 1))
  losses = []
  for idx in indices:
    # On a pod: each process loads only its host's part of the global batch
    # and reshapes it to (local_device_count, per_device_batch, ...); pmap's
    # axis then spans every device of every host, so the pmean (and the
    # optimizer's work split) covers them all.
    x = shard(x_all[idx].reshape(n, -1, args.in_dim))
    y = shard(y_all[idx].reshape(n, -1, args.out_dim))
    params, opt_state, loss = p_step(params, opt_state, x, y)
    losses.append(float(loss[0]))
  return {
    'losses': np.array(losses),
    'params': jax.tree.map(lambda a: a[0], params),
  }


def fsdp_spec(shape: Sequence[int], axis: str, size: int) -> P:
  """Shard the first axis divisible by the mesh size; else replicate."""
  for i, dim in enumerate(shape):
    if dim % size == 0:
      return P(*([None] * i), axis)  # no trailing Nones: the jit cache key
  return P()


def run_mesh(
  args, data, indices, params, mesh, param_spec, batch_spec, axes=None
) -> dict[str, Any]:
  """`jax.jit` over `mesh` with parameters sharded by `param_spec(shape)`.

  The LMO work is split over the mesh axes `axes` (default: all of them).
  """
  x_all, y_all = data
  tx = make_optimizer(args, fo.distributed.over_mesh(mesh, axes))
  place = lambda t: jax.tree.map(
    lambda a: jax.device_put(a, NamedSharding(mesh, param_spec(a.shape))), t
  )
  # On a pod: build sharded parameters directly, without a full copy on any
  # host: jax.jit(init, out_shardings=...)(key).
  params = place(params)
  batch_sharding = NamedSharding(mesh, batch_spec)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, args)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  # Under jax.set_mesh, arrays created eagerly (the optimizer's step
  # counters) live on the mesh too, so the step compiles once. The momentum
  # and AdamW moments follow the parameters' sharding.
  with jax.set_mesh(mesh):
    opt_state = tx.init(params)
    for idx in indices:
      # On a pod: every process passes its own rows of the global batch:
      # jax.make_array_from_process_local_data(batch_sharding, local_x).
      x = jax.device_put(x_all[idx], batch_sharding)
      y = jax.device_put(y_all[idx], batch_sharding)
      params, opt_state, loss = step(params, opt_state, x, y)
      losses.append(float(loss))
  kernel = params['hidden_1']['kernel']
  return {
    'losses': np.array(losses),
    'params': params,
    'kernel_sharding': kernel.sharding.spec,
    'momentum_sharding': opt_state.matrices[0]
    .mu['hidden_1']['kernel']
    .sharding.spec,
  }


def max_difference(a: Any, b: Any) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='few steps (seconds)')
  p.add_argument('--steps', type=int, default=None)
  p.add_argument(
    '--batch',
    type=int,
    default=256,
    help='global batch (divisible by the device count)',
  )
  p.add_argument('--data-size', type=int, default=8192)
  p.add_argument('--in-dim', type=int, default=32)
  p.add_argument('--hidden', type=int, default=None)
  p.add_argument('--layers', type=int, default=6)
  p.add_argument('--out-dim', type=int, default=16)
  p.add_argument('--lr', type=float, default=0.02)
  p.add_argument('--adam-lr', type=float, default=3e-3)
  p.add_argument('--weight-decay', type=float, default=0.01)
  p.add_argument(
    '--rtol',
    type=float,
    default=1e-3,
    help='relative tolerance of the loss comparison',
  )
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.steps is None:
    args.steps = 10 if args.quick else 100
  if args.hidden is None:
    args.hidden = 64 if args.quick else 256
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the four trainings; returns their losses and the differences."""
  args = parse_args(argv)
  n = jax.device_count()
  if args.batch % n:
    raise SystemExit(f'--batch {args.batch} is not divisible by {n} devices.')
  print(
    f'{n} {jax.devices()[0].platform} devices'
    f'{" (emulated by XLA_FLAGS)" if EMULATED else ""}; Flax Linen MLP'
    f' {args.in_dim} -> {args.layers}x{args.hidden} -> {args.out_dim},'
    f' global batch {args.batch}, {args.steps} steps of fo.muon.'
  )
  data = make_data(args)
  indices = batch_indices(args)
  params = init_params(args)
  runs = {}
  timings = {}

  def timed(name, fn, *fn_args, **kwargs):
    start = time.perf_counter()
    runs[name] = fn(*fn_args, **kwargs)
    timings[name] = time.perf_counter() - start
    print(
      f'  {name:<22} final loss {runs[name]["losses"][-1]:.5f}'
      f'  ({timings[name]:.1f} s with compilation)'
    )

  timed('single device (jit)', run_single_device, args, data, indices, params)
  timed('data parallel (pmap)', run_pmap, args, data, indices, params)
  # Auto axes: GSPMD inserts the FSDP all-gathers of the forward pass. (With
  # jax.make_mesh's default Explicit axes every matmul of a batch-sharded
  # activation with an fsdp-sharded kernel needs an explicit reshard.)
  mesh = jax.make_mesh(
    (n,), ('fsdp',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  timed(
    'FSDP (jit, 1-D mesh)',
    run_mesh,
    args,
    data,
    indices,
    params,
    mesh,
    lambda shape: fsdp_spec(shape, 'fsdp', n),
    P('fsdp'),
  )
  if n % 2 == 0 and n >= 4:
    mesh2 = jax.make_mesh(
      (n // 2, 2),
      ('data', 'model'),
      axis_types=(jax.sharding.AxisType.Auto,) * 2,
    )

    def spec_2d(shape):
      """Kernels (in, out): in over 'data' (FSDP), out over 'model' (TP)."""
      if len(shape) == 2 and shape[0] % (n // 2) == 0 and shape[1] % 2 == 0:
        return P('data', 'model')
      return P('model') if len(shape) == 1 and shape[0] % 2 == 0 else P()

    # over_mesh's axes pick the mesh axes the whole-matrix work is split over.
    # 'data' gives each data-parallel group a quarter of the matrices, every
    # matrix orthogonalised by both devices of its 'model' pair; the default
    # (all axes) splits finer, but on this (data, model) layout XLA's SPMD
    # partitioner then moves the matrices by replicate-and-slice ("involuntary
    # full rematerialization" warnings).
    timed(
      'FSDP x TP (2-D mesh)',
      run_mesh,
      args,
      data,
      indices,
      params,
      mesh2,
      spec_2d,
      P('data'),
      axes='data',
    )

  reference = runs['single device (jit)']
  ref_losses = reference['losses']
  print(f'\n{"step":>5} ' + ' '.join(f'{name:>22}' for name in runs))
  shown = sorted({0, len(ref_losses) // 2, len(ref_losses) - 1})
  for t in shown:
    print(
      f'{t + 1:>5} '
      + ' '.join(f'{r["losses"][t]:>22.6f}' for r in runs.values())
    )
  # Only float32 rounding separates the runs (the pmean and the sharded
  # matmuls sum in other orders): ~1e-7 relative at first, growing slowly
  # along the trajectory as every step feeds on the last.
  diffs = {}
  early = min(10, len(ref_losses))
  print(
    f'\nAgainst the single-device run (relative loss difference, first'
    f' {early} steps and whole run; tolerance {args.rtol}):'
  )
  for name, r in runs.items():
    if r is reference:
      continue
    rel = np.abs(r['losses'] - ref_losses) / np.abs(ref_losses)
    param_diff = max_difference(r['params'], reference['params'])
    worst = float(rel.max())
    diffs[name] = {
      'loss_rtol': worst,
      'early_loss_rtol': float(rel[:early].max()),
      'params_atol': param_diff,
      'match': worst <= args.rtol,
    }
    print(
      f'  {name:<22} {rel[:early].max():.1e}, {worst:.1e};'
      f' final parameters within {param_diff:.1e}:'
      f' {"match" if worst <= args.rtol else "MISMATCH"}'
    )
  for name, r in runs.items():
    if 'kernel_sharding' in r:
      print(
        f'  {name:<22} hidden_1 kernel stays sharded as'
        f' {r["kernel_sharding"]}; its momentum as'
        f' {r["momentum_sharding"]}'
      )
  print(
    f'Loss {ref_losses[0]:.4f} -> {ref_losses[-1]:.4f} over {args.steps} steps.'
  )
  return {'devices': n, 'runs': runs, 'diffs': diffs, 'timings': timings}


if __name__ == '__main__':
  main()
