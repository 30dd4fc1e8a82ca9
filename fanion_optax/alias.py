"""The named optimizers: presets over the one `lion_k` pipeline.

Each preset builds its LMO and its `(b1, b2)` and returns
`fanion_optax.lion_k(learning_rate, lmo, b1, b2, **options)`; the pipeline
options (`weight_decay`, `weight_decay_mask`, `shape_scale`,
`dimension_numbers`, `exclude`, `fallback`, `mu_dtype`, `split`,
`neuron_b2`, `neuron_eps`) are documented there once. Muon's momentum μ with Nesterov is `b1 = μ²`,
`b2 = μ`; without it `b1 = b2 = μ`.

Numbers (learning rates, decays, momentum, `alpha`, `sign_scale`) work under
`optax.inject_hyperparams`; `fanion_optax.inject_hyperparams` keeps the
structural arguments (`k`, `polar_steps`, …) static.

References:
  L. Chen, J. Li, Q. Liu, arXiv:2506.15054 (Muon and the spectral ball).
  A. Kravatskiy et al., arXiv:2512.09678 (Fanions, F-/S- mixtures).
  L. Chen, B. Liu, K. Liang, Q. Liu, arXiv:2310.05898 (Lion-𝒦).
  K. Jordan et al. (2024) (Muon); N. Amsel et al., arXiv:2505.16932
  (Polar Express).
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar
from typing import cast

import jax
import optax

from fanion_optax import _validate
from fanion_optax import lmo as lmo_lib
from fanion_optax import pipeline
from fanion_optax import polar as polar_lib
from fanion_optax.pipeline import lion_k
from fanion_optax.pipeline import preset

if TYPE_CHECKING:
  from typing_extensions import Unpack

  from fanion_optax.pipeline import PipelineOptions

  class _MixtureOptions(PipelineOptions, total=False):
    """The keywords of `f_muon` and `s_muon` after `alpha`."""

    allow_extrapolation: bool
    momentum: ScalarOrSchedule
    nesterov: bool
    polar_method: polar_lib.PolarMethod
    polar_steps: int | None
    compute_dtype: jax.typing.DTypeLike | None
    gram: polar_lib.Gram

  class _FanionMixtureOptions(_MixtureOptions, total=False):
    """The keywords of `f_fanion` and `s_fanion` after `alpha`."""

    top_k_method: lmo_lib.TopKMethod
    subspace_iters: int | None

  class _NeonOptions(PipelineOptions, total=False):
    """The keywords of `neon`: those of `fanion` but `k`."""

    momentum: ScalarOrSchedule
    nesterov: bool
    top_k_method: lmo_lib.TopKMethod
    subspace_iters: int | None
    polar_method: polar_lib.PolarMethod
    polar_steps: int | None
    compute_dtype: jax.typing.DTypeLike | None
    gram: polar_lib.Gram


ScalarOrSchedule = optax.ScalarOrSchedule
Optimizer = optax.GradientTransformationExtraArgs
_Preset = TypeVar('_Preset', bound=Callable[..., Optimizer])
DEFAULT_SIGN_SCALE = 3e-4
"""η for S-Muon/S-Fanion: the value used in GPT training by Kravatskiy et
al.; their synthetic least-squares problem used 0.01."""


def _momentum_betas(
  momentum: ScalarOrSchedule, nesterov: bool
) -> tuple[ScalarOrSchedule, ScalarOrSchedule]:
  """Muon's momentum μ as Lion-𝒦 `(b1, b2)`: `(μ², μ)` with Nesterov."""
  _validate.check_scalar(
    'momentum', momentum, low=0.0, high=1.0, high_inclusive=False
  )
  _validate.check_bool('nesterov', nesterov)
  if not nesterov:
    return momentum, momentum
  if callable(momentum):
    return (lambda count: momentum(count) ** 2), momentum
  return momentum * momentum, momentum


def _mixture(
  alpha: jax.typing.ArrayLike,
  allow_extrapolation: bool,
  primary: lmo_lib.LMO,
  secondary: lmo_lib.LMO,
) -> lmo_lib.Mixture:
  _validate.check_bool('allow_extrapolation', allow_extrapolation)
  _validate.check_scalar(
    'alpha',
    alpha,
    schedule=False,
    low=None if allow_extrapolation else 0.0,
    high=None if allow_extrapolation else 1.0,
  )
  return lmo_lib.mix(
    (alpha, primary),
    (1 - alpha, secondary),
    allow_extrapolation=allow_extrapolation,
  )


_MIXTURE_ARGS = (
  ('allow_extrapolation', 'accept α outside [0, 1].'),
  ('momentum', 'μ in [0, 1), or a schedule.'),
  ('nesterov', 'Nesterov form.'),
  ('top_k_method', '`"subspace"` or `"svd"` (see `fanion`).'),
  ('subspace_iters', 'subspace iterations per step.'),
  (
    'polar_method',
    'polar method (see `muon`) for the spectral term and'
    ' for matrices with `min(m, n) <= k`.',
  ),
  ('polar_steps', 'polar iteration count.'),
  ('compute_dtype', 'arithmetic dtype.'),
  ('gram', 'Gram Newton–Schulz (see `muon`).'),
)
_FULL_RANK_ONLY = ('k', 'top_k_method', 'subspace_iters')


def _sign(sign_scale: jax.typing.ArrayLike) -> lmo_lib.Sign:
  _validate.check_scalar(
    'sign_scale', sign_scale, low=0.0, low_inclusive=False, schedule=False
  )
  return lmo_lib.sign(sign_scale)


def _ky_fan_or_spectral(
  k: int | None,
  top_k_method: lmo_lib.TopKMethod,
  subspace_iters: int | None,
  polar_method: polar_lib.PolarMethod,
  polar_steps: int | None,
  compute_dtype: jax.typing.DTypeLike | None,
  gram: polar_lib.Gram,
) -> lmo_lib.LMO:
  """The mixtures' first term: Ky Fan-k, or the spectral LMO for `k=None`."""
  if k is None:
    return lmo_lib.spectral(
      polar_method=polar_method,
      polar_steps=polar_steps,
      compute_dtype=compute_dtype,
      gram=gram,
    )
  return lmo_lib.ky_fan(
    k,
    top_k_method=top_k_method,
    subspace_iters=subspace_iters,
    polar_method=polar_method,
    polar_steps=polar_steps,
    compute_dtype=compute_dtype,
    gram=gram,
  )


@preset
def muon(
  learning_rate: ScalarOrSchedule,
  *,
  momentum: ScalarOrSchedule = 0.95,
  nesterov: bool = True,
  polar_method: polar_lib.PolarMethod = 'polar_express',
  polar_steps: int | None = None,
  compute_dtype: jax.typing.DTypeLike | None = None,
  gram: polar_lib.Gram = False,
  **options: Unpack[PipelineOptions],
) -> Optimizer:
  """Muon: momentum, then the polar factor `U Vᵀ` (the spectral-norm LMO).

  Jordan's update with Nesterov momentum μ (`m ← lerp(m, g, 1−μ)`, direction
  `lerp(g, m, μ)`). With decay λ, `σ₁(X) ≤ s/λ` is enforced implicitly.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form (Jordan's default).
    polar_method: `"polar_express"` (default), `"newton_schulz"` (Jordan's
      quintic, as `optax.contrib.muon`), `"svd"`, or `(a, b, c)` rows.
    polar_steps: polar iteration count (default 5).
    compute_dtype: arithmetic dtype of the polar iteration (default
      bfloat16 on GPU/TPU, with float32 accumulation, and float32 on CPU;
      `jnp.float32` forces float32 everywhere).
    gram: Gram Newton–Schulz: iterate on the m×m Gram matrix and apply the
      polynomial once (the same direction to ~1e-4, 0.56x the FLOPs at
      aspect 1:4); `True`, `False` (default) or `"auto"` (where it saves
      FLOPs). See `fanion_optax.polar.polar_factor`.
    {options}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Jordan et al. (2024); Chen, Li, Liu, arXiv:2506.15054;
    Amsel et al., arXiv:2505.16932.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    >>> tx = fo.muon(0.02, weight_decay=0.1)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  lmo = lmo_lib.spectral(
    polar_method=polar_method,
    polar_steps=polar_steps,
    compute_dtype=compute_dtype,
    gram=gram,
  )
  return lion_k(learning_rate, lmo, b1, b2, **options)


_NORMUON_OPTIONS: PipelineOptions = {'neuron_b2': 0.95, 'shape_scale': None}
"""The pipeline options whose `normuon` defaults differ from `lion_k`'s."""


@preset
def normuon(
  learning_rate: ScalarOrSchedule,
  *,
  momentum: ScalarOrSchedule = 0.95,
  nesterov: bool = True,
  polar_method: polar_lib.PolarMethod = 'polar_express',
  polar_steps: int | None = None,
  compute_dtype: jax.typing.DTypeLike | None = None,
  gram: polar_lib.Gram = False,
  **options: Unpack[PipelineOptions],
) -> Optimizer:
  """NorMuon: Muon's `U Vᵀ`, each neuron normalised by its second moment.

  Li et al.'s Algorithm 1 on Muon's direction `O`: per output neuron (a
  column of the `(fan_in, fan_out)` kernel) `ν ← β₂·ν + (1 − β₂)·mean(O⊙O)`,
  `Ô = O/(√ν + ε)`, then `X ← X − η·λ·X − η̂·Ô` with
  `η̂ = 0.2·η·√(mn)/‖Ô‖_F`. Every matrix moves by RMS `0.2·η`, AdamW's
  update size (Liu et al.), so **η is an AdamW-like learning rate** (the
  one an AdamW run of the model would use, typically 1e-4 to 1e-3), not
  Muon's 0.02, and λ an AdamW-like decay. It is `muon(...,
  neuron_b2=0.95, shape_scale=None)`: those two pipeline options default
  differently here (`neuron_b2` is the paper's β₂; no shape factor, the
  normalisation already sets the RMS). `nesterov=False` orthogonalises the
  momentum itself, as Algorithm 1 does; the default Nesterov direction is
  Muon's and the authors' code's.

  Args:
    learning_rate: η ≥ 0 (AdamW-like), or a schedule.
    momentum: μ (the paper's β₁) in [0, 1), or a schedule.
    nesterov: Nesterov form.
    polar_method: polar method (see `muon`).
    polar_steps: polar iteration count.
    compute_dtype: arithmetic dtype of the polar iteration.
    gram: Gram Newton–Schulz (see `muon`).
    {options}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Li, Liu, Liang, Chen, Zhao, *NorMuon: Making Muon more efficient and
    scalable*, arXiv:2510.05491; Liu et al., arXiv:2502.16982.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    >>> tx = fo.normuon(1e-3, weight_decay=0.1)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  return muon(
    learning_rate,
    momentum=momentum,
    nesterov=nesterov,
    polar_method=polar_method,
    polar_steps=polar_steps,
    compute_dtype=compute_dtype,
    gram=gram,
    **{**_NORMUON_OPTIONS, **options},
  )


def _with_option_defaults(
  factory: Callable[..., Any], defaults: Mapping[str, Any]
) -> inspect.Signature:
  """`factory`'s signature, showing its own defaults of pipeline options."""
  signature = inspect.signature(factory)
  return signature.replace(
    parameters=[
      p.replace(default=defaults[p.name]) if p.name in defaults else p
      for p in signature.parameters.values()
    ]
  )


normuon.__signature__ = _with_option_defaults(normuon, _NORMUON_OPTIONS)


@preset
def fanion(
  learning_rate: ScalarOrSchedule,
  k: int,
  *,
  momentum: ScalarOrSchedule = 0.95,
  nesterov: bool = True,
  top_k_method: lmo_lib.TopKMethod = 'subspace',
  subspace_iters: int | None = None,
  polar_method: polar_lib.PolarMethod = 'polar_express',
  polar_steps: int | None = None,
  compute_dtype: jax.typing.DTypeLike | None = None,
  gram: polar_lib.Gram = False,
  **options: Unpack[PipelineOptions],
) -> Optimizer:
  """Fanion-k: momentum, then `U_k V_kᵀ` (the LMO dual to Ky Fan-k).

  Updates have rank k; matrices with `min(m, n) <= k` get the full polar
  factor, so `fanion(k >= min(m, n))` is Muon. With decay λ the weights
  satisfy `max(σ₁, Σσᵢ/k) ≤ s/λ`.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    k: rank of the update, ≥ 1 (static under `inject_hyperparams`).
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    top_k_method: `"subspace"` (warm-started subspace iteration kept in the
      state, `O(m·n·k)`) or `"svd"` (exact).
    subspace_iters: subspace iterations per step (default 10 cold, then 2).
    polar_method: polar method (see `muon`) for the spectral term (`k=None`)
      and for matrices with `min(m, n) <= k`.
    polar_steps: polar iteration count.
    compute_dtype: arithmetic dtype.
    gram: Gram Newton–Schulz for full-rank polar factors (see `muon`).
    {options}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678; Ahn et al., arXiv:2504.05295.
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  lmo = lmo_lib.ky_fan(
    k,
    top_k_method=top_k_method,
    subspace_iters=subspace_iters,
    polar_method=polar_method,
    polar_steps=polar_steps,
    compute_dtype=compute_dtype,
    gram=gram,
  )
  return lion_k(learning_rate, lmo, b1, b2, **options)


def _signature(
  source: Callable[..., Any],
  drop: tuple[str, ...] = (),
  sign_scale: bool = False,
) -> inspect.Signature:
  """`source`'s signature without `drop`, with `sign_scale` after `alpha`."""
  signature = inspect.signature(source)
  params = [p for p in signature.parameters.values() if p.name not in drop]
  if sign_scale:
    at = [p.name for p in params].index('alpha') + 1
    params.insert(
      at,
      inspect.Parameter(
        'sign_scale',
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=DEFAULT_SIGN_SCALE,
        annotation='jax.typing.ArrayLike',
      ),
    )
  return signature.replace(parameters=params)


def neon(
  learning_rate: ScalarOrSchedule, **kwargs: Unpack[_NeonOptions]
) -> Optimizer:
  """Neon: Fanion-1, the rank-one update `u₁ v₁ᵀ` (`fanion` with `k=1`).

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    **kwargs: every keyword of `fanion` but `k`: `momentum`, `nesterov`,
      `top_k_method`, `subspace_iters`, `polar_method`, `polar_steps`,
      `compute_dtype` and the pipeline options of `lion_k`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  if 'k' in kwargs:
    raise TypeError(
      f'neon is Fanion-1 and takes no k, got k={kwargs["k"]!r};'
      ' use fanion(learning_rate, k).'
    )
  return fanion(learning_rate, 1, **kwargs)


neon.__signature__ = _signature(fanion, drop=('k',))


@preset
def _fanion_mixture(
  secondary: lmo_lib.LMO,
  learning_rate: ScalarOrSchedule,
  k: int | None,
  alpha: jax.typing.ArrayLike = 0.5,
  *,
  allow_extrapolation: bool = False,
  momentum: ScalarOrSchedule = 0.95,
  nesterov: bool = True,
  top_k_method: lmo_lib.TopKMethod = 'subspace',
  subspace_iters: int | None = None,
  polar_method: polar_lib.PolarMethod = 'polar_express',
  polar_steps: int | None = None,
  compute_dtype: jax.typing.DTypeLike | None = None,
  gram: polar_lib.Gram = False,
  **options: Unpack[PipelineOptions],
) -> Optimizer:
  """`α·(Ky Fan-k or spectral) + (1 − α)·secondary`: the F-/S- presets.

  Args:
    {options}
  """
  primary = _ky_fan_or_spectral(
    k,
    top_k_method,
    subspace_iters,
    polar_method,
    polar_steps,
    compute_dtype,
    gram,
  )
  lmo = _mixture(alpha, allow_extrapolation, primary, secondary)
  return lion_k(
    learning_rate, lmo, *_momentum_betas(momentum, nesterov), **options
  )


def _mixture_preset(
  *, full_rank: bool, sign_scale: bool
) -> Callable[[_Preset], _Preset]:
  """Gives a mixture preset `_fanion_mixture`'s signature and Args.

  The signature drops `secondary` (the preset builds it), drops `k` and the
  top-k options for the full-rank presets (F-/S-Muon) and adds `sign_scale`
  to the S- ones; `{mixture}` in the docstring becomes the shared Args,
  Returns and References.
  """
  dropped = ('secondary',) + (_FULL_RANK_ONLY if full_rank else ())

  def mark(fn: _Preset) -> _Preset:
    fn.__signature__ = _signature(_fanion_mixture, dropped, sign_scale)
    args = ''.join(
      textwrap.fill(
        f'{name}: {text}', 76, initial_indent='    ', subsequent_indent='      '
      )
      + '\n'
      for name, text in _MIXTURE_ARGS
      if name not in dropped
    )
    fn.__doc__ = cast(str, fn.__doc__).replace(
      '    {mixture}\n',
      args
      + (
        pipeline.OPTIONS_DOC.lstrip('\n') + '\n  Returns:\n    An'
        ' `optax.GradientTransformationExtraArgs`.\n\n  References:\n'
        '    Kravatskiy et al., arXiv:2512.09678.\n'
      ),
    )
    return fn

  return mark


@_mixture_preset(full_rank=False, sign_scale=False)
def f_fanion(
  learning_rate: ScalarOrSchedule,
  k: int | None,
  alpha: jax.typing.ArrayLike = 0.5,
  **kwargs: Unpack[_FanionMixtureOptions],
) -> Optimizer:
  """F-Fanion-k: `α·U_k V_kᵀ + (1 − α)·G/‖G‖_F` (k = 1: F-Neon).

  The LMO of the Minkowski sum of the Ky Fan-k dual ball and the Frobenius
  ball; `k=None` (F-Muon) takes the spectral ball, `α·U Vᵀ`.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    k: rank of the Ky Fan term, ≥ 1, or `None` for the full polar factor.
    alpha: weight α of the Ky Fan term, in [0, 1].
    {mixture}
  """
  return _fanion_mixture(lmo_lib.frobenius(), learning_rate, k, alpha, **kwargs)


@_mixture_preset(full_rank=False, sign_scale=True)
def s_fanion(
  learning_rate: ScalarOrSchedule,
  k: int | None,
  alpha: jax.typing.ArrayLike = 0.5,
  sign_scale: jax.typing.ArrayLike = DEFAULT_SIGN_SCALE,
  **kwargs: Unpack[_FanionMixtureOptions],
) -> Optimizer:
  """S-Fanion-k: `α·U_k V_kᵀ + (1 − α)·η·sign(G)` (k = 1: S-Neon).

  The LMO of the Minkowski sum of the Ky Fan-k dual ball and the ℓ∞ ball of
  radius η; `k=None` (S-Muon) takes the spectral ball, `α·U Vᵀ`.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    k: rank of the Ky Fan term, ≥ 1, or `None` for the full polar factor.
    alpha: weight α of the Ky Fan term, in [0, 1].
    sign_scale: η > 0 (default 3e-4, as in the paper's GPT runs; its
      synthetic problem used 0.01).
    {mixture}
  """
  return _fanion_mixture(_sign(sign_scale), learning_rate, k, alpha, **kwargs)


@_mixture_preset(full_rank=True, sign_scale=False)
def f_muon(
  learning_rate: ScalarOrSchedule,
  alpha: jax.typing.ArrayLike = 0.5,
  **kwargs: Unpack[_MixtureOptions],
) -> Optimizer:
  """F-Muon: `α·U Vᵀ + (1 − α)·G/‖G‖_F` (`f_fanion` with `k=None`).

  The LMO of the Minkowski sum of the spectral and Frobenius balls.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    alpha: weight α of the spectral term, in [0, 1].
    {mixture}
  """
  return _fanion_mixture(
    lmo_lib.frobenius(), learning_rate, None, alpha, **kwargs
  )


@_mixture_preset(full_rank=True, sign_scale=True)
def s_muon(
  learning_rate: ScalarOrSchedule,
  alpha: jax.typing.ArrayLike = 0.5,
  sign_scale: jax.typing.ArrayLike = DEFAULT_SIGN_SCALE,
  **kwargs: Unpack[_MixtureOptions],
) -> Optimizer:
  """S-Muon: `α·U Vᵀ + (1 − α)·η·sign(G)` (`s_fanion` with `k=None`).

  The LMO of the Minkowski sum of the spectral ball and the ℓ∞ ball of
  radius η.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    alpha: weight α of the spectral term, in [0, 1].
    sign_scale: η > 0 (default 3e-4, as in the paper's GPT runs; its
      synthetic problem used 0.01).
    {mixture}
  """
  return _fanion_mixture(
    _sign(sign_scale), learning_rate, None, alpha, **kwargs
  )
