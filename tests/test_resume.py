"""Checkpoint/resume: a SIGKILLed training run resumes bit for bit.

`resume_worker.py` trains two copies of a small MLP, one with `fo.fanion`
(warm-started Ky Fan subspaces in its state) and one with `fo.muon`, saving
an orbax checkpoint (parameters, optimizer states, step) every 4 steps. A
run killed with SIGKILL after a checkpoint is reported, then restarted,
ends with parameters and optimizer states equal to an uninterrupted run's.
A corrupted or mismatched checkpoint stops the worker with a message naming
the checkpoint, and changes no file.
"""

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from fast_compile import ENV as FAST_COMPILE_ENV

# Subprocesses killed mid-run and resumed: slow, run by `pytest -m slow`.
pytestmark = pytest.mark.slow

WORKER = os.path.join(os.path.dirname(__file__), 'resume_worker.py')
STEPS = 20
SAVE_EVERY = 4
KILL_AFTER = 'saved step 8'
TIMEOUT = 240


def _env(cache=None):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one CPU device, as a plain training script
  env['JAX_PLATFORMS'] = 'cpu'
  env.update(FAST_COMPILE_ENV)  # every worker alike: results stay comparable
  if cache is not None:
    # JAX's persistent compilation cache: a worker after the first loads
    # the compiled programs (the same ones, bit for bit) instead of
    # compiling them again, which is most of its run time.
    env['JAX_COMPILATION_CACHE_DIR'] = str(cache)
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _command(ckpt, out, *extra):
  return [
    sys.executable,
    WORKER,
    '--ckpt',
    str(ckpt),
    '--out',
    str(out),
    '--steps',
    str(STEPS),
    '--save-every',
    str(SAVE_EVERY),
    *extra,
  ]


def _popen(ckpt, out, *extra, cache=None):
  # stderr goes to a file: a full pipe would block the worker while the
  # test reads its stdout line by line.
  err = open(f'{out}.stderr', 'w+')  # noqa: SIM115 (closed in _finish)
  proc = subprocess.Popen(
    _command(ckpt, out, *extra),
    env=_env(cache),
    stdout=subprocess.PIPE,
    stderr=err,
    text=True,
  )
  proc.stderr_file = err
  return proc


def _stderr(proc):
  proc.stderr_file.seek(0)
  text = proc.stderr_file.read()
  proc.stderr_file.close()
  return text


def _finish(proc):
  stdout, _ = proc.communicate(timeout=TIMEOUT)
  return proc.returncode, stdout, _stderr(proc)


def _snapshot(directory):
  """`{relative path: sha256}` of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(
          f.read()
        ).hexdigest()
  return files


def _steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _load_worker():
  spec = importlib.util.spec_from_file_location('resume_worker', WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted run, then a killed one, then its resumption.

  The uninterrupted run goes first and fills the compilation cache that the
  other two read.
  """
  root = tmp_path_factory.mktemp('resume')
  cache = root / 'jax_cache'
  ref_rc, ref_out, ref_err = _finish(
    _popen(root / 'ref_ckpt', root / 'ref.npz', cache=cache)
  )
  assert ref_rc == 0, ref_err[-3000:]
  # The delay (after each step, outside the numerics) keeps the run alive
  # long enough to be killed half-way.
  victim = _popen(
    root / 'ckpt', root / 'killed.npz', '--step-delay', '0.1', cache=cache
  )
  seen = []
  try:
    deadline = time.monotonic() + TIMEOUT
    for line in victim.stdout:
      seen.append(line.strip())
      if line.strip() == KILL_AFTER or time.monotonic() > deadline:
        break
    alive_at_kill = victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=TIMEOUT)
    victim.stdout.close()
    killed_stderr = _stderr(victim)
  finally:
    victim.kill()
  assert KILL_AFTER in seen, (seen, killed_stderr[-3000:])
  assert alive_at_kill, seen
  assert victim.returncode == -signal.SIGKILL
  assert not (root / 'killed.npz').exists()
  steps_at_kill = _steps(root / 'ckpt')
  resumed = _popen(root / 'ckpt', root / 'resumed.npz', cache=cache)
  res_rc, res_out, res_err = _finish(resumed)
  assert res_rc == 0, res_err[-3000:]
  return dict(
    root=root,
    seen=seen,
    steps_at_kill=steps_at_kill,
    ref_out=ref_out,
    res_out=res_out,
  )


def test_killed_run_resumes_exactly(runs):
  root = runs['root']
  assert runs['seen'][0] == 'fresh start'
  assert runs['ref_out'].split()[:2] == ['fresh', 'start']
  # Killed after step 8 was committed, before the run ended.
  assert 8 in runs['steps_at_kill']
  assert max(runs['steps_at_kill']) < STEPS
  lines = runs['res_out'].splitlines()
  resumed_from = int(lines[0].removeprefix('restored step '))
  assert lines[0] == f'restored step {resumed_from}'
  assert resumed_from == max(runs['steps_at_kill'])
  assert 8 <= resumed_from < STEPS
  assert lines[-1] == 'done'
  assert _steps(root / 'ckpt') == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))

  ref, res = np.load(root / 'ref.npz'), np.load(root / 'resumed.npz')
  assert sorted(ref.files) == sorted(res.files)
  # Parameters of both models, their momenta and the Ky Fan warm starts.
  assert any('fanion' in k and 'lmo_state' in k for k in ref.files)
  assert any("'muon'" in k and "'params'" in k for k in ref.files)
  for key in ref.files:
    np.testing.assert_array_equal(res[key], ref[key], err_msg=key)
  # It trained: the parameters moved.
  worker = _load_worker()
  init = worker.init_params(16)
  assert not np.allclose(ref["['fanion']['params']['w0']"], init['w0'])


def _latest(directory):
  return directory / str(_steps(directory)[-1])


def _corrupt_data(step_dir):
  """Overwrites the array data files of a checkpoint with garbage."""
  blobs = [p for p in (step_dir / 'default' / 'd').iterdir() if p.is_file()]
  assert blobs
  for path in blobs:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _truncate_metadata(step_dir):
  path = step_dir / 'default' / '_METADATA'
  path.write_bytes(path.read_bytes()[:100])


def _truncate_data(step_dir):
  for path in (step_dir / 'default' / 'd').iterdir():
    path.write_bytes(path.read_bytes()[:50])


@pytest.fixture()
def ckpt_copy(runs, tmp_path):
  copy = tmp_path / 'ckpt'
  shutil.copytree(runs['root'] / 'ref_ckpt', copy)
  return copy


def test_corrupted_checkpoint_cli_fails_clearly_and_writes_nothing(
  ckpt_copy, tmp_path
):
  _corrupt_data(_latest(ckpt_copy))
  before = _snapshot(ckpt_copy)
  out = tmp_path / 'out.npz'
  rc, stdout, stderr = _finish(_popen(ckpt_copy, out))
  assert rc == 3, (stdout, stderr[-3000:])
  assert (
    f'resume_worker: cannot read the metadata of checkpoint step'
    f' {STEPS} in {ckpt_copy}'
  ) in stderr
  assert 'DATA_LOSS' in stderr
  assert 'saved step' not in stdout and 'done' not in stdout
  assert not out.exists()
  assert _snapshot(ckpt_copy) == before  # other checkpoints intact too


# tensorstore reports its closed event loop after the failed read.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize(
  'corrupt, reason',
  [
    (_corrupt_data, 'DATA_LOSS'),
    (_truncate_data, 'OUT_OF_RANGE'),
    (_truncate_metadata, 'JSONDecodeError'),
  ],
)
def test_corrupted_checkpoint_raises(ckpt_copy, corrupt, reason):
  worker = _load_worker()
  corrupt(_latest(ckpt_copy))
  before = _snapshot(ckpt_copy)
  with pytest.raises(
    worker.CheckpointError, match=f'checkpoint step {STEPS} in'
  ) as info:
    worker.restore_latest(str(ckpt_copy), worker.abstract_state(16))
  assert reason in str(info.value)
  assert _snapshot(ckpt_copy) == before
  # The earlier checkpoints still restore.
  shutil.rmtree(_latest(ckpt_copy))
  step, state = worker.restore_latest(str(ckpt_copy), worker.abstract_state(16))
  assert step == STEPS - SAVE_EVERY and int(state['step']) == step


def test_mismatched_checkpoint_fails_clearly(ckpt_copy, tmp_path):
  before = _snapshot(ckpt_copy)
  out = tmp_path / 'out.npz'
  rc, stdout, stderr = _finish(_popen(ckpt_copy, out, '--width', '24'))
  assert rc == 3, (stdout, stderr[-3000:])
  assert (
    f'resume_worker: checkpoint step {STEPS} in {ckpt_copy} does not'
    ' match this model:'
  ) in stderr
  assert 'has shape (16,) in the checkpoint but (24,) in the model.' in stderr
  assert not out.exists() and 'saved step' not in stdout
  assert _snapshot(ckpt_copy) == before
