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
single-device count; for the cold/warm-start `lax.cond` of its first step
XLA's cost analysis reports the costlier, cold branch). It reports
per-device FLOPs divided by T/8 (1.0 is a perfect split; the target is
<= 1.3 for the split modes with >= 8 same-shape matrices; an uneven N cannot
beat `ceil(N/8)*8/N` with whole matrices), and the wall-clock ms/step of
every mode, timed interleaved. The 8 devices are virtual devices sharing the
host's few CPU cores, so wall-clock time says nothing about speed-up; only
the FLOP counts are evidence. The vectors of the mixed tree go to the
fallback passed explicitly as AdamW at the matrix learning rate with
`b2 = 0.999` (`fo.adamw_fallback(0.02, b2=0.999)`), the default before
API 1.0, so that the results stay comparable.

`--quick`: 64x64 matrices, N = 8 and 11, no mixed tree, 1 rep.

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

AXIS = 'fsdp'
PMAP_AXIS = 'devices'
FLOPS_RATIO_MAX = 1.3
FANION_K = 16
FULL_SHAPES = ((256, 256), (512, 1024))
QUICK_SHAPES = ((64, 64),)
FULL_COUNTS = (8, 16, 11)
QUICK_COUNTS = (8, 11)
FULL_REPS, QUICK_REPS = 3, 1
FULL_MIXED_WIDTH, FULL_MIXED_LAYERS = 256, 6

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
# Targets, table, plot.


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


def plot(cases: list[dict[str, Any]], path: str, title: str) -> None:
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
  fig, (ax_abs, ax_rel) = plt.subplots(2, 1, figsize=(15, 10), sharex=True)
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
  handles, labels = ax_abs.get_legend_handles_labels()
  fig.legend(
    handles, labels, loc='lower center', ncol=3, fontsize=8, frameon=False
  )
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = _timing.benchmark_parser(
    'distributed',
    __doc__,
    '64x64 matrices, N = 8 and 11, no mixed tree, 1 rep',
    reps=(FULL_REPS, QUICK_REPS),
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if jax.device_count() < N_DEVICES:
    raise SystemExit(
      f'needs {N_DEVICES} devices, found {jax.device_count()}: run it as'
      ' `python -m benchmarks.distributed` (which sets XLA_FLAGS='
      f'{_DEVICE_FLAG}={N_DEVICES} before JAX starts) or set XLA_FLAGS.'
    )
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
  targets = evaluate_targets(results)
  elapsed = time.perf_counter() - start

  print()
  print_table(results)
  _timing.print_targets(
    targets,
    lambda t: (
      f'{t["ratio_to_ideal"]:.3f} (whole-matrix optimum'
      f' {t["whole_matrix_optimum"]:.3f})'
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
      'fanion_flops_note': (
        'KyFan.update picks 10 (cold) or 2 (warm) subspace iterations'
        " with lax.cond; XLA's cost analysis reports the costlier"
        ' branch, so the fanion FLOPs are those of the cold first'
        ' step (about 3.5x a warm step at 256x256, k=16).'
      ),
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
    'targets': {name: t['passed'] for name, t in targets.items()},
    'target_details': targets,
    'elapsed_s': elapsed,
  }
  return _timing.save_results(
    'distributed',
    args.out,
    payload,
    argv,
    lambda _, png: plot(
      results,
      png,
      f'fanion_optax work split: XLA FLOPs per device, {N_DEVICES}'
      ' CPU-emulated devices' + (' [quick]' if args.quick else ''),
    ),
  )


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
  return (
    note + ' With N matrices on n devices each device orthogonalises'
    ' ceil(N/n) whole matrices, so an uneven N = 11 on 8 devices costs'
    ' 2/1.375 = 1.45× the ideal by construction.\n\n' + '\n'.join(lines) + '\n'
  )


if __name__ == '__main__':
  main()
