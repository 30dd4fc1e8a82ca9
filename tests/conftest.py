"""Test configuration: 8 emulated CPU devices for the multi-device tests.

XLA reads the flag when the CPU backend starts, so it is set here, before
any test module touches a device.
"""

import os
import sys

import pytest

# `reference.py` (NumPy references shared by the tests) is imported as a
# plain module; with `--import-mode=importlib` pytest does not put this
# directory (not a package) on `sys.path`, so put it there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# JAX's CPU SVD/QR call OpenBLAS, whose threads fight XLA's for the cores;
# one thread is several times faster for the small matrices tested here.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG
  ).strip()

# Run as subprocesses by test_multihost.py and test_resume.py; importing
# them would change this process's devices or build optimizers.
collect_ignore = ['multihost_worker.py', 'resume_worker.py']


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_programs():
  """Drops JAX's compilation caches after each test module.

  The full suite compiles thousands of programs in one process; letting the
  caches grow (6 GB resident by the end) once ended in a segfault inside
  XLA's CPU compiler late in the run.
  """
  yield
  import jax  # imported here: the XLA flags above must be set first

  jax.clear_caches()
