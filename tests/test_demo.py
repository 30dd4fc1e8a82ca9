"""The main demo runs end to end on a tiny configuration."""

import json
import math
import os

import pytest
from fast_compile import fast_compile

from fanion_optax import demo


@pytest.mark.slow
@fast_compile()
def test_demo_trains_and_writes_results(tmp_path):
  results = demo.main(
    [
      '--optimizers',
      'adamw,muon,fanion',
      '--steps',
      '6',
      '--batch',
      '4',
      '--context',
      '16',
      '--d-model',
      '16',
      '--layers',
      '1',
      '--heads',
      '2',
      '--eval-every',
      '3',
      '--eval-batches',
      '1',
      '--out',
      str(tmp_path),
    ]
  )
  assert [r['optimizer'] for r in results] == ['adamw', 'muon', 'fanion']
  for r in results:
    assert len(r['train_curve']) == 6
    assert all(math.isfinite(x) for x in r['train_curve'])
    # Loss starts near log(256) = 5.55 for bytes and must go down.
    assert r['train_curve'][-1] < r['train_curve'][0]
    assert [s for s, _ in r['val_curve']] == [3, 6]
  assert os.path.getsize(tmp_path / 'loss_curves.png') > 1000
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['results'][1]['optimizer'] == 'muon'


def test_demo_rejects_bad_flags():
  with pytest.raises(SystemExit):
    demo.parse_args(['--optimizers', 'sgd'])
  with pytest.raises(SystemExit):
    demo.parse_args(['--steps', '0'])


def test_corpus_from_file(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text('hello world\n' * 2000)
  data = demo.load_corpus(str(path))
  assert data[:5].tolist() == [ord(c) for c in 'hello']
  path.write_text('tiny')
  with pytest.raises(ValueError, match='corpus too small'):
    demo.load_corpus(str(path))
