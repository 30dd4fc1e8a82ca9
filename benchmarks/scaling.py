"""Scaling of one optimizer step's time and memory with matrix size n and Fanion rank k (log-log, fitted slopes).

Run from the repository root:

  python -m benchmarks.scaling            # full run (2 CPU cores: 9.5 min
                                          # at load average 12-14; ~3-4
                                          # min idle, estimated)
  python -m benchmarks.scaling --quick --out /tmp/scaling_quick   # smoke

What is timed. One full optimizer step, `tx.update` then
`optax.apply_updates` (`benchmarks.step.make_step`), on a one-leaf parameter
tree `{"w": W}` with a square float32 `W` of n×n, not the bare LMO kernel:
"per step" then includes what a user pays per step beyond the LMO (the
Nesterov momentum, the max-abs scaling, the shape scale and the update), all
O(n²) work that is the same for every method, so the differences between the
curves are the LMOs' own costs. The candidates are

  * `muon(lr)`: Polar Express, 5 quintic iterations (the default),
  * `muon(lr, polar_method="newton_schulz")`: Jordan's quintic, 5
    iterations (the same arithmetic as Polar Express, so only for
    n <= 2048),
  * `muon(lr, polar_method="svd")`: the exact polar factor by LAPACK's SVD
    (only for n <= `--svd-max`, default 2048: a 4096² SVD on 2 cores takes
    ~30 s),
  * `fanion(lr, k)`: the warm-started subspace iteration (2 iterations per
    step), timed on the state returned by a first (cold, 10-iteration) step,
    so every timed step is a warm one, as in training.

The size sweep runs n in 256, 512, 1024, 2048, 4096 at fixed k=32; the rank
sweep runs Fanion-k for k in 1, 4, 16, 64, 256, 1024 at n=2048, with Muon
(Polar Express) timed in the same rounds as the reference. Each step is
compiled ahead of time (compile excluded) and the candidates of one size are
timed side by side in interleaved rotated rounds (`benchmarks._timing`);
rounds shrink with n (10 at n <= 512 down to 2 at n >= 2048, after one
untimed warm-up call each).

Load normalisation. The sizes run one after the other, minutes apart, on a
shared machine whose load drifts (one run saw its 1-minute load average go
from 2 to 13 on 2 cores between n=1024 and n=4096, which raised every fitted
slope by ~0.3). Each round therefore also times a fixed 512² matmul; a
step's load-normalised time is the median over rounds of its ratio to that
matmul in the same round, times the matmul's median over the whole run. The
fits and targets use the normalised times; the raw medians and their fits
are kept in the JSON and drawn hollow in the plot.

Memory is XLA's compiled `memory_analysis()` of each step: argument + output
+ temp − aliased bytes (the CPU backend reports all four; host_* are 0).
LAPACK custom calls (QR, SVD) allocate their workspace themselves, outside
XLA's buffers, so for the SVD polar and the QR/small SVD of the subspace
iteration the figure is a lower bound. XLA's `cost_analysis()` FLOP
estimates are recorded too (load-independent; for Fanion they count both
branches of the cold/warm `lax.cond`, 2 and 10 iterations).

Theory (square n×n): a polar iteration costs O(n³) (slope 3 in n); Fanion-k
costs O(n²k) per step (slope 2 in n at fixed k, at most 1 in k at fixed n),
plus O(nk²) for the QR of the n×k block and the SVD of the n×k matrix `GQ`,
which bends the k curve upwards once k is a sizeable fraction of n; memory
is O(n²) for every method. Slopes are least-squares fits of log time on
log n over n >= 1024 (below that, fixed per-call overheads flatten the
curves) and of log time on log k over 16 <= k <= 256.

Results go to `<out>/scaling.json` and `<out>/scaling.png`.
"""

from __future__ import annotations

import os

# See benchmarks/step.py: nested OpenBLAS threads inside jaxlib's LAPACK
# kernels oversubscribe the cores; must be set before jax loads OpenBLAS.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import fanion_optax as fo  # noqa: E402
from benchmarks import _timing  # noqa: E402
from benchmarks.step import make_step  # noqa: E402

FULL_SIZES, QUICK_SIZES = (256, 512, 1024, 2048, 4096), (64, 128)
FULL_K, QUICK_K = 32, 8
# Quick: the two ends of the fit range (the full run has six ranks).
FULL_K_SWEEP, QUICK_K_SWEEP = (1, 4, 16, 64, 256, 1024), (2, 32)
FULL_K_SIZE, QUICK_K_SIZE = 2048, 128
FULL_FIT_MIN_N, QUICK_FIT_MIN_N = 1024, 64
FULL_K_FIT, QUICK_K_FIT = (16, 256), (2, 32)
FULL_MAX_REPS, QUICK_MAX_REPS = 10, 2
MIN_REPS = 2
REPS_SIZE = 512
"""Sizes up to this get the full number of rounds; beyond, it falls as 1/n."""
SVD_MAX = 2048
LEARNING_RATE = 0.02

REFERENCE = 'muon_pe5'
FANION = 'fanion'
CALIBRATION = 'calibration'
CALIBRATION_N = 512
"""Size of the fixed matmul timed in every round to track the machine's load."""
NS_MAX = 2048
"""Newton–Schulz does Polar Express's arithmetic; beyond this it adds only time."""

# Target thresholds (fixed before the full run).
POLAR_SLOPE_RANGE = (2.5, 3.3)
FANION_SLOPE_MAX = 2.5
K_SLOPE_MAX = 1.1
MEMORY_SLOPE_RANGE = (1.9, 2.1)
THEORY_SLOPE = {REFERENCE: 3, 'muon_ns5': 3, 'muon_svd': 3, FANION: 2}


def polar_candidates() -> dict[str, dict[str, Any]]:
  """name -> {label, make}: the Muon steps of the size sweep."""
  return {
    REFERENCE: dict(
      label='muon (Polar Express, 5 steps)', make=lambda: fo.muon(LEARNING_RATE)
    ),
    'muon_ns5': dict(
      label='muon (Newton–Schulz, 5 steps)',
      make=lambda: fo.muon(LEARNING_RATE, polar_method='newton_schulz'),
    ),
    'muon_svd': dict(
      label='muon (exact SVD polar)',
      make=lambda: fo.muon(LEARNING_RATE, polar_method='svd'),
    ),
  }


def fanion_candidate(k: int) -> dict[str, Any]:
  return dict(
    label=f'fanion (k={k}, warm)', make=lambda: fo.fanion(LEARNING_RATE, k=k)
  )


# ----------------------------------------------------------------------------
# Measurement.


def _matmul(a, b):
  return a @ b


def reps_for(n: int, max_reps: int) -> int:
  return max(MIN_REPS, min(max_reps, round(max_reps * REPS_SIZE / n)))


def bench_point(
  n: int, specs: dict[str, dict[str, Any]], reps: int, bar, tag: str
) -> dict[str, dict[str, Any]]:
  """Compiles and times the steps of `specs` side by side at size n."""
  params = _timing.random_tree({'w': (n, n)}, seed=0, scale=0.02)
  grads = _timing.random_tree({'w': (n, n)}, seed=1)
  candidates, compile_s, extra = {}, {}, {}
  a = _timing.random_tree((CALIBRATION_N, CALIBRATION_N), seed=2)
  calibration, _ = _timing.compile_ahead(_matmul, a, a)
  candidates[CALIBRATION] = lambda: calibration(a, a)
  for name, spec in specs.items():
    tx = spec['make']()
    state = tx.init(params)
    step, compile_s[name] = _timing.compile_ahead(
      make_step(tx), params, state, grads
    )
    if name.startswith(FANION):
      # The step from `init` is the cold start; time the warm steps.
      state = jax.block_until_ready(step(params, state, grads)[1])
    candidates[name] = lambda s=step, st=state: s(params, st, grads)
    extra[name] = {
      'label': spec['label'],
      'memory': _timing.memory_of(step),
      'flops': _timing.flops_of(step),
    }
    bar.update()

  def progress(line):
    bar.update()

  timings = _timing.time_side_by_side(
    candidates, reps=reps, warmup=1, compile_s=compile_s, progress=progress
  )
  rows = _timing.summarize(
    timings, baseline=REFERENCE if REFERENCE in specs else None
  )
  calib = rows.pop(CALIBRATION)
  for name, row in rows.items():
    row.update(extra[name])
    row['per_calibration'] = statistics.median(
      t / c for t, c in zip(row['times_s'], calib['times_s'])
    )
  bar.write(
    f'  [{tag}] calibration {1e3 * calib["median_s"]:.1f} ms, '
    + ', '.join(
      f'{name} {1e3 * row["median_s"]:.1f} ms' for name, row in rows.items()
    )
  )
  return rows, calib


def normalize(rows: dict[str, dict[str, Any]], calibration_s: float) -> None:
  """Sets `normalized_s`: the time at the run's median machine speed."""
  for row in rows.values():
    row['normalized_s'] = row['per_calibration'] * calibration_s


# ----------------------------------------------------------------------------
# Fits and targets.


def fit_slope(
  xs: Sequence[float], ys: Sequence[float]
) -> dict[str, Any] | None:
  """Least-squares `log y = slope·log x + intercept`; None below 2 points."""
  if len(xs) < 2:
    return None
  slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
  return {
    'slope': float(slope),
    'intercept': float(intercept),
    'x': [float(x) for x in xs],
  }


def _value(row: dict[str, Any], key: str) -> float | None:
  if key == 'memory':
    return None if row['memory'] is None else row['memory']['total']
  return row.get(key)


def size_fits(
  sizes: list[dict[str, Any]], fit_min: int, key: str
) -> dict[str, Any]:
  """Per method: the fitted slope of `key` ('median_s', 'memory', 'flops')."""
  names = list(dict.fromkeys(name for s in sizes for name in s['methods']))
  fits = {}
  for name in names:
    xs, ys = [], []
    for s in sizes:
      row = s['methods'].get(name)
      if row is None or s['n'] < fit_min:
        continue
      value = _value(row, key)
      if value:
        xs.append(s['n'])
        ys.append(value)
    fits[name] = fit_slope(xs, ys)
  return fits


def k_fit(
  ks: dict[str, Any], k_range: tuple[int, int], key: str
) -> dict[str, Any] | None:
  lo, hi = k_range
  points = [
    (row['k'], _value(row, key))
    for row in ks['fanion'].values()
    if lo <= row['k'] <= hi and _value(row, key)
  ]
  return fit_slope(*zip(*points)) if len(points) >= 2 else None


def _slope(fit: dict[str, Any] | None) -> float | None:
  return None if fit is None else fit['slope']


def evaluate_targets(
  sizes: list[dict[str, Any]], ksweep: dict[str, Any], fits: dict[str, Any]
) -> dict[str, Any]:
  polar = _slope(fits['time'][REFERENCE])
  fanion = _slope(fits['time'][FANION])
  k_slope = _slope(fits['time_vs_k'])
  largest = sizes[-1]
  lo, hi = POLAR_SLOPE_RANGE
  mem_lo, mem_hi = MEMORY_SLOPE_RANGE
  mem_slopes = {name: _slope(fit) for name, fit in fits['memory'].items()}
  mem = {
    s['size']: (
      s['methods'][FANION]['memory'],
      s['methods'][REFERENCE]['memory'],
    )
    for s in sizes
  }
  return {
    'polar_time_slope_in_[2.5,3.3]': {
      'passed': polar is not None and lo <= polar <= hi,
      'range': [lo, hi],
      'slope': polar,
      'method': REFERENCE,
      'raw_slope': _slope(fits['time_raw'][REFERENCE]),
    },
    'fanion_time_slope_le_2.5_and_below_polar': {
      'passed': (
        fanion is not None
        and polar is not None
        and fanion <= FANION_SLOPE_MAX
        and fanion < polar
      ),
      'threshold': FANION_SLOPE_MAX,
      'slope': fanion,
      'polar_slope': polar,
      'raw_slope': _slope(fits['time_raw'][FANION]),
    },
    'fanion_faster_than_muon_at_largest_n': {
      'passed': largest['methods'][FANION]['paired_ratio'] < 1.0,
      'size': largest['size'],
      'paired_ratio': largest['methods'][FANION]['paired_ratio'],
      'ratio': largest['methods'][FANION]['ratio'],
    },
    'fanion_time_slope_in_k_le_1.1': {
      'passed': k_slope is not None and k_slope <= K_SLOPE_MAX,
      'threshold': K_SLOPE_MAX,
      'slope': k_slope,
      'k_range': list(ksweep['k_fit_range']),
      'raw_slope': _slope(fits['time_vs_k_raw']),
    },
    'memory_slope_in_[1.9,2.1]_every_method': {
      'passed': all(
        v is not None and mem_lo <= v <= mem_hi for v in mem_slopes.values()
      ),
      'range': [mem_lo, mem_hi],
      'slopes': mem_slopes,
    },
    'fanion_memory_le_muon_memory_every_n': {
      'passed': all(
        f is not None and m is not None and f['total'] <= m['total']
        for f, m in mem.values()
      ),
      'total_bytes_fanion_vs_muon': {
        size: [
          None if f is None else f['total'],
          None if m is None else m['total'],
        ]
        for size, (f, m) in mem.items()
      },
    },
  }


# ----------------------------------------------------------------------------
# Output.


def _mb(memory: dict[str, int] | None) -> float | None:
  return None if memory is None else memory['total'] / 2**20


def plot(document: dict[str, Any], path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  sizes, ksweep, fits = (
    document['sizes'],
    document['k_sweep'],
    document['fits'],
  )
  labels = document['labels']
  fig, axes = plt.subplots(2, 2, figsize=(13, 10))
  (ax_t, ax_k), (ax_m, ax_mk) = axes
  cmap = plt.get_cmap('tab10')
  colors = {name: cmap(i) for i, name in enumerate(labels)}

  for name, label in labels.items():
    pts = [(s['n'], s['methods'][name]) for s in sizes if name in s['methods']]
    if not pts:
      continue
    ns = [n for n, _ in pts]
    fit = fits['time'].get(name)
    suffix = (
      ''
      if fit is None
      else (f'; fitted slope {fit["slope"]:.2f} (theory {THEORY_SLOPE[name]})')
    )
    ax_t.plot(
      ns,
      [1e3 * row['normalized_s'] for _, row in pts],
      'o',
      color=colors[name],
      label=label + suffix,
    )
    ax_t.plot(
      ns,
      [1e3 * row['median_s'] for _, row in pts],
      'o',
      color=colors[name],
      mfc='none',
      ms=9,
      alpha=0.4,
    )
    if fit is not None:
      x = np.array([min(fit['x']), max(fit['x'])])
      ax_t.plot(
        x,
        1e3 * np.exp(fit['intercept']) * x ** fit['slope'],
        '-',
        color=colors[name],
        alpha=0.7,
      )
    mems = [(n, _mb(row['memory'])) for n, row in pts if row['memory']]
    if mems:
      mfit = fits['memory'].get(name)
      msuffix = '' if mfit is None else f'; slope {mfit["slope"]:.2f}'
      ax_m.plot(*zip(*mems), 'o-', color=colors[name], label=label + msuffix)
  ax_t.set_title(
    f'Step time vs n (lines: least-squares fits over'
    f' n >= {document["config"]["fit_min_n"]})'
  )
  ax_t.set_ylabel('ms per step (filled: load-normalised; hollow: raw)')
  ax_m.set_title('Compiled memory (argument + output + temp) vs n')
  ax_m.set_ylabel('MiB')
  for ax in (ax_t, ax_m):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks([s['n'] for s in sizes], [str(s['n']) for s in sizes])
    ax.set_xlabel('n (square n×n float32 matrix)')

  ks = list(ksweep['fanion'].values())
  kfit = fits['time_vs_k']
  suffix = (
    ''
    if kfit is None
    else (f'; fitted slope {kfit["slope"]:.2f} (theory <= 1)')
  )
  ax_k.plot(
    [r['k'] for r in ks],
    [1e3 * r['normalized_s'] for r in ks],
    'o-',
    color=colors[FANION],
    label='fanion (warm)' + suffix,
  )
  ax_k.plot(
    [r['k'] for r in ks],
    [1e3 * r['median_s'] for r in ks],
    'o',
    color=colors[FANION],
    mfc='none',
    ms=9,
    alpha=0.4,
  )
  if kfit is not None:
    x = np.array([min(kfit['x']), max(kfit['x'])])
    ax_k.plot(
      x,
      1e3 * np.exp(kfit['intercept']) * x ** kfit['slope'],
      '--',
      color='k',
      alpha=0.6,
      label=f'fit over k in'
      f' [{ksweep["k_fit_range"][0]}, {ksweep["k_fit_range"][1]}]',
    )
  ref = ksweep['reference']
  ax_k.axhline(
    1e3 * ref['normalized_s'],
    color=colors[REFERENCE],
    ls=':',
    label=labels[REFERENCE] + ' (same rounds)',
  )
  ax_mk.plot(
    [r['k'] for r in ks],
    [_mb(r['memory']) for r in ks],
    'o-',
    color=colors[FANION],
    label='fanion (warm)',
  )
  if ref['memory']:
    ax_mk.axhline(
      _mb(ref['memory']),
      color=colors[REFERENCE],
      ls=':',
      label=labels[REFERENCE],
    )
  n = ksweep['n']
  ax_k.set_title(f'Fanion-k step time vs k at n={n}')
  ax_k.set_ylabel('ms per step (filled: load-normalised; hollow: raw)')
  ax_mk.set_title(f'Compiled memory vs k at n={n} (linear MiB: affine in k)')
  ax_mk.set_ylabel('MiB')
  ax_k.set_yscale('log')
  for ax in (ax_k, ax_mk):
    ax.set_xscale('log', base=2)
    ax.set_xticks([r['k'] for r in ks], [str(r['k']) for r in ks])
    ax.set_xlabel('k')
  for ax in axes.flat:
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  meta, config = document['metadata'], document['config']
  fig.suptitle(
    f'fanion_optax optimizer step scaling, float32 on {meta["device_kind"]}'
    f' ({meta["cpu_affinity"]} CPUs, 1-min load avg'
    f' {meta["load_average"][0] if meta.get("load_average") else "?"})'
    + (' [quick]' if config['quick'] else '')
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _ms(seconds: float) -> str:
  ms = 1e3 * seconds
  return f'{ms:,.0f}' if ms >= 100 else f'{ms:.3g}'


def _slope_text(fit: dict[str, Any] | None) -> str:
  return '—' if fit is None else f'{fit["slope"]:.2f}'


def _last_k_slope(ks: dict[str, Any]) -> float:
  rows = list(ks['fanion'].values())[-2:]
  return fit_slope([r['k'] for r in rows], [r['normalized_s'] for r in rows])[
    'slope'
  ]


def _noise_text(fits: dict[str, Any]) -> str:
  """The gap between two fits of identical arithmetic: the fits' noise."""
  pe, ns = fits['time'].get(REFERENCE), fits['time'].get('muon_ns5')
  if pe is None or ns is None:
    return ''
  return (
    f' Newton–Schulz and Polar Express do the same arithmetic, yet their'
    f' fitted slopes differ by {abs(pe["slope"] - ns["slope"]):.2f}'
    f' (over n = {", ".join(str(int(x)) for x in ns["x"])}): the'
    f' noise of these fits on this shared machine.'
  )


def markdown(d: dict[str, Any]) -> str:
  """The tables of `benchmarks/README.md` for one result document."""
  labels, fits, config = d['labels'], d['fits'], d['config']
  names = list(labels)
  lines = [
    '| n | ' + ' | '.join(f'{labels[nm]} ms (MiB)' for nm in names) + ' |',
    '|---' * (len(names) + 1) + '|',
  ]
  for s in d['sizes']:
    cells = []
    for name in names:
      row = s['methods'].get(name)
      mem = None if row is None else _mb(row['memory'])
      cells.append(
        '—'
        if row is None
        else _ms(row['normalized_s']) + ('' if mem is None else f' ({mem:.0f})')
      )
    lines.append(f'| {s["n"]} | ' + ' | '.join(cells) + ' |')
  lines.append(
    '| fitted time slope | '
    + ' | '.join(_slope_text(fits['time'].get(nm)) for nm in names)
    + ' |'
  )
  lines.append(
    '| fitted time slope, raw times | '
    + ' | '.join(_slope_text(fits['time_raw'].get(nm)) for nm in names)
    + ' |'
  )
  lines.append(
    '| fitted memory slope | '
    + ' | '.join(_slope_text(fits['memory'].get(nm)) for nm in names)
    + ' |'
  )
  lines.append(
    '| XLA FLOP slope | '
    + ' | '.join(_slope_text(fits['flops'].get(nm)) for nm in names)
    + ' |'
  )
  ks = d['k_sweep']
  ref = ks['reference']
  klines = [
    '| k | ms/step | ratio to muon (Polar Express) | MiB |',
    '|---|---|---|---|',
  ]
  for row in ks['fanion'].values():
    klines.append(
      f'| {row["k"]} | {_ms(row["normalized_s"])} |'
      f' {row["paired_ratio"]:.3g} | {_mb(row["memory"]):.0f} |'
    )
  klines.append(
    f'| muon (Polar Express) | {_ms(ref["normalized_s"])} | 1 |'
    f' {_mb(ref["memory"]):.0f} |'
  )
  polar = fits['time'][REFERENCE]
  fanion = fits['time'][FANION]
  largest = d['sizes'][-1]
  text = (
    f'One full optimizer step (`tx.update` + `apply_updates`) on a single'
    f' square float32 matrix; Fanion-k warm-started (k={config["k"]} in'
    f' the size sweep). Times (ms) are load-normalised: each is the median'
    f' over rounds of its ratio to a fixed {config["calibration_n"]}²'
    f" matmul timed in the same round, times that matmul's median over the"
    f' whole run ({_ms(config["calibration_s"])} ms), so that load drift'
    f' on the shared machine between sizes does not bend the curves (the'
    f' fits of the raw medians are shown too). Slopes are least-squares fits on log-log axes over'
    f' n >= {config["fit_min_n"]} and {ks["k_fit_range"][0]} <= k <='
    f' {ks["k_fit_range"][1]}. Theory: the polar iterations cost O(n³)'
    f' (slope 3), Fanion-k O(n²k) (slope 2 in n, at most 1 in k),'
    f' every method O(n²) memory. Measured: Muon (Polar Express) slope'
    f' {_slope_text(polar)}, Fanion-{config["k"]} slope'
    f' {_slope_text(fanion)}; at n={largest["n"]} the Fanion step takes'
    f' {largest["methods"][FANION]["paired_ratio"]:.3g}x the Muon step;'
    f' the k slope is {_slope_text(fits["time_vs_k"])}.'
    f'{_noise_text(fits)} Below n = {config["fit_min_n"]} fixed per-call'
    f" costs flatten every curve. Fanion's n×k products and the O(n²)"
    f' elementwise work are memory-bound, so its time likely also steps up'
    f' as the n² matrices outgrow the L2 caches (2 MiB per core, 4 MiB in'
    f' all: one 1024² float32 matrix), which would steepen its fitted n'
    f' slope above 2 (its FLOP slope is'
    f' {_slope_text(fits["flops"].get(FANION))}).'
    f' The O(nk²) Cholesky-QR of the n×k blocks and the k×k SVD make the'
    f' k curve bend'
    f' upwards at large k (local slope {_last_k_slope(ks):.2f} over the'
    f" last two k). Memory is XLA's compiled argument + output +"
    f' temp bytes (LAPACK workspace of the k×k Cholesky and SVD not'
    f" included). The FLOP slope is that of XLA's `cost_analysis()`"
    f' estimate, which is load-independent (for Fanion it counts the'
    f" subspace iteration's loop body once whatever its trip count, so"
    f' its level, not its slope, is off).'
  )
  return (
    '\n'.join(lines)
    + '\n\n'
    + f'Rank sweep at n={ks["n"]}:\n\n'
    + '\n'.join(klines)
    + '\n\n'
    + text
    + '\n'
  )


# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = _timing.benchmark_parser(
    'scaling',
    __doc__,
    'tiny sizes and reps (a smoke test, a few seconds)',
    replot=True,
  )
  parser.add_argument(
    '--sizes',
    type=_timing.positive_ints,
    default=None,
    help='comma-separated n of the size sweep (default'
    f' {",".join(map(str, FULL_SIZES))})',
  )
  parser.add_argument(
    '--k',
    type=int,
    default=None,
    help=f'Fanion rank of the size sweep (default {FULL_K}, quick {QUICK_K})',
  )
  parser.add_argument(
    '--ks',
    type=_timing.positive_ints,
    default=None,
    help='comma-separated k of the rank sweep (default'
    f' {",".join(map(str, FULL_K_SWEEP))})',
  )
  parser.add_argument(
    '--k-size',
    type=int,
    default=None,
    help=f'n of the rank sweep (default {FULL_K_SIZE}, quick {QUICK_K_SIZE})',
  )
  parser.add_argument(
    '--svd-max',
    type=int,
    default=SVD_MAX,
    help=f'largest n timed with the SVD polar (default {SVD_MAX})',
  )
  parser.add_argument(
    '--max-reps',
    type=int,
    default=None,
    help=f'timed rounds at n <= {REPS_SIZE}, falling as 1/n'
    f' beyond, at least {MIN_REPS} (default {FULL_MAX_REPS},'
    f' quick {QUICK_MAX_REPS})',
  )
  args = parser.parse_args(argv)
  q = args.quick
  args.sizes = args.sizes or list(QUICK_SIZES if q else FULL_SIZES)
  args.k = args.k or (QUICK_K if q else FULL_K)
  args.ks = args.ks or list(QUICK_K_SWEEP if q else FULL_K_SWEEP)
  args.k_size = args.k_size or (QUICK_K_SIZE if q else FULL_K_SIZE)
  args.max_reps = args.max_reps or (QUICK_MAX_REPS if q else FULL_MAX_REPS)
  args.fit_min_n = QUICK_FIT_MIN_N if q else FULL_FIT_MIN_N
  args.k_fit_range = QUICK_K_FIT if q else FULL_K_FIT
  if args.k >= min(args.sizes):
    parser.error(
      f'--k={args.k} must be below every size (else Fanion is'
      ' the full polar factor)'
    )
  if max(args.ks) >= args.k_size:
    parser.error(f'every --ks must be below --k-size={args.k_size}')
  if len([n for n in args.sizes if n >= args.fit_min_n]) < 2:
    parser.error(f'need at least two sizes >= {args.fit_min_n} to fit')
  return args


def _target_detail(target: dict[str, Any]) -> str:
  return ', '.join(
    f'{key} {_timing.fmt(value)}'
    for key, value in target.items()
    if key in ('slope', 'paired_ratio')
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.replot:
    return _timing.replot('scaling', args.out, plot)
  start = time.perf_counter()
  load_start = _timing.load_average()
  polar = polar_candidates()
  specs_by_n = {}
  for n in args.sizes:
    max_n = {'muon_svd': args.svd_max, 'muon_ns5': NS_MAX}
    specs = {
      name: spec for name, spec in polar.items() if n <= max_n.get(name, n)
    }
    specs[FANION] = fanion_candidate(args.k)
    specs_by_n[n] = specs
  k_specs = {
    REFERENCE: polar[REFERENCE],
    **{f'{FANION}{k}': fanion_candidate(k) for k in args.ks},
  }
  k_reps = max(3, reps_for(args.k_size, args.max_reps))
  total = (
    sum(
      len(specs) + reps_for(n, args.max_reps) for n, specs in specs_by_n.items()
    )
    + len(k_specs)
    + k_reps
  )
  _timing.log(
    f'scaling benchmark ({"quick" if args.quick else "full"}):'
    f' n {args.sizes}, k={args.k}; k sweep {args.ks} at'
    f' n={args.k_size}; device {jax.devices()[0].device_kind}'
  )

  sizes, calibrations = [], []
  with _timing.progress_bar(total, 'scaling', unit='unit') as bar:
    for n, specs in specs_by_n.items():
      rows, calib = bench_point(
        n, specs, reps_for(n, args.max_reps), bar, f'n={n}'
      )
      sizes.append(
        {
          'size': f'{n}x{n}',
          'n': n,
          'calibration': calib,
          'reps': reps_for(n, args.max_reps),
          'methods': rows,
        }
      )
      calibrations += calib['times_s']
    rows, calib = bench_point(
      args.k_size, k_specs, k_reps, bar, f'k sweep n={args.k_size}'
    )
    calibrations += calib['times_s']
  calibration_s = statistics.median(calibrations)
  for point in [*(s['methods'] for s in sizes), rows]:
    normalize(point, calibration_s)
  fanion_rows = {}
  for k in args.ks:
    row = rows[f'{FANION}{k}']
    row['k'] = k
    fanion_rows[str(k)] = row
  ksweep = {
    'n': args.k_size,
    'reps': k_reps,
    'k_fit_range': list(args.k_fit_range),
    'calibration': calib,
    'reference': rows[REFERENCE],
    'fanion': fanion_rows,
  }
  fits = {
    'time': size_fits(sizes, args.fit_min_n, 'normalized_s'),
    'time_raw': size_fits(sizes, args.fit_min_n, 'median_s'),
    'memory': size_fits(sizes, args.fit_min_n, 'memory'),
    'flops': size_fits(sizes, args.fit_min_n, 'flops'),
    'time_vs_k': k_fit(ksweep, args.k_fit_range, 'normalized_s'),
    'time_vs_k_raw': k_fit(ksweep, args.k_fit_range, 'median_s'),
    'memory_vs_k': k_fit(ksweep, args.k_fit_range, 'memory'),
  }
  targets = evaluate_targets(sizes, ksweep, fits)
  elapsed = time.perf_counter() - start

  labels = {name: spec['label'] for name, spec in polar.items()}
  labels[FANION] = fanion_candidate(args.k)['label']
  payload = {
    'benchmark': 'scaling',
    'config': {
      'quick': args.quick,
      'sizes': args.sizes,
      'k': args.k,
      'k_sweep': args.ks,
      'k_sweep_n': args.k_size,
      'svd_max': args.svd_max,
      'ns_max': NS_MAX,
      'max_reps': args.max_reps,
      'calibration_n': CALIBRATION_N,
      'calibration_s': calibration_s,
      'fit_min_n': args.fit_min_n,
      'k_fit_range': list(args.k_fit_range),
      'dtype': 'float32',
      'learning_rate': LEARNING_RATE,
      'load_average_start': load_start,
      'step': 'tx.update + optax.apply_updates on {"w": (n, n)}',
      'timing': (
        'AOT-compiled per size (compile excluded), one warm-up'
        ' call each, then interleaved rotated rounds; median.'
        ' Fanion timed on the warm state after one cold step.'
      ),
      'memory': (
        'compiled.memory_analysis(): argument + output + temp -'
        ' alias bytes; LAPACK workspace not included'
      ),
    },
    'labels': labels,
    'sizes': sizes,
    'k_sweep': ksweep,
    'fits': fits,
    'targets': {name: bool(t['passed']) for name, t in targets.items()},
    'target_details': targets,
    'elapsed_s': elapsed,
  }
  for name, fit in fits['time'].items():
    _timing.log(f'  time slope {name}: {_slope_text(fit)}')
  _timing.log(f'  time slope vs k: {_slope_text(fits["time_vs_k"])}')
  _timing.print_targets(targets, _target_detail)
  return _timing.save_results('scaling', args.out, payload, argv, plot)


if __name__ == '__main__':
  main()
