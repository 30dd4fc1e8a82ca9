"""Runs every notebook in notebooks/ top to bottom at its small size.

Each notebook ends with a `RESULTS` dict; the test appends a cell that prints
it as JSON and checks a few facts the notebook demonstrates. The kernel
inherits this process's environment, so `FANION_NOTEBOOK_SMALL=1` (set here)
selects the small sizes, and the XLA flags from conftest.py apply too. Every
notebook but least_squares compiles with most optimisations off
(tests/fast_compile.py).

Each notebook is a jupytext pair: notebooks/<name>.py (py:percent) is the
source, notebooks/<name>.ipynb holds the same cells with their outputs;
`test_notebooks_are_paired_with_their_sources` checks the two agree.
"""

import json
import pathlib

import pytest
from fast_compile import ENV as FAST_COMPILE_ENV

import fanion_optax as fo

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')
pytest.importorskip('matplotlib')

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / 'notebooks'
MARKER = 'RESULTS_JSON='
DUMP = (
  'import json\n'
  'print("' + MARKER + '" + json.dumps(RESULTS, default=lambda o: '
  'o.item() if hasattr(o, "item") else str(o)))'
)


def run_notebook(name, tmp_path, monkeypatch, fast_compile=True):
  """Executes notebooks/NAME.ipynb in tmp_path; returns its RESULTS dict.

  `fast_compile`: the kernel compiles with most optimisations off, which
  halves the compile time that dominates a small run; least_squares, whose
  thousands of small iterations would run slower, passes False.
  """
  monkeypatch.setenv('FANION_NOTEBOOK_SMALL', '1')
  if fast_compile:
    for key, value in FAST_COMPILE_ENV.items():
      monkeypatch.setenv(key, value)
  nb = nbformat.read(NOTEBOOKS / f'{name}.ipynb', as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(DUMP))
  client = nbclient.NotebookClient(
    nb,
    kernel_name='python3',
    timeout=300,
    record_timing=False,
    resources={'metadata': {'path': str(tmp_path)}},
  )
  client.execute()  # raises CellExecutionError on the first failing cell
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      assert out.get('output_type') != 'error', out
  text = ''.join(out.get('text', '') for out in nb.cells[-1].outputs)
  line = next(x for x in text.splitlines() if x.startswith(MARKER))
  return json.loads(line[len(MARKER) :])


def test_every_notebook_is_tested():
  names = sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb'))
  assert names == sorted(
    [
      'quickstart',
      'implicit_constraint',
      'least_squares',
      'custom_geometry',
      'low_rank_at_scale',
    ]
  )


def test_notebooks_have_badge_and_colab_only_install():
  for path in NOTEBOOKS.glob('*.ipynb'):
    nb = nbformat.read(path, as_version=4)
    assert 'colab.research.google.com/github/' in nb.cells[0].source
    assert f'notebooks/{path.stem}.ipynb' in nb.cells[0].source
    first_code = next(c for c in nb.cells if c.cell_type == 'code')
    assert "find_spec('google.colab')" in first_code.source
    assert 'FANION_NOTEBOOK_SMALL' in first_code.source


def test_notebooks_are_paired_with_their_sources():
  """Every notebooks/<name>.py has its <name>.ipynb, with the same cells.

  The .py (jupytext's py:percent) is the source of truth; an edit to either
  file that was not synced to the other (`jupytext --sync notebooks/*.py`)
  fails here.
  """
  jupytext = pytest.importorskip('jupytext')
  from jupytext.config import load_jupytext_config

  sources = sorted(p.stem for p in NOTEBOOKS.glob('*.py'))
  assert sources == sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb'))
  for name in sources:
    source = NOTEBOOKS / f'{name}.py'
    path = NOTEBOOKS / f'{name}.ipynb'
    config = load_jupytext_config(str(path))
    assert config is not None, f'no jupytext configuration for {path}'
    formats = config.default_formats(str(path)) or ''
    assert set(formats.split(',')) == {'ipynb', 'py:percent'}, formats
    compile(source.read_text(encoding='utf-8'), str(source), 'exec')
    text = jupytext.read(source, fmt='py:percent')
    nb = nbformat.read(path, as_version=4)
    want = [(c.cell_type, c.source) for c in text.cells]
    got = [(c.cell_type, c.source) for c in nb.cells]
    assert len(got) == len(want), (name, len(got), len(want))
    for i, (a, b) in enumerate(zip(got, want)):
      assert a == b, f'{name}.ipynb cell {i} differs from {name}.py'


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
  results = run_notebook('quickstart', tmp_path, monkeypatch)
  assert results['chain_vs_alias'] == 0.0
  assert results['lion_k_vs_optax_lion'] == 0.0
  runs = results['runs']
  assert set(runs) == {'adamw', 'muon', 'f_muon', 's_muon', 'fanion-8'}
  for name, r in runs.items():
    # Chance is ~0.14 (the most frequent class); every optimizer learns.
    assert r['test_acc'] > 0.3, (name, r)


@pytest.mark.slow
def test_implicit_constraint(tmp_path, monkeypatch):
  results = run_notebook('implicit_constraint', tmp_path, monkeypatch)
  # With an exact LMO the ball norm never exceeds the guaranteed envelope
  # 1 + (r0 - 1)(1 - lr*wd)^t (in units of the radius s/λ).
  for name in ('muon', 'fanion-8', 'f_muon'):
    assert results[name]['max_ratio_over_envelope'] <= 1 + 1e-3, name
  assert results['muon']['first_step_inside'] is not None
  assert results['muon']['max_ratio_after_entry'] <= 1 + 1e-3
  # Without decay the spectral norm leaves the ball.
  assert results['muon, λ=0']['final_sigma1'] > 2.0


@pytest.mark.slow
def test_least_squares(tmp_path, monkeypatch):
  results = run_notebook(
    'least_squares', tmp_path, monkeypatch, fast_compile=False
  )
  for name in ('Muon', 'F-Muon', 'S-Muon', 'NSGD'):
    assert results[name]['iters'] is not None, name
  muon = results['Muon']['iters']
  neon = results['Fanion-1']['iters']
  assert neon is None or neon > muon


@pytest.mark.slow
def test_custom_geometry(tmp_path, monkeypatch):
  results = run_notebook('custom_geometry', tmp_path, monkeypatch)
  # The polar approximations (Polar Express, Newton–Schulz, Gram
  # Newton–Schulz, and the F-Muon mixture built on Polar Express) leave the
  # unit ball; the Huber-smoothed nuclear norm is not a norm, so
  # <g, ∇𝒦(g)> != 𝒦(g).
  approximate = {
    'spectral',
    'spectral_newton_schulz',
    'spectral_gram',
    'f_muon_mix',
  }
  not_a_norm = {'huber_nuclear'}
  checks = results['checks']
  # Every LMO of the catalogue is checked (but a spectral_fn without h=,
  # which has no dual norm), and the notebook's own two.
  assert set(fo.catalogue.LMOS) - {'spectral_fn_ones'} <= set(checks)
  assert {'3-term mix', 'row_norm (custom class)'} <= set(checks)
  for name, gap in checks.items():
    if name not in approximate | not_a_norm:
      assert abs(gap) < 1e-4, (name, gap)
  for name in approximate | not_a_norm:  # the notebook's text says so
    assert abs(checks[name]) > 1e-3, (name, checks[name])
  for name, r in results['runs'].items():
    assert r['test_loss'] < 2.3, (name, r)  # below log(10): it learned


@pytest.mark.slow
def test_low_rank_at_scale(tmp_path, monkeypatch):
  results = run_notebook('low_rank_at_scale', tmp_path, monkeypatch)
  quality = results['quality']
  # Rank buys quality on the noisy regression: Fanion-16 beats Fanion-1.
  assert quality['Fanion-16']['loss'] < quality['Fanion-1']['loss']
  # One power step all-reduces exactly the thin factors Σ(m+n)·k floats,
  # the default two warm iterations twice that, both far below the
  # gradient all-reduce (closed forms; the HLO is read in the notebook).
  for name, row in results['communication']['rows'].items():
    expected = 1.0 if name.endswith('one power step') else 2.0
    assert row['ratio_to_thin_factors'] == pytest.approx(expected, abs=1e-3)
    assert row['ratio_to_gradient'] < 0.5, name
  sharded = results['sharded']
  assert sharded['largest_collective'] <= sharded['largest_thin_block']
  assert sharded['largest_collective'] < sharded['smallest_matrix']
  assert sharded['ratio_to_thin_factors'] <= 1.1
