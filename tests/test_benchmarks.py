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


def test_minimal_muon_kernel_does_what_muon_newton_schulz_does():
  """The step benchmark's reference kernel is a fair baseline: the same
  update as `fo.muon(polar_method="newton_schulz")` over a few steps."""
  import jax
  import jax.numpy as jnp
  import optax

  import fanion_optax as fo
  from benchmarks import _timing
  from benchmarks import step

  for tree in step.QUICK_TREES.values():
    params = _timing.random_tree(tree.shapes(), seed=0, scale=0.1)
    ours = fo.muon(
      0.02,
      polar_method='newton_schulz',
      fallback=fo.adamw_fallback(0.02, b2=0.999),
      **tree.fo_kwargs(),
    )
    minimal = step.minimal_muon(tree)
    states = [ours.init(params), minimal.init(params)]
    for t in range(3):
      grads = jax.tree.map(
        lambda p, t=t: jnp.sin(p * (t + 3.0)) + 0.1 * p, params
      )
      (u_ours, states[0]) = ours.update(grads, states[0], params)
      (u_min, states[1]) = minimal.update(grads, states[1], params)
      for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_min)):
        assert a.shape == b.shape
        assert jnp.allclose(a, b, rtol=1e-4, atol=1e-6), (
          tree.name,
          t,
          float(jnp.max(jnp.abs(a - b))),
        )
      params = optax.apply_updates(params, u_ours)


@pytest.mark.slow
def test_charlm_merges_a_run_at_another_width(tmp_path):
  env = dict(os.environ, OPENBLAS_NUM_THREADS='1', **FAST_COMPILE_ENV)

  def charlm(*args, check=True):
    return subprocess.run(
      [sys.executable, '-m', 'benchmarks.charlm', '--quick', '--out']
      + [str(tmp_path), *args],
      cwd=ROOT,
      env=env,
      check=check,
      timeout=600,
      capture_output=True,
      text=True,
    )

  charlm()
  with open(tmp_path / 'charlm.json', encoding='utf-8') as f:
    base = json.load(f)
  bad = charlm('--d-model', '15', '--merge', check=False)
  assert bad.returncode == 2 and '--d-model must be' in bad.stderr
  charlm('--d-model', '16', '--optimizers', 'muon,fanion2_ef', '--merge')
  with open(tmp_path / 'charlm.json', encoding='utf-8') as f:
    merged = json.load(f)
  # The document's own width, rows and metadata are untouched.
  for key in ('config', 'results', 'targets', 'metadata'):
    assert merged[key] == base[key]
  entry = merged['widths']['16']
  assert entry['config']['d_model'] == 16
  assert set(entry['results']) == {'muon', 'fanion2_ef'}
  assert '--d-model 16' in entry['metadata']['command']
  from benchmarks import charlm as module

  table = module.markdown(merged)
  assert '**Other widths** (k/d_model = 0.125' in table
  assert '| 16 | Fanion-2 EF |' in table and '| 32 | Muon |' in table
