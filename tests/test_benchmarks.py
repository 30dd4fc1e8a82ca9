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

  # A width run needs a Muon row at its width, run now or stored.
  bad = charlm(
    '--d-model', '8', '--optimizers', 'fanion1', '--merge', check=False
  )
  assert bad.returncode != 0 and 'no muon row at d_model 8' in bad.stderr
  # More rows at a stored width join its rows; rows added later at the
  # document's own width keep the other widths.
  charlm('--d-model', '16', '--optimizers', 'fanion1', '--merge')
  charlm('--optimizers', 'fanion4_ef', '--merge')
  with open(tmp_path / 'charlm.json', encoding='utf-8') as f:
    merged = json.load(f)
  assert set(merged['results']) == set(base['results']) | {'fanion4_ef'}
  assert set(merged['widths']) == {'16'}
  entry = merged['widths']['16']
  assert set(entry['results']) == {'muon', 'fanion2_ef', 'fanion1'}
  table = module.markdown(merged)
  assert '**Other widths** (k/d_model = 0.0625, k/d_model = 0.125' in table
  assert '| 16 | Fanion-2 EF |' in table and '| 32 | Muon |' in table


def _tiny_tree():
  """A matrix and a vector, with a fixed gradient for each."""
  import jax
  import jax.numpy as jnp

  params = {'w': jnp.ones((4, 6)), 'b': jnp.ones((6,))}
  grads = jax.tree.map(
    lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
    params,
  )
  return params, grads


def _assert_same_updates(ours, s_ours, reference, s_ref, steps=3):
  """Both transformations give bit-identical updates for `steps` steps."""
  import jax
  import numpy as np

  params, grads = _tiny_tree()
  for _ in range(steps):
    u_ours, s_ours = ours.update(grads, s_ours, params)
    u_ref, s_ref = reference.update(grads, s_ref, params)
    jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
      u_ours,
      u_ref,
    )


def test_charlm_momentum_rows_and_tuned_target():
  """`<row>_m<dd>` is the row at momentum 0.dd, and issue 14's target
  compares each side's best momentum row chosen on validation loss."""
  import optax

  import fanion_optax as fo
  from benchmarks import charlm
  from fanion_optax import demo

  params, _ = _tiny_tree()
  common = dict(
    weight_decay=0.01,
    exclude=demo.EXCLUDE,
    dimension_numbers=demo.dimension_numbers,
    fallback=fo.adamw_fallback(optax.cosine_decay_schedule(3e-3, 10), b2=0.999),
  )
  schedule = optax.cosine_decay_schedule(0.05, 10)
  for name, reference in (
    ('muon_m80', fo.muon(schedule, momentum=0.8, **common)),
    (
      'fanion2_ef_m70',
      fo.fanion(schedule, 2, momentum=0.7, error_feedback=True, **common),
    ),
  ):
    assert charlm.known(name)
    ours = charlm.make_optimizer(name, 10, 0.05)
    _assert_same_updates(
      ours, ours.init(params), reference, reference.init(params)
    )
  assert charlm.label('fanion8_ef_i1_m80') == 'Fanion-8 EF, 1 iter, μ=0.8'
  assert not charlm.known('normuon_m80')

  def row(val, test):
    sweep = [{'val_loss': val}, {'val_loss': val + 1}]
    return {'sweep': sweep, 'test_mean': test, 'test_std': 0.01}

  # The m80 rows win on validation; the test losses must not decide.
  results = {
    'muon': row(2.3, 1.9),
    'muon_m80': row(2.2, 2.0),
    'fanion8_ef': row(2.5, 1.95),
    'fanion8_ef_m80': row(2.4, 2.1),
  }
  target = charlm.evaluate_targets(results)['fanion8_ef_within_2sigma_of_muon']
  assert target['rows'] == ['fanion8_ef_m80', 'muon_m80']
  assert not target['passed'] and abs(target['diff'] - 0.1) < 1e-9


def test_cnn_rows_set_momentum_and_weight_decay():
  """`_m<dd>` and `_wd<dd>` set the momentum and the matrices' weight decay
  (the fallback keeps the benchmark's λ)."""
  import jax.numpy as jnp

  import fanion_optax as fo
  from benchmarks import cnn

  assert cnn.variant('fanion_ef_m80_wd05') == ('fanion_ef', 0.8, 0.05)
  assert cnn.variant('muon') == ('muon', None, cnn.WEIGHT_DECAY)
  params, _ = _tiny_tree()
  # Built as the benchmark builds it (learning rate in the state), so the
  # arithmetic is the same to the last bit.
  reference = fo.inject_hyperparams(fo.fanion)(
    learning_rate=0.05,
    k=cnn.FANION_K,
    momentum=0.8,
    error_feedback=True,
    weight_decay=0.05,
    dimension_numbers=cnn.dimension_numbers,
    exclude=cnn.EXCLUDE,
    fallback=fo.adamw_fallback(0.01, b2=0.999, weight_decay=cnn.WEIGHT_DECAY),
  )
  ours = cnn.make_optimizer('fanion_ef_m80_wd05', 0.01)
  s_ours = ours.init(params)
  s_ours.hyperparams['learning_rate'] = jnp.asarray(0.05, jnp.float32)
  _assert_same_updates(ours, s_ours, reference, reference.init(params))
