"""Compiling with most of XLA's optimisations off, for the slow tests.

The end-to-end tests (examples, demo, notebooks, checkpoint and multi-host
workers) compile far more than they run: XLA's CPU backend spends most of a
compilation optimising LLVM code, and with `jax_disable_most_optimizations`
a program compiles in about half the time and runs slower, which a few
steps of a small model do not notice. Their numbers stay equal to float32
rounding; a test that compares two runs runs both this way.
"""

from __future__ import annotations

import contextlib

import jax

FLAG = 'jax_disable_most_optimizations'
ENV = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
"""The same setting for a subprocess or a notebook kernel."""


@contextlib.contextmanager
def fast_compile():
  """Compiles what runs inside with most XLA optimisations off.

  A context manager, or a decorator of a whole test (`@fast_compile()`).
  Programs compiled inside stay in JAX's caches (the flag is not part of
  their key); tests/conftest.py clears the caches after each module.

  Example:
    >>> with fast_compile():
    ...   assert jax.config.values[FLAG]
  """
  before = jax.config.values[FLAG]
  jax.config.update(FLAG, True)
  try:
    yield
  finally:
    jax.config.update(FLAG, before)
