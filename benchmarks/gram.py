"""Gram Newton–Schulz against the standard iteration: FLOPs, accuracy, CPU time.

Run from the repository root:

  python -m benchmarks.gram            # full run
  python -m benchmarks.gram --quick --out /tmp/gram_quick   # smoke test
  python -m benchmarks.gram --replot   # redraw the PNG from the JSON

`fanion_optax._gram.gram_newton_schulz_iterate` runs the odd-quintic
Newton–Schulz steps on the m×m Gram matrix of a wide m×n matrix and applies
the accumulated polynomial once (Dao lab, 2026; SPEC.md §3.4), restarting
where `restart_steps` says (one restart for five Polar Express or Jordan
steps, two for eight). Every input is a wide matrix, Frobenius-normalised in
float32 as `polar_factor` does (safety 1.01 for Polar Express), then cast
to the input dtype; the iterations are compared on that same input.

1. Aspect sweep, m x n for n/m in 1, 1.5, 2, 4, 8 (full m = 256):
   * FLOPs of Gram ÷ standard from XLA's compiled cost analysis, Polar
     Express 5 steps: float32 without restart and with the default restart,
     and bf16 (float32 recursion, Q applied in two bf16 parts); next to the
     matmul count of `gram_newton_schulz_flops` and the `gram="auto"` rule
     `gram_saves_flops`.
   * Largest relative difference `max|Gram − standard| / max|standard|` (and
     the Frobenius one) in float32 for Jordan 5, Polar Express 5 and 8 and a
     user row set, on a Gaussian matrix and a geometric spectrum of
     condition 1e3.
   * LMO gap `1 − ⟨G, O⟩ / (‖G‖_* σ₁(O))` of Polar Express 5 and Jordan 5
     in float32 (standard and Gram) and from a bf16 input: the standard
     iteration in bf16 throughout (`_plain_iterate`, 0.2.0's
     `compute_dtype=bfloat16`), with float32 accumulation
     (`newton_schulz_iterate`, since 0.3), Gram (float32 recursion) and
     Gram with a bf16 recursion.
2. The FLOP targets at 768x3072 and 512x4096 (compile only).
3. CPU time of Gram ÷ standard (float32, Polar Express 5), AOT-compiled and
   timed side by side in interleaved rotated rounds in one process (see
   `_timing`), at 768x3072 and 1024x8192, with the relative difference and
   LMO gaps there (and the relative difference on a condition-1e3
   spectrum).
4. The bf16 accuracy of the standard iteration: LMO gap of a bf16 input ÷
   the float32 gap on Gaussian 64x96 and 1024x4096, for bf16 everywhere
   (normalised in bf16, as `polar_factor(compute_dtype=bfloat16)` does
   today) and with float32 accumulation, normalised in bf16 or in float32.

CPU timings are noisy on a shared machine; the 1-minute load average at
start and end is stored with the results and in the plot's title. Results
go to `<out>/gram.json` and `<out>/gram.png`.
"""

from __future__ import annotations

import os

# jaxlib's CPU LAPACK kernels (SVD) come from SciPy's OpenBLAS; its own
# threads oversubscribe 2 busy cores (see benchmarks/step.py).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _timing  # noqa: E402
from fanion_optax import _gram  # noqa: E402
from fanion_optax import _linalg  # noqa: E402
from fanion_optax.polar import DEFAULT_EPS  # noqa: E402
from fanion_optax.polar import coefficient_schedule  # noqa: E402
from fanion_optax.polar import newton_schulz_iterate  # noqa: E402

FULL_ASPECTS = (1.0, 1.5, 2.0, 4.0, 8.0)
# Quick: one aspect on each side of the float32 crossover (n/m = 1.5), so
# both answers of the `gram="auto"` rule; the full run adds 1.5, 2 and 8.
QUICK_ASPECTS = (1.0, 4.0)
FULL_SWEEP_M, QUICK_SWEEP_M = 256, 32
FLOP_TARGETS = (  # (m, n, ratio without restart, ratio with one restart)
  (768, 3072, 0.6, 0.75),
  (512, 4096, 0.45, 0.6),
)
QUICK_FLOP_SHRINK = 8  # quick mode: same aspect ratios, sizes / 8
FULL_TIME_SIZES = ((768, 3072), (1024, 8192))
QUICK_TIME_SIZES = ((64, 256),)
FULL_BF16_SIZES = ((64, 96), (1024, 4096))
QUICK_BF16_SIZES = ((64, 96),)
FULL_REPS, QUICK_REPS = 5, 2
DECAY_CONDITION = 1e3
USER_ROWS = (
  (3.0, -3.2, 1.2),
  (2.5, -2.2, 0.7),
  (2.0, -1.5, 0.5),
  (1.5, -0.5, 0.0),
)
SCHEDULES = ('jordan5', 'polar_express5', 'polar_express8', 'user')
GAP_SCHEDULES = ('polar_express5', 'jordan5')
SPECTRA = ('gaussian', 'cond1e3')

# Targets.
MAX_REL_DIFF = 1e-4
TIME_RATIO_MAX = 0.75
BF16_GRAM_GAP_FACTOR = 1.10  # Gram's bf16 gap ÷ the standard's bf16 gap
BF16_NS_GAP_FACTOR = 1.02  # standard bf16 gap ÷ float32 gap


def schedule(name: str) -> tuple[tuple[tuple[float, float, float], ...], float]:
  """`(rows, safety)` of a schedule name of `SCHEDULES`."""
  if name == 'user':
    return USER_ROWS, 1.0
  method = 'newton_schulz' if name.startswith('jordan') else 'polar_express'
  rows, safety = coefficient_schedule(method, int(name[-1]))
  assert rows is not None
  return rows, safety


# ----------------------------------------------------------------------------
# Inputs and measures.


def _seed(m: int, n: int, salt: int) -> int:
  return 1_000_003 * salt + 1009 * m + n


def gaussian(m: int, n: int) -> jax.Array:
  rng = np.random.default_rng(_seed(m, n, 1))
  return jnp.asarray(rng.standard_normal((m, n)), jnp.float32)


def decaying(m: int, n: int) -> jax.Array:
  """`U diag(σ) Vᵀ`, σ geometric from 1 to `1/DECAY_CONDITION`."""
  rng = np.random.default_rng(_seed(m, n, 2))
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, m)))
  sigma = DECAY_CONDITION ** (-np.arange(m) / max(m - 1, 1))
  return jnp.asarray((u * sigma) @ v.T, jnp.float32)


def matrix(kind: str, m: int, n: int) -> jax.Array:
  return gaussian(m, n) if kind == 'gaussian' else decaying(m, n)


def normalized(
  g: jax.Array,
  safety: float,
  dtype: Any = jnp.float32,
  norm_dtype: Any = jnp.float32,
) -> jax.Array:
  """`g` in `dtype`, Frobenius-normalised in `norm_dtype` (`polar_factor`)."""
  x = g.astype(dtype).astype(norm_dtype)
  x = _linalg.frobenius_normalized(x, safety=safety, eps=DEFAULT_EPS)
  return x.astype(dtype)


@jax.jit
def _singular_values(x):
  return jnp.linalg.svd(x.astype(jnp.float32), compute_uv=False)


def gap(g: jax.Array, o: jax.Array, nuclear: float | None = None) -> float:
  """`lmo_gap(g, o)` with `‖g‖_*` computed once per matrix."""
  if nuclear is None:
    nuclear = float(jnp.sum(_singular_values(g)))
  o = o.astype(jnp.float32)
  sigma1 = float(_singular_values(o)[0])
  return 1.0 - float(jnp.sum(g * o)) / (nuclear * sigma1)


def rel_diff(a: jax.Array, b: jax.Array) -> dict[str, float]:
  """`max|a − b| / max|b|` and `‖a − b‖_F / ‖b‖_F`, computed in float64."""
  a64 = np.asarray(a.astype(jnp.float32), np.float64)
  b64 = np.asarray(b.astype(jnp.float32), np.float64)
  return {
    'max': float(np.abs(a64 - b64).max() / np.abs(b64).max()),
    'fro': float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64)),
  }


def _plain_iterate(x: jax.Array, rows) -> jax.Array:
  """The iteration with every operation in `x.dtype` (0.2.0's bf16)."""
  for a, b, c in rows:
    gram = x @ _linalg.swap_last(x)
    x = a * x + (b * gram + c * (gram @ gram)) @ x
  return x


def _iterate(
  kind: str, rows, restart_after=None, jit: bool = True
) -> Callable[..., Any]:
  """An iterate of `x`: standard, accumulating, gram or gram_bf16.

  Jitted for cost analysis and timing; eager (`jit=False`) for the sweep's
  many schedules, where JAX's per-operation cache compiles each shape once
  for all coefficient rows instead of once per schedule.
  """
  if kind == 'standard':
    fn = lambda x: _plain_iterate(x, rows)
  elif kind == 'accumulating':
    fn = lambda x: newton_schulz_iterate(x, rows)
  elif kind == 'gram':
    fn = lambda x: _gram.gram_newton_schulz_iterate(
      x, rows, restart_after=restart_after
    )
  else:  # gram with the m×m recursion in the input's (half) dtype
    fn = lambda x: _gram.gram_newton_schulz_iterate(
      x, rows, restart_after=restart_after, recursion_dtype=x.dtype
    )
  return jax.jit(fn) if jit else fn


def xla_flops(fn: Callable[..., Any], m: int, n: int, dtype: Any) -> float:
  compiled, _ = _timing.compile_ahead(fn, jax.ShapeDtypeStruct((m, n), dtype))
  flops = _timing.flops_of(compiled)
  if flops is None:
    raise RuntimeError('XLA reported no cost analysis on this backend')
  return flops


def flop_ratios(m: int, n: int) -> dict[str, Any]:
  """Cost-analysis FLOPs of Gram ÷ standard, Polar Express 5."""
  rows, _ = schedule('polar_express5')
  restarts = _gram.restart_steps(rows)
  standard = xla_flops(_iterate('standard', rows), m, n, jnp.float32)
  standard16 = xla_flops(_iterate('accumulating', rows), m, n, jnp.bfloat16)
  plain = xla_flops(_iterate('gram', rows, ()), m, n, jnp.float32)
  default = xla_flops(_iterate('gram', rows), m, n, jnp.float32)
  bf16 = xla_flops(_iterate('gram', rows), m, n, jnp.bfloat16)
  model = _gram.newton_schulz_flops(m, n, len(rows))
  return {
    'standard_flops': standard,
    'ratio_no_restart': plain / standard,
    'ratio_default_restart': default / standard,
    'ratio_bf16_split': bf16 / standard16,
    'restarts': list(restarts),
    'model_no_restart': _gram.gram_newton_schulz_flops(m, n, len(rows), 0)
    / model,
    'model_default_restart': _gram.gram_newton_schulz_flops(
      m, n, len(rows), len(restarts)
    )
    / model,
    'model_bf16_split': _gram.gram_newton_schulz_flops(
      m, n, len(rows), len(restarts), split=True
    )
    / model,
    'auto_f32': _gram.gram_saves_flops(m, n, len(rows), len(restarts)),
    'auto_bf16': _gram.gram_saves_flops(
      m, n, len(rows), len(restarts), split=True
    ),
  }


# ----------------------------------------------------------------------------
# 1. Aspect sweep.


def bench_aspect(m: int, aspect: float, bar) -> dict[str, Any]:
  n = int(round(m * aspect))
  entry: dict[str, Any] = {
    'm': m,
    'n': n,
    'aspect': aspect,
    'flops': flop_ratios(m, n),
  }
  diffs: dict[str, dict[str, Any]] = {}
  gaps: dict[str, dict[str, Any]] = {}
  for kind in SPECTRA:
    g = matrix(kind, m, n)
    nuclear = float(jnp.sum(_singular_values(g)))
    for name in SCHEDULES:
      rows, safety = schedule(name)
      x = normalized(g, safety)
      standard = _iterate('standard', rows, jit=False)(x)
      gram = _iterate('gram', rows, jit=False)(x)
      diffs[f'{name} {kind}'] = rel_diff(gram, standard)
      if name not in GAP_SCHEDULES:
        continue
      x16 = normalized(g, safety, jnp.bfloat16)
      gaps[f'{name} {kind}'] = {
        'f32_standard': gap(g, standard, nuclear),
        'f32_gram': gap(g, gram, nuclear),
        **{
          variant: gap(g, _iterate(kind_, rows, jit=False)(x16), nuclear)
          for variant, kind_ in (
            ('bf16_everywhere', 'standard'),
            ('bf16_accumulating', 'accumulating'),
            ('bf16_gram', 'gram'),
            ('bf16_gram_bf16_recursion', 'gram_bf16'),
          )
        },
      }
  entry['rel_diff_f32'] = diffs
  entry['lmo_gap'] = gaps
  worst = max(d['max'] for d in diffs.values())
  bar.write(
    f'  [{m}x{n}] FLOPs ratio {entry["flops"]["ratio_no_restart"]:.3f}'
    f' / {entry["flops"]["ratio_default_restart"]:.3f} (restart) /'
    f' {entry["flops"]["ratio_bf16_split"]:.3f} (bf16); worst rel'
    f' diff {worst:.1e}'
  )
  bar.update()
  return entry


# ----------------------------------------------------------------------------
# 3. CPU time.


def bench_time(m: int, n: int, reps: int, bar) -> dict[str, Any]:
  rows, safety = schedule('polar_express5')
  g = gaussian(m, n)
  x = normalized(g, safety)
  fns = {
    'standard': lambda x: newton_schulz_iterate(x, rows),
    'gram': lambda x: _gram.gram_newton_schulz_iterate(x, rows),
    'gram_no_restart': lambda x: _gram.gram_newton_schulz_iterate(
      x, rows, restart_after=()
    ),
  }
  compiled, compile_s, candidates = {}, {}, {}
  for name, fn in fns.items():
    compiled[name], compile_s[name] = _timing.compile_ahead(fn, x)
    candidates[name] = lambda c=compiled[name]: c(x)
  bar.write(f'  [{m}x{n}] compiled; timing {reps} rounds')
  load = _timing.load_average()
  timings = _timing.time_side_by_side(
    candidates, reps=reps, warmup=1, compile_s=compile_s
  )
  rows_out = _timing.summarize(timings, baseline='standard')
  nuclear = float(jnp.sum(_singular_values(g)))
  outs = {name: c(x) for name, c in compiled.items()}
  for name, out in outs.items():
    rows_out[name]['lmo_gap'] = gap(g, out, nuclear)
    rows_out[name]['flops'] = _timing.flops_of(compiled[name])
    if name != 'standard':
      rows_out[name]['rel_diff'] = rel_diff(out, outs['standard'])
  # The same compiled iterations on a condition-1e3 spectrum, where the
  # Gram recursion's rounding shows most.
  xd = normalized(decaying(m, n), safety)
  standard_d = compiled['standard'](xd)
  for name in ('gram', 'gram_no_restart'):
    rows_out[name]['rel_diff_decaying'] = rel_diff(
      compiled[name](xd), standard_d
    )
  bar.write(
    f'  [{m}x{n}] time ratio gram/standard'
    f' {rows_out["gram"]["ratio"]:.3f} (paired'
    f' {rows_out["gram"]["paired_ratio"]:.3f}), no restart'
    f' {rows_out["gram_no_restart"]["ratio"]:.3f}; load {load}'
  )
  bar.update()
  return {
    'size': f'{m}x{n}',
    'm': m,
    'n': n,
    'load_average': load,
    'methods': rows_out,
  }


# ----------------------------------------------------------------------------
# 4. bf16 accuracy of the standard iteration.


def bench_bf16_standard(m: int, n: int, bar) -> dict[str, Any]:
  g = gaussian(m, n)
  nuclear = float(jnp.sum(_singular_values(g)))
  out: dict[str, Any] = {'size': f'{m}x{n}', 'm': m, 'n': n}
  for name in GAP_SCHEDULES:
    rows, safety = schedule(name)
    f32 = gap(g, _iterate('standard', rows)(normalized(g, safety)), nuclear)
    x16 = normalized(g, safety, jnp.bfloat16, jnp.bfloat16)
    x16_f32norm = normalized(g, safety, jnp.bfloat16)
    variants = {
      'bf16_everywhere': _iterate('standard', rows)(x16),
      'accumulating_bf16_norm': _iterate('accumulating', rows)(x16),
      'accumulating_f32_norm': _iterate('accumulating', rows)(x16_f32norm),
      'gram_f32_norm': _iterate('gram', rows)(x16_f32norm),
    }
    out[name] = {
      'f32_gap': f32,
      **{k: gap(g, o, nuclear) / f32 for k, o in variants.items()},
    }
  bar.write(
    f'  [bf16 {m}x{n}] gap ratio bf16/f32, Polar Express 5:'
    f' everywhere {out["polar_express5"]["bf16_everywhere"]:.4f},'
    ' accumulating'
    f' {out["polar_express5"]["accumulating_f32_norm"]:.4f}; Jordan 5:'
    f' {out["jordan5"]["bf16_everywhere"]:.4f},'
    f' {out["jordan5"]["accumulating_f32_norm"]:.4f}'
  )
  bar.update()
  return out


# ----------------------------------------------------------------------------
# Targets, tables, plot.


def evaluate_targets(document: dict[str, Any]) -> dict[str, Any]:
  targets: dict[str, Any] = {}
  for entry in document['flop_targets']:
    size = f'{entry["m"]}x{entry["n"]}'
    targets[f'flops_{size}_no_restart_le_{entry["no_restart_max"]}'] = {
      'passed': entry['ratio_no_restart'] <= entry['no_restart_max'],
      'ratio': entry['ratio_no_restart'],
      'measured_at': entry['measured_at'],
    }
    targets[f'flops_{size}_one_restart_le_{entry["one_restart_max"]}'] = {
      'passed': entry['ratio_default_restart'] <= entry['one_restart_max'],
      'ratio': entry['ratio_default_restart'],
      'measured_at': entry['measured_at'],
    }
  sweep = document['sweep']
  diffs = {
    f'{e["m"]}x{e["n"]} {k}': v['max']
    for e in sweep
    for k, v in e['rel_diff_f32'].items()
  }
  targets['max_rel_diff_f32_le_1e-4'] = {
    'passed': max(diffs.values()) <= MAX_REL_DIFF,
    'worst': max(diffs.values()),
    'per_case': diffs,
  }
  auto = {
    f'{e["m"]}x{e["n"]}': {
      'f32': [e['flops']['auto_f32'], e['flops']['ratio_default_restart'] < 1],
      'bf16': [e['flops']['auto_bf16'], e['flops']['ratio_bf16_split'] < 1],
    }
    for e in sweep
  }
  targets['auto_rule_matches_cost_analysis'] = {
    'passed': all(a == b for v in auto.values() for a, b in v.values()),
    'rule_vs_measured_saving': auto,
  }
  factors = {
    f'{e["m"]}x{e["n"]} {k}': v['bf16_gram'] / v['bf16_accumulating']
    for e in sweep
    for k, v in e['lmo_gap'].items()
  }
  targets['bf16_gram_gap_within_10pct_of_standard'] = {
    'passed': max(factors.values()) <= BF16_GRAM_GAP_FACTOR,
    'worst': max(factors.values()),
    'gram_over_accumulating_standard': factors,
  }
  for entry in document['timing']:
    row = entry['methods']['gram']
    targets[f'cpu_time_ratio_{entry["size"]}_le_0.75'] = {
      'passed': row['ratio'] <= TIME_RATIO_MAX,
      'ratio_of_medians': row['ratio'],
      'paired_ratio': row['paired_ratio'],
      'load_average': entry['load_average'],
    }
    worst = max(row['rel_diff']['max'], row['rel_diff_decaying']['max'])
    targets[f'rel_diff_{entry["size"]}_le_1e-4'] = {
      'passed': worst <= MAX_REL_DIFF,
      'worst': worst,
      'gaussian': row['rel_diff'],
      'decaying': row['rel_diff_decaying'],
    }
  for variant in ('accumulating_f32_norm', 'accumulating_bf16_norm'):
    ratios = {
      f'{e["size"]} {name}': e[name][variant]
      for e in document['bf16_standard']
      for name in GAP_SCHEDULES
    }
    targets[f'bf16_ns_gap_ratio_le_1.02_{variant}'] = {
      'passed': max(ratios.values()) <= BF16_NS_GAP_FACTOR,
      'ratios': ratios,
    }
  return targets


def _title(document: dict[str, Any]) -> str:
  return (
    f'Gram Newton-Schulz vs standard on {_timing.machine_title(document)}'
    + (' [quick]' if document['config']['quick'] else '')
  )


def plot(document: dict[str, Any], path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  sweep = document['sweep']
  aspects = [e['aspect'] for e in sweep]
  fig, axes = plt.subplots(2, 3, figsize=(18, 10))

  ax = axes[0, 0]
  for key, label, color in (
    ('no_restart', 'float32, no restart', 'tab:blue'),
    ('default_restart', 'float32, default restart', 'tab:orange'),
    ('bf16_split', 'bf16, f32 recursion, split Q', 'tab:green'),
  ):
    ax.plot(
      aspects,
      [e['flops'][f'model_{key}'] for e in sweep],
      '-',
      color=color,
      alpha=0.5,
    )
    ax.plot(
      aspects,
      [e['flops'][f'ratio_{key}'] for e in sweep],
      'o',
      color=color,
      label=f'{label} (line: matmul count)',
    )
  ax.axhline(1.0, color='k', lw=0.8)
  ax.axvline(1.5, color='gray', ls=':', label='float32 crossover n/m = 1.5')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('aspect n/m')
  ax.set_ylabel('FLOPs Gram / standard (XLA cost analysis)')
  ax.set_title(f'FLOPs, Polar Express 5, m = {sweep[0]["m"]}')
  ax.legend(fontsize=8)

  ax = axes[0, 1]
  keys = list(sweep[0]['rel_diff_f32'])
  for key in keys:
    ax.plot(
      aspects,
      [max(e['rel_diff_f32'][key]['max'], 1e-9) for e in sweep],
      marker='o',
      ls='-' if 'gaussian' in key else '--',
      label=key,
    )
  ax.axhline(MAX_REL_DIFF, color='r', lw=0.8, label='target 1e-4')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('aspect n/m')
  ax.set_ylabel('max|Gram - standard| / max|standard|')
  ax.set_title('float32 difference to the standard iterate')
  ax.legend(fontsize=7, ncol=2)

  ax = axes[0, 2]
  variants = (
    ('bf16_everywhere', 'tab:red'),
    ('bf16_accumulating', 'tab:blue'),
    ('bf16_gram', 'tab:green'),
    ('bf16_gram_bf16_recursion', 'tab:purple'),
  )
  cases = list(sweep[0]['lmo_gap'])
  styles = ('-', '--', ':', '-.')
  markers = ('o', 's', '^', 'D')
  for variant, color in variants:
    for key, ls, marker in zip(cases, styles, markers):
      ax.plot(
        aspects,
        [
          e['lmo_gap'][key][variant] / e['lmo_gap'][key]['f32_standard']
          for e in sweep
        ],
        color=color,
        ls=ls,
        marker=marker,
        ms=4,
      )
  for variant, color in variants:
    ax.plot([], [], color=color, label=variant)
  for key, ls, marker in zip(cases, styles, markers):
    ax.plot([], [], color='k', ls=ls, marker=marker, ms=4, label=key)
  ax.axhline(1.0, color='k', lw=0.8)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('aspect n/m')
  ax.set_ylabel('LMO gap / float32 standard gap')
  ax.set_title('bf16 input: LMO gap relative to float32')
  ax.legend(fontsize=7, ncol=2)

  ax = axes[1, 0]
  labels = [e['size'] for e in document['timing']]
  pos = np.arange(len(labels))
  for i, name in enumerate(('gram', 'gram_no_restart')):
    vals = [e['methods'][name]['ratio'] for e in document['timing']]
    ax.bar(pos + 0.35 * i, vals, 0.35, label=name)
  ax.axhline(TIME_RATIO_MAX, color='r', lw=0.8, label='target 0.75')
  ax.set_xticks(pos + 0.175, labels)
  ax.set_ylabel('median CPU time / standard')
  ax.set_title('CPU time, float32, Polar Express 5 (interleaved rounds)')
  ax.legend(fontsize=8)

  ax = axes[1, 1]
  entries = document['bf16_standard']
  variants = (
    'bf16_everywhere',
    'accumulating_bf16_norm',
    'accumulating_f32_norm',
    'gram_f32_norm',
  )
  labels = [f'{e["size"]}\n{name}' for e in entries for name in GAP_SCHEDULES]
  pos = np.arange(len(labels))
  for i, variant in enumerate(variants):
    vals = [e[name][variant] for e in entries for name in GAP_SCHEDULES]
    ax.bar(pos + 0.2 * i, vals, 0.2, label=variant)
  ax.axhline(BF16_NS_GAP_FACTOR, color='r', lw=0.8, label='target 1.02')
  ax.axhline(1.0, color='k', lw=0.8)
  ax.set_ylim(0.9, max(1.3, ax.get_ylim()[1]))
  ax.set_xticks(pos + 0.3, labels, fontsize=8)
  ax.set_ylabel('bf16 LMO gap / float32 gap')
  ax.set_title('bf16 input, Gaussian: iterations vs float32')
  ax.legend(fontsize=7)

  ax = axes[1, 2]
  flop = document['flop_targets']
  labels = [f'{e["m"]}x{e["n"]}' for e in flop]
  pos = np.arange(len(labels))
  ax.bar(pos, [e['ratio_no_restart'] for e in flop], 0.35, label='no restart')
  ax.bar(
    pos + 0.35,
    [e['ratio_default_restart'] for e in flop],
    0.35,
    label='one restart',
  )
  for i, e in enumerate(flop):
    ax.plot([i - 0.17, i + 0.17], [e['no_restart_max']] * 2, 'r-')
    ax.plot([i + 0.18, i + 0.52], [e['one_restart_max']] * 2, 'r-')
  ax.set_xticks(pos + 0.175, labels)
  ax.set_ylabel('FLOPs Gram / standard (red: target)')
  ax.set_title('FLOP targets, Polar Express 5 (cost analysis)')
  ax.legend(fontsize=8)

  fig.suptitle(_title(document))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(d: dict[str, Any]) -> str:
  """The README section: sweep, timing and bf16 tables."""
  out = [
    '**Aspect sweep** (Polar Express 5 FLOPs from XLA cost analysis;'
    ' worst float32 `max|Gram − standard| / max|standard|` over Jordan'
    ' 5, Polar Express 5 and 8, user rows, Gaussian and condition-1e3'
    ' spectra; LMO gaps of Polar Express 5 on the Gaussian matrix)\n',
    '| m x n | FLOPs no restart | FLOPs restart | FLOPs bf16 | auto |'
    ' max rel diff | gap f32 std | gap f32 Gram | gap bf16 everywhere'
    ' | gap bf16 accum. | gap bf16 Gram |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for e in d['sweep']:
    f = e['flops']
    worst = max(v['max'] for v in e['rel_diff_f32'].values())
    gp = e['lmo_gap']['polar_express5 gaussian']
    out.append(
      f'| {e["m"]}x{e["n"]} | {f["ratio_no_restart"]:.3f} |'
      f' {f["ratio_default_restart"]:.3f} | {f["ratio_bf16_split"]:.3f} |'
      f' {"Gram" if f["auto_f32"] else "standard"} | {worst:.1e} |'
      f' {gp["f32_standard"]:.4f} | {gp["f32_gram"]:.4f} |'
      f' {gp["bf16_everywhere"]:.4f} | {gp["bf16_accumulating"]:.4f} |'
      f' {gp["bf16_gram"]:.4f} |'
    )
  out += [
    '',
    '**CPU time**, float32, Polar Express 5 (median ms; ratio to'
    ' the standard iteration, ratio of medians and paired)\n',
    '| size | standard ms | Gram ms | ratio | paired | Gram no restart'
    ' ratio | rel diff Gaussian | rel diff cond 1e3 | load |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for e in d['timing']:
    s, g, g0 = (
      e['methods'][k] for k in ('standard', 'gram', 'gram_no_restart')
    )
    out.append(
      f'| {e["size"]} | {1e3 * s["median_s"]:.0f} |'
      f' {1e3 * g["median_s"]:.0f} | {g["ratio"]:.3f} |'
      f' {g["paired_ratio"]:.3f} | {g0["ratio"]:.3f} |'
      f' {g["rel_diff"]["max"]:.1e} |'
      f' {g["rel_diff_decaying"]["max"]:.1e} | {e["load_average"]} |'
    )
  out += [
    '',
    '**bf16 input, standard iteration**: LMO gap ÷ float32 gap (Gaussian)\n',
    '| size | schedule | bf16 everywhere | accumulating, bf16 norm |'
    ' accumulating, f32 norm | Gram, f32 norm |',
    '|---|---|---|---|---|---|',
  ]
  for e in d['bf16_standard']:
    for name in GAP_SCHEDULES:
      r = e[name]
      out.append(
        f'| {e["size"]} | {name} | {r["bf16_everywhere"]:.4f} |'
        f' {r["accumulating_bf16_norm"]:.4f} |'
        f' {r["accumulating_f32_norm"]:.4f} |'
        f' {r["gram_f32_norm"]:.4f} |'
      )
  return '\n'.join(out) + '\n'


# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None):
  parser = _timing.benchmark_parser(
    'gram',
    __doc__,
    'small sizes, aspects 1 and 4, one timed and one bf16 size, 2 timed'
    ' rounds (a smoke test)',
    reps=(FULL_REPS, QUICK_REPS),
    replot=True,
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.replot:
    return _timing.replot('gram', args.out, plot)
  start = time.perf_counter()
  load_start = _timing.load_average()
  quick = args.quick
  aspects = QUICK_ASPECTS if quick else FULL_ASPECTS
  sweep_m = QUICK_SWEEP_M if quick else FULL_SWEEP_M
  shrink = QUICK_FLOP_SHRINK if quick else 1
  time_sizes = QUICK_TIME_SIZES if quick else FULL_TIME_SIZES
  bf16_sizes = QUICK_BF16_SIZES if quick else FULL_BF16_SIZES
  units = len(aspects) + len(FLOP_TARGETS) + len(time_sizes) + len(bf16_sizes)
  document: dict[str, Any] = {}
  with _timing.progress_bar(units, 'gram') as bar:
    bar.write(
      f'Gram benchmark ({"quick" if quick else "full"}): sweep m ='
      f' {sweep_m}, timing {time_sizes}, bf16 {bf16_sizes}, reps'
      f' {args.reps}, load {load_start}'
    )
    document['sweep'] = [bench_aspect(sweep_m, a, bar) for a in aspects]
    flop_targets = []
    for m, n, no_restart, one_restart in FLOP_TARGETS:
      measured = (m // shrink, n // shrink)
      entry = {
        'm': m,
        'n': n,
        'measured_at': f'{measured[0]}x{measured[1]}',
        'no_restart_max': no_restart,
        'one_restart_max': one_restart,
        **flop_ratios(*measured),
      }
      bar.write(
        f'  [FLOPs {m}x{n} at {entry["measured_at"]}]'
        f' {entry["ratio_no_restart"]:.3f} (<= {no_restart}),'
        f' {entry["ratio_default_restart"]:.3f} (<= {one_restart})'
      )
      bar.update()
      flop_targets.append(entry)
    document['flop_targets'] = flop_targets
    document['timing'] = [
      bench_time(m, n, args.reps, bar) for m, n in time_sizes
    ]
    document['bf16_standard'] = [
      bench_bf16_standard(m, n, bar) for m, n in bf16_sizes
    ]
  targets = evaluate_targets(document)
  _timing.print_targets(
    targets,
    lambda t: ', '.join(
      f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
      for k, v in t.items()
      if k != 'passed' and not isinstance(v, dict)
    ),
  )
  payload = {
    'benchmark': 'gram',
    'config': {
      'quick': quick,
      'aspects': list(aspects),
      'sweep_m': sweep_m,
      'schedules': list(SCHEDULES),
      'user_rows': [list(r) for r in USER_ROWS],
      'spectra': list(SPECTRA),
      'decay_condition': DECAY_CONDITION,
      'time_sizes': [f'{m}x{n}' for m, n in time_sizes],
      'bf16_sizes': [f'{m}x{n}' for m, n in bf16_sizes],
      'reps': args.reps,
      'warmup': 1,
      'restart_growth': _gram.RESTART_GROWTH,
      'load_average_start': load_start,
      'openblas_num_threads': os.environ.get('OPENBLAS_NUM_THREADS'),
      'normalisation': (
        'Frobenius, in float32 unless a variant says'
        ' bf16 norm; safety 1.01 for Polar Express'
      ),
      'timing': (
        'AOT-compiled (compile excluded), one warm-up call'
        ' each, then interleaved rotated rounds; median'
      ),
    },
    **document,
    'targets': {name: t['passed'] for name, t in targets.items()},
    'target_details': targets,
    'elapsed_s': time.perf_counter() - start,
  }
  return _timing.save_results(
    'gram', args.out, payload, argv, lambda doc, png: plot(doc, png)
  )


if __name__ == '__main__':
  main()
