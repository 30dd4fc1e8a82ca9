"""The scripts in examples/ run (quick mode) and reach their stated outcomes.

Each example is imported by path (examples/ is not a package) and its
`main([...])` called in this process. `distributed_train.py` asks XLA for 8
host devices only when XLA_FLAGS sets no device count; tests/conftest.py has
already set 8, so in-process runs see the same 8 devices a standalone run
would.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest
from fast_compile import fast_compile

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / 'examples'


def _load(name):
  """Imports examples/<name>.py as a module (registered, for dataclasses)."""
  module_name = f'fanion_examples_{name}'
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(
    module_name, EXAMPLES / f'{name}.py'
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[module_name]
    raise
  return module


def test_examples_have_a_readme_and_quick_mode():
  readme = (EXAMPLES / 'README.md').read_text()
  for name in ('nnx_train', 'cnn_conv', 'distributed_train', 'gpt'):
    assert f'{name}.py' in readme
    assert '--quick' in (EXAMPLES / f'{name}.py').read_text()


@pytest.mark.slow
def test_nnx_train(capsys):
  example = _load('nnx_train')
  out = example.main(['--quick'])
  printed = capsys.readouterr().out
  # The routing table shows the path-based split.
  for path, where in (
    ('embed/embedding', 'AdamW'),
    ('head/kernel', 'AdamW'),
    ('hidden/0/bias', 'AdamW'),
    ('hidden/0/kernel', 'Muon'),
    ('hidden/1/kernel', 'Muon'),
  ):
    line = next(x for x in printed.splitlines() if f' {path} ' in x)
    assert where in line, line
  assert set(out['results']) == {'muon', 'adamw'}
  for name, r in out['results'].items():
    losses = np.asarray(r['losses'])
    assert np.all(np.isfinite(losses)), name
    # Learned well beyond uniform guessing, and not below the source entropy.
    assert r['final_train_loss'] < losses[0] - 0.3, name
    assert r['held_out_loss'] < out['uniform'] - 0.3, name
    assert r['held_out_loss'] > out['entropy'] - 0.05, name


@pytest.mark.slow
def test_nnx_train_optimizer_state_follows_the_routing():
  """Muon's state holds momentum for hidden kernels only; AdamW the rest."""
  from flax import nnx

  example = _load('nnx_train')
  args = example.parse_args(['--quick'])
  model = example.MLPLanguageModel(
    vocab=args.vocab,
    context=args.context,
    embed_dim=args.embed_dim,
    hidden=args.hidden,
    layers=args.layers,
    rngs=nnx.Rngs(0),
  )
  optimizer = nnx.Optimizer(
    model, example.make_optimizer('muon', args), wrt=nnx.Param
  )
  state = nnx.to_pure_dict(nnx.state(optimizer))['opt_state']
  muon_mu = state['matrices'][0]['mu']
  adam_mu = state['fallback'][0]['mu']
  assert muon_mu['embed']['embedding'] is None
  assert muon_mu['head']['kernel'] is None
  assert muon_mu['hidden'][0]['kernel'].shape == (
    args.context * args.embed_dim,
    args.hidden,
  )
  assert adam_mu['hidden'][0]['kernel'] is None
  assert adam_mu['embed']['embedding'].shape == (args.vocab, args.embed_dim)


@pytest.mark.slow
def test_cnn_conv():
  example = _load('cnn_conv')
  out = example.main(['--quick'])
  for name, r in out['results'].items():
    assert np.all(np.isfinite(r['losses'])), name
    assert r['test_accuracy'] > 0.75, (name, r['test_accuracy'])  # chance 25%
  after = out['constraint_after']
  assert set(after) == {'conv1/kernel', 'conv2/kernel'}  # head -> AdamW
  assert after['conv1/kernel'].radius == pytest.approx(4 / 3)  # s = √(16/9)
  assert after['conv2/kernel'].radius == pytest.approx(1.0)
  for path, entry in after.items():
    before = out['constraint_before'][path]
    assert before.norm.max() > entry.radius, path  # starts outside the ball
    # Outside the ball the excess shrinks at least by (1 − ελ) per step.
    assert entry.norm.max() <= out['bounds'][path] * (1 + 1e-3), path
  assert after['conv2/kernel'].holds


@pytest.mark.slow
@fast_compile()
def test_gpt_resumes_from_its_checkpoint_and_clips_logits(tmp_path):
  example = _load('gpt')
  tau = 3.0  # below the quick model's logits (about 4-6), so QK-clip acts
  common = ['--quick', '--out', str(tmp_path), '--qk-clip', str(tau)]
  first = example.main([*common, '--stop-at', '15'])
  assert (first['start'], first['stop']) == (0, 15)
  with pytest.raises(SystemExit, match='--resume'):
    example.main(common)  # checkpoints exist: no silent restart
  second = example.main([*common, '--resume'])
  assert (second['start'], second['stop']) == (15, 30)
  history = second['history']
  losses = np.asarray(history['losses'])
  assert losses.shape == (30,) and np.all(np.isfinite(losses))
  np.testing.assert_array_equal(losses[:15], first['history']['losses'])
  # Bytes: uniform guessing is ln 256 = 5.5 nats; 30 steps reach about 3.5.
  assert losses[-5:].mean() < losses[:5].mean() - 1.0
  assert history['val'][-1][1] < np.log(256) - 1.0
  assert history['clipped'] > 0
  # The clip scaled the last step's weights: on that step's batch every
  # head's largest logit is now τ or less, up to the step's own change.
  args = second['args']
  tokens, _ = example.batch_at(example.corpus()[0], args.steps, args)
  _, max_logits = second['model'](tokens)
  for layer, logits in max_logits.items():
    assert float(logits.max()) <= 1.02 * tau, layer
  assert pathlib.Path(second['plot']).stat().st_size > 10_000


def test_distributed_cpu_device_flag(monkeypatch):
  example = _load('distributed_train')
  flag = '--xla_force_host_platform_device_count'
  monkeypatch.setenv('XLA_FLAGS', f'{flag}=4 --xla_other')
  assert not example.emulate_cpu_devices(8)
  assert example.os.environ['XLA_FLAGS'] == f'{flag}=4 --xla_other'
  monkeypatch.setenv('XLA_FLAGS', '--xla_other')
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  assert not example.emulate_cpu_devices(8)
  assert example.os.environ['XLA_FLAGS'] == '--xla_other'
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert example.emulate_cpu_devices(8)
  assert example.os.environ['XLA_FLAGS'] == f'--xla_other {flag}=8'


@pytest.mark.slow
@pytest.mark.skipif(
  jax.device_count() < 8, reason='needs the 8 CPU devices of tests/conftest.py'
)
@fast_compile()
def test_distributed_train_matches_single_device():
  example = _load('distributed_train')
  out = example.main(['--quick'])
  assert out['devices'] == 8
  assert set(out['diffs']) == {
    'data parallel (pmap)',
    'FSDP (jit, 1-D mesh)',
    'FSDP x TP (2-D mesh)',
  }
  reference = out['runs']['single device (jit)']['losses']
  assert reference[-1] < 0.95 * reference[0]
  for name, diff in out['diffs'].items():
    # Ten steps: only float32 rounding apart (~1e-7 observed).
    assert diff['match'] and diff['loss_rtol'] <= 1e-5, (name, diff)
    assert diff['params_atol'] <= 1e-5, (name, diff)
  fsdp = out['runs']['FSDP (jit, 1-D mesh)']
  assert 'fsdp' in tuple(fsdp['kernel_sharding'])
  assert tuple(fsdp['momentum_sharding']) == tuple(fsdp['kernel_sharding'])
  two_d = out['runs']['FSDP x TP (2-D mesh)']
  assert tuple(two_d['kernel_sharding']) == ('data', 'model')
