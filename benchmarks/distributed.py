"""Benchmark of the distributed work split: XLA FLOPs per device by mode.

Run from the repository root:

  python -m benchmarks.distributed
  python -m benchmarks.distributed --quick --out /tmp/dist_quick

It emulates 8 devices on the host CPU
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set below before JAX
is imported unless `XLA_FLAGS` already sets a device count). For N
same-shape matrices (N = 8, 16 and the uneven 11; shapes 256x256 and
512x1024) and for a mixed-shape tree, it compiles `tx.update` of
`fo.muon(0.02)` in every mode and reads XLA's compiled cost analysis
(`compile().cost_analysis()['flops']`, which is per device):

  single         jit on one device: the reference total T
  pmap           `jax.pmap(tx.update)` on replicated arguments, no split
                 (every device orthogonalises every matrix)
  pmap_split     the same with
                 `fo.muon(..., split=fo.distributed.over_axis(...))`
  jit_auto       jit over `make_mesh((8,), ('fsdp',), AxisType.Auto)`,
                 parameters sharded along their last axis, no split (GSPMD
                 partitions every Newton-Schulz matmul)
  jit_auto_split the same with
                 `fo.muon(..., split=fo.distributed.over_mesh(mesh))`
  jit_explicit[_split]  the same two with `AxisType.Explicit`

and `fo.fanion(0.02, k=16)` in the single and split modes (its T is its own
single-device count; XLA's cost analysis counts its subspace-iteration
loop once, i.e. a warm step, `_timing.LOOP_FLOPS_NOTE`). It reports
per-device FLOPs divided by T/8 (1.0 is a perfect split; the target is
<= 1.3 for the split modes with >= 8 same-shape matrices; an uneven N cannot
beat `ceil(N/8)*8/N` with whole matrices), and the wall-clock ms/step of
every mode, timed interleaved. The 8 devices are virtual devices sharing the
host's few CPU cores, so wall-clock time says nothing about speed-up; only
the FLOP counts are evidence. The vectors of the mixed tree go to the
fallback passed explicitly as AdamW at the matrix learning rate with
`b2 = 0.999` (`fo.adamw_fallback(0.02, b2=0.999)`), the default before
API 1.0, so that the results stay comparable.

Communication per step (compile only): for the matrices of GPT-2 small
(12 layers of 768x2304, 768x768, 768x3072 and 3072x768 kernels), one data
parallel step under `jax.shard_map` over 8 devices is compiled and the
bytes it all-reduces are summed from the compiled HLO
(`fo.communication.collective_bytes`; a loop counts once per trip). The baseline is
the gradient all-reduce every data-parallel optimizer needs
(`jax.lax.pmean` of the gradients); against it,
`fo.fanion(0.02, k, split=fo.distributed.compressed(...))` on local
gradients for k = 16 and 64, with the default subspace iterations (2 warm,
10 on the cold first step) and with `subspace_iters=1`, and with
`error_feedback=True` at k = 64. Each row also carries the analytic count,
`iters*(m+n)*k*4 + 4` bytes per matrix (`iters` power iterations of an
`m x k` and an `n x k` block, the last `n x k` block doubling as the
Rayleigh-Ritz step; the shared scale), and its ratio to the thin factors'
`sum (m+n)*k*4`.
The sharded power iteration: the same matrices under `jax.jit` with every
kernel's first axis sharded over 8 devices (FSDP; Auto and Explicit axes),
`fo.fanion(0.02, 64)` with `split=None`, by default, with
`subspace_iters=1` and with error feedback: bytes summed over every
collective of the compiled HLO, and the largest array any one collective
moves, per matrix of a stacked batch (its last two axes), against the
largest thin block `max(m, n)*k*4`: no whole matrix.
Balance (issue 12): GPT-2 small's kernels alone (4 per layer, width 768)
for 4, 12 and 48 layers, `fo.muon` per-device FLOPs with the pmap split
and with the mesh split (kernels FSDP-sharded, Auto and Explicit axes;
compiled from shapes only) over T/8, beside the ratio
`fo.distributed.balance` predicts from `matrix_cost`; targets <= 1.15 at
4 layers and <= 1.05 at 12 for every split, and no all-gather in the mesh
split's HLO (matrices move to their owners by all-to-all).
`--communication-only` runs only the communication part and merges it into an existing
`<out>/distributed.json`.

`--quick`: 64x64 matrices, N = 8, no mixed tree, 1 rep; for the
communication, 1 GPT-2 layer of width 64, k = 8 and only the
`subspace_iters=1` sharded rows.

Results go to `<out>/distributed.json` and `<out>/distributed.png`.
"""

from __future__ import annotations

import os

N_DEVICES = 8
_DEVICE_FLAG = '--xla_force_host_platform_device_count'
if _DEVICE_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + f' {_DEVICE_FLAG}={N_DEVICES}'
  ).strip()
# jaxlib's CPU LAPACK kernels come from SciPy's OpenBLAS; its threads nested
# inside XLA's pool oversubscribe the cores (see benchmarks/step.py).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

import fanion_optax as fo  # noqa: E402
from benchmarks import _timing  # noqa: E402
from benchmarks import step  # noqa: E402
from fanion_optax import lowrank  # noqa: E402

AXIS = 'fsdp'
PMAP_AXIS = 'devices'
FLOPS_RATIO_MAX = 1.3
FANION_K = 16
FULL_SHAPES = ((256, 256), (512, 1024))
QUICK_SHAPES = ((64, 64),)
FULL_COUNTS = (8, 16, 11)
QUICK_COUNTS = (8,)
FULL_REPS, QUICK_REPS = 3, 1
FULL_MIXED_WIDTH, FULL_MIXED_LAYERS = 256, 6

FULL_BALANCE = {'width': 768, 'layers': (4, 12, 48)}
QUICK_BALANCE = {'width': 64, 'layers': (1,)}
BALANCE_TARGETS = {4: 1.15, 12: 1.05}
"""Issue 12: per-device FLOPs of the split on GPT-2 small's matrices
(4 and 12 layers) over (single-device FLOPs / 8)."""

DATA_AXIS = 'data'
FLOAT_BYTES = 4
FULL_COMM = {'layers': 12, 'width': 768, 'ks': (16, 64)}
QUICK_COMM = {
  'layers': 1,
  'width': 64,
  'ks': (8,),
  # The one-power-step rows the targets read; the full run adds the
  # default iterations and error feedback.
  'sharded_modes': (('_iters1', {'subspace_iters': 1}),),
}
THIN_RATIO_MAX = 1.1
ANALYTIC_TOLERANCE = 0.01
THIN_TARGET = 'compressed_fanion64_one_power_step_bytes_le_1.1x_thin_factors'
ANALYTIC_TARGET = 'compressed_bytes_match_analytic_count'
SHARDED_THIN_TARGET = (
  'sharded_fanion64_one_power_step_bytes_le_1.1x_thin_factors'
)
SHARDED_WHOLE_TARGET = 'sharded_no_collective_moves_a_whole_matrix'

MUON_MODES = (
  'single',
  'pmap',
  'pmap_split',
  'jit_auto',
  'jit_auto_split',
  'jit_explicit',
  'jit_explicit_split',
)
FANION_MODES = ('single', 'pmap_split', 'jit_auto_split', 'jit_explicit_split')
SPLIT_MODES = ('pmap_split', 'jit_auto_split', 'jit_explicit_split')
MODE_LABELS = {
  'single': 'jit, 1 device (reference total)',
  'pmap': 'pmap, replicated, no split',
  'pmap_split': 'pmap, split=over_axis',
  'jit_auto': 'jit, Auto mesh, sharded, no split (GSPMD)',
  'jit_auto_split': 'jit, Auto mesh, sharded, split=over_mesh',
  'jit_explicit': 'jit, Explicit mesh, sharded, no split',
  'jit_explicit_split': 'jit, Explicit mesh, sharded, split=over_mesh',
}
# The fallback before API 1.0 (AdamW at the matrix learning rate, b2 =
# 0.999), explicit so that the results stay comparable (the new default is
# AdamW at 3e-4, b2 = 0.95).
FALLBACK = fo.adamw_fallback(0.02, b2=0.999)
OPTIMIZERS: dict[str, tuple[str, Callable[..., Any], tuple[str, ...]]] = {
  'muon': (
    'fo.muon(0.02)',
    lambda **kw: fo.muon(0.02, fallback=FALLBACK, **kw),
    MUON_MODES,
  ),
  f'fanion{FANION_K}': (
    f'fo.fanion(0.02, {FANION_K})',
    lambda **kw: fo.fanion(0.02, FANION_K, fallback=FALLBACK, **kw),
    FANION_MODES,
  ),
}


# ----------------------------------------------------------------------------
# Parameter trees.


def same_shape_case(count: int, shape: tuple[int, int]) -> dict[str, Any]:
  return {
    'name': f'{shape[0]}x{shape[1]} N={count}',
    'kind': 'same_shape',
    'count': count,
    'shape': list(shape),
    'shapes': {f'w{i:02d}': shape for i in range(count)},
    'dimension_numbers': None,
  }


def mixed_case(width: int, layers: int) -> dict[str, Any]:
  """A small transformer-like tree: four kernel shapes, a stacked expert
  weight read as 8 matrices, vectors for the fallback."""
  d = width
  shapes: dict[str, Any] = {}
  for i in range(layers):
    shapes[f'layer{i}'] = {
      'qkv': (d, 3 * d),
      'qkv_bias': (3 * d,),
      'out': (d, d),
      'fc': (d, 4 * d),
      'fc_bias': (4 * d,),
      'proj': (4 * d, d),
      'ln_scale': (d,),
    }
  shapes['experts'] = (8, d // 2, d)

  def dimension_numbers(params):
    def spec(path, x):
      if fo.partition.path_name(path) == 'experts':
        return fo.DimensionNumbers(1, 2)
      return fo.DimensionNumbers() if x.ndim == 2 else None

    return jax.tree_util.tree_map_with_path(spec, params)

  groups = {
    f'{d}x{3 * d}': layers,
    f'{d}x{d}': layers,
    f'{d}x{4 * d}': layers,
    f'{4 * d}x{d}': layers,
    f'{d // 2}x{d}': 8,
  }
  return {
    'name': f'mixed ({layers}L, width {d})',
    'kind': 'mixed',
    'count': sum(groups.values()),
    'groups': groups,
    'description': (
      f'{layers} layers of qkv ({d}, {3 * d}), out ({d}, {d}), fc'
      f' ({d}, {4 * d}), proj ({4 * d}, {d}) kernels, biases and a'
      f' LayerNorm scale; experts (8, {d // 2}, {d}) read as 8 matrices'
      ' (DimensionNumbers(1, 2)); vectors go to the AdamW fallback'
    ),
    'shapes': shapes,
    'dimension_numbers': dimension_numbers,
  }


def whole_matrix_optimum(case: dict[str, Any]) -> float:
  """The least per-device FLOPs / (T/8) when whole matrices are split.

  Each shape group of `b` matrices costs `ceil(b/8)` matrices per device
  against an ideal `b/8`; the groups are weighted by their share of T, here
  approximated by the Newton-Schulz matmul FLOPs `~ m*n*min(m, n)`.
  """
  if case['kind'] == 'same_shape':
    b = case['count']
    return math.ceil(b / N_DEVICES) * N_DEVICES / b
  cost = ideal = 0.0
  for size, b in case['groups'].items():
    m, n = (int(v) for v in size.split('x'))
    work = m * n * min(m, n)
    cost += math.ceil(b / N_DEVICES) * work
    ideal += b / N_DEVICES * work
  return cost / ideal


# ----------------------------------------------------------------------------
# Compilation in each mode.


def _mesh(axis_type) -> jax.sharding.Mesh:
  return jax.make_mesh((N_DEVICES,), (AXIS,), axis_types=(axis_type,))


def _shard_last(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shards every leaf along its last axis when it divides evenly."""

  def place(x):
    spec = [None] * x.ndim
    if x.ndim and x.shape[-1] % N_DEVICES == 0:
      spec[-1] = AXIS
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))

  return jax.tree.map(place, tree)


def _replicate_pmap(tree: Any) -> Any:
  """Copies of `tree` on every device, laid out as pmap's inputs."""
  stacked = jax.tree.map(
    lambda x: jnp.broadcast_to(x, (N_DEVICES,) + x.shape), tree
  )
  return jax.block_until_ready(jax.pmap(lambda t: t)(stacked))


def compile_mode(
  make: Callable[..., Any],
  mode: str,
  params: Any,
  grads: Any,
  dimension_numbers: Any,
) -> tuple[Any, tuple[Any, ...], float, Any]:
  """(compiled update, its arguments, compile seconds, the staged update)
  for one mode; the staged update (`jax.jit` or `jax.pmap` of `tx.update`)
  compiles for other arguments with `.lower(*args).compile()`."""
  kw: dict[str, Any] = {'dimension_numbers': dimension_numbers}
  if mode == 'single':
    tx = make(**kw)
    device = jax.devices()[0]
    g, p = jax.device_put((grads, params), device)
    args = (g, tx.init(p), p)
    staged = jax.jit(tx.update)
  elif mode.startswith('pmap'):
    if mode == 'pmap_split':
      kw['split'] = fo.distributed.over_axis(PMAP_AXIS)
    tx = make(**kw)
    args = _replicate_pmap((grads, tx.init(params), params))
    staged = jax.pmap(tx.update, axis_name=PMAP_AXIS)
  else:
    axis_type = AxisType.Explicit if 'explicit' in mode else AxisType.Auto
    mesh = _mesh(axis_type)
    if mode.endswith('_split'):
      kw['split'] = fo.distributed.over_mesh(mesh)
    tx = make(**kw)
    g, p = _shard_last(grads, mesh), _shard_last(params, mesh)
    args = (g, tx.init(p), p)
    staged = jax.jit(tx.update)
  start = time.perf_counter()
  compiled = staged.lower(*args).compile()
  return compiled, args, time.perf_counter() - start, staged


def bench_case(
  case: dict[str, Any], reps: int, log: Callable[[str], None] = _timing.log
) -> dict[str, Any]:
  t0 = time.perf_counter()
  params = _timing.random_tree(case['shapes'], seed=0)
  grads = _timing.random_tree(case['shapes'], seed=1)
  optimum = whole_matrix_optimum(case)
  runs: dict[str, Callable[[], Any]] = {}
  compile_s: dict[str, float] = {}
  results: dict[str, dict[str, Any]] = {}
  for opt, (label, make, modes) in OPTIMIZERS.items():
    rows: dict[str, Any] = {}
    for mode in modes:
      compiled, args, seconds, staged = compile_mode(
        make, mode, params, grads, case['dimension_numbers']
      )
      key = f'{opt}/{mode}'
      rows[mode] = {
        'flops_per_device': _timing.flops_of(compiled),
        'compile_s': seconds,
      }
      if opt != 'muon':
        # Warm-started LMO: time the warm step, not the cold first one. The
        # first step can also move the LMO state to the mesh's sharding, so
        # the timed step is compiled for the warm state.
        args = (args[0], jax.block_until_ready(compiled(*args)[1]), args[2])
        compiled = staged.lower(*args).compile()
      runs[key] = lambda c=compiled, a=args: c(*a)
      compile_s[key] = seconds
    total = rows['single']['flops_per_device']
    for mode, row in rows.items():
      row['ratio_to_ideal'] = row['flops_per_device'] / (total / N_DEVICES)
      row['ratio_to_single'] = row['flops_per_device'] / total
      if mode in SPLIT_MODES:
        row['ratio_to_whole_matrix_optimum'] = row['ratio_to_ideal'] / optimum
    results[opt] = {'optimizer': label, 'modes': rows}
  log(
    f'  [{case["name"]}] compiled in'
    f' {time.perf_counter() - t0:.1f}s; timing {len(runs)} modes,'
    f' {reps} round(s)'
  )
  timings = _timing.time_side_by_side(
    runs, reps=reps, warmup=1, compile_s=compile_s
  )
  summary = _timing.summarize(timings, baseline='muon/single')
  for key, row in summary.items():
    opt, mode = key.split('/')
    results[opt]['modes'][mode].update(
      wall_ms_cpu_emulated=1e3 * row['median_s'],
      wall_times_s_cpu_emulated=row['times_s'],
    )
  log(f'  [{case["name"]}] done in {time.perf_counter() - t0:.1f}s')
  out = {
    k: v for k, v in case.items() if k not in ('shapes', 'dimension_numbers')
  }
  out['whole_matrix_optimum'] = optimum
  out['optimizers'] = results
  return out


# ----------------------------------------------------------------------------
# Communication per step in compressed data parallel.


def gpt2_matrices(layers: int, width: int) -> dict[str, tuple[int, int]]:
  """The kernels of the GPT-2 blocks of `benchmarks.step.GPT2`, by path."""
  blocks = step.GPT2(layers=layers, width=width).shapes()['h']
  leaves, _ = jax.tree_util.tree_flatten_with_path(
    blocks, is_leaf=_timing.is_shape
  )
  return {
    fo.partition.path_name(path): shape
    for path, shape in leaves
    if len(shape) == 2
  }


def _local(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """The global shape of a leaf whose per-device block, along `P(axis)`,
  is `x`: every device holds its own copy (gradient, momentum)."""
  return jax.ShapeDtypeStruct((N_DEVICES * x.shape[0], *x.shape[1:]), x.dtype)


def _is_lion_k(node: Any) -> bool:
  return isinstance(node, fo.transforms.ScaleByLionKState)


def _data_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((N_DEVICES,), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def pmean_hlo(params: Any) -> str:
  """The compiled HLO of averaging local gradients over the devices."""
  average = jax.shard_map(
    lambda g: jax.lax.pmean(g, DATA_AXIS),
    mesh=_data_mesh(),
    in_specs=(PartitionSpec(DATA_AXIS),),
    out_specs=PartitionSpec(),
  )
  return (
    jax.jit(average).lower(jax.tree.map(_local, params)).compile().as_text()
  )


def compressed_hlo(tx: Any, params: Any) -> str:
  """The compiled HLO of `tx.update` on local gradients under `shard_map`.

  The gradients and the matrices' momentum differ between devices
  (`P(axis)`); the warm-start subspaces, counts and updates are replicated
  (`P()`), as `fo.distributed.compressed` requires.
  """
  state = jax.eval_shape(tx.init, params)

  def spec(node):
    if _is_lion_k(node):
      return node._replace(
        count=PartitionSpec(),
        mu=jax.tree.map(lambda _: PartitionSpec(DATA_AXIS), node.mu),
        lmo_state=jax.tree.map(lambda _: PartitionSpec(), node.lmo_state),
      )
    return jax.tree.map(lambda _: PartitionSpec(), node)

  specs = jax.tree.map(spec, state, is_leaf=_is_lion_k)
  state = jax.tree.map(
    lambda n: n._replace(mu=jax.tree.map(_local, n.mu)) if _is_lion_k(n) else n,
    state,
    is_leaf=_is_lion_k,
  )
  update = jax.shard_map(
    tx.update,
    mesh=_data_mesh(),
    in_specs=(PartitionSpec(DATA_AXIS), specs, PartitionSpec()),
    out_specs=(PartitionSpec(), specs),
  )
  grads = jax.tree.map(_local, params)
  return jax.jit(update).lower(grads, state, params).compile().as_text()


FSDP_AXIS = 'fsdp'


def sharded_hlo(tx: Any, params: Any, axis_type: AxisType) -> str:
  """The compiled HLO of `jax.jit(tx.update)` with every matrix's first
  axis sharded over an 8-device mesh (FSDP), `split=None`."""
  mesh = jax.make_mesh((N_DEVICES,), (FSDP_AXIS,), axis_types=(axis_type,))
  sharding = NamedSharding(mesh, PartitionSpec(FSDP_AXIS, None))
  shaped = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    params,
  )
  with jax.set_mesh(mesh):
    state = jax.eval_shape(tx.init, shaped)
    return jax.jit(tx.update).lower(shaped, state, shaped).compile().as_text()


SHARDED_MODES = (
  ('', {}),
  ('_iters1', {'subspace_iters': 1}),
  ('_iters1_error_feedback', {'subspace_iters': 1, 'error_feedback': True}),
)


def bench_sharded(
  params: Any,
  matrices: Sequence[tuple[int, int]],
  k: int,
  modes: Sequence[tuple[str, dict[str, Any]]] = SHARDED_MODES,
  log: Callable[[str], None] = _timing.log,
) -> dict[str, dict[str, Any]]:
  """Bytes of every collective per step, sharded power iteration.

  `fo.fanion(0.02, k)` under `jax.jit` on FSDP-sharded matrices (Auto and
  Explicit axes): the power iteration runs on the shards, so only thin
  blocks should cross devices.
  """
  thin = sum((m + n) * k * FLOAT_BYTES for m, n in matrices)
  thin_block = max(max(m, n) for m, n in matrices) * k * FLOAT_BYTES
  rows = {}
  for axis_type in (AxisType.Auto, AxisType.Explicit):
    for suffix, options in modes:
      name = f'sharded_{axis_type.name.lower()}_k{k}{suffix}'
      start = time.perf_counter()
      hlo = sharded_hlo(fo.fanion(0.02, k, **options), params, axis_type)
      iters = options.get('subspace_iters', lowrank.WARM_ITERS)
      moved = fo.communication.collective_bytes(
        hlo, fo.communication.COLLECTIVES, unknown_trip_count=iters
      )
      largest, line = fo.communication.largest_collective(hlo, trailing_dims=2)
      rows[name] = {
        'label': (
          f'fo.fanion(0.02, {k}'
          + ''.join(f', {key}={value}' for key, value in options.items())
          + f'), jit, FSDP P({FSDP_AXIS!r}, None), {axis_type.name} axes'
        ),
        'k': k,
        'axis_type': axis_type.name,
        'subspace_iters_warm': iters,
        'bytes_per_step': moved,
        'by_collective': {
          op: fo.communication.collective_bytes(
            hlo, (op,), unknown_trip_count=iters
          )
          for op in fo.communication.COLLECTIVES
        },
        'largest_collective_bytes': largest,
        'largest_collective': line[:300],
        'thin_block_bytes': thin_block,
        'thin_factor_bytes': thin,
        'ratio_to_thin_factors': moved / thin,
        'compile_s': time.perf_counter() - start,
      }
      log(
        f'  [sharded] {name}: {moved:,} bytes/step'
        f' ({moved / thin:.2f}x thin factors), largest collective'
        f' {largest:,} bytes, in {rows[name]["compile_s"]:.1f}s'
      )
  return rows


def communication_modes(
  ks: Sequence[int],
) -> list[tuple[str, int, dict[str, Any]]]:
  """`(row name, k, fo.fanion options)` of the compressed rows."""
  modes = []
  for k in ks:
    modes.append((f'compressed_k{k}', k, {}))
    modes.append((f'compressed_k{k}_iters1', k, {'subspace_iters': 1}))
  k = max(ks)
  modes.append((f'compressed_k{k}_error_feedback', k, {'error_feedback': True}))
  return modes


def analytic_bytes(
  shapes: Sequence[tuple[int, int]], k: int, iters: int
) -> int:
  """Per step and matrix: each of the `iters` power iterations all-reduces
  an `m x k` and an `n x k` block (the last one's `n x k` block is the
  Rayleigh-Ritz step), the shared scale one float."""
  return sum((iters * (m + n) * k + 1) * FLOAT_BYTES for m, n in shapes)


def bench_communication(
  layers: int,
  width: int,
  ks: Sequence[int],
  sharded_modes: Sequence[tuple[str, dict[str, Any]]] = SHARDED_MODES,
  log: Callable[[str], None] = _timing.log,
) -> dict[str, Any]:
  """Bytes all-reduced per step, from the compiled HLO, by mode and k."""
  shapes = gpt2_matrices(layers, width)
  params = {
    name: jax.ShapeDtypeStruct(s, jnp.float32) for name, s in shapes.items()
  }
  matrices = list(shapes.values())
  gradient = sum(m * n * FLOAT_BYTES for m, n in matrices)
  start = time.perf_counter()
  measured = fo.communication.collective_bytes(pmean_hlo(params))
  rows: dict[str, dict[str, Any]] = {
    'gradient_pmean': {
      'label': 'jax.lax.pmean(grads)',
      'k': None,
      'bytes_per_step': measured,
      'bytes_cold_first_step': measured,
      'analytic_bytes_per_step': gradient,
      'analytic_bytes_cold_first_step': gradient,
      'ratio_to_gradient_allreduce': measured / gradient,
      'compile_s': time.perf_counter() - start,
    }
  }
  for name, k, options in communication_modes(ks):
    start = time.perf_counter()
    tx = fo.fanion(
      0.02, k, split=fo.distributed.compressed(DATA_AXIS), **options
    )
    hlo = compressed_hlo(tx, params)
    # The subspace loop's count is decided at run time (cold or warm);
    # `subspace_iters` fixes it, and XLA then knows it.
    iters = options.get('subspace_iters')
    warm = lowrank.WARM_ITERS if iters is None else iters
    cold = lowrank.COLD_ITERS if iters is None else iters
    thin = sum((m + n) * k * FLOAT_BYTES for m, n in matrices)
    # The loop runs every iteration, its trip count decided at run time
    # (see `lowrank.subspace_iteration`).
    measured = fo.communication.collective_bytes(hlo, unknown_trip_count=warm)
    rows[name] = {
      'label': (
        f'fo.fanion(0.02, {k}, split=compressed(...)'
        + ''.join(f', {key}={value}' for key, value in options.items())
        + ')'
      ),
      'k': k,
      'subspace_iters_warm': warm,
      'subspace_iters_cold': cold,
      'bytes_per_step': measured,
      'bytes_cold_first_step': fo.communication.collective_bytes(
        hlo, unknown_trip_count=cold
      ),
      'analytic_bytes_per_step': analytic_bytes(matrices, k, warm),
      'analytic_bytes_cold_first_step': analytic_bytes(matrices, k, cold),
      'thin_factor_bytes': thin,
      'ratio_to_thin_factors': measured / thin,
      'ratio_to_gradient_allreduce': measured / gradient,
      'compile_s': time.perf_counter() - start,
    }
    log(
      f'  [communication] {name}: {measured:,} bytes/step'
      f' ({measured / thin:.2f}x thin factors) in'
      f' {rows[name]["compile_s"]:.1f}s'
    )
  sharded = bench_sharded(params, matrices, max(ks), sharded_modes, log)
  return {
    'sharded': sharded,
    'tree': (
      f'the kernels of {layers} GPT-2 layer(s) of width {width}:'
      f' {len(matrices)} matrices, shapes'
      f' {sorted({f"{m}x{n}" for m, n in matrices})}'
    ),
    'layers': layers,
    'width': width,
    'ks': list(ks),
    'devices': N_DEVICES,
    'dtype': 'float32',
    'gradient_allreduce_bytes': gradient,
    'measure': (
      'bytes summed over the all-reduce results of the compiled HLO of one'
      ' step (jax.shard_map over 8 CPU devices, local gradients P(axis),'
      ' updates P()), a while body counted once per trip: the known trip'
      ' count, else one less than the warm (2) or cold (10) subspace'
      ' iteration count (the last iteration is outside the loop)'
    ),
    'analytic': (
      'iters*(m+n)*k*4 + 4 bytes per matrix (m*n*4 for pmean):'
      ' iters power iterations (m x k and n x k blocks, the last n x k'
      ' block the Rayleigh-Ritz step), the shared scale'
    ),
    'thin_factors': 'sum (m+n)*k*4: one m x k and one n x k block per matrix',
    'rows': rows,
  }


def evaluate_communication(comm: dict[str, Any]) -> dict[str, Any]:
  """Issue 14's bars: at the largest k, one power step per optimizer step
  (`subspace_iters=1`, Dion's setting) moves <= 1.1x the thin factors,
  compressed and sharded, and no sharded collective moves a whole matrix;
  and the measured compressed counts equal the analytic ones."""
  k = max(comm['ks'])
  row = comm['rows'][f'compressed_k{k}_iters1']
  default = comm['rows'][f'compressed_k{k}']
  errors = {
    f'{name} {when}': abs(r[f'bytes_{when}'] / r[f'analytic_bytes_{when}'] - 1)
    for name, r in comm['rows'].items()
    for when in ('per_step', 'cold_first_step')
  }
  worst = max(errors.values())
  sharded = comm['sharded']
  one_step = {
    name: r['ratio_to_thin_factors']
    for name, r in sharded.items()
    if name.endswith(f'_k{k}_iters1')
  }
  whole = {name: r['largest_collective_bytes'] for name, r in sharded.items()}
  thin_block = max(r['thin_block_bytes'] for r in sharded.values())
  return {
    THIN_TARGET: {
      'passed': row['ratio_to_thin_factors'] <= THIN_RATIO_MAX,
      'k': k,
      'bytes_per_step': row['bytes_per_step'],
      'thin_factor_bytes': row['thin_factor_bytes'],
      'ratio_to_thin_factors': row['ratio_to_thin_factors'],
      'threshold': THIN_RATIO_MAX,
      'ratio_to_gradient_allreduce': row['ratio_to_gradient_allreduce'],
      'default_iters_ratio_to_thin_factors': default['ratio_to_thin_factors'],
      'summary': (
        f'{row["ratio_to_thin_factors"]:.2f}x sum (m+n)k*4 (k = {k}, one'
        ' power step),'
        f' {1 / row["ratio_to_gradient_allreduce"]:.1f}x less than the'
        ' gradient all-reduce; the default 2 warm iterations:'
        f' {default["ratio_to_thin_factors"]:.2f}x'
      ),
    },
    ANALYTIC_TARGET: {
      'passed': worst <= ANALYTIC_TOLERANCE,
      'max_relative_error': worst,
      'threshold': ANALYTIC_TOLERANCE,
      'relative_errors': errors,
      'summary': f'largest |measured / analytic - 1| = {worst:.2g}',
    },
    SHARDED_THIN_TARGET: {
      'passed': max(one_step.values()) <= THIN_RATIO_MAX,
      'k': k,
      'ratios_to_thin_factors': one_step,
      'threshold': THIN_RATIO_MAX,
      'summary': ', '.join(
        f'{name}: {ratio:.2f}x' for name, ratio in one_step.items()
      ),
    },
    SHARDED_WHOLE_TARGET: {
      'passed': max(whole.values()) <= thin_block,
      'largest_collective_bytes': whole,
      'threshold_bytes': thin_block,
      'summary': (
        f'largest array any collective moves: {max(whole.values()):,}'
        f' bytes, the largest thin block max(m, n)*k*4: {thin_block:,}'
      ),
    },
  }


def print_communication(comm: dict[str, Any]) -> None:
  rows = [
    [
      name,
      f'{r["bytes_per_step"]:,}',
      f'{r["analytic_bytes_per_step"]:,}',
      f'{r["bytes_cold_first_step"]:,}',
      None
      if r.get('ratio_to_thin_factors') is None
      else f'{r["ratio_to_thin_factors"]:.3f}',
      f'{r["ratio_to_gradient_allreduce"]:.3f}',
    ]
    for name, r in comm['rows'].items()
  ]
  print(
    _timing.text_table(
      [
        'mode',
        'bytes/step',
        'analytic',
        'cold step',
        '/thin',
        '/gradient',
      ],
      rows,
    )
  )
  print()
  print(
    _timing.text_table(
      ['sharded (jit, FSDP)', 'bytes/step', 'largest', '/thin'],
      [
        [
          name,
          f'{r["bytes_per_step"]:,}',
          f'{r["largest_collective_bytes"]:,}',
          f'{r["ratio_to_thin_factors"]:.3f}',
        ]
        for name, r in comm['sharded'].items()
      ],
    )
  )


# ----------------------------------------------------------------------------
# Targets, table, plot.


def gpt2_matrix_shapes(width: int, layers: int) -> dict[str, Any]:
  """GPT-2's four kernels per layer, `(fan_in, fan_out)`; nothing else."""
  d = width
  return {
    f'h{i}': {
      'c_attn': (d, 3 * d),
      'attn_proj': (d, d),
      'c_fc': (d, 4 * d),
      'mlp_proj': (4 * d, d),
    }
    for i in range(layers)
  }


def _fsdp(x: jax.ShapeDtypeStruct, mesh: jax.sharding.Mesh) -> Any:
  """`x` with its first axis sharded over the mesh (FSDP)."""
  spec = PartitionSpec(AXIS, *([None] * (x.ndim - 1)))
  return jax.ShapeDtypeStruct(
    x.shape, x.dtype, sharding=NamedSharding(mesh, spec)
  )


def bench_balance(width: int, layers: Sequence[int]) -> dict[str, Any]:
  """`fo.muon`'s per-device FLOPs with each split on GPT-2's matrices, and
  what `fo.distributed.balance` predicts from `matrix_cost`.

  The pmap split on replicated matrices; the mesh split (`over_mesh`) under
  jit with every kernel's first axis sharded over 8 devices (FSDP), Auto
  and Explicit axes, with its compiled temp memory per device and the
  count of all-gathers in its HLO (each matrix should travel to its owner
  and back by all-to-all, never gathered whole). Compiled from shapes only
  (`jax.ShapeDtypeStruct`): 48 layers replicated on 8 devices would not
  fit in memory, and only the FLOPs are read.
  """
  make = OPTIMIZERS['muon'][1]
  rows = {}
  for count in layers:
    shapes = gpt2_matrix_shapes(width, count)
    params = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
      shapes,
      is_leaf=_timing.is_shape,
    )
    tx = make()
    args = (params, jax.eval_shape(tx.init, params), params)
    total = _timing.flops_of(jax.jit(tx.update).lower(*args).compile())
    split = make(split=fo.distributed.over_axis(PMAP_AXIS))
    replicated = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct((N_DEVICES, *a.shape), a.dtype), args
    )
    start = time.perf_counter()
    compiled = (
      jax.pmap(split.update, axis_name=PMAP_AXIS).lower(*replicated).compile()
    )
    seconds = time.perf_counter() - start
    flops = _timing.flops_of(compiled)
    matrices = jax.tree.leaves(shapes, is_leaf=_timing.is_shape)
    owners = fo.distributed.balance(matrices, N_DEVICES)
    cost = fo.distributed.matrix_cost
    loads = [sum(cost(matrices[i]) for i in own) for own in owners]
    rows[str(count)] = {
      'matrices': len(matrices),
      'single_flops': total,
      'predicted_ratio_to_ideal': max(loads) / (sum(loads) / N_DEVICES),
      'pmap_split': {
        'flops_per_device': flops,
        'ratio_to_ideal': flops / (total / N_DEVICES),
        'compile_s': seconds,
      },
    }
    for axis_type in (AxisType.Auto, AxisType.Explicit):
      mesh = _mesh(axis_type)
      tx = make(split=fo.distributed.over_mesh(mesh))
      sharded = jax.tree.map(lambda a: _fsdp(a, mesh), params)
      with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = (
          jax.jit(tx.update)
          .lower(sharded, jax.eval_shape(tx.init, params), sharded)
          .compile()
        )
        seconds = time.perf_counter() - start
      flops = _timing.flops_of(compiled)
      moved = functools.partial(fo.communication.collective_bytes, compiled)
      rows[str(count)][f'jit_{axis_type.name.lower()}_split'] = {
        'flops_per_device': flops,
        'ratio_to_ideal': flops / (total / N_DEVICES),
        'compile_s': seconds,
        'temp_bytes_per_device': compiled.memory_analysis().temp_size_in_bytes,
        'all_gather_bytes': moved(('all-gather',)),
        'all_to_all_bytes': moved(('all-to-all',)),
      }
  return {
    'tree': f"GPT-2's kernels, width {width} (no embeddings or vectors)",
    'optimizer': OPTIMIZERS['muon'][0],
    'rows': rows,
  }


BALANCE_MODES = ('pmap_split', 'jit_auto_split', 'jit_explicit_split')


def evaluate_balance(balance: dict[str, Any]) -> dict[str, Any]:
  """Issue 12's per-device FLOP targets for the pmap and mesh splits, and
  no whole-matrix all-gather in the mesh split."""
  targets = {}
  for count, threshold in BALANCE_TARGETS.items():
    row = balance['rows'].get(str(count))
    if row is None:
      continue
    for mode in BALANCE_MODES:
      ratio = row[mode]['ratio_to_ideal']
      targets[
        f'gpt2_{count}_layers_{mode}_flops_per_device_le_{threshold}x_ideal'
      ] = {
        'passed': ratio <= threshold,
        'threshold': threshold,
        'ratio_to_ideal': ratio,
        'summary': f'{ratio:.3f} (balance predicts'
        f' {row["predicted_ratio_to_ideal"]:.3f})',
      }
  gathers = {
    f'{count} layers {mode}': row[mode]['all_gather_bytes']
    for count, row in balance['rows'].items()
    for mode in BALANCE_MODES[1:]
  }
  targets['mesh_split_gathers_no_matrix'] = {
    'passed': not any(gathers.values()),
    'all_gathers': gathers,
    'summary': f'{sum(gathers.values())} bytes all-gathered by the mesh splits',
  }
  return targets


def _pair(auto: dict[str, Any], explicit: dict[str, Any], key: str) -> str:
  return f'{auto[key] / 1e6:.0f} / {explicit[key] / 1e6:.0f}'


def balance_markdown(balance: dict[str, Any]) -> str:
  lines = [
    '### Balancing whole matrices\n',
    f'`{balance["optimizer"]}` on {balance["tree"]}, split over'
    f' {N_DEVICES} devices: per-device FLOPs over (single-device FLOPs /'
    f' {N_DEVICES}) with the pmap split and with the mesh split under jit'
    ' (kernels FSDP-sharded on their first axis, Auto and Explicit axes),'
    ' and the ratio `fo.distributed.balance` predicts from `matrix_cost`.'
    ' Temp memory and bytes moved are per device, from the compiled mesh'
    ' split (Auto / Explicit); the matrices themselves are'
    ' `sum m·n·4 / 8` bytes per device.\n',
    '| layers | matrices | pmap split | mesh split Auto | mesh split'
    ' Explicit | predicted | temp MB | all-to-all MB | all-gather MB |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for count, row in balance['rows'].items():
    auto, explicit = row['jit_auto_split'], row['jit_explicit_split']
    lines.append(
      f'| {count} | {row["matrices"]} |'
      f' {row["pmap_split"]["ratio_to_ideal"]:.3f} |'
      f' {auto["ratio_to_ideal"]:.3f} | {explicit["ratio_to_ideal"]:.3f} |'
      f' {row["predicted_ratio_to_ideal"]:.3f} |'
      f' {_pair(auto, explicit, "temp_bytes_per_device")} |'
      f' {_pair(auto, explicit, "all_to_all_bytes")} |'
      f' {_pair(auto, explicit, "all_gather_bytes")} |'
    )
  return '\n'.join(lines) + '\n'


def evaluate_targets(cases: list[dict[str, Any]]) -> dict[str, Any]:
  """Split-mode FLOPs per device <= 1.3 * T/8, same-shape N >= 8 (muon)."""
  targets = {}
  for case in cases:
    if case['kind'] != 'same_shape' or case['count'] < N_DEVICES:
      continue
    for mode in SPLIT_MODES:
      row = case['optimizers']['muon']['modes'][mode]
      targets[f'muon {case["name"]} {mode} flops/device <= 1.3 T/8'] = {
        'passed': row['ratio_to_ideal'] <= FLOPS_RATIO_MAX,
        'ratio_to_ideal': row['ratio_to_ideal'],
        'threshold': FLOPS_RATIO_MAX,
        'whole_matrix_optimum': case['whole_matrix_optimum'],
        'ratio_to_whole_matrix_optimum': row['ratio_to_whole_matrix_optimum'],
      }
  return targets


def print_table(cases: list[dict[str, Any]]) -> None:
  rows = []
  for case in cases:
    for opt, res in case['optimizers'].items():
      for mode, row in res['modes'].items():
        opt_ratio = row.get('ratio_to_whole_matrix_optimum')
        wall = row['wall_ms_cpu_emulated']
        rows.append(
          [
            case['name'],
            f'{opt}/{mode}',
            f'{row["flops_per_device"] / 1e9:.3f}',
            f'{row["ratio_to_ideal"]:.3f}',
            None if opt_ratio is None else f'{opt_ratio:.3f}',
            None if wall is None else f'{wall:.1f}',
          ]
        )
  print(
    _timing.text_table(
      ['case', 'optimizer/mode', 'GFLOP/dev', '/(T/8)', '/optimum', 'wall ms*'],
      rows,
      left=2,
    )
  )
  print(
    '* wall-clock of 8 virtual CPU devices sharing the host cores: not a'
    ' speed-up measure.'
  )


def plot(
  cases: list[dict[str, Any]],
  path: str,
  title: str,
  communication: dict[str, Any] | None = None,
) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  series = [('muon', m) for m in MUON_MODES] + [
    (f'fanion{FANION_K}', m) for m in FANION_MODES
  ]
  names = [c['name'] for c in cases]
  x = np.arange(len(cases))
  width = 0.8 / len(series)
  cmap = plt.get_cmap('tab20')
  fig = plt.figure(figsize=(21 if communication else 15, 10))
  grid = (
    fig.add_gridspec(2, 2, width_ratios=(3, 1))
    if communication
    else (fig.add_gridspec(2, 1))
  )
  ax_abs = fig.add_subplot(grid[0, 0])
  ax_rel = fig.add_subplot(grid[1, 0], sharex=ax_abs)
  ax_abs.tick_params(labelbottom=False)
  for j, (opt, mode) in enumerate(series):
    rows = [c['optimizers'][opt]['modes'][mode] for c in cases]
    offset = (j - (len(series) - 1) / 2) * width
    hatch = '//' if opt != 'muon' else None
    kwargs = dict(
      width=width,
      color=cmap(j % 20),
      hatch=hatch,
      label=f'{opt}: {MODE_LABELS[mode]}',
    )
    ax_abs.bar(
      x + offset, [r['flops_per_device'] / 1e9 for r in rows], **kwargs
    )
    ax_rel.bar(
      x + offset,
      [r['ratio_to_ideal'] for r in rows],
      width=width,
      color=cmap(j % 20),
      hatch=hatch,
    )
  ax_abs.set_yscale('log')
  ax_abs.set_ylabel('XLA FLOPs per device [GFLOP]')
  ax_abs.grid(True, axis='y', which='both', alpha=0.3)
  ax_rel.set_yscale('log')
  ax_rel.set_ylim(0.8, 2 * N_DEVICES)
  ax_rel.axhline(1.0, color='k', lw=0.8, ls='--')
  ax_rel.axhline(FLOPS_RATIO_MAX, color='tab:red', lw=1.0, ls=':')
  ax_rel.text(
    x[-1] + 0.45,
    FLOPS_RATIO_MAX,
    f' target {FLOPS_RATIO_MAX}',
    color='tab:red',
    va='bottom',
    ha='right',
    fontsize=8,
  )
  ax_rel.set_ylabel('FLOPs per device / (single-device total / 8)')
  ax_rel.grid(True, axis='y', which='both', alpha=0.3)
  ax_rel.set_xticks(x, names)
  if communication:
    plot_communication(fig.add_subplot(grid[:, 1]), communication)
  handles, labels = ax_abs.get_legend_handles_labels()
  fig.legend(
    handles, labels, loc='lower center', ncol=3, fontsize=8, frameon=False
  )
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_communication(ax: Any, comm: dict[str, Any]) -> None:
  """Bytes all-reduced per step by mode, on a log axis."""
  rows = {**comm['rows'], **comm.get('sharded', {})}
  names = list(rows)
  values = [rows[n]['bytes_per_step'] / 2**20 for n in names]
  y = np.arange(len(names))
  colors = [
    'tab:gray'
    if n == 'gradient_pmean'
    else 'tab:orange'
    if n.startswith('sharded')
    else 'tab:blue'
    for n in names
  ]
  ax.barh(y, values, color=colors)
  for yi, name, value in zip(y, names, values):
    thin = rows[name].get('ratio_to_thin_factors')
    note = '' if thin is None else f' ({thin:.2f}x thin)'
    ax.text(value, yi, f' {value:.3g}{note}', va='center', fontsize=7)
  ax.set_yticks(y, names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xscale('log')
  ax.set_xlim(min(values) / 4, 10 * max(values))
  ax.set_xlabel(
    'MiB per step and device (compressed: all-reduced; sharded, orange:'
    ' every collective)'
  )
  ax.set_title(
    f'communication per step: {comm["tree"].split(":")[0]}, k ='
    f' {", ".join(map(str, comm["ks"]))}',
    fontsize=8,
  )
  ax.grid(True, axis='x', which='both', alpha=0.3)


def draw(document: dict[str, Any], path: str) -> None:
  """`plot` of a result document (the timing cases and communication)."""
  quick = document['config']['quick']
  plot(
    document['cases'],
    path,
    f'fanion_optax work split: XLA FLOPs per device, {N_DEVICES}'
    ' CPU-emulated devices' + (' [quick]' if quick else ''),
    document.get('communication'),
  )


# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = _timing.benchmark_parser(
    'distributed',
    __doc__,
    '64x64 matrices, N = 8, no mixed tree, 1 rep',
    reps=(FULL_REPS, QUICK_REPS),
  )
  parser.add_argument(
    '--communication-only',
    action='store_true',
    help='only measure the bytes all-reduced per step and merge them into'
    ' <out>/distributed.json (which must exist, of the same --quick)',
  )
  return parser.parse_args(argv)


def communication_only(
  args: argparse.Namespace, argv: Sequence[str]
) -> dict[str, Any]:
  """Measures the communication and merges it into `<out>/distributed.json`,
  keeping its timing results (and their metadata)."""
  path = os.path.join(args.out, 'distributed.json')
  with open(path, encoding='utf-8') as f:
    document = json.load(f)
  if document['config']['quick'] != args.quick:
    raise SystemExit(
      f'{path} holds a {"quick" if document["config"]["quick"] else "full"}'
      ' run: pass --quick to match it, or rerun the whole benchmark.'
    )
  comm = bench_communication(**(QUICK_COMM if args.quick else FULL_COMM))
  comm['metadata'] = _timing.metadata(['-m', 'benchmarks.distributed', *argv])
  targets = evaluate_communication(comm)
  print_communication(comm)
  _timing.print_targets(targets, lambda t: t['summary'])
  document['communication'] = comm
  document['targets'].update({n: t['passed'] for n, t in targets.items()})
  document['target_details'].update(targets)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(document, f, indent=2)
    f.write('\n')
  png = os.path.join(args.out, 'distributed.png')
  draw(document, png)
  _timing.log(f'merged into {path}; redrew {png}')
  return document


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if jax.device_count() < N_DEVICES:
    raise SystemExit(
      f'needs {N_DEVICES} devices, found {jax.device_count()}: run it as'
      ' `python -m benchmarks.distributed` (which sets XLA_FLAGS='
      f'{_DEVICE_FLAG}={N_DEVICES} before JAX starts) or set XLA_FLAGS.'
    )
  if args.communication_only:
    return communication_only(args, argv)
  start = time.perf_counter()
  shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
  counts = QUICK_COUNTS if args.quick else FULL_COUNTS
  cases = [same_shape_case(n, s) for s in shapes for n in counts]
  if not args.quick:
    cases.append(mixed_case(FULL_MIXED_WIDTH, FULL_MIXED_LAYERS))
  _timing.log(
    f'distributed benchmark ({"quick" if args.quick else "full"}):'
    f' {len(cases)} cases, reps {args.reps}, {jax.device_count()}'
    f' {jax.devices()[0].platform} devices'
  )
  results = []
  with _timing.progress_bar(len(cases), 'distributed', unit='case') as bar:
    for case in cases:
      results.append(bench_case(case, args.reps, log=bar.write))
      bar.update()
  comm = bench_communication(**(QUICK_COMM if args.quick else FULL_COMM))
  balance = bench_balance(**(QUICK_BALANCE if args.quick else FULL_BALANCE))
  targets = evaluate_targets(results)
  targets.update(evaluate_communication(comm))
  targets.update(evaluate_balance(balance))
  elapsed = time.perf_counter() - start

  print()
  print_table(results)
  print()
  print_communication(comm)
  _timing.print_targets(
    targets,
    lambda t: (
      t.get('summary')
      or (
        f'{t["ratio_to_ideal"]:.3f} (whole-matrix optimum'
        f' {t["whole_matrix_optimum"]:.3f})'
      )
    ),
  )

  payload = {
    'benchmark': 'distributed',
    'config': {
      'quick': args.quick,
      'devices': N_DEVICES,
      'device_note': (
        f'CPU-emulated: {N_DEVICES} virtual XLA host devices'
        f' ({_DEVICE_FLAG}={N_DEVICES}) sharing {os.cpu_count()} CPU'
        ' cores. The FLOP counts are per device and deterministic; the'
        ' wall-clock times (wall_ms_cpu_emulated) are NOT a measure of'
        ' speed-up.'
      ),
      'shapes': [list(s) for s in shapes],
      'counts': list(counts),
      'reps': args.reps,
      'openblas_num_threads': os.environ.get('OPENBLAS_NUM_THREADS'),
      'warmup': 1,
      'dtype': 'float32',
      'optimizers': {k: v[0] for k, v in OPTIMIZERS.items()},
      'fanion_flops_note': _timing.LOOP_FLOPS_NOTE,
      'modes': MODE_LABELS,
      'mesh': (
        f"jax.make_mesh(({N_DEVICES},), ('{AXIS}',),"
        ' axis_types=(Auto|Explicit,)); every leaf sharded along'
        ' its last axis when divisible by 8, else replicated'
      ),
      'pmap': (
        'jax.pmap(tx.update, axis_name=...) on arguments'
        ' replicated onto every device'
      ),
      'measure': (
        "compile().cost_analysis()['flops'] of tx.update (per"
        ' device); ratio_to_ideal = flops_per_device /'
        ' (single-device flops / 8)'
      ),
      'whole_matrix_optimum': (
        'the least ratio_to_ideal possible when whole matrices are'
        ' assigned to devices: ceil(N/8)*8/N per shape group (uneven N'
        ' cannot reach 1); ratio_to_whole_matrix_optimum divides by it'
      ),
      'timing': (
        'AOT-compiled, one warm-up call each, then interleaved'
        ' rotated rounds over all modes of a case; median'
      ),
    },
    'cases': results,
    'communication': comm,
    'balance': balance,
    'targets': {name: t['passed'] for name, t in targets.items()},
    'target_details': targets,
    'elapsed_s': elapsed,
  }
  return _timing.save_results('distributed', args.out, payload, argv, draw)


def markdown(d: dict[str, Any]) -> str:
  """The tables of `benchmarks/README.md` for one result document."""
  modes = d.get('config', {}).get('modes', {})
  lines = [
    '| case | optimizer | mode | GFLOP/device | ÷ (single/8) |',
    '|---|---|---|---|---|',
  ]
  for case in d['cases']:
    for opt, o in case['optimizers'].items():
      for mode, m in o['modes'].items():
        lines.append(
          f'| {case["name"]} | {opt} | {modes.get(mode, mode)} |'
          f' {m["flops_per_device"] / 1e9:.2f} |'
          f' {m["ratio_to_ideal"]:.2f} |'
        )
  note = d.get('config', {}).get('device_note', '')
  text = (
    note + ' With N matrices on n devices each device orthogonalises'
    ' ceil(N/n) whole matrices, so an uneven N = 11 on 8 devices costs'
    ' 2/1.375 = 1.45× the ideal by construction.\n\n' + '\n'.join(lines) + '\n'
  )
  if 'balance' in d:
    text += '\n' + balance_markdown(d['balance'])
  if 'communication' in d:
    text += '\n' + communication_markdown(d['communication'])
  return text


def communication_markdown(comm: dict[str, Any]) -> str:
  """The "Communication per step" table and what misses the target."""
  lines = [
    '### Communication per step\n',
    f'Bytes all-reduced per step per device for {comm["tree"]}, from the'
    f' compiled HLO of one `jax.shard_map` step over {comm["devices"]} CPU'
    ' devices (a loop counted once per trip); "analytic" is'
    ' `iters·(m+n)·k·4 + 4` per matrix (`m·n·4` for the gradient'
    ' all-reduce).\n',
    '| mode | k | iters (warm/cold) | bytes/step | analytic |'
    ' ÷ Σ(m+n)·k·4 | ÷ gradient all-reduce | cold first step |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for r in comm['rows'].values():
    thin = r.get('ratio_to_thin_factors')
    iters = (
      '–'
      if r['k'] is None
      else f'{r["subspace_iters_warm"]}/{r["subspace_iters_cold"]}'
    )
    lines.append(
      f'| `{r["label"]}` | {r["k"] or "–"} | {iters} |'
      f' {r["bytes_per_step"]:,} | {r["analytic_bytes_per_step"]:,} |'
      f' {"–" if thin is None else f"{thin:.2f}"} |'
      f' {r["ratio_to_gradient_allreduce"]:.3f} |'
      f' {r["bytes_cold_first_step"]:,} |'
    )
  targets = evaluate_communication(comm)
  target = targets[THIN_TARGET]
  k = target['k']
  default = comm['rows'][f'compressed_k{k}']
  cold = default['bytes_cold_first_step']
  lines.append(
    f'\nWith one power step per optimizer step (`subspace_iters=1`,'
    f" Dion's setting) compressed Fanion-{k} all-reduces"
    f' {target["ratio_to_thin_factors"]:.2f}× the thin factors'
    f' Σ(m+n)·k·4 (bar ≤ {THIN_RATIO_MAX}×),'
    f' {1 / target["ratio_to_gradient_allreduce"]:.1f}× less than the'
    " gradient all-reduce: the last iteration's n×k block is the"
    ' Rayleigh–Ritz step, so t iterations send t·(m+n)·k floats per'
    ' matrix. The default (2 warm iterations) sends'
    f' {default["ratio_to_thin_factors"]:.2f}×; the cold first step (10'
    f' iterations) {cold / comm["gradient_allreduce_bytes"]:.2f}× the'
    ' gradient.\n'
  )
  lines += [
    '#### Sharded power iteration\n',
    f"`jax.jit` of one step with every kernel's first axis sharded over"
    f' {comm["devices"]} CPU devices (FSDP, `split=None`); bytes summed'
    ' over the results of every collective (all-reduce, all-gather,'
    ' all-to-all, reduce-scatter, collective-permute) of the compiled HLO.'
    ' "Largest" is the largest array any one collective moves, per matrix'
    ' (the last two axes of a stack of same-shape matrices).\n',
    '| run | iters (warm) | bytes/step | ÷ Σ(m+n)·k·4 | largest array |',
    '|---|---|---|---|---|',
  ]
  for r in comm['sharded'].values():
    lines.append(
      f'| `{r["label"]}` | {r["subspace_iters_warm"]} |'
      f' {r["bytes_per_step"]:,} | {r["ratio_to_thin_factors"]:.2f} |'
      f' {r["largest_collective_bytes"]:,} |'
    )
  whole = targets[SHARDED_WHOLE_TARGET]
  lines.append(
    f'\nNo collective moves a whole matrix: the largest array is'
    f' {max(whole["largest_collective_bytes"].values()):,} bytes, at most'
    f' the largest thin block max(m, n)·k·4 = {whole["threshold_bytes"]:,}.'
    ' Under FSDP a loop iteration all-reduces only the n×k block (G Q'
    ' stays row-sharded) and the last one also gathers the m×k block for'
    " its QR; error feedback's projection P Pᵀ E adds a k×n all-reduce."
  )
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
