"""GPU: bf16 polar-factor throughput as a fraction of measured bf16 matmul throughput, and the optimizer-step overhead on GPT-2 small.

Run on a machine with an NVIDIA GPU, from the repository root:

  pip install -U "jax[cuda12]"     # the CUDA build of the same JAX version
  pip install -e ".[bench]"        # fanion_optax, optax, matplotlib, tqdm
  python -m benchmarks.gpu         # full run (writes results/gpu.json, .png)
  python -m benchmarks.report      # refresh benchmarks/README.md

  python -m benchmarks.gpu --quick --out /tmp/gpu_quick   # smoke test, any device

Check `python -c "import jax; print(jax.devices())"` lists a `CudaDevice`
first. On a backend that is not a GPU the full run refuses to start (its
numbers would say nothing about a GPU) unless `--allow-cpu` is given, and it
would then take hours (shrink it with `--max-size` and `--layers`);
`--quick` runs tiny sizes on whatever device exists and is what CI runs.
Every result records `platform` and `device_kind`, and `representative` is
true only for a full run on a GPU: titles, tables and the README say loudly
when a result is not a GPU result. No CPU result is committed for this
benchmark.

Part 1, orthogonalisation throughput (bf16 input). For each shape (full:
square 1024², 2048², 4096², 8192², wide m×4m for m = 1024, 2048, 4096, 8192
and the tall 16384×4096, which `polar_factor` transposes) it times side by
side:

  * `matmul`: the size-matched reference, a chain of bf16 products
    `X ← Q X` (Q an m×m orthogonal matrix, X the wide m×n orientation, m ≤ n,
    `2m²n` FLOPs each), the shape of the iteration's `B·X` product;
  * `polar_factor(g, polar_method="polar_express", polar_steps=5,
    compute_dtype=bfloat16)`;
  * `polar_factor(g, polar_method="newton_schulz", polar_steps=5,
    compute_dtype=bfloat16)`;
  * optax's `orthogonalize_via_newton_schulz` (Jordan's coefficients, 5
    steps; it iterates in the input dtype, bf16), the baseline of ratios;
  * `polar_factor(g, compute_dtype=float32)` (float32 arithmetic: what
    `fo.muon` runs on CPU, and on an accelerator with
    `compute_dtype=jnp.float32`), to show what bf16 compute buys;
  * `polar_factor(g, polar_method="polar_express", polar_steps=5,
    compute_dtype=bfloat16, gram=True)`: Gram Newton–Schulz (SPEC §3.4), its
    m×m recursion in float32, counted with
    `fanion_optax._gram.gram_newton_schulz_flops` (one restart, `Q` applied
    in two bf16 parts);
  * `top_k_polar(g, 64, state=..., return_state=True)`, the warm-started
    subspace iteration (2 iterations, float32 inside: there is no
    half-precision QR), for reference.

Every bf16 product uses JAX's default precision with a bf16 result; XLA:GPU
runs it in cuBLAS with float32 accumulation, and the reference matmul does
exactly the same, so the two are comparable. The device's bf16 matmul
throughput is the best of the reference measurements: a chain of square
`--peak-size` (8192) products and every size-matched chain.

To amortise the launch overhead (tens of µs, comparable to a whole 1024²
iteration on a fast GPU), every timed call runs one compiled executable that
applies its candidate R times in a chain, each application consuming the
previous result (`X ← polar_factor(X)`; top-k chains its subspace state on
a fixed matrix), unrolled in Python so no device loop is involved; R is
chosen per candidate so a call does about 4 TFLOP (at most 512 products),
and times are reported per application. This is the throughput an optimizer
step sees, where many matrices are orthogonalised inside one executable.

FLOPs are counted analytically for what `fanion_optax.polar.
newton_schulz_iterate` computes on the wide orientation (m ≤ n): per step
`A = X Xᵀ` (2m²n), `A·A` (2m³) and `(bA + cA²)·X` (2m²n), i.e.
`steps·(4m²n + 2m³)`; the normalisation (max-abs and Frobenius scaling) and
the transposes of tall inputs are O(mn) memory passes and are not counted.
XLA's `cost_analysis()` of the compiled chain (divided by R) is recorded
alongside as a cross-check (it also counts the elementwise operations, about
1% more at these sizes). Achieved TFLOP/s is analytic FLOPs / median time.

Part 2, optimizer step on the GPT-2-small tree of `benchmarks/step.py`
(float32 parameters, as usual with mixed-precision training: the optimizer
keeps float32 master weights; the embeddings and the head go to the AdamW
fallback, passed explicitly as AdamW at the matrix learning rate with
`b2 = 0.999`, the default before API 1.0): `optax.adamw`,
`optax.contrib.muon`, `fo.muon(newton_schulz)`,
`fo.muon` (Polar Express; bf16 arithmetic by default on an accelerator),
`fo.muon(compute_dtype=float32)` and `fo.fanion(k=64)`, timed with
`benchmarks.step.bench_tree` (update + apply_updates, compiled ahead of
time, interleaved rounds), as ratios to
`optax.adamw`. The float32 rows use JAX's default matmul precision, which
XLA:GPU may run as TF32.

Targets (meaningful only on a GPU; on another device they are evaluated and
recorded but the document says `representative: false`): Polar Express 5 in
bf16 reaches >= 50% of the measured bf16 matmul throughput at 4096² (the
largest square shape measured when 4096² is not);
`polar_factor(newton_schulz)` in bf16 takes <= 1.05x optax's
orthogonalisation at every shape (paired ratio); the analytic FLOP count
agrees with XLA's within 5%; Gram Newton–Schulz in bf16 takes <= 0.85x
the standard bf16 iteration's time on every shape with aspect >= 1:4 (the
check issue 13 asks for before `gram="auto"` becomes a default; its FLOP
ratio, 0.67 at 1:4, is recorded beside it); the `fo.muon(newton_schulz)`
step takes <= 1.05x `optax.contrib.muon`'s; and the device is a GPU.

Expected cost on one H100 (not yet measured here: no GPU was available when
this was written): about 10 minutes wall, mostly compilation. Memory: the
largest input, 8192×32768, is 0.5 GiB in bf16, and the float32-compute
candidate needs ~1 GiB copies plus 8192² Gram matrices, a few GiB at peak;
the GPT-2-small step (124M float32 parameters, gradients and AdamW moments)
needs ~3 GiB. Any GPU with 16 GiB holds it. `--quick` (the tall shape
256×64, k = 8, a one-layer width-64 GPT-2 tree with AdamW and the two
Newton–Schulz Muons only) takes ~15 s on 2 idle CPU cores.

Results go to `<out>/gpu.json` and `<out>/gpu.png`.
"""

from __future__ import annotations

import os

# jaxlib's CPU LAPACK kernels (the QR of the top-k iteration) come from
# SciPy's OpenBLAS; its threads oversubscribe busy cores (see step.py).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from optax.contrib import _muon  # noqa: E402

import fanion_optax as fo  # noqa: E402
from benchmarks import _timing  # noqa: E402
from benchmarks import step as step_bench  # noqa: E402
from fanion_optax import _gram  # noqa: E402
from fanion_optax.polar import JORDAN_COEFFICIENTS  # noqa: E402

FULL_SHAPES = (
  (1024, 1024),
  (2048, 2048),
  (4096, 4096),
  (8192, 8192),
  (1024, 4096),
  (2048, 8192),
  (4096, 16384),
  (8192, 32768),
  (16384, 4096),
)
QUICK_SHAPES = ((256, 64),)  # tall: exercises the transposes too
FULL_PEAK_SIZE, QUICK_PEAK_SIZE = 8192, 256
FULL_REPS, QUICK_REPS = 10, 2
FULL_STEP_REPS = 10
FULL_K, QUICK_K = 64, 8
# Work per timed call: enough to hide the launch overhead on a GPU.
FULL_CALL_FLOPS, QUICK_CALL_FLOPS = 4e12, 2e7
MAX_DOTS_PER_CALL = 512  # bounds the size of the unrolled executable
STEPS = 5
DTYPE = jnp.bfloat16

MATMUL = 'matmul'
OURS_PE = 'polar_express5'
OURS_NS = 'newton_schulz5'
OPTAX_NS = 'optax_newton_schulz5'
PE_F32 = 'polar_express5_f32compute'
PE_GRAM = 'polar_express5_gram'
POLAR_METHODS = (OURS_PE, OURS_NS, OPTAX_NS, PE_F32, PE_GRAM)
BF16_POLAR = (OURS_PE, OURS_NS, OPTAX_NS)

# Targets.
PE_FRACTION_MIN = 0.5
PE_TARGET_SHAPE = (4096, 4096)
NS_RATIO_MAX = 1.05
GRAM_RATIO_MAX = 0.85
GRAM_MIN_ASPECT = 4
FLOPS_REL_TOL = 0.05

STEP_MUON_F32 = 'fo.muon(f32 compute)'


def topk_name(k: int) -> str:
  return f'top{k}_warm'


def _size(m: int, n: int) -> str:
  return f'{m}x{n}'


# ----------------------------------------------------------------------------
# Candidates: each maps its input to an output of the same kind, so that R
# applications can be chained inside one executable.


def polar_flops(m: int, n: int, steps: int = STEPS) -> float:
  """Matmul FLOPs of `steps` Newton–Schulz-type steps on an m×n matrix."""
  m, n = min(m, n), max(m, n)
  return steps * (4.0 * m * m * n + 2.0 * m**3)


def _polar(
  method: str, compute_dtype=None, gram: bool = False
) -> Callable[[jax.Array], Any]:
  return lambda g: fo.polar_factor(
    g,
    polar_method=method,
    polar_steps=STEPS,
    compute_dtype=compute_dtype,
    gram=gram,
  )


def gram_flops(m: int, n: int) -> float:
  """Matmul FLOPs of 5 bf16 Polar Express steps in the Gram form.

  The recursion runs in float32 on a bf16 input, so `Q` is applied in two
  bf16 parts (`split`); the restarts are those `polar_factor` takes.
  """
  rows, _ = fo.coefficient_schedule('polar_express', STEPS)
  m, n = min(m, n), max(m, n)
  return float(
    _gram.gram_newton_schulz_flops(
      m, n, STEPS, len(_gram.restart_steps(rows)), split=True
    )
  )


def _optax_ns(g: jax.Array) -> jax.Array:
  return _muon.orthogonalize_via_newton_schulz(
    g, jnp.asarray(JORDAN_COEFFICIENTS), ns_steps=STEPS
  )


def _chain(fn: Callable[[jax.Array], jax.Array], repeat: int):
  def chained(x):
    for _ in range(repeat):
      x = fn(x)
    return x

  return chained


def _matmul_chain(repeat: int):
  def chained(q, x):
    for _ in range(repeat):
      x = q @ x
    return x

  return chained


def _topk_chain(k: int, repeat: int):
  def chained(g, state):
    for _ in range(repeat):
      d, state = fo.top_k_polar(g, k, state=state, return_state=True)
    return d, state

  return chained


def repeat_for(flops: float, dots: int, call_flops: float) -> int:
  """Applications per timed call: ~`call_flops`, at most 512 products."""
  return max(1, min(math.ceil(call_flops / flops), MAX_DOTS_PER_CALL // dots))


def orthogonal(m: int, seed: int) -> jax.Array:
  """A bf16 m×m orthogonal matrix (QR of a Gaussian in float32)."""
  a = jax.random.normal(jax.random.PRNGKey(seed), (m, m), jnp.float32)
  return jnp.linalg.qr(a)[0].astype(DTYPE)


def gaussian(m: int, n: int, seed: int) -> jax.Array:
  return jax.random.normal(
    jax.random.PRNGKey(seed), (m, n), jnp.float32
  ).astype(DTYPE)


# ----------------------------------------------------------------------------
# Part 1: throughput.


def _rows(
  timings: dict[str, _timing.Timing],
  repeats: dict[str, int],
  baseline: str | None,
) -> dict[str, dict[str, Any]]:
  """`_timing.summarize` of the per-application times of each chain."""
  per_app = {}
  for name, t in timings.items():
    per_app[name] = _timing.Timing(
      name, [s / repeats[name] for s in t.times], t.compile_s
    )
  rows = _timing.summarize(per_app, baseline=baseline)
  for name, row in rows.items():
    row['repeat'] = repeats[name]
  return rows


def bench_peak(size: int, reps: int, call_flops: float, bar) -> dict[str, Any]:
  """bf16 TFLOP/s of a chain of size³ products; advances `bar` once."""
  q, x = orthogonal(size, 0), gaussian(size, size, 1)
  flops = 2.0 * size**3
  repeat = repeat_for(flops, 1, call_flops)
  compiled, compile_s = _timing.compile_ahead(_matmul_chain(repeat), q, x)
  timings = _timing.time_side_by_side(
    {MATMUL: lambda: compiled(q, x)}, reps=reps, compile_s={MATMUL: compile_s}
  )
  row = _rows(timings, {MATMUL: repeat}, None)[MATMUL]
  xla = _timing.flops_of(compiled)
  row.update(
    size=_size(size, size),
    flops=flops,
    flops_xla=None if xla is None else xla / repeat,
    tflops=flops / row['median_s'] / 1e12,
  )
  bar.write(
    f'  [peak {size}^3 bf16 matmul, R={repeat}] {row["tflops"]:.3g} TFLOP/s'
  )
  bar.update()
  return row


def _labels(k: int) -> dict[str, str]:
  return {
    MATMUL: 'matmul X <- Q X (size-matched reference)',
    OURS_PE: 'polar_factor(polar_express, 5, bf16 compute)',
    OURS_NS: 'polar_factor(newton_schulz, 5, bf16 compute)',
    OPTAX_NS: 'optax orthogonalize_via_newton_schulz (5, bf16)',
    PE_F32: 'polar_factor(polar_express, 5), f32 compute',
    PE_GRAM: 'polar_factor(polar_express, 5, bf16 compute, gram=True)',
    topk_name(k): (f'top_k_polar(k={k}, warm, subspace_iters=2, f32 inside)'),
  }


def bench_shape(
  m: int, n: int, k: int, reps: int, call_flops: float, bar
) -> dict[str, Any]:
  """Times every candidate at one shape; advances `bar` 1 + reps times."""
  t0 = time.perf_counter()
  small, large = min(m, n), max(m, n)
  g = gaussian(m, n, 2)
  q, x_wide = orthogonal(small, 3), gaussian(small, large, 4)
  state = jax.jit(lambda g: fo.top_k_polar(g, k, return_state=True)[1])(g)
  flops = {MATMUL: 2.0 * small * small * large}
  r_polar = repeat_for(polar_flops(m, n), 3 * STEPS, call_flops)
  repeats = {MATMUL: repeat_for(flops[MATMUL], 1, call_flops)}
  fns = {
    OURS_PE: _polar('polar_express', DTYPE),
    OURS_NS: _polar('newton_schulz', DTYPE),
    OPTAX_NS: _optax_ns,
    PE_F32: _polar('polar_express', jnp.float32),
    PE_GRAM: _polar('polar_express', DTYPE, gram=True),
  }
  compiled, compile_s = {}, {}
  compiled[MATMUL], compile_s[MATMUL] = _timing.compile_ahead(
    _matmul_chain(repeats[MATMUL]), q, x_wide
  )
  candidates = {MATMUL: lambda: compiled[MATMUL](q, x_wide)}
  for name, fn in fns.items():
    flops[name] = gram_flops(m, n) if name == PE_GRAM else polar_flops(m, n)
    repeats[name] = r_polar
    compiled[name], compile_s[name] = _timing.compile_ahead(
      _chain(fn, r_polar), g
    )
    candidates[name] = lambda c=compiled[name]: c(g)
  top = topk_name(k)
  repeats[top] = r_polar
  compiled[top], compile_s[top] = _timing.compile_ahead(
    _topk_chain(k, r_polar), g, state
  )
  candidates[top] = lambda: compiled[top](g, state)
  bar.write(
    f'  [{_size(m, n)}] compiled {len(compiled)} chains in'
    f' {sum(compile_s.values()):.1f}s (R: {repeats[MATMUL]} matmul,'
    f' {r_polar} polar); timing {reps} rounds'
  )
  bar.update()

  timings = _timing.time_side_by_side(
    candidates, reps=reps, compile_s=compile_s, progress=lambda _: bar.update()
  )
  rows = _rows(timings, repeats, OPTAX_NS)
  ref_tflops = flops[MATMUL] / rows[MATMUL]['median_s'] / 1e12
  for name, row in rows.items():
    xla = _timing.flops_of(compiled[name])
    row['flops_xla'] = None if xla is None else xla / repeats[name]
    row['flops'] = flops.get(name)
    if name in flops:
      row['tflops'] = flops[name] / row['median_s'] / 1e12
      row['fraction_of_same_shape_matmul'] = row['tflops'] / ref_tflops
      if row['flops_xla']:
        row['flops_xla_over_analytic'] = row['flops_xla'] / flops[name]
  pe = rows[OURS_PE]
  bar.write(
    f'  [{_size(m, n)}] done in {time.perf_counter() - t0:.0f}s:'
    f' matmul {ref_tflops:.3g} TFLOP/s, Polar Express 5 bf16'
    f' {pe["tflops"]:.3g} TFLOP/s ({1e3 * pe["median_s"]:.3g} ms),'
    f' NS5 / optax {rows[OURS_NS]["paired_ratio"]:.3f}'
  )
  return {
    'size': _size(m, n),
    'm': m,
    'n': n,
    'matmul_tflops': ref_tflops,
    'methods': rows,
  }


def add_peak_fractions(shapes: list[dict[str, Any]], peak: float) -> None:
  for s in shapes:
    for row in s['methods'].values():
      if 'tflops' in row:
        row['fraction_of_peak'] = row['tflops'] / peak


# ----------------------------------------------------------------------------
# Part 2: the optimizer step on the GPT-2-small tree.


def step_specs(
  tree, k: int, quick: bool
) -> dict[str, tuple[str, Callable[[], Any]]]:
  """The step candidates: a subset of `benchmarks.step`'s, plus float32 Muon.

  `fo.muon` computes its polar factor in bf16 on an accelerator by default;
  the extra row forces float32 to show what that buys.
  """
  specs = step_bench.candidates(tree, k)
  keep = [step_bench.BASELINE, step_bench.OPTAX_MUON, step_bench.OURS_NS]
  if quick:
    # Compilation dominates a smoke test: only what the target needs.
    return {name: specs[name] for name in keep}
  extra = [step_bench.OURS, step_bench.OURS_FANION.format(k=k)]
  out = {name: specs[name] for name in [*keep, *extra]}
  # The fallback before API 1.0 (AdamW at the matrix learning rate, b2 =
  # 0.999), explicit as in `benchmarks.step.candidates`, so the results stay
  # comparable.
  kw = dict(tree.fo_kwargs(), fallback=fo.adamw_fallback(0.02, b2=0.999))
  out[STEP_MUON_F32] = (
    'fo.muon(0.02, compute_dtype=float32) (Polar Express, 5 steps)',
    lambda: fo.muon(0.02, compute_dtype=jnp.float32, **kw),
  )
  return out


# ----------------------------------------------------------------------------
# Targets, table, plot.


def _target_shape(shapes: list[dict[str, Any]]) -> dict[str, Any]:
  """The 4096² result, else the largest square shape, else the largest."""
  for s in shapes:
    if (s['m'], s['n']) == PE_TARGET_SHAPE:
      return s
  square = [s for s in shapes if s['m'] == s['n']] or shapes
  return max(square, key=lambda s: s['m'] * s['n'])


def evaluate_targets(
  shapes: list[dict[str, Any]],
  peak: float,
  step: dict[str, Any] | None,
  is_gpu: bool,
) -> dict[str, dict[str, Any]]:
  s = _target_shape(shapes)
  pe = s['methods'][OURS_PE]
  targets = {
    'polar_express5_bf16_ge_0.5_of_matmul_at_4096': {
      'passed': pe['fraction_of_peak'] >= PE_FRACTION_MIN,
      'threshold': PE_FRACTION_MIN,
      'shape': s['size'],
      'fraction_of_peak': pe['fraction_of_peak'],
      'tflops': pe['tflops'],
      'peak_tflops': peak,
      'fraction_of_same_shape_matmul': pe['fraction_of_same_shape_matmul'],
    },
  }
  ratios = {x['size']: x['methods'][OURS_NS]['paired_ratio'] for x in shapes}
  targets['newton_schulz5_bf16_vs_optax_le_1.05'] = {
    'passed': max(ratios.values()) <= NS_RATIO_MAX,
    'threshold': NS_RATIO_MAX,
    'paired_ratio_per_shape': ratios,
    'judged_on': 'the largest paired ratio over the shapes',
  }
  rel = {
    f'{x["size"]}/{name}': x['methods'][name].get('flops_xla_over_analytic')
    for x in shapes
    for name in POLAR_METHODS
  }
  known = [v for v in rel.values() if v is not None]
  targets['flops_model_matches_xla_within_5pct'] = {
    'passed': bool(known) and all(abs(v - 1.0) <= FLOPS_REL_TOL for v in known),
    'threshold': FLOPS_REL_TOL,
    'xla_over_analytic': rel,
    'note': None if known else 'the backend reports no cost analysis',
  }
  # Gram Newton-Schulz (issue 13): the GPU check before `gram="auto"`
  # becomes a default. Time ratio to the standard bf16 iteration on the wide
  # shapes, where it saves FLOPs.
  wide = [
    x
    for x in shapes
    if max(x['m'], x['n']) >= GRAM_MIN_ASPECT * min(x['m'], x['n'])
  ]
  gram_ratios = {
    x['size']: x['methods'][PE_GRAM]['median_s']
    / x['methods'][OURS_PE]['median_s']
    for x in wide
  }
  targets[f'gram_bf16_time_le_{GRAM_RATIO_MAX}_of_standard_on_wide'] = {
    'passed': bool(gram_ratios) and max(gram_ratios.values()) <= GRAM_RATIO_MAX,
    'threshold': GRAM_RATIO_MAX,
    'time_ratio_per_shape': gram_ratios,
    'flops_ratio_per_shape': {
      x['size']: x['methods'][PE_GRAM]['flops'] / x['methods'][OURS_PE]['flops']
      for x in wide
    },
    'judged_on': f'shapes with aspect >= 1:{GRAM_MIN_ASPECT}, the largest ratio',
  }
  if step is not None:
    targets[f'step_{step_bench.TARGET}'] = step['target']
  targets['device_is_gpu'] = {
    'passed': is_gpu,
    'note': 'the numbers above are only meaningful on a GPU',
  }
  return targets


def _detail(t: dict[str, Any]) -> str:
  if 'fraction_of_peak' in t:
    return (
      f'{t["fraction_of_peak"]:.1%} of {t["peak_tflops"]:.3g} TFLOP/s'
      f' at {t["shape"]}'
    )
  if 'paired_ratio_per_shape' in t:
    return f'max paired ratio {max(t["paired_ratio_per_shape"].values()):.3f}'
  if 'xla_over_analytic' in t:
    known = [v for v in t['xla_over_analytic'].values() if v is not None]
    return (
      f'XLA/analytic in [{min(known):.3f}, {max(known):.3f}]'
      if known
      else t['note']
    )
  if 'time_ratio_per_shape' in t:
    times, flops = t['time_ratio_per_shape'], t['flops_ratio_per_shape']
    return ', '.join(
      f'{size}: time {times[size]:.3f}, FLOPs {flops[size]:.3f}'
      for size in times
    )
  if 'paired_ratio' in t:
    return f'paired {t["paired_ratio"]:.3f}'
  return t.get('note', '')


def print_table(shapes: list[dict[str, Any]], k: int) -> None:
  names = [MATMUL, *POLAR_METHODS, topk_name(k)]
  print(
    _timing.text_table(
      ['shape', *[f'{n} ms' for n in names], 'PE5 TFLOP/s', 'PE5 %peak'],
      [
        [
          s['size'],
          *[f'{1e3 * s["methods"][n]["median_s"]:.3g}' for n in names],
          f'{s["methods"][OURS_PE]["tflops"]:.3g}',
          f'{100 * s["methods"][OURS_PE]["fraction_of_peak"]:.1f}',
        ]
        for s in shapes
      ],
    )
  )


def device_label(document: dict[str, Any]) -> str:
  meta = document['metadata']
  label = f'{meta["device_kind"]} ({meta["platform"]})'
  if not document['device']['is_gpu']:
    label += ' - NOT A GPU, NOT REPRESENTATIVE'
  return label


def plot(document: dict[str, Any], path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  shapes, peak = document['shapes'], document['matmul_tflops']
  k = document['config']['k']
  step = document.get('step')
  labels = document['labels']
  fig, axes = plt.subplots(
    1, 3 if step else 2, squeeze=False, figsize=(20 if step else 14, 6.5)
  )
  axes = axes[0]
  x = np.arange(len(shapes))
  names = [MATMUL, *POLAR_METHODS]
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    vals = [s['methods'][name]['tflops'] for s in shapes]
    axes[0].bar(
      x + (i - (len(names) - 1) / 2) * width, vals, width, label=labels[name]
    )
  axes[0].axhline(
    peak,
    color='k',
    ls='--',
    lw=1,
    label=f'measured bf16 matmul throughput {peak:.3g} TFLOP/s',
  )
  axes[0].set_xticks(x, [s['size'] for s in shapes], rotation=30)
  axes[0].set_ylabel('achieved TFLOP/s (analytic FLOPs / median time)')
  axes[0].set_title('Throughput per shape (bf16 input)')
  axes[0].legend(fontsize=7)
  axes[0].grid(True, axis='y', alpha=0.3)

  for name, marker in zip(BF16_POLAR, 'os^'):
    axes[1].plot(
      x,
      [s['methods'][name]['fraction_of_peak'] for s in shapes],
      marker=marker,
      label=f'{labels[name]}: / measured peak',
    )
    axes[1].plot(
      x,
      [s['methods'][name]['fraction_of_same_shape_matmul'] for s in shapes],
      marker=marker,
      ls=':',
      alpha=0.6,
      label=f'{labels[name]}: / same-shape matmul',
    )
  axes[1].axhline(
    PE_FRACTION_MIN,
    color='tab:red',
    lw=1,
    ls='--',
    label=f'target {PE_FRACTION_MIN:.0%} (Polar Express at 4096x4096)',
  )
  axes[1].set_xticks(x, [s['size'] for s in shapes], rotation=30)
  axes[1].set_ylabel('fraction of bf16 matmul throughput')
  axes[1].set_ylim(bottom=0)
  axes[1].set_title(
    f'Orthogonalisation efficiency; top-{k} warm is in the JSON'
  )
  axes[1].legend(fontsize=7)
  axes[1].grid(True, alpha=0.3)

  if step:
    rows = step['candidates']
    names = list(rows)[::-1]
    ratios = [rows[n]['ratio'] for n in names]
    y = np.arange(len(names))
    axes[2].barh(
      y,
      ratios,
      color=[
        'tab:gray' if n.startswith('optax') else 'tab:blue' for n in names
      ],
    )
    for yi, n, r in zip(y, names, ratios):
      axes[2].text(
        r,
        yi,
        f' {r:.2f}x ({rows[n]["ms_per_step"]:.3g} ms)',
        va='center',
        fontsize=8,
      )
    axes[2].axvline(1.0, color='k', lw=0.8, ls='--')
    axes[2].set_yticks(y, names)
    axes[2].set_xscale('log')
    axes[2].set_xlim(right=max(ratios) * 4)
    axes[2].set_xlabel('median step time / optax.adamw step time')
    axes[2].set_title(
      f'One step on the {step["title"]} tree (float32 params)', fontsize=10
    )
    axes[2].grid(True, axis='x', which='both', alpha=0.3)
  fig.suptitle(
    f'fanion_optax GPU benchmark on {device_label(document)}'
    + (' [quick: smoke-test sizes]' if document['config']['quick'] else ''),
    color='k' if document['representative'] else 'tab:red',
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = _timing.benchmark_parser(
    'gpu',
    __doc__,
    'tiny shapes and tree, any device (a smoke test)',
    reps=(FULL_REPS, QUICK_REPS),
  )
  parser.add_argument(
    '--allow-cpu',
    action='store_true',
    help='run the full configuration on a device that is'
    ' not a GPU (hours on a CPU; not representative)',
  )
  parser.add_argument(
    '--max-size',
    type=int,
    default=None,
    help='leave out the shapes (and the peak matmul) with'
    ' a side larger than this',
  )
  parser.add_argument(
    '--layers',
    type=int,
    default=None,
    help='GPT-2 layers of the step tree (default 12); 0 skips the step part',
  )
  parser.add_argument(
    '--k',
    type=int,
    default=None,
    help=f'top-k / Fanion rank (default {FULL_K}, quick {QUICK_K})',
  )
  args = parser.parse_args(argv)
  quick = args.quick
  args.shapes = list(QUICK_SHAPES if quick else FULL_SHAPES)
  args.peak_size = QUICK_PEAK_SIZE if quick else FULL_PEAK_SIZE
  if args.max_size is not None:
    args.shapes = [s for s in args.shapes if max(s) <= args.max_size]
    args.peak_size = min(args.peak_size, args.max_size)
    if not args.shapes:
      parser.error('--max-size leaves no shape')
  args.k = args.k or (QUICK_K if quick else FULL_K)
  if args.k < 1:
    parser.error('--k must be >= 1')
  if args.layers is not None and args.layers < 0:
    parser.error('--layers must be >= 0')
  tree = step_bench.QUICK_TREES['gpt2'] if quick else step_bench.GPT2()
  if args.layers:
    tree = dataclasses.replace(tree, layers=args.layers)
  args.tree = None if args.layers == 0 else tree
  args.step_reps = args.reps if quick else max(args.reps, FULL_STEP_REPS)
  too_small = [s for s in args.shapes if min(s) <= args.k]
  if too_small:
    parser.error(f'every shape needs min(m, n) > k={args.k}: {too_small}')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  device = jax.devices()[0]
  is_gpu = device.platform == 'gpu'
  if not (is_gpu or args.quick or args.allow_cpu):
    raise SystemExit(
      f'benchmarks.gpu: the default device is {device.device_kind!r}'
      f' (platform {device.platform!r}), not a GPU. Install the CUDA build'
      ' of JAX (pip install -U "jax[cuda12]") on a GPU machine, or run'
      ' --quick (smoke test) or --allow-cpu (full sizes anyway: hours, and'
      ' the numbers say nothing about a GPU).'
    )
  start = time.perf_counter()
  call_flops = QUICK_CALL_FLOPS if args.quick else FULL_CALL_FLOPS
  specs = step_specs(args.tree, args.k, args.quick) if args.tree else {}
  units = (
    1 + len(args.shapes) * (1 + args.reps) + len(specs) * (2 + args.step_reps)
  )
  with _timing.progress_bar(units, 'gpu') as bar:
    bar.write(
      f'GPU benchmark ({"quick" if args.quick else "full"}) on'
      f' {device.device_kind} ({device.platform})'
      + ('' if is_gpu else ': NOT A GPU, numbers not representative')
      + f'; shapes {[_size(*s) for s in args.shapes]}, reps'
      f' {args.reps}, k {args.k}'
    )
    peak_row = bench_peak(args.peak_size, args.reps, call_flops, bar)
    shapes = [
      bench_shape(m, n, args.k, args.reps, call_flops, bar)
      for m, n in args.shapes
    ]
    step = (
      step_bench.bench_tree(args.tree, specs, args.k, args.step_reps, bar)
      if args.tree
      else None
    )
  if step is not None:
    step['target'] = step_bench.evaluate_target(step['candidates'])
  peak = max([peak_row['tflops'], *(s['matmul_tflops'] for s in shapes)])
  add_peak_fractions(shapes, peak)
  targets = evaluate_targets(shapes, peak, step, is_gpu)
  elapsed = time.perf_counter() - start

  print()
  print(f'measured bf16 matmul throughput: {peak:.3g} TFLOP/s')
  print_table(shapes, args.k)
  if step is not None:
    print()
    step_bench.print_table(step['candidates'])
  _timing.print_targets(targets, _detail)

  stats = device.memory_stats() or {}
  payload = {
    'benchmark': 'gpu',
    'representative': is_gpu and not args.quick,
    'device': {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'is_gpu': is_gpu,
      'memory_bytes_limit': stats.get('bytes_limit'),
    },
    'config': {
      'quick': args.quick,
      'allow_cpu': args.allow_cpu,
      'shapes': [_size(*s) for s in args.shapes],
      'peak_size': args.peak_size,
      'reps': args.reps,
      'step_reps': args.step_reps,
      'warmup': 1,
      'k': args.k,
      'steps': STEPS,
      'dtype': 'bfloat16 input; bf16 products at default precision'
      ' (XLA:GPU accumulates in float32 in cuBLAS), bf16'
      ' results',
      'call_flops': call_flops,
      'max_dots_per_call': MAX_DOTS_PER_CALL,
      'chain': (
        'each timed call applies its candidate R times in one'
        ' executable (X <- f(X), unrolled; top-k chains its'
        ' state on a fixed matrix); times are per application'
      ),
      'flops': (
        'analytic: steps*(4m^2n + 2m^3), m <= n, matmuls only;'
        " flops_xla: XLA's cost_analysis of the chain / R"
      ),
      'matmul_tflops': (
        'best of the peak chain and every size-matched reference chain'
      ),
      'step_dtype': 'float32 parameters and gradients',
      'step_tree': None if args.tree is None else args.tree.describe(),
      'timing': (
        'AOT-compiled (compile excluded), one warm-up call'
        ' each, interleaved rotated rounds; median'
      ),
    },
    'labels': _labels(args.k),
    'peak': peak_row,
    'matmul_tflops': peak,
    'shapes': shapes,
    'step': step,
    'targets': {name: bool(t['passed']) for name, t in targets.items()},
    'target_details': targets,
    'elapsed_s': elapsed,
  }
  return _timing.save_results('gpu', args.out, payload, argv, plot)


def _pct(x: float) -> str:
  return f'{100 * x:.0f}%' if x >= 0.1 else f'{100 * x:.2g}%'


def markdown(d: dict[str, Any]) -> str:
  """The README section of one result document."""
  labels, k = d['labels'], d['config']['k']
  out = []
  if not d['representative']:
    out.append(
      f'> **Not a GPU result**: measured on {device_label(d)}'
      + (', quick mode' if d['config']['quick'] else '')
      + '. The throughput fractions and targets below say nothing'
      ' about a GPU; run `python -m benchmarks.gpu` on one.\n'
    )
  out.append(
    f'Device: `{d["metadata"]["device_kind"]}`'
    f' ({d["metadata"]["platform"]}); measured bf16 matmul'
    f' throughput {d["matmul_tflops"]:.3g} TFLOP/s (chain of'
    f' {d["peak"]["size"]} products: {d["peak"]["tflops"]:.3g}).\n'
  )
  names = [MATMUL, *POLAR_METHODS]
  short = dict(
    zip(
      [*names, topk_name(k)],
      [
        'matmul ref',
        'PE5 bf16',
        'NS5 bf16',
        'optax NS5',
        'PE5 f32',
        'PE5 Gram bf16',
        f'top-{k} warm',
      ],
    )
  )
  out.append(
    'Columns: ' + '; '.join(f'{short[n]} = {labels[n]}' for n in short) + '.\n'
  )
  out.append('| shape |' + ''.join(f' {short[n]} |' for n in short))
  out.append('|---|' + '---|' * (len(names) + 1))
  for s in d['shapes']:
    cells = []
    for n in names:
      r = s['methods'][n]
      cells.append(
        f' {1e3 * r["median_s"]:.3g} ms, {r["tflops"]:.3g}'
        f' TFLOP/s ({_pct(r["fraction_of_peak"])})'
        + ('' if n == MATMUL else f', {r["ratio"]:.2f}x optax')
        + ' |'
      )
    cells.append(f' {1e3 * s["methods"][topk_name(k)]["median_s"]:.3g} ms |')
    out.append(f'| {s["size"]} |' + ''.join(cells))
  xla = [
    r['flops_xla_over_analytic']
    for s in d['shapes']
    for n, r in s['methods'].items()
    if n in POLAR_METHODS and r.get('flops_xla_over_analytic')
  ]
  out.append('')
  out.append(
    'Per application, bf16 input; percentages are of the measured bf16'
    ' matmul throughput. FLOPs are `5·(4m²n + 2m³)` (m ≤ n) for every'
    ' polar row but Gram, `2·6m²n + (40 − 12)m³` for Gram (two runs, `Q`'
    ' applied in two bf16 parts)'
    + (
      f' (XLA counts {min(xla):.3f}-{max(xla):.3f}x that, the extra being'
      ' elementwise work, and on a CPU bf16-float32 conversions)'
      if xla
      else ''
    )
    + ', `2m²n` for the matmul reference. Each timed call chains R'
    ' applications inside one executable so launch overhead is amortised.'
    ' Polar Express and Newton–Schulz do the same products, so they should'
    ' run at the same speed and approach the same-shape matmul rate as the'
    ' Gram products grow; the float32-compute row is what `fo.muon` does'
    ' with `compute_dtype=jnp.float32` (its default on an accelerator is'
    ' bf16).\n'
  )
  step = d.get('step')
  if step:
    out.append(
      f'**Optimizer step** on the {step["title"]} tree'
      f' ({step["description"]}; float32 parameters; median of'
      f' {step["reps"]} rounds)\n'
    )
    out.append('| optimizer | ms/step | ratio to optax.adamw |')
    out.append('|---|---|---|')
    for r in step['candidates'].values():
      out.append(
        f'| {r["label"]} | {r["ms_per_step"]:.4g} | {r["ratio"]:.2f} |'
      )
    out.append(
      f'\nfo.muon(newton_schulz) / optax.contrib.muon: paired'
      f' {step["target"]["paired_ratio"]:.3f} (target <='
      f' {step["target"]["threshold"]}).'
    )
  return '\n'.join(out) + '\n'


if __name__ == '__main__':
  main()
