"""Multi-host: 2 CPU processes under jax.distributed equal a single process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from fast_compile import ENV as FAST_COMPILE_ENV

WORKER = os.path.join(os.path.dirname(__file__), 'multihost_worker.py')

# Two processes under jax.distributed: slow, run by `pytest -m slow`.
pytestmark = pytest.mark.slow


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the worker sets its own device count
  env['JAX_PLATFORMS'] = 'cpu'
  env.update(FAST_COMPILE_ENV)  # every process alike: results stay comparable
  return env


def test_two_processes_match_single_process(tmp_path):
  single = tmp_path / 'single.npz'
  subprocess.run(
    [sys.executable, WORKER, str(single)], check=True, env=_env(), timeout=300
  )
  multi = tmp_path / 'multi.npz'
  port = str(_free_port())
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, str(multi), str(i), '2', port],
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=300)[0])
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  a, b = np.load(single), np.load(multi)
  assert sorted(a.files) == sorted(b.files)
  assert any(k.startswith('muon/') for k in a.files)
  assert any(k.startswith('f_muon/') for k in a.files)
  # Compressed data parallel: each device's own rows, thin all-reduces.
  assert any(k.startswith('fanion/') for k in a.files)
  for key in a.files:
    np.testing.assert_allclose(
      b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key
    )
  # The run trained: parameters moved away from their initial values.
  init = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
  assert not np.allclose(a['muon/hidden0'], 0.3 * init, atol=1e-3)
