"""Shared helpers for the benchmarks: side-by-side timing and JSON output.

Also random parameter trees from trees of shapes, XLA FLOP counts and
console tables, used by several benchmarks.

Timing design. Every candidate is a zero-argument callable that runs an
already compiled (ahead-of-time) JAX function on fixed inputs. Candidates are
warmed up first (one call each, blocked), then timed in interleaved rounds:
each round calls every candidate once, round-robin, with the starting
candidate rotated from one round to the next. Slow drifts of the machine
(other processes, frequency scaling) therefore hit every candidate alike, and
the median over rounds discards the outliers. Ratios are reported both as
the ratio of medians and as the median of per-round (paired) ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Candidate = Callable[[], Any]


def log(msg: str) -> None:
  """Prints one progress line at once (benchmarks run for minutes)."""
  print(msg, flush=True)


def progress_bar(total: int, desc: str, unit: str = 'it'):
  """A tqdm progress bar on stderr; `bar.update()` after each unit of work.

  Use as a context manager. `bar.write(msg)` prints above the bar.
  """
  from tqdm.auto import tqdm

  return tqdm(
    total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0
  )


def fmt(x: Any) -> str:
  """Three significant digits for floats, `str` otherwise (README tables)."""
  if isinstance(x, float):
    return f'{x:.3g}'
  return str(x)


def is_shape(x: Any) -> bool:
  """Whether `x` is a shape tuple (a leaf of a tree of shapes)."""
  return isinstance(x, tuple) and all(isinstance(v, int) for v in x)


def random_tree(shapes: Any, seed: int, scale: float = 1.0) -> Any:
  """`scale * N(0, 1)` float32 arrays for a tree of shapes (a key per leaf)."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_shape)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten(
    [scale * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves)]
  )


def flops_of(compiled: Any) -> float | None:
  """XLA's FLOP count of a compiled executable (per device), or `None`.

  Some backends report no cost analysis; the count is best-effort there.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - cost analysis is best-effort
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def memory_of(compiled) -> dict[str, int] | None:
  """XLA's buffer sizes of a compiled step, or None where not reported."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - memory analysis is best-effort
    return None
  if stats is None:
    return None
  out = {
    key: int(getattr(stats, f'{key}_size_in_bytes'))
    for key in ('argument', 'output', 'temp', 'alias')
  }
  out['total'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


LOOP_FLOPS_NOTE = (
  "XLA's cost analysis counts a while loop's body once, whatever its trip"
  ' count: the Ky Fan subspace iteration (a loop of subspace_iters - 1'
  ' power steps, 10 on the cold first step and 2 on warm ones, decided at'
  ' run time) is counted as one loop trip plus the final Ritz step, i.e.'
  ' as a warm step of 2 iterations.'
)
"""How to read `flops_of` for the low-rank optimizers (stored in the JSON)."""


def text_table(
  header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1
) -> str:
  """A console table; columns sized to fit, the first `left` left-aligned.

  Strings are printed as they are, `None` as `-`, other values with `fmt`.
  """
  cells = [list(header)] + [
    ['-' if v is None else v if isinstance(v, str) else fmt(v) for v in row]
    for row in rows
  ]
  widths = [max(len(row[j]) for row in cells) for j in range(len(header))]

  def line(row):
    return ' '.join(
      v.ljust(w) if j < left else v.rjust(w)
      for j, (v, w) in enumerate(zip(row, widths))
    )

  rule = '-' * len(line(cells[0]))
  return '\n'.join([line(cells[0]), rule, *map(line, cells[1:])])


def print_targets(
  targets: Mapping[str, Mapping[str, Any]],
  detail: Callable[[Mapping[str, Any]], str],
) -> None:
  """One `[PASS]`/`[FAIL]` line per target (`detail(target)` after it)."""
  for name, target in targets.items():
    log(
      f'  [{"PASS" if target["passed"] else "FAIL"}] {name}: {detail(target)}'
    )


def compile_ahead(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """Jits, lowers and compiles `fn` for `args`; returns it and the seconds.

  The compiled executable accepts only arguments of the same shapes and
  dtypes, so no compilation can happen later, inside a timed region.
  """
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_call(fn: Candidate) -> tuple[float, Any]:
  """Seconds for one call of `fn` (output blocked on) and the output."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


@dataclasses.dataclass
class Timing:
  """The timed repetitions of one candidate."""

  name: str
  times: list[float] = dataclasses.field(default_factory=list)
  compile_s: float | None = None

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def min(self) -> float:
    return min(self.times)


def run_round(
  candidates: Mapping[str, Candidate], order: Sequence[str] | None = None
) -> dict[str, float]:
  """Calls every candidate once, in `order`; returns the seconds of each."""
  order = list(candidates) if order is None else list(order)
  return {name: time_call(candidates[name])[0] for name in order}


def time_side_by_side(
  candidates: Mapping[str, Candidate],
  *,
  reps: int,
  warmup: int = 1,
  compile_s: Mapping[str, float] | None = None,
  progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
  """Times the candidates in `reps` interleaved, rotated rounds.

  Args:
    candidates: name -> zero-argument callable (already compiled work).
    reps: number of timed rounds.
    warmup: untimed calls of each candidate before the first round.
    compile_s: optional compile seconds per name, stored in the result.
    progress: optional callback, given one line per round.

  Returns:
    name -> `Timing` with `reps` samples each.
  """
  names = list(candidates)
  for _ in range(warmup):
    for name in names:
      jax.block_until_ready(candidates[name]())
  timings = {
    name: Timing(name, compile_s=(compile_s or {}).get(name)) for name in names
  }
  for r in range(reps):
    shift = r % len(names)
    order = names[shift:] + names[:shift]
    for name, seconds in run_round(candidates, order).items():
      timings[name].times.append(seconds)
    if progress is not None:
      progress(f'round {r + 1}/{reps}')
  return timings


def summarize(
  timings: Mapping[str, Timing], baseline: str | None = None
) -> dict[str, dict[str, Any]]:
  """Median/min seconds per candidate and ratios to `baseline`.

  `ratio` is median(candidate) / median(baseline); `paired_ratio` is the
  median over rounds of candidate / baseline within the same round (the
  rounds are interleaved, so this cancels drift between rounds).
  """
  out = {}
  base = timings[baseline] if baseline is not None else None
  for name, timing in timings.items():
    row: dict[str, Any] = {
      'median_s': timing.median,
      'min_s': timing.min,
      'times_s': list(timing.times),
      'compile_s': timing.compile_s,
    }
    if base is not None:
      row['ratio'] = timing.median / base.median
      pairs = [t / b for t, b in zip(timing.times, base.times)]
      row['paired_ratio'] = statistics.median(pairs) if pairs else None
    out[name] = row
  return out


def _git_commit() -> str | None:
  try:
    return (
      subprocess.run(
        ['git', 'rev-parse', 'HEAD'],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        timeout=10,
      ).stdout.strip()
      or None
    )
  except (OSError, subprocess.SubprocessError):
    return None


def _cpu_model() -> str | None:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def load_average() -> list[float] | None:
  """The 1/5/15-minute load averages (other work competing for the CPU)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except (AttributeError, OSError):
    return None


def metadata(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Where and how a benchmark ran: date, versions, device, CPU, command."""
  import jaxlib
  import optax

  argv = sys.argv if argv is None else argv
  device = jax.devices()[0]
  try:
    affinity = len(os.sched_getaffinity(0))
  except AttributeError:
    affinity = None
  try:
    import fanion_optax

    fanion_version = fanion_optax.__version__
  except (ImportError, AttributeError):
    fanion_version = None
  return {
    'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'jax': jax.__version__,
    'jaxlib': getattr(jaxlib, '__version__', None),
    'optax': optax.__version__,
    'numpy': np.__version__,
    'fanion_optax': fanion_version,
    'git_commit': _git_commit(),
    'platform': device.platform,
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
    'cpu_count': os.cpu_count(),
    'cpu_affinity': affinity,
    'cpu_model': _cpu_model(),
    'load_average': load_average(),
    'machine': platform.machine(),
    'python': platform.python_version(),
    'command': shlex.join([os.path.basename(sys.executable), *argv]),
  }


def _to_json(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f'not JSON serialisable: {type(value).__name__}')


def write_json(
  path: str, payload: Mapping[str, Any], argv: Sequence[str] | None = None
) -> dict[str, Any]:
  """Writes `{"metadata": ..., **payload}` to `path` (dirs created)."""
  document = {'metadata': metadata(argv), **payload}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(document, f, indent=2, default=_to_json)
    f.write('\n')
  return document


def save_results(
  name: str,
  out: str,
  payload: Mapping[str, Any],
  argv: Sequence[str],
  draw: Callable[[dict[str, Any], str], None],
) -> dict[str, Any]:
  """Writes `<out>/<name>.json` (with `metadata`) and `<out>/<name>.png`.

  Args:
    name: the benchmark (module) name.
    out: results directory (created if missing).
    payload: the results; `metadata` is added.
    argv: the benchmark's command-line arguments (recorded).
    draw: `(document, png_path) -> None`, the plot.

  Returns:
    The document written.
  """
  json_path = os.path.join(out, f'{name}.json')
  png_path = os.path.join(out, f'{name}.png')
  document = write_json(
    json_path, payload, argv=['-m', f'benchmarks.{name}', *argv]
  )
  draw(document, png_path)
  log(f'wrote {json_path} and {png_path}')
  return document


RESULTS_DIR = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'results'
)


class _Parser(argparse.ArgumentParser):
  """Fills `--reps` from `--quick` when it is not given."""

  reps_defaults: tuple[int, int] | None = None

  def parse_args(self, args=None, namespace=None):  # type: ignore[override]
    parsed = super().parse_args(args, namespace)
    if self.reps_defaults is not None and parsed.reps is None:
      full, quick = self.reps_defaults
      parsed.reps = quick if parsed.quick else full
    return parsed


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
  return value


def benchmark_parser(
  name: str,
  doc: str,
  quick_help: str,
  *,
  reps: tuple[int, int] | None = None,
  replot: bool = False,
) -> argparse.ArgumentParser:
  """The argument parser every benchmark starts from: `--quick` and `--out`.

  Args:
    name: the benchmark (module) name.
    doc: the module docstring; its first line is the description.
    quick_help: what `--quick` shrinks.
    reps: `(full, quick)` defaults of a `--reps` option (timed rounds),
      resolved by `parse_args`; `None`: no such option.
    replot: add `--replot` (redraw `<out>/<name>.png` from its JSON, see
      `replot`).
  """
  parser = _Parser(
    prog=f'python -m benchmarks.{name}', description=doc.splitlines()[0]
  )
  parser.add_argument('--quick', action='store_true', help=quick_help)
  parser.add_argument(
    '--out',
    default=RESULTS_DIR,
    help='results directory (default benchmarks/results)',
  )
  if reps is not None:
    parser.reps_defaults = reps
    parser.add_argument(
      '--reps',
      type=_positive_int,
      default=None,
      help=f'timed rounds (default {reps[0]}, quick {reps[1]})',
    )
  if replot:
    parser.add_argument(
      '--replot',
      action='store_true',
      help=f'only redraw <out>/{name}.png from <out>/{name}.json',
    )
  return parser


def replot(
  name: str, out: str, plot: Callable[[dict[str, Any], str], None]
) -> dict[str, Any]:
  """Redraws `<out>/<name>.png` from `<out>/<name>.json`; the document."""
  with open(os.path.join(out, f'{name}.json'), encoding='utf-8') as f:
    document = json.load(f)
  path = os.path.join(out, f'{name}.png')
  plot(document, path)
  log(f'redrew {path}')
  return document


def machine_title(document: dict[str, Any]) -> str:
  """`"<device> (<n> CPUs, 1-min load avg <a> at start, <b> at end)"`."""
  meta, config = document['metadata'], document['config']
  start = config.get('load_average_start')
  end = meta.get('load_average')
  return (
    f'{meta["device_kind"]} ({meta["cpu_affinity"]} CPUs'
    + (f', 1-min load avg {start[0]:.1f} at start' if start else '')
    + (f', {end[0]:.1f} at end' if end else '')
    + ')'
  )


def positive_ints(text: str) -> list[int]:
  """`"8,32,8"` -> `[8, 32]`: an argparse type for comma-separated sizes."""
  try:
    values = [int(v) for v in text.split(',') if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
      f'expected comma-separated integers, got {text!r}'
    ) from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f'expected positive integers: {text!r}')
  return sorted(set(values))


def split_suffix(name: str, key: str) -> tuple[str, float | None]:
  """A row name's hyperparameter suffix `_<key><dd>`, read as 0.dd:
  `split_suffix('muon_m80', 'm')` → `('muon', 0.8)`; a name without one →
  `(name, None)` (the optimizer's default)."""
  base, sep, digits = name.rpartition(f'_{key}')
  if sep and len(digits) == 2 and digits.isdigit():
    return base, int(digits) / 100
  return name, None
