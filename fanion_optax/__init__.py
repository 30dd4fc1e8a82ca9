"""fanion_optax: dual-norm (LMO) optimizers for JAX and Optax.

Muon, the Ky Fan "Fanions", the F-/S- mixtures and the general Lion-𝒦 family.
"""

from fanion_optax import lmo
from fanion_optax.lowrank import top_k_polar
from fanion_optax.polar import coefficient_schedule
from fanion_optax.polar import lmo_gap
from fanion_optax.polar import polar

__version__ = '0.1.0'

__all__ = [
    'coefficient_schedule',
    'lmo',
    'lmo_gap',
    'polar',
    'top_k_polar',
]
