"""Every benchmark runs in --quick mode and writes its JSON, plot and report."""

import json
import os
import subprocess
import sys

import pytest
from fast_compile import ENV as FAST_COMPILE_ENV

from benchmarks import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('name', report.benchmark_names())
def test_benchmark_quick_mode(name, tmp_path):
  # A smoke test: the quick numbers are not read, so the subprocess
  # compiles with most optimisations off (tests/fast_compile.py).
  env = dict(os.environ, OPENBLAS_NUM_THREADS='1', **FAST_COMPILE_ENV)
  subprocess.run(
    [
      sys.executable,
      '-m',
      f'benchmarks.{name}',
      '--quick',
      '--out',
      str(tmp_path),
    ],
    cwd=ROOT,
    env=env,
    check=True,
    timeout=600,
    stdout=subprocess.DEVNULL,
  )
  with open(tmp_path / f'{name}.json', encoding='utf-8') as f:
    result = json.load(f)
  assert result['metadata']['jax']
  assert result['targets'], 'each benchmark states its targets'
  assert all(isinstance(v, bool) for v in result['targets'].values())
  assert os.path.getsize(tmp_path / f'{name}.png') > 1000
  assert report.benchmark_names().count(name) == 1
  from importlib import import_module

  table = import_module(f'benchmarks.{name}').markdown(result)
  assert table.count('|') > 10, 'the README section has a table'


def test_report_renders_committed_results(tmp_path):
  text = report.main(['--out', str(tmp_path / 'README.md')])
  assert '## lmo' in text
  assert '| `ns_vs_optax_ratio_le_1.05` |' in text
