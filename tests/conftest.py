"""Test configuration: 8 emulated CPU devices for the multi-device tests.

XLA reads the flag when the CPU backend starts, so it is set here, before
any test module touches a device.
"""

import os
import sys

# `reference.py` (NumPy references shared by the tests) is imported as a
# plain module; with `--import-mode=importlib` pytest does not put this
# directory (not a package) on `sys.path`, so put it there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# JAX's CPU SVD/QR call OpenBLAS, whose threads fight XLA's for the cores;
# one thread is several times faster for the small matrices tested here.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG
                             ).strip()

# Run as subprocesses by test_multihost.py and test_resume.py; importing
# them would change this process's devices or build optimizers.
collect_ignore = ['multihost_worker.py', 'resume_worker.py']
