"""fanion_optax: dual-norm (LMO) optimizers for JAX and Optax.

Muon, the Ky Fan "Fanions", the F-/S- mixtures and the general Lion-𝒦 family
with decoupled weight decay, as `optax.GradientTransformation`s: presets
(`muon`, `fanion`, …) over one pipeline (`lion_k`), built from small
transformations (`scale_by_lion_k`, `scale_by_shape`, …) and the LMO
catalogue (`fanion_optax.lmo`).
"""

from fanion_optax import catalogue
from fanion_optax import communication
from fanion_optax import diagnostics
from fanion_optax import distributed
from fanion_optax import lmo
from fanion_optax import partition
from fanion_optax.alias import f_fanion
from fanion_optax.alias import f_muon
from fanion_optax.alias import fanion
from fanion_optax.alias import muon
from fanion_optax.alias import neon
from fanion_optax.alias import normuon
from fanion_optax.alias import s_fanion
from fanion_optax.alias import s_muon
from fanion_optax.attention import QKLayout
from fanion_optax.attention import qk_clip
from fanion_optax.lowrank import top_k_polar
from fanion_optax.partition import DimensionNumbers
from fanion_optax.pipeline import adamw_fallback
from fanion_optax.pipeline import inject_hyperparams
from fanion_optax.pipeline import lion_k
from fanion_optax.polar import coefficient_schedule
from fanion_optax.polar import lmo_gap
from fanion_optax.polar import polar_factor
from fanion_optax.polar import singular_value_bound
from fanion_optax.transforms import add_decayed_weights
from fanion_optax.transforms import scale_by_lion_k
from fanion_optax.transforms import scale_by_lmo
from fanion_optax.transforms import scale_by_neuron_norm
from fanion_optax.transforms import scale_by_shape
from fanion_optax.transforms import skip_nonfinite

__version__ = '0.2.0'

__all__ = [
  'DimensionNumbers',
  'QKLayout',
  'adamw_fallback',
  'add_decayed_weights',
  'catalogue',
  'communication',
  'coefficient_schedule',
  'diagnostics',
  'distributed',
  'f_fanion',
  'f_muon',
  'fanion',
  'inject_hyperparams',
  'lion_k',
  'lmo',
  'lmo_gap',
  'muon',
  'neon',
  'normuon',
  'partition',
  'polar_factor',
  'qk_clip',
  's_fanion',
  's_muon',
  'scale_by_lion_k',
  'scale_by_lmo',
  'scale_by_neuron_norm',
  'scale_by_shape',
  'singular_value_bound',
  'skip_nonfinite',
  'top_k_polar',
]
