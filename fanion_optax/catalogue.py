"""The catalogue: every optimizer and LMO of the package, with reference settings.

One table, in the spirit of optax's `_OPTIMIZERS_UNDER_TEST`, that the tests,
benchmarks and notebooks loop over, so a new optimizer or LMO is exercised
everywhere by adding one line here. Researchers can loop over it too:

>>> import fanion_optax as fo
>>> sorted(fo.catalogue.OPTIMIZERS)[:3]
['f_fanion', 'f_muon', 'fanion']
>>> tx = fo.catalogue.OPTIMIZERS['fanion'](weight_decay=0.1)
>>> fo.catalogue.OPTIMIZERS['fanion'].options['k']
2
>>> tx = fo.catalogue.OPTIMIZERS['fanion'](0.01, k=8)  # any option overridden

Every entry builds its optimizer from the public presets; the settings are
the ones the tests and the toy benchmarks use (small `k`, the package's
default solvers), not tuned recommendations for large models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
import optax

from fanion_optax import alias
from fanion_optax import lmo
from fanion_optax import pipeline


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
  """One optimizer under test: a preset and its reference arguments.

  Attributes:
    factory: the public constructor, called as
      `factory(learning_rate, **options)`.
    learning_rate: the learning rate the toy problems use.
    options: keyword arguments (`k`, `lmo` included); a call's keywords
      override them.
    low_rank: the direction has rank at most `k` < min(m, n).
    exact: its LMO is an SVD (no iteration, no state): the cheapest to
      compile on CPU and the reference for the iterative entries.
    variant: the same optimizer as another entry, with another solver;
      integration tests (Flax, checkpoints, devices) may leave it out.
  """

  factory: Callable[..., optax.GradientTransformation]
  learning_rate: float
  options: Mapping[str, Any] = dataclasses.field(
    default_factory=lambda: MappingProxyType({})
  )
  low_rank: bool = False
  exact: bool = False
  variant: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'options', MappingProxyType(dict(self.options)))

  def __call__(
    self, learning_rate: optax.ScalarOrSchedule | None = None, **overrides: Any
  ) -> optax.GradientTransformation:
    """Builds the optimizer; keywords override the entry's options."""
    lr = self.learning_rate if learning_rate is None else learning_rate
    return self.factory(lr, **{**self.options, **overrides})


def _entry(
  factory,
  learning_rate,
  *,
  low_rank=False,
  exact=False,
  variant=False,
  **options,
):
  return OptimizerEntry(
    factory,
    learning_rate,
    options,
    low_rank=low_rank,
    exact=exact,
    variant=variant,
  )


OPTIMIZERS: Mapping[str, OptimizerEntry] = MappingProxyType(
  {
    'muon': _entry(alias.muon, 0.02),
    'muon_newton_schulz': _entry(
      alias.muon, 0.02, variant=True, polar_method='newton_schulz'
    ),
    'muon_gram': _entry(alias.muon, 0.02, gram=True, variant=True),
    'muon_svd': _entry(
      alias.muon, 0.02, polar_method='svd', exact=True, variant=True
    ),
    'fanion': _entry(alias.fanion, 0.02, k=2, low_rank=True),
    'fanion_svd': _entry(
      alias.fanion,
      0.02,
      k=2,
      top_k_method='svd',
      low_rank=True,
      exact=True,
      variant=True,
    ),
    'neon': _entry(alias.neon, 0.02, low_rank=True),
    # An AdamW-like learning rate: the update RMS is 0.2·η.
    'normuon': _entry(alias.normuon, 0.05),
    'f_muon': _entry(alias.f_muon, 0.02),
    's_muon': _entry(alias.s_muon, 0.02, sign_scale=0.01),
    'f_fanion': _entry(alias.f_fanion, 0.02, k=2),
    's_fanion': _entry(alias.s_fanion, 0.02, k=2, sign_scale=0.01),
    'lion': _entry(pipeline.lion_k, 0.01, lmo=lmo.sign(), shape_scale=None),
    'lion_k_frobenius': _entry(pipeline.lion_k, 0.05, lmo=lmo.frobenius()),
    'lion_k_schatten': _entry(pipeline.lion_k, 0.02, lmo=lmo.schatten(3.0)),
    'lion_k_huber': _entry(pipeline.lion_k, 0.02, lmo=lmo.huber_nuclear(0.5)),
    'lion_k_mix': _entry(
      pipeline.lion_k,
      0.02,
      lmo=lmo.mix((0.5, lmo.ky_fan(2)), (0.5, lmo.sign(0.01))),
    ),
  }
)
"""Every optimizer configuration under test, by name."""

PRESETS: tuple[str, ...] = tuple(
  name for name, entry in OPTIMIZERS.items() if not entry.variant
)
"""The entries that are not solver variants of another entry."""

LMOS: Mapping[str, Callable[[], lmo.LMO]] = MappingProxyType(
  {
    'spectral': lmo.spectral,
    'spectral_newton_schulz': lambda: lmo.spectral(
      polar_method='newton_schulz'
    ),
    'spectral_svd': lambda: lmo.spectral(polar_method='svd'),
    'spectral_gram': lambda: lmo.spectral(gram=True),
    'ky_fan': lambda: lmo.ky_fan(2),
    'ky_fan_svd': lambda: lmo.ky_fan(2, top_k_method='svd'),
    'ky_fan_1_svd': lambda: lmo.ky_fan(1, top_k_method='svd'),
    'frobenius': lmo.frobenius,
    'sign': lambda: lmo.sign(0.5),
    'schatten': lambda: lmo.schatten(3.0),
    'huber_nuclear': lambda: lmo.huber_nuclear(0.5),
    # Every singular value mapped to one: the spectral LMO through the
    # generic SVD path of `SpectralFunction`.
    'spectral_fn_ones': lambda: lmo.spectral_fn(jnp.ones_like),
    'f_muon_mix': lambda: lmo.mix(
      (0.5, lmo.spectral()), (0.5, lmo.frobenius())
    ),
    's_fanion_mix': lambda: lmo.mix(
      (0.5, lmo.ky_fan(2)), (0.5, lmo.sign(0.01))
    ),
  }
)
"""A fresh instance of every LMO configuration under test, by name."""
