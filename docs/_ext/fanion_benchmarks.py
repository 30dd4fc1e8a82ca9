"""Benchmark pages generated at build time from `benchmarks/results/*.json`.

For every benchmark module `benchmarks/<name>.py` (the convention of
`benchmarks/report.py`: not starting with `_`, not `report`), writes
`docs/_generated/benchmarks/<name>.md` with

* the module docstring's first paragraph and the command that runs it;
* the pass/fail targets of the JSON (`targets`, with `target_details`);
* the result tables, rendered by the module's own `markdown(document)` (the
  function `python -m benchmarks.report` uses for benchmarks/README.md), run
  in a subprocess so that the benchmarks' environment settings (emulated
  devices, OpenBLAS threads) stay out of the Sphinx process;
* the committed plot `results/<name>.png`;
* the machine and versions it was measured with (`metadata`);

and `docs/_generated/benchmarks_summary.md`, one row per benchmark, that
`docs/benchmarks.md` includes. Files are rewritten only when their text
changes, so an unchanged JSON does not make Sphinx re-read the pages.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
ORDER = (
  'lmo',
  'step',
  'scaling',
  'distributed',
  'quadratic',
  'charlm',
  'cnn',
  'gpu',
)
"""Page order (that of benchmarks/README.md); others come after, by name."""
META_KEYS = (
  'date',
  'device_kind',
  'platform',
  'cpu_model',
  'cpu_count',
  'device_count',
  'python',
  'jax',
  'jaxlib',
  'optax',
  'numpy',
  'git_commit',
  'load_average',
  'command',
)

RENDER = """
import importlib, json, sys
out = {}
for name, path in json.loads(sys.argv[1]):
  try:
    module = importlib.import_module('benchmarks.' + name)
    with open(path, encoding='utf-8') as f:
      out[name] = {'ok': module.markdown(json.load(f))}
  except Exception as err:  # reported as a Sphinx warning
    out[name] = {'error': f'{type(err).__name__}: {err}'}
sys.stdout.write(json.dumps(out))
"""


def write_if_changed(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      if f.read() == text:
        return
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def copy_if_changed(src: str, dst: str) -> None:
  if os.path.exists(dst):
    with open(src, 'rb') as a, open(dst, 'rb') as b:
      if a.read() == b.read():
        return
  shutil.copyfile(src, dst)


def benchmark_names(bench_dir: str) -> list[str]:
  names = [
    f[:-3]
    for f in os.listdir(bench_dir)
    if f.endswith('.py') and not f.startswith('_') and f != 'report.py'
  ]
  rank = {name: i for i, name in enumerate(ORDER)}
  return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), n))


def docstring(path: str) -> tuple[str, str]:
  """The module docstring's first line and first paragraph (no import)."""
  with open(path, encoding='utf-8') as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ''
  paragraph = doc.split('\n\n')[0].strip()
  return (paragraph.splitlines() or [''])[0], ' '.join(paragraph.split())


def short(value: Any) -> str:
  """A compact rendering: 4 significant digits, long lists counted."""
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, (list, tuple)):
    if len(value) > 4:
      return f'[{len(value)} values]'
    return '[' + ', '.join(short(v) for v in value) + ']'
  if isinstance(value, dict):
    return '{' + ', '.join(f'{k}: {short(v)}' for k, v in value.items()) + '}'
  return str(value)


def cell(value: Any) -> str:
  """A Markdown table cell: `\\`, `|` and `*` escaped, on one line."""
  text = value if isinstance(value, str) else short(value)
  for char in '\\|*':
    text = text.replace(char, '\\' + char)
  return text.replace('\n', ' ')


LONGEST = 160
"""Longer detail values are left to the JSON."""
PROSE = ('description', 'rule', 'judged_on')
"""target_details keys that hold sentences rather than numbers."""


def details(extra: Any) -> str:
  """A target's details: its sentences, then `key: value` pairs."""
  if not isinstance(extra, dict):
    return '' if extra is None else cell(extra)
  parts = [str(extra[k]) for k in PROSE if k in extra]
  pairs = [
    f'{k}: {short(v)}'
    for k, v in extra.items()
    if k != 'passed' and k not in PROSE
  ]
  pairs = [
    p if len(p) <= LONGEST else p.split(':')[0] + ': … (in the JSON)'
    for p in pairs
  ]
  if pairs:
    parts.append('; '.join(pairs))
  return cell(' — '.join(parts))


def code(text: str) -> str:
  text = str(text).replace('|', '\\|')
  fence = '``' if '`' in text else '`'
  return f'{fence}{text}{fence}'


def targets_table(d: dict[str, Any]) -> str:
  targets = d.get('targets') or {}
  if not targets:
    return 'This benchmark states no pass/fail targets.\n'
  about = d.get('target_details') or {}
  lines = ['| target | result | details |', '|---|---|---|']
  for name, ok in targets.items():
    verdict = 'pass' if ok else '**FAIL**'
    lines.append(f'| {code(name)} | {verdict} | {details(about.get(name))} |')
  passed = sum(bool(v) for v in targets.values())
  return (
    f'{passed} of {len(targets)} targets pass.\n\n' + '\n'.join(lines) + '\n'
  )


def meta_table(d: dict[str, Any]) -> str:
  meta = d.get('metadata') or {}
  rows = [(k, meta[k]) for k in META_KEYS if k in meta]
  if 'elapsed_s' in d:
    rows.append(('elapsed', f'{d["elapsed_s"]:.0f} s'))
  if not rows:
    return ''
  lines = ['| field | value |', '|---|---|']
  for key, value in rows:
    if key == 'git_commit':
      value = str(value)[:12]
    shown = code(value) if key == 'command' else cell(value)
    lines.append(f'| {key} | {shown} |')
  return '\n'.join(lines) + '\n'


def render_tables(
  root: str, jobs: list[tuple[str, str]], cache_path: str
) -> dict[str, dict[str, str]]:
  """`markdown(document)` of each benchmark, cached on the bytes of the
  JSON files and of every `benchmarks/*.py`."""
  digest = hashlib.sha256()
  sources = sorted(glob.glob(os.path.join(root, 'benchmarks', '*.py')))
  for source in [path for _, path in jobs] + sources:
    with open(source, 'rb') as f:
      digest.update(source.encode() + b'\0' + f.read())
  key = digest.hexdigest()
  if os.path.exists(cache_path):
    with open(cache_path, encoding='utf-8') as f:
      cached = json.load(f)
    if cached.get('key') == key:
      return cached['tables']
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      [root] + [p for p in [os.environ.get('PYTHONPATH')] if p]
    ),
  )
  env.setdefault('JAX_PLATFORMS', 'cpu')
  proc = subprocess.run(
    [sys.executable, '-c', RENDER, json.dumps(jobs)],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  if proc.returncode != 0:
    LOGGER.warning(
      'benchmark tables: the renderer failed (exit %d):\n%s',
      proc.returncode,
      proc.stderr[-3000:],
      type='fanion',
      subtype='benchmarks',
    )
    return {name: {'error': 'renderer failed'} for name, _ in jobs}
  tables = json.loads(proc.stdout)
  if all('ok' in t for t in tables.values()):
    write_if_changed(cache_path, json.dumps({'key': key, 'tables': tables}))
  return tables


def page(
  name: str,
  summary: str,
  d: dict[str, Any] | None,
  tables: dict[str, str] | None,
  has_png: bool,
) -> str:
  out = [
    f'(benchmark-{name})=',
    f'# {name}',
    '',
    summary,
    '',
    f'Run it with `python -m benchmarks.{name}` (add `--quick` for a'
    ' smoke test); it writes `benchmarks/results/'
    f'{name}.json` and `{name}.png`, from which this page is built.',
    '',
  ]
  if d is None:
    out += [
      'No committed results yet: run'
      f' `python -m benchmarks.{name}` and commit'
      f' `benchmarks/results/{name}.json`.',
      '',
    ]
    return '\n'.join(out)
  if (d.get('config') or {}).get('quick') or d.get('quick'):
    out += [
      ':::{warning}',
      'Quick mode (smoke-test sizes): these numbers are not representative.',
      ':::',
      '',
    ]
  out += ['## Targets', '', targets_table(d), '## Results', '']
  if tables and 'ok' in tables:
    out += [tables['ok'].strip(), '']
  if has_png:
    out += [
      '## Plot',
      '',
      f'```{{image}} {name}.png',
      f':alt: {name} benchmark plot',
      ':width: 100%',
      '```',
      '',
    ]
  meta = meta_table(d)
  if meta:
    out += ['## Measured with', '', meta]
  return '\n'.join(out)


def summary_table(rows: list[tuple[str, str, dict[str, Any] | None]]) -> str:
  lines = [
    '| benchmark | what it measures | targets | measured |',
    '|---|---|---|---|',
  ]
  for name, first_line, d in rows:
    link = f'{{ref}}`{name} <benchmark-{name}>`'
    if d is None:
      lines.append(f'| {link} | {cell(first_line)} | no results yet | |')
      continue
    targets = d.get('targets') or {}
    passed = sum(bool(v) for v in targets.values())
    verdict = f'{passed}/{len(targets)} pass' if targets else '—'
    if targets and passed < len(targets):
      verdict = f'**{verdict}**'
    meta = d.get('metadata') or {}
    when = str(meta.get('date', ''))[:10]
    where = meta.get('device_kind') or meta.get('platform') or ''
    lines.append(
      f'| {link} | {cell(first_line)} | {verdict} |'
      f' {cell(when)} {cell(where)} |'
    )
  pages = '\n'.join(f'_generated/benchmarks/{name}' for name, _, _ in rows)
  return (
    '\n'.join(lines)
    + '\n\n```{toctree}\n:hidden:\n:maxdepth: 1\n\n'
    + pages
    + '\n```\n'
  )


def generate(app: Sphinx) -> None:
  docs = app.srcdir
  root = os.path.dirname(os.path.abspath(docs))
  bench_dir = os.path.join(root, 'benchmarks')
  results = os.path.join(bench_dir, 'results')
  out_dir = os.path.join(docs, '_generated', 'benchmarks')
  os.makedirs(out_dir, exist_ok=True)
  names = benchmark_names(bench_dir)
  documents = {}
  for name in names:
    path = os.path.join(results, f'{name}.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        documents[name] = json.load(f)
  jobs = [
    (name, os.path.join(results, f'{name}.json'))
    for name in names
    if name in documents
  ]
  tables = render_tables(
    root, jobs, os.path.join(docs, '_generated', '.tables.json')
  )
  rows = []
  for name in names:
    first_line, summary = docstring(os.path.join(bench_dir, f'{name}.py'))
    d = documents.get(name)
    t = tables.get(name)
    if t is not None and 'error' in t:
      LOGGER.warning(
        'benchmark %s: markdown() failed: %s',
        name,
        t['error'],
        type='fanion',
        subtype='benchmarks',
      )
    png = os.path.join(results, f'{name}.png')
    has_png = d is not None and os.path.exists(png)
    if has_png:
      copy_if_changed(png, os.path.join(out_dir, f'{name}.png'))
    write_if_changed(
      os.path.join(out_dir, f'{name}.md'), page(name, summary, d, t, has_png)
    )
    rows.append((name, first_line, d))
  keep = {f'{n}.md' for n in names} | {f'{n}.png' for n in documents}
  for stale in set(os.listdir(out_dir)) - keep:
    os.remove(os.path.join(out_dir, stale))
  write_if_changed(
    os.path.join(docs, '_generated', 'benchmarks_summary.md'),
    summary_table(rows),
  )


def setup(app: Sphinx) -> dict[str, Any]:
  app.connect('builder-inited', generate)
  return {
    'parallel_read_safe': True,
    'parallel_write_safe': True,
    'version': '1',
  }
