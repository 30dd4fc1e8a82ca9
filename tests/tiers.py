"""Which catalogue entries a per-optimizer test runs in the fast tier.

A test that loops over optimizers or LMOs compiles one program per entry;
most of the suite's time is that compilation. The fast tier (the default
`python -m pytest`) keeps one entry of each kind of state and arithmetic:
the full-rank polar factor (`muon`), the warm-started low-rank subspace
(`fanion`), a mixture with a stateful term (`s_fanion`) and an elementwise
LMO (`lion`). Every other entry is marked `slow`: `python -m pytest -m slow`
runs it, and CI runs both tiers, so no case is dropped.
"""

import pytest

FAST = frozenset(
  {
    # catalogue.OPTIMIZERS
    'muon',
    'fanion',
    's_fanion',
    'lion',
    # catalogue.LMOS and the LMO tables of the tests
    'spectral',
    'spectral_svd',
    'ky_fan',
    'ky_fan_svd',
    'sign',
    's_fanion_mix',
    'frobenius',
    'schatten',
  }
)


def tiered(names, fast=FAST):
  """`names` as parameters, those outside `fast` marked slow."""
  return [
    name if name in fast else pytest.param(name, marks=pytest.mark.slow)
    for name in names
  ]
