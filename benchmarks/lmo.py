"""Benchmark of the LMO kernels: polar factors and the top-k (Ky Fan) LMO.

Run from the repository root:

  python -m benchmarks.lmo            # full run (2 CPU cores: ~5 min idle,
                                      # ~20 min at load average 4-5)
  python -m benchmarks.lmo --quick --out /tmp/lmo_quick   # smoke test

Times, side by side in one process (interleaved rounds, see `_timing`), on
float32 Gaussian matrices:

  * `polar(g, method="newton_schulz", steps=5)` (Jordan's quintic),
  * `polar(g, method="polar_express", steps=s)` for s in (5, 8),
  * `polar(g, method="svd")`,
  * optax's `orthogonalize_via_newton_schulz` with Jordan's coefficients and
    the same 5 steps (the reference every ratio is taken against),
  * `top_k_polar(g, k, method="svd")` and the warm-started subspace iteration
    `top_k_polar(g, k, state=..., return_state=True)` (2 iterations).

For the polar methods it reports the LMO gap `1 − ⟨G, O⟩ / (‖G‖_* σ₁(O))`
on Gaussian matrices and on matrices with a geometrically decaying spectrum
(condition 1e3); for the top-k methods the captured fraction of the Ky Fan-k
norm `⟨G, D⟩ / Σ_{i≤k} σᵢ(G)`.

A drift experiment then feeds the warm-start state of `top_k_polar` through a
slowly drifting sequence `G_{t+1} = G_t + 0.01·‖G_t‖_F/√(mn)·E_t` started from
`U diag(σ) Vᵀ` with `σᵢ = 1/(1 + 4i/k)` plus small noise, and times each warm
step against full `polar(g, method="svd")` and `polar(g)` on the same
matrices.

Results go to `<out>/lmo.json` and `<out>/lmo.png`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from optax.contrib import _muon

import fanion_optax
from benchmarks import _timing

FULL_SIZES = ((256, 256), (1024, 1024), (1024, 4096), (2048, 2048))
QUICK_SIZES = ((128, 128), (128, 256))
FULL_K, QUICK_K = 64, 8
FULL_REPS, QUICK_REPS = 8, 3
FULL_DRIFT_SHAPE, QUICK_DRIFT_SHAPE = (2048, 2048), (128, 256)
FULL_DRIFT_STEPS, QUICK_DRIFT_STEPS = 10, 5
DECAY_CONDITION = 1e3
DRIFT_RATE = 0.01
DRIFT_NOISE = 1e-3
DRIFT_WARMUP_STEPS = 2  # steps excluded from the capture target
WARM_REPEATS = 3  # timed calls of the warm step per drift step

OPTAX_NS = 'optax_newton_schulz5'
JORDAN_COEFFS = (3.4445, -4.7750, 2.0315)

# Target thresholds.
NS_RATIO_MAX = 1.05
CAPTURE_MIN = 0.999
SVD_SPEEDUP_MIN = 5.0


def _polar_fn(method: str, steps: int | None = None):
  def fn(g):
    return fanion_optax.polar(g, method=method, steps=steps)
  return fn


def _optax_ns(g):
  return _muon.orthogonalize_via_newton_schulz(
      g, jnp.asarray(JORDAN_COEFFS), ns_steps=5)


def _methods(k: int) -> dict[str, dict[str, Any]]:
  """name -> {fn, kind, label}; `kind` is 'polar' or 'topk'."""
  return {
      'newton_schulz5': dict(
          fn=_polar_fn('newton_schulz', 5), kind='polar',
          label='polar(newton_schulz, 5)'),
      OPTAX_NS: dict(
          fn=_optax_ns, kind='polar',
          label='optax orthogonalize_via_newton_schulz (5)'),
      'polar_express5': dict(
          fn=_polar_fn('polar_express', 5), kind='polar',
          label='polar(polar_express, 5)'),
      'polar_express8': dict(
          fn=_polar_fn('polar_express', 8), kind='polar',
          label='polar(polar_express, 8)'),
      'svd': dict(fn=_polar_fn('svd'), kind='polar', label='polar(svd)'),
      f'top{k}_svd': dict(
          fn=lambda g: fanion_optax.top_k_polar(g, k, method='svd'),
          kind='topk', label=f'top_k_polar(k={k}, svd)'),
      f'top{k}_warm': dict(
          fn=lambda g, state: fanion_optax.top_k_polar(
              g, k, state=state, return_state=True),
          kind='topk_warm', label=f'top_k_polar(k={k}, warm, iters=2)'),
  }


# ----------------------------------------------------------------------------
# Inputs.


def _seed(m: int, n: int, salt: int) -> int:
  return 1_000_003 * salt + 1009 * m + n


def gaussian(m: int, n: int) -> jax.Array:
  rng = np.random.default_rng(_seed(m, n, 1))
  return jnp.asarray(rng.standard_normal((m, n)), jnp.float32)


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
  return q * np.sign(np.diag(r))


def with_spectrum(m: int, n: int, sigma: np.ndarray, salt: int) -> np.ndarray:
  """`U diag(σ) Vᵀ` with Haar-like random orthonormal U, V (float64)."""
  rng = np.random.default_rng(_seed(m, n, salt))
  r = sigma.shape[0]
  u = _orthonormal(rng, m, r)
  v = _orthonormal(rng, n, r)
  return (u * sigma) @ v.T


def decaying(m: int, n: int, condition: float = DECAY_CONDITION) -> jax.Array:
  """Geometric spectrum from 1 down to `1/condition`."""
  r = min(m, n)
  sigma = condition ** (-np.arange(r) / max(r - 1, 1))
  return jnp.asarray(with_spectrum(m, n, sigma, salt=2), jnp.float32)


# ----------------------------------------------------------------------------
# Quality measures (jitted once per shape).


def _singular_values(g):
  return jnp.linalg.svd(g, compute_uv=False)


def _inner(g, d):
  return jnp.sum(g * d)


_gap = jax.jit(fanion_optax.lmo_gap)
_svals = jax.jit(_singular_values)
_inner_jit = jax.jit(_inner)


def kyfan_capture(g, d, k: int, svals=None) -> float:
  """`⟨G, D⟩ / Σ_{i≤k} σᵢ(G)`."""
  s = _svals(g) if svals is None else svals
  return float(_inner_jit(g, d) / jnp.sum(s[:k]))


# ----------------------------------------------------------------------------
# Sweep over sizes.


def _fmt_size(m: int, n: int) -> str:
  return f'{m}x{n}'


def _log(msg: str) -> None:
  print(msg, flush=True)


def bench_size(m: int, n: int, k: int, reps: int) -> dict[str, Any]:
  """Times every method at one shape and measures its quality."""
  t0 = time.perf_counter()
  methods = _methods(k)
  g = gaussian(m, n)
  g_decay = decaying(m, n)
  # Warm-start states: a cold start (10 iterations) on the same matrix.
  cold = jax.jit(lambda x: fanion_optax.top_k_polar(x, k, return_state=True))
  state0, state_decay = cold(g)[1], cold(g_decay)[1]

  compiled, compile_s, candidates = {}, {}, {}
  for name, spec in methods.items():
    args = (g, state0) if spec['kind'] == 'topk_warm' else (g,)
    compiled[name], compile_s[name] = _timing.compile_ahead(spec['fn'], *args)
    candidates[name] = (lambda c=compiled[name], a=args: c(*a))
  _log(f'  [{_fmt_size(m, n)}] compiled {len(compiled)} functions in'
       f' {sum(compile_s.values()):.1f}s; timing {reps} rounds')

  last = [time.perf_counter()]

  def progress(line):
    now = time.perf_counter()
    if now - last[0] > 15:
      _log(f'  [{_fmt_size(m, n)}] {line}')
      last[0] = now

  timings = _timing.time_side_by_side(
      candidates, reps=reps, warmup=1, compile_s=compile_s, progress=progress)
  rows = _timing.summarize(timings, baseline=OPTAX_NS)

  # Quality, outside the timed region.
  s_gauss, s_decay = _svals(g), _svals(g_decay)
  for name, spec in methods.items():
    row = rows[name]
    row['label'] = spec['label']
    row['kind'] = spec['kind']
    for tag, mat, svals, state in (('gaussian', g, s_gauss, state0),
                                   ('decaying', g_decay, s_decay,
                                    state_decay)):
      if spec['kind'] == 'topk_warm':
        d = compiled[name](mat, state)[0]
      else:
        d = compiled[name](mat)
      if spec['kind'] == 'polar':
        row[f'lmo_gap_{tag}'] = float(_gap(mat, d))
      else:
        row[f'kyfan_capture_{tag}'] = kyfan_capture(mat, d, k, svals)
  _log(f'  [{_fmt_size(m, n)}] done in {time.perf_counter() - t0:.1f}s')
  return {'size': _fmt_size(m, n), 'm': m, 'n': n, 'methods': rows}


# ----------------------------------------------------------------------------
# Drift experiment for the warm-started top-k LMO.


def _drift_step(g, key):
  m, n = g.shape
  scale = DRIFT_RATE * jnp.linalg.norm(g) / math.sqrt(m * n)
  return g + scale * jax.random.normal(key, g.shape, g.dtype)


def bench_drift(shape: tuple[int, int], k: int, steps: int) -> dict[str, Any]:
  """Feeds the warm-start state through a slowly drifting sequence."""
  t0 = time.perf_counter()
  m, n = shape
  r = min(m, n)
  sigma = 1.0 / (1.0 + 4.0 * np.arange(r) / k)
  a = with_spectrum(m, n, sigma, salt=3)
  rng = np.random.default_rng(_seed(m, n, 4))
  noise = rng.standard_normal((m, n))
  noise *= DRIFT_NOISE * np.linalg.norm(a) / math.sqrt(m * n)
  g = jnp.asarray(a + noise, jnp.float32)
  key = jax.random.PRNGKey(_seed(m, n, 5) % (2**31))

  def cold(g):
    return fanion_optax.top_k_polar(g, k, return_state=True)

  def warm(g, state):
    return fanion_optax.top_k_polar(g, k, state=state, return_state=True)

  def cold2(g):
    # No warm start, same cost as a warm step: shows what the state buys.
    return fanion_optax.top_k_polar(g, k, iters=2)

  state = cold(g)[1]
  c_cold, _ = _timing.compile_ahead(cold, g)
  c_warm, s_warm = _timing.compile_ahead(warm, g, state)
  c_cold2, _ = _timing.compile_ahead(cold2, g)
  c_svd, s_svd = _timing.compile_ahead(_polar_fn('svd'), g)
  c_polar, s_polar = _timing.compile_ahead(fanion_optax.polar, g)
  c_next, _ = _timing.compile_ahead(_drift_step, g, key)
  # Warm-up calls (first executions), untimed.
  for fn, args in ((c_warm, (g, state)), (c_svd, (g,)), (c_polar, (g,)),
                   (c_cold2, (g,))):
    jax.block_until_ready(fn(*args))
  _log(f'  [drift {_fmt_size(m, n)}, k={k}] compiled; {steps} steps')

  records = []
  warm_times, svd_times, polar_times = [], [], []
  state = None
  for t in range(steps):
    svals = _svals(g)
    if state is None:
      seconds, (d, state) = _timing.time_call(lambda g=g: c_cold(g))
      record = {'step': t, 'start': 'cold', 'seconds': seconds}
    else:
      prev = state
      candidates = {
          'warm': lambda g=g, s=prev: c_warm(g, s),
          'svd': lambda g=g: c_svd(g),
          'polar': lambda g=g: c_polar(g),
      }
      names = list(candidates)
      shift = t % len(names)
      round_times = _timing.run_round(candidates, names[shift:] + names[:shift])
      extra = [_timing.time_call(candidates['warm'])[0]
               for _ in range(WARM_REPEATS - 1)]
      step_warm = [round_times['warm'], *extra]
      warm_times.extend(step_warm)
      svd_times.append(round_times['svd'])
      polar_times.append(round_times['polar'])
      d, state = c_warm(g, prev)
      record = {'step': t, 'start': 'warm',
                'seconds': float(np.median(step_warm)),
                'svd_seconds': round_times['svd'],
                'polar_seconds': round_times['polar']}
    record['capture'] = kyfan_capture(g, d, k, svals)
    record['capture_cold_iters2'] = kyfan_capture(g, c_cold2(g), k, svals)
    kyfan = float(jnp.sum(svals[:k]))
    record['sigma_k_over_sigma_k1'] = float(svals[k - 1] / svals[k])
    record['kyfan_norm'] = kyfan
    records.append(record)
    _log(f'    step {t}: {record["start"]:4s} capture={record["capture"]:.6f}'
         f' (cold iters=2: {record["capture_cold_iters2"]:.6f})'
         f' {1e3 * record["seconds"]:.1f} ms')
    g = c_next(g, jax.random.fold_in(key, t))

  warm_median = float(np.median(warm_times))
  svd_median = float(np.median(svd_times))
  polar_median = float(np.median(polar_times))
  late = [rec['capture'] for rec in records[DRIFT_WARMUP_STEPS:]]
  _log(f'  [drift] done in {time.perf_counter() - t0:.1f}s')
  return {
      'shape': [m, n],
      'k': k,
      'steps': steps,
      'design': (
          f'G_0 = U diag(sigma) V^T + noise, sigma_i = 1/(1 + 4 i / k), noise'
          f' Gaussian with std {DRIFT_NOISE}*||A||_F/sqrt(mn); G_(t+1) = G_t +'
          f' {DRIFT_RATE}*||G_t||_F/sqrt(mn)*E_t, E_t standard Gaussian. Step'
          ' 0 is a cold start (iters=10); every later step is warm-started'
          ' from the previous state (iters=2). capture = <G_t, D_t> /'
          ' sum_{i<=k} sigma_i(G_t).'),
      'warm_iters': fanion_optax.lowrank.WARM_ITERS,
      'cold_iters': fanion_optax.lowrank.COLD_ITERS,
      'compile_s': {'warm': s_warm, 'svd': s_svd, 'polar': s_polar},
      'records': records,
      'warm_median_s': warm_median,
      'warm_times_s': warm_times,
      'svd_median_s': svd_median,
      'svd_times_s': svd_times,
      'polar_median_s': polar_median,
      'polar_times_s': polar_times,
      'speedup_vs_svd': svd_median / warm_median,
      'speedup_vs_polar': polar_median / warm_median,
      'min_capture_after_warmup': min(late) if late else None,
  }


# ----------------------------------------------------------------------------
# Targets, table, plot.


def evaluate_targets(sizes: list[dict[str, Any]], drift: dict[str, Any]
                     ) -> dict[str, Any]:
  ns_ratios = {s['size']: s['methods']['newton_schulz5']['ratio']
               for s in sizes}
  ns_paired = {s['size']: s['methods']['newton_schulz5']['paired_ratio']
               for s in sizes}
  ns_min = {s['size']: (s['methods']['newton_schulz5']['min_s']
                        / s['methods'][OPTAX_NS]['min_s']) for s in sizes}
  gaps = {s['size']: (s['methods']['polar_express5']['lmo_gap_gaussian'],
                      s['methods']['newton_schulz5']['lmo_gap_gaussian'])
          for s in sizes}
  captures = [rec['capture'] for rec in drift['records']]
  late = captures[DRIFT_WARMUP_STEPS:]
  return {
      'ns_vs_optax_ratio_le_1.05': {
          'passed': all(r <= NS_RATIO_MAX for r in ns_ratios.values()),
          'threshold': NS_RATIO_MAX,
          'ratio_of_medians': ns_ratios,
          'paired_ratio': ns_paired,
          'ratio_of_mins': ns_min,
      },
      'polar_express5_gap_lt_newton_schulz5_gaussian': {
          'passed': all(pe < ns for pe, ns in gaps.values()),
          'gap_polar_express5_vs_newton_schulz5': gaps,
      },
      'warm_topk_capture_ge_0.999': {
          'passed': bool(late) and min(late) >= CAPTURE_MIN,
          'threshold': CAPTURE_MIN,
          'after_step': DRIFT_WARMUP_STEPS,
          'captures': captures,
      },
      'warm_topk_5x_faster_than_svd_polar': {
          'passed': drift['speedup_vs_svd'] >= SVD_SPEEDUP_MIN,
          'threshold': SVD_SPEEDUP_MIN,
          'speedup': drift['speedup_vs_svd'],
      },
      'warm_topk_faster_than_polar_express5': {
          'passed': drift['speedup_vs_polar'] > 1.0,
          'speedup': drift['speedup_vs_polar'],
      },
  }


def _num(x: float | None, fmt: str) -> str:
  return '-' if x is None else format(x, fmt)


def print_table(sizes: list[dict[str, Any]]) -> None:
  head = (f'{"size":>10} {"method":<22} {"median ms":>10} {"min ms":>9}'
          f' {"x optax":>8} {"paired":>7} {"gap gauss":>10} {"gap decay":>10}'
          f' {"capt gauss":>10} {"capt decay":>10}')
  print(head)
  print('-' * len(head))
  for s in sizes:
    for name, row in s['methods'].items():
      print(f'{s["size"]:>10} {name:<22} {1e3 * row["median_s"]:>10.2f}'
            f' {1e3 * row["min_s"]:>9.2f} {row["ratio"]:>8.3f}'
            f' {row["paired_ratio"]:>7.3f}'
            f' {_num(row.get("lmo_gap_gaussian"), ".2e"):>10}'
            f' {_num(row.get("lmo_gap_decaying"), ".2e"):>10}'
            f' {_num(row.get("kyfan_capture_gaussian"), ".6f"):>10}'
            f' {_num(row.get("kyfan_capture_decaying"), ".6f"):>10}')
    print()


def print_targets(targets: dict[str, Any], drift: dict[str, Any]) -> None:
  print(f'drift {drift["shape"][0]}x{drift["shape"][1]}, k={drift["k"]}:'
        f' warm step {1e3 * drift["warm_median_s"]:.1f} ms,'
        f' polar(svd) {1e3 * drift["svd_median_s"]:.1f} ms'
        f' ({drift["speedup_vs_svd"]:.1f}x),'
        f' polar() {1e3 * drift["polar_median_s"]:.1f} ms'
        f' ({drift["speedup_vs_polar"]:.1f}x)')
  for name, target in targets.items():
    print(f'  [{"PASS" if target["passed"] else "FAIL"}] {name}')


GAP_FLOOR = 1e-8


def plot(sizes: list[dict[str, Any]], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(sizes[0]['methods'])
  labels = [s['size'] for s in sizes]
  fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(14, 6.5))
  cmap = plt.get_cmap('tab10')
  colors = {name: cmap(i % 10) for i, name in enumerate(names)}
  x = np.arange(len(sizes))
  for name in names:
    times = [1e3 * s['methods'][name]['median_s'] for s in sizes]
    style = '--' if name == OPTAX_NS else '-'
    ax_t.plot(x, times, style, marker='o', color=colors[name], label=name)
  ax_t.set_xticks(x, labels)
  ax_t.set_yscale('log')
  ax_t.set_xlabel('matrix size (float32)')
  ax_t.set_ylabel('median time per call [ms]')
  ax_t.set_title('Time per method')
  ax_t.grid(True, which='both', alpha=0.3)
  ax_t.legend(fontsize=8)

  markers = ['o', 's', '^', 'D', 'v', 'P', 'X']
  polar_names = [nm for nm in names if sizes[0]['methods'][nm]['kind'] == 'polar']
  for i, s in enumerate(sizes):
    marker = markers[i % len(markers)]
    pts = []
    for name in polar_names:
      row = s['methods'][name]
      t = 1e3 * row['median_s']
      for tag, fill in (('gaussian', True), ('decaying', False)):
        gap = max(row[f'lmo_gap_{tag}'], GAP_FLOOR)
        ax_f.scatter(t, gap, marker=marker, s=40 if fill else 110,
                     facecolors=colors[name] if fill else 'none',
                     edgecolors=colors[name])
      pts.append((t, max(row['lmo_gap_gaussian'], GAP_FLOOR)))
    # Pareto frontier of the Gaussian points at this size.
    pts.sort()
    front, best = [], math.inf
    for t, gap in pts:
      if gap < best:
        front.append((t, gap))
        best = gap
    ax_f.plot(*zip(*front), color='gray', alpha=0.5, lw=1)
  for name in polar_names:
    ax_f.scatter([], [], color=colors[name], label=name)
  for i, s in enumerate(sizes):
    ax_f.scatter([], [], marker=markers[i % len(markers)], color='k',
                 label=s['size'])
  ax_f.scatter([], [], facecolors='none', edgecolors='k',
               label=f'decaying spectrum (cond {DECAY_CONDITION:g})')
  ax_f.set_xscale('log')
  ax_f.set_yscale('log')
  ax_f.set_xlabel('median time per call [ms]')
  ax_f.set_ylabel(f'LMO gap (floored at {GAP_FLOOR:g})')
  ax_f.set_title('LMO gap vs time (filled: Gaussian; line: Gaussian frontier)')
  ax_f.grid(True, which='both', alpha=0.3)
  ax_f.legend(fontsize=7, ncol=4, loc='upper center',
              bbox_to_anchor=(0.5, -0.13))
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------


def _parse_sizes(text: str) -> list[tuple[int, int]]:
  sizes = []
  for item in text.split(','):
    item = item.strip().lower()
    if not item:
      continue
    try:
      m, n = (int(v) for v in item.split('x'))
    except ValueError:
      raise argparse.ArgumentTypeError(
          f'sizes must look like 256x256,1024x4096; got {item!r}') from None
    if m < 1 or n < 1:
      raise argparse.ArgumentTypeError(f'sizes must be positive, got {item!r}')
    sizes.append((m, n))
  if not sizes:
    raise argparse.ArgumentTypeError('sizes must not be empty')
  return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m benchmarks.lmo', description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes and reps (a smoke test, a few seconds)')
  parser.add_argument('--sizes', type=_parse_sizes, default=None,
                      help='comma-separated MxN list, e.g. 256x256,1024x1024')
  parser.add_argument('--reps', type=int, default=None,
                      help=f'timed rounds per size (default {FULL_REPS},'
                      f' quick {QUICK_REPS})')
  parser.add_argument('--k', type=int, default=None,
                      help=f'top-k rank (default {FULL_K}, quick {QUICK_K})')
  parser.add_argument('--drift-size', type=_parse_sizes, default=None,
                      help='shape of the drift experiment (default'
                      ' 2048x2048, quick 128x256)')
  parser.add_argument('--drift-steps', type=int, default=None,
                      help=f'steps of the drift experiment (default'
                      f' {FULL_DRIFT_STEPS}, quick {QUICK_DRIFT_STEPS})')
  parser.add_argument('--out', default=os.path.join('benchmarks', 'results'),
                      help='results directory (default benchmarks/results)')
  parser.add_argument('--replot', action='store_true',
                      help='only redraw <out>/lmo.png from <out>/lmo.json')
  args = parser.parse_args(argv)
  quick = args.quick
  args.sizes = args.sizes or list(QUICK_SIZES if quick else FULL_SIZES)
  args.reps = args.reps or (QUICK_REPS if quick else FULL_REPS)
  args.k = args.k or (QUICK_K if quick else FULL_K)
  args.drift_size = (args.drift_size[0] if args.drift_size
                     else (QUICK_DRIFT_SHAPE if quick else FULL_DRIFT_SHAPE))
  args.drift_steps = args.drift_steps or (
      QUICK_DRIFT_STEPS if quick else FULL_DRIFT_STEPS)
  for name in ('reps', 'k', 'drift_steps'):
    if getattr(args, name) < 1:
      parser.error(f'--{name.replace("_", "-")} must be >= 1')
  if args.drift_steps <= DRIFT_WARMUP_STEPS:
    parser.error(f'--drift-steps must be > {DRIFT_WARMUP_STEPS}')
  small = [s for s in [*args.sizes, args.drift_size] if min(s) <= args.k]
  if small:
    parser.error(f'every size needs min(m, n) > k={args.k}, got {small}')
  return args


def _title(document: dict[str, Any]) -> str:
  meta, config = document['metadata'], document['config']
  load = config.get('load_average_start')
  return (f'fanion_optax LMO kernels, float32 on {meta["device_kind"]}'
          f' ({meta["cpu_affinity"]} CPUs'
          + (f', 1-min load avg {load[0]:.1f} at start' if load else '')
          + (f', {meta["load_average"][0]:.1f} at end'
             if meta.get('load_average') else '') + ')'
          + (' [quick]' if config['quick'] else ''))


def replot(out: str) -> None:
  """Redraws `<out>/lmo.png` from an existing `<out>/lmo.json`."""
  import json
  with open(os.path.join(out, 'lmo.json'), encoding='utf-8') as f:
    document = json.load(f)
  plot(document['sizes'], os.path.join(out, 'lmo.png'), _title(document))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.replot:
    replot(args.out)
    _log(f'redrew {os.path.join(args.out, "lmo.png")}')
    return {}
  start = time.perf_counter()
  load_start = _timing.load_average()
  _log(f'LMO benchmark ({"quick" if args.quick else "full"}):'
       f' sizes {[_fmt_size(*s) for s in args.sizes]}, reps {args.reps},'
       f' k {args.k}, device {jax.devices()[0].device_kind}')

  sizes = []
  for m, n in args.sizes:
    sizes.append(bench_size(m, n, args.k, args.reps))
  drift = bench_drift(args.drift_size, args.k, args.drift_steps)
  targets = evaluate_targets(sizes, drift)
  elapsed = time.perf_counter() - start

  print()
  print_table(sizes)
  print_targets(targets, drift)

  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, 'lmo.json')
  png_path = os.path.join(args.out, 'lmo.png')
  payload = {
      'benchmark': 'lmo',
      'config': {
          'quick': args.quick,
          'sizes': [_fmt_size(*s) for s in args.sizes],
          'reps': args.reps,
          'warmup': 1,
          'k': args.k,
          'dtype': 'float32',
          'baseline': OPTAX_NS,
          'decay_condition': DECAY_CONDITION,
          'drift_shape': _fmt_size(*args.drift_size),
          'drift_steps': args.drift_steps,
          'load_average_start': load_start,
          'timing': ('AOT-compiled per shape (compile excluded), one warm-up'
                     ' call each, then interleaved rotated rounds; median'),
      },
      'methods': {name: spec['label']
                  for name, spec in _methods(args.k).items()},
      'sizes': sizes,
      'drift': drift,
      'targets': {name: t['passed'] for name, t in targets.items()},
      'target_details': targets,
      'elapsed_s': elapsed,
  }
  document = _timing.write_json(
      json_path, payload, argv=['-m', 'benchmarks.lmo', *argv])
  plot(sizes, png_path, _title(document))
  _log(f'wrote {json_path} and {png_path} ({elapsed:.0f}s)')
  return document


def markdown(d: dict[str, Any]) -> str:
  """The tables of `benchmarks/README.md` for one result document."""
  methods = d['methods']
  lines = ['| size | method | median ms | ratio to optax NS | gap (Gaussian) |'
           ' gap (decaying) |', '|---|---|---|---|---|---|']
  for entry in d['sizes']:
    for key, r in entry['methods'].items():
      lines.append(
          f'| {entry["size"]} | {methods.get(key, key)} |'
          f' {1e3 * r["median_s"]:.2f} | {_timing.fmt(r.get("ratio"))} |'
          f' {_timing.fmt(r.get("lmo_gap_gaussian", "—"))} |'
          f' {_timing.fmt(r.get("lmo_gap_decaying", "—"))} |')
  drift = d.get('drift', {})
  caps = [f'{r["capture"]:.5f}' for r in drift.get('records', [])]
  text = '\n'.join(lines) + '\n'
  if caps:
    text += (f'\nWarm-started top-{drift.get("k")} on a drifting'
             f' {drift.get("shape")} sequence, Ky Fan-k captured per step:'
             f' {", ".join(caps)}.\n\nDesign: {drift.get("design", "")}\n')
  return text


if __name__ == '__main__':
  main()
