"""Benchmark of one full optimizer step on a GPT-2-small-shaped parameter tree.

Run from the repository root:

  python -m benchmarks.step            # full GPT-2 small tree
  python -m benchmarks.step --quick --out /tmp/step_quick   # smoke test

The parameter tree has GPT-2 small's shapes (Flax `(fan_in, fan_out)`
layout): per layer an attention qkv kernel `(768, 2304)` and bias, an
attention projection `(768, 768)` and bias, an MLP `(768, 3072)` and
`(3072, 768)` with biases and two LayerNorms; a token embedding `wte`
`(50257, 768)`, a position embedding `wpe` `(1024, 768)`, a final LayerNorm
and an untied output head `(768, 50257)`. The embeddings and the head go to
the AdamW fallback (`exclude=[r"wte", r"wpe", r"head"]`; for
`optax.contrib.muon` a `muon_weight_dimension_numbers` tree with `None`
there), so every Muon-like optimizer orthogonalises the same 48 matrices.

One step is `tx.update` followed by `optax.apply_updates`, jitted and
compiled ahead of time (nothing donated). Every candidate is timed in the same
process, in interleaved rotated rounds after one warm-up call each (see
`benchmarks._timing`); the report gives the median ms/step, the ratio to
`optax.adamw`, XLA's compiled FLOP count per step, and the ratio of
`fo.muon(polar="newton_schulz", ns_steps=5)` (the same arithmetic as
`optax.contrib.muon`) to `optax.contrib.muon` with the target <= 1.05.

The full tree takes about 9 minutes on 2 CPU cores (a Muon step is ~16 s
there; 3 rounds by default); `--layers N` shrinks the tree, `--skip REGEX`
leaves candidates out. `OPENBLAS_NUM_THREADS` defaults to 1 (see below).

Results go to `<out>/step.json` and `<out>/step.png`.
"""

from __future__ import annotations

import os

# jaxlib's CPU LAPACK kernels (the QR/SVD of the Fanion subspace iteration)
# come from SciPy's OpenBLAS and already split a batch over XLA's thread pool;
# OpenBLAS threads nested inside oversubscribe the cores (about 13x slower
# QR on 2 busy cores). XLA's own matmuls do not use OpenBLAS.
OPENBLAS_THREADS_DEFAULT = '1'
os.environ.setdefault('OPENBLAS_NUM_THREADS', OPENBLAS_THREADS_DEFAULT)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from optax import contrib  # noqa: E402

import fanion_optax as fo  # noqa: E402
from benchmarks import _timing  # noqa: E402

EXCLUDE = (r'wte', r'wpe', r'head')
BASELINE = 'optax.adamw'
OPTAX_MUON = 'optax.contrib.muon'
OURS_NS = 'fo.muon(newton_schulz)'
NS_RATIO_MAX = 1.05
FULL_REPS, QUICK_REPS = 3, 2
LOWRANK = r'fanion|neon'
"""The candidates whose LMO calls batched LAPACK kernels (QR, SVD) in the
warm-started subspace iteration."""

@dataclasses.dataclass(frozen=True)
class Model:
  """GPT-2-like shapes."""

  layers: int = 12
  width: int = 768
  vocab: int = 50257
  context: int = 1024

  def describe(self) -> str:
    return (f'{self.layers} layers, width {self.width}, vocab {self.vocab},'
            f' context {self.context}')


FULL_MODEL = Model()
QUICK_MODEL = Model(layers=2, width=64, vocab=512, context=64)


# ----------------------------------------------------------------------------
# The parameter tree.


def param_shapes(model: Model) -> dict[str, Any]:
  """The nested dict of shapes; leaf names follow GPT-2 / Flax."""
  d = model.width

  def dense(fan_in, fan_out):
    return {'kernel': (fan_in, fan_out), 'bias': (fan_out,)}

  def layer_norm():
    return {'scale': (d,), 'bias': (d,)}

  tree: dict[str, Any] = {
      'wte': {'embedding': (model.vocab, d)},
      'wpe': {'embedding': (model.context, d)},
  }
  tree['h'] = {
      str(i): {
          'ln_1': layer_norm(),
          'attn': {'c_attn': dense(d, 3 * d), 'c_proj': dense(d, d)},
          'ln_2': layer_norm(),
          'mlp': {'c_fc': dense(d, 4 * d), 'c_proj': dense(4 * d, d)},
      }
      for i in range(model.layers)
  }
  tree['ln_f'] = layer_norm()
  tree['head'] = {'kernel': (d, model.vocab)}
  return tree


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(v, int) for v in x)


def random_tree(shapes: Any, seed: int, scale: float) -> Any:
  """Gaussian float32 arrays of the given shapes (one key per leaf)."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([
      scale * jax.random.normal(k, shape, jnp.float32)
      for k, shape in zip(keys, leaves)])


def is_excluded(path) -> bool:
  name = fo.partition.path_name(path)
  return any(re.search(p, name) for p in EXCLUDE)


def optax_muon_dimension_numbers(params: Any) -> Any:
  """`MuonDimensionNumbers()` for hidden matrices, `None` elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (contrib.MuonDimensionNumbers()
                       if x.ndim == 2 and not is_excluded(path) else None),
      params)


def count_params(params: Any) -> dict[str, int]:
  """Total, matrix (orthogonalised) and fallback parameter counts."""
  total = matrix = matrices = 0
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    total += x.size
    if x.ndim == 2 and not is_excluded(path):
      matrix += x.size
      matrices += 1
  return {'total': total, 'matrix': matrix, 'fallback': total - matrix,
          'matrices': matrices}


# ----------------------------------------------------------------------------
# Candidates.


def candidates(k: int) -> dict[str, tuple[str, Callable[[], Any]]]:
  """name -> (label, constructor)."""
  ex = list(EXCLUDE)
  return {
      BASELINE: ('optax.adamw(3e-4)', lambda: optax.adamw(3e-4)),
      OPTAX_MUON: (
          'optax.contrib.muon(0.02, ns_steps=5), Jordan coefficients',
          lambda: contrib.muon(
              0.02, ns_steps=5,
              muon_weight_dimension_numbers=optax_muon_dimension_numbers)),
      OURS_NS: (
          'fo.muon(0.02, polar="newton_schulz", ns_steps=5)',
          lambda: fo.muon(0.02, polar='newton_schulz', ns_steps=5,
                          exclude=ex)),
      'fo.muon': ('fo.muon(0.02) (Polar Express, 5 steps)',
                  lambda: fo.muon(0.02, exclude=ex)),
      'fo.f_muon': ('fo.f_muon(0.02)', lambda: fo.f_muon(0.02, exclude=ex)),
      'fo.s_muon': ('fo.s_muon(0.02)', lambda: fo.s_muon(0.02, exclude=ex)),
      f'fo.fanion(k={k})': (f'fo.fanion(0.02, {k})',
                            lambda: fo.fanion(0.02, k, exclude=ex)),
      'fo.neon': ('fo.neon(0.02)', lambda: fo.neon(0.02, exclude=ex)),
      f'fo.f_fanion(k={k})': (f'fo.f_fanion(0.02, {k})',
                              lambda: fo.f_fanion(0.02, k, exclude=ex)),
      f'fo.s_fanion(k={k})': (f'fo.s_fanion(0.02, {k})',
                              lambda: fo.s_fanion(0.02, k, exclude=ex)),
      'fo.lion_k(sign)': (
          'fo.lion_k(3e-4, fo.lmo.sign(), shape_scale=None)',
          lambda: fo.lion_k(3e-4, fo.lmo.sign(), shape_scale=None,
                            exclude=ex)),
  }


def make_step(tx: optax.GradientTransformation):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def flops_of(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - cost analysis is best-effort
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def time_steps(
    steps: dict[str, Any],
    inits: dict[str, Any],
    params: Any,
    grads: Any,
    *,
    reps: int,
    keep_state: Sequence[str] = (),
    warmup: int = 1,
    compile_s: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, _timing.Timing]:
  """Interleaved rotated rounds, like `_timing.time_side_by_side`.

  A candidate in `keep_state` (a warm-started LMO: its first step from
  `init` runs the cold-start iteration count) is timed on the state its
  warm-up step returned, kept for the whole run. Every other candidate gets
  a freshly initialised state for each call, made outside the timed region
  and dropped after it: keeping all eleven states of the GPT-2-small tree
  alive (each holds AdamW moments of the 77M embedding and head parameters)
  would need ~15 GB, one at a time ~5 GB, and a stateless step costs the
  same whatever the state's values (fixed iteration counts, no data-
  dependent control flow).
  """
  names = list(steps)
  kept: dict[str, Any] = {}

  def state_of(name):
    if name in kept:
      return kept[name]
    return jax.block_until_ready(inits[name](params))

  def call(name):
    state = state_of(name)
    seconds, (_, new_state) = _timing.time_call(
        lambda: steps[name](params, state, grads))
    return seconds, new_state

  for _ in range(warmup):
    for name in names:
      _, new_state = call(name)
      if name in keep_state:
        kept[name] = new_state
      del new_state
  timings = {name: _timing.Timing(name, compile_s=(compile_s or {}).get(name))
             for name in names}
  for r in range(reps):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      seconds, _ = call(name)
      timings[name].times.append(seconds)
    if progress is not None:
      progress(f'round {r + 1}/{reps}')
  return timings


def _log(msg: str) -> None:
  print(msg, flush=True)


# ----------------------------------------------------------------------------
# Targets, table, plot.


def evaluate_targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
  ours, theirs = rows[OURS_NS], rows[OPTAX_MUON]
  pairs = [a / b for a, b in zip(ours['times_s'], theirs['times_s'])]
  paired = statistics.median(pairs)
  medians = ours['median_s'] / theirs['median_s']
  mins = ours['min_s'] / theirs['min_s']
  return {
      'muon_newton_schulz_vs_optax_muon_le_1.05': {
          'passed': paired <= NS_RATIO_MAX,
          'threshold': NS_RATIO_MAX,
          'judged_on': 'paired_ratio (median over rounds of the per-round'
                       ' ratio; the rounds are interleaved)',
          'paired_ratio': paired,
          'ratio_of_medians': medians,
          'ratio_of_mins': mins,
          'per_round_ratios': pairs,
          'flops_ratio': (ours['flops'] / theirs['flops']
                          if ours['flops'] and theirs['flops'] else None),
      },
  }


def print_table(rows: dict[str, dict[str, Any]]) -> None:
  head = (f'{"optimizer":<24} {"median ms":>10} {"min ms":>10}'
          f' {"x adamw":>8} {"paired":>7} {"GFLOP":>9} {"compile s":>9}')
  print(head)
  print('-' * len(head))
  for name, row in rows.items():
    gflop = '-' if row['flops'] is None else f'{row["flops"] / 1e9:.1f}'
    print(f'{name:<24} {1e3 * row["median_s"]:>10.1f}'
          f' {1e3 * row["min_s"]:>10.1f} {row["ratio"]:>8.2f}'
          f' {row["paired_ratio"]:>7.2f} {gflop:>9} {row["compile_s"]:>9.1f}')


def plot(rows: dict[str, dict[str, Any]], path: str, title: str,
         skipped: Sequence[str] = ()) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(rows)[::-1]
  ratios = [rows[n]['ratio'] for n in names]
  colors = ['tab:gray' if n.startswith('optax') else 'tab:blue'
            for n in names]
  fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.8))
  y = np.arange(len(names))
  ax.barh(y, ratios, color=colors)
  for yi, name, r in zip(y, names, ratios):
    ax.text(r, yi, f' {r:.2f}x ({1e3 * rows[name]["median_s"]:.0f} ms)',
            va='center', fontsize=8)
  ax.axvline(1.0, color='k', lw=0.8, ls='--')
  ax.set_yticks(y, names)
  ax.set_xscale('log')
  ax.set_xlim(right=max(ratios) * 3)
  ax.set_xlabel('median step time / optax.adamw step time (log scale)')
  ax.set_title(title, fontsize=9)
  ax.grid(True, axis='x', which='both', alpha=0.3)
  if skipped:
    fig.text(0.01, 0.01, 'not run here (see "skipped" in the JSON): '
             + ', '.join(skipped), fontsize=7, color='tab:red')
  fig.tight_layout(rect=(0, 0.03 if skipped else 0, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m benchmarks.step', description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny tree (2 layers, width 64, vocab 512) and'
                      f' {QUICK_REPS} reps: a smoke test')
  parser.add_argument('--reps', type=int, default=None,
                      help=f'timed rounds (default {FULL_REPS}, quick'
                      f' {QUICK_REPS})')
  parser.add_argument('--layers', type=int, default=None,
                      help='number of transformer layers (default 12, quick'
                      ' 2)')
  parser.add_argument('--k', type=int, default=None,
                      help='rank of the Fanion candidates (default 64, quick'
                      ' 16)')
  parser.add_argument('--skip', default=None, metavar='REGEX',
                      help='leave out the candidates whose name matches'
                      ' REGEX (searched)')
  parser.add_argument('--out', default=os.path.join('benchmarks', 'results'),
                      help='results directory (default benchmarks/results)')
  args = parser.parse_args(argv)
  model = QUICK_MODEL if args.quick else FULL_MODEL
  if args.layers is not None:
    if args.layers < 1:
      parser.error('--layers must be >= 1')
    model = dataclasses.replace(model, layers=args.layers)
  args.model = model
  args.reps = args.reps or (QUICK_REPS if args.quick else FULL_REPS)
  if args.reps < 1:
    parser.error('--reps must be >= 1')
  args.k = args.k or (16 if args.quick else 64)
  if not 1 <= args.k < model.width:
    parser.error(f'--k must be in [1, width={model.width})')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  model = args.model
  start = time.perf_counter()
  _log(f'step benchmark ({"quick" if args.quick else "full"}):'
       f' {model.describe()}; reps {args.reps};'
       f' device {jax.devices()[0].device_kind}')

  shapes = param_shapes(model)
  params = random_tree(shapes, seed=0, scale=0.02)
  grads = random_tree(shapes, seed=1, scale=1.0)
  counts = count_params(params)
  _log(f'  {counts["total"] / 1e6:.1f}M parameters,'
       f' {counts["matrix"] / 1e6:.1f}M in {counts["matrices"]} hidden'
       ' matrices')

  specs = candidates(args.k)
  skipped = {}
  if args.skip:
    for name in [n for n in specs if re.search(args.skip, n)]:
      skipped[name] = f'--skip {args.skip!r}'
  for name in skipped:
    _log(f'  skipping {name}: {skipped[name]}')
  labels = {name: spec[0] for name, spec in specs.items()}
  specs = {n: spec for n, spec in specs.items() if n not in skipped}
  for name in (BASELINE, OPTAX_MUON, OURS_NS):
    if name not in specs:
      raise SystemExit(f'{name} is needed for the ratios; do not skip it.')
  inits, steps, compile_s, flops = {}, {}, {}, {}
  for name, (_, make) in specs.items():
    tx = make()
    inits[name] = jax.jit(tx.init)
    state = jax.block_until_ready(inits[name](params))
    steps[name], compile_s[name] = _timing.compile_ahead(
        make_step(tx), params, state, grads)
    flops[name] = flops_of(steps[name])
    del state
    _log(f'  compiled {name} in {compile_s[name]:.1f}s')

  last = [time.perf_counter()]

  def progress(line):
    now = time.perf_counter()
    _log(f'  {line} ({now - last[0]:.1f}s)')
    last[0] = now

  warm = [name for name in steps if re.search(LOWRANK, name)]
  timings = time_steps(steps, inits, params, grads, reps=args.reps,
                       keep_state=warm, compile_s=compile_s,
                       progress=progress)
  rows = _timing.summarize(timings, baseline=BASELINE)
  for name, row in rows.items():
    row['label'] = specs[name][0]
    row['flops'] = flops[name]
    row['ms_per_step'] = 1e3 * row['median_s']
  targets = evaluate_targets(rows)
  elapsed = time.perf_counter() - start

  print()
  print_table(rows)
  for name, target in targets.items():
    print(f'  [{"PASS" if target["passed"] else "FAIL"}] {name}:'
          f' paired {target["paired_ratio"]:.3f},'
          f' medians {target["ratio_of_medians"]:.3f}')

  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, 'step.json')
  png_path = os.path.join(args.out, 'step.png')
  full_model = (model == FULL_MODEL)
  payload = {
      'benchmark': 'step',
      'config': {
          'quick': args.quick,
          'model': dataclasses.asdict(model),
          'model_description': model.describe(),
          'is_full_gpt2_small': full_model,
          'params': counts,
          'excluded_to_fallback': list(EXCLUDE),
          'fanion_k': args.k,
          'openblas_num_threads': os.environ.get('OPENBLAS_NUM_THREADS'),
          'reps': args.reps,
          'warmup': 1,
          'dtype': 'float32',
          'baseline': BASELINE,
          'step': ('jit(tx.update + optax.apply_updates), compiled ahead of'
                   ' time, nothing donated; params 0.02*N(0,1), grads'
                   ' N(0,1), fixed across calls'),
          'timing': ('compile excluded, one warm-up call each, then'
                     ' interleaved rotated rounds in one process; median.'
                     ' Each call gets a freshly initialised state, made'
                     ' outside the timed region, to bound memory, except the'
                     ' warm-started Fanion/Neon candidates, timed on the'
                     ' state after their warm-up step (warm branch)'),
          'flops': ("XLA's compiled cost_analysis()['flops'] of the step;"
                    ' for Fanion/Neon it counts the costlier branch of'
                    " KyFan.update's cold/warm lax.cond (the 10-iteration"
                    ' cold start), while the timing is of warm steps'),
      },
      'candidates': rows,
      'skipped': {name: {'label': labels[name], 'reason': reason}
                  for name, reason in skipped.items()},
      'targets': {name: t['passed'] for name, t in targets.items()},
      'target_details': targets,
      'elapsed_s': elapsed,
  }
  document = _timing.write_json(
      json_path, payload, argv=['-m', 'benchmarks.step', *argv])
  meta = document['metadata']
  plot(rows, png_path,
       f'One optimizer step, GPT-2-shaped tree ({model.describe()};'
       f' {counts["total"] / 1e6:.0f}M params),\nfloat32 on'
       f' {meta["device_kind"]} ({meta["cpu_affinity"]} CPUs), median of'
       f' {args.reps}' + (' [quick]' if args.quick else ''),
       skipped=list(skipped))
  _log(f'wrote {json_path} and {png_path} ({elapsed:.0f}s)')
  return document


def markdown(d: dict[str, Any]) -> str:
  """The tables of `benchmarks/README.md` for one result document."""
  lines = ['| optimizer | ms/step | ratio to optax.adamw | GFLOP/step |',
           '|---|---|---|---|']
  for key, r in d['candidates'].items():
    flops = r.get('flops')
    lines.append(f'| {r.get("label", key)} | {r["ms_per_step"]:.0f} |'
                 f' {r["ratio"]:.2f} |'
                 f' {"—" if flops is None else f"{flops / 1e9:.0f}"} |')
  model = d.get('config', {}).get('model_description', '')
  return f'Parameter tree: {model}.\n\n' + '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
