"""The named optimizers: Muon, Fanion-k, Neon, F-/S- mixtures and Lion-𝒦.

Each returns one `optax.GradientTransformation` for a whole parameter tree:
matrix leaves (see `fanion_optax.partition`) follow Lion-𝒦 with the chosen
LMO, a shape scale `s` and decoupled weight decay `λ` (multiplied by the
learning rate); the other leaves go to a fallback optimizer (AdamW by
default). With `λ > 0` the matrices are driven into the LMO's norm ball of
radius `s/λ` (Chen, Li, Liu, arXiv:2506.15054); see
`fanion_optax.diagnostics.constraint_report`.

Hyperparameters that are numbers (learning rates, decays, momentum, `alpha`,
`sign_scale`) work under `optax.inject_hyperparams`. Use
`fanion_optax.inject_hyperparams`, which marks the structural arguments
(`k`, `ns_steps`, `lmo`, `dimension_numbers`, masks, …) static: with plain
`optax.inject_hyperparams` they must be listed in `static_args`, since it
would trace integers and call any callable as a schedule.

References:
  L. Chen, J. Li, Q. Liu, arXiv:2506.15054 (Muon and the spectral ball).
  A. Kravatskiy et al., arXiv:2512.09678 (Fanions, F-/S- mixtures).
  L. Chen, B. Liu, K. Liang, Q. Liu, arXiv:2310.05898 (Lion-𝒦).
  K. Jordan et al. (2024) (Muon); J. Liu et al., arXiv:2502.16982 (RMS scale).
"""

from __future__ import annotations

import inspect
from typing import Any

import optax

from fanion_optax import _checks
from fanion_optax import lmo as lmo_lib
from fanion_optax import partition
from fanion_optax import polar as polar_lib
from fanion_optax import transforms

ScalarOrSchedule = optax.ScalarOrSchedule
DEFAULT_SIGN_SCALE = 3e-4
"""η for S-Muon/S-Fanion: the value used in GPT training by Kravatskiy et
al.; their synthetic least-squares problem used 0.01."""

_COMMON_ARGS = """
    weight_decay: decoupled decay λ ≥ 0 for the matrices, multiplied by the
      learning rate (a schedule of the step count is accepted).
    weight_decay_mask: a tree, prefix tree or callable of booleans; `False`
      matrices get no decay.
    shape_scale: `"muon"` (`sqrt(max(1, fan_out/fan_in))`), `"rms"`
      (`0.2·sqrt(max(fan_in, fan_out))`, so AdamW learning rates and decays
      transfer) or `None`.
    dimension_numbers: a `DimensionNumbers`, a tree or prefix tree of them
      (`None` leaves go to the fallback) or a callable `params -> tree`;
      default: 2-D leaves are `(fan_in, fan_out)` matrices.
    exclude: regexes searched in the parameter paths (`'embed/embedding'`);
      matches go to the fallback (embeddings and output heads).
    fallback: the optax transformation for non-matrix leaves; default
      `optax.adamw(fallback_learning_rate, fallback_b1, fallback_b2,
      fallback_eps, weight_decay=fallback_weight_decay)`.
    fallback_learning_rate: default AdamW's learning rate (default: the
      `learning_rate`).
    fallback_b1: default AdamW's b1.
    fallback_b2: default AdamW's b2.
    fallback_eps: default AdamW's eps.
    fallback_weight_decay: default AdamW's decoupled weight decay.
    mu_dtype: momentum dtype (default: the parameters' dtype).
    axis_name: inside `jax.pmap(..., axis_name=...)` with replicated
      gradients, split the LMO work across that axis's devices; the update
      equals the single-device one.
    mesh: under `jax.jit` over a `jax.sharding.Mesh` with sharded
      parameters, orthogonalise whole matrices on their owner devices
      (`shard_map`) instead of partitioning every matmul.
    shard_axis: the mesh axis (or axes) to split the matrices over (default:
      all axes of `mesh`).
    skip_nonfinite: skip (and count) steps whose gradients or updates hold
      NaN/Inf, leaving parameters and state untouched (see
      `fanion_optax.skip_nonfinite`). Without it a NaN gradient gives NaN
      updates and momentum for the affected leaves (the Ky Fan warm-start
      subspace alone keeps its last finite value).
"""


def _doc(fn):
  fn.__doc__ = fn.__doc__.replace('    {common}\n', _COMMON_ARGS.lstrip('\n'))
  return fn


_COMMON_NAMES = (
    'weight_decay', 'weight_decay_mask', 'shape_scale', 'dimension_numbers',
    'exclude', 'fallback', 'fallback_learning_rate', 'fallback_b1',
    'fallback_b2', 'fallback_eps', 'fallback_weight_decay', 'mu_dtype',
    'axis_name', 'mesh', 'shard_axis', 'skip_nonfinite')


def _common(arguments: dict[str, Any]) -> dict[str, Any]:
  """The options every optimizer passes through to `_build` unchanged."""
  return {name: arguments[name] for name in _COMMON_NAMES}


def _momentum_betas(momentum: ScalarOrSchedule, nesterov: bool):
  """Muon's momentum μ as Lion-𝒦 `(b1, b2)`: `(μ², μ)` with Nesterov."""
  _checks.check_range('momentum', momentum, low=0.0, high=1.0,
                      high_inclusive=False)
  if not isinstance(nesterov, bool):
    raise TypeError(f'nesterov must be a bool, got {nesterov!r}.')
  if not nesterov:
    return momentum, momentum
  if callable(momentum):
    return (lambda count: momentum(count) ** 2), momentum
  return momentum * momentum, momentum


def _spectral(polar, ns_steps, compute_dtype):
  """The spectral LMO, with errors named after the optimizer's arguments."""
  _check_polar(polar, ns_steps)
  return lmo_lib.spectral(method=polar, steps=ns_steps,
                          compute_dtype=compute_dtype)


def _check_polar(polar, ns_steps):
  if ns_steps is not None:
    _checks.check_int('ns_steps', ns_steps, minimum=1)
  try:
    polar_lib.coefficient_schedule(polar, ns_steps)
  except ValueError as err:
    message = str(err).replace('method', 'polar', 1).replace(
        'steps must', 'ns_steps must', 1)
    raise ValueError(message) from None


def _sign(sign_scale):
  _checks.check_range('sign_scale', sign_scale, low=0.0, low_inclusive=False)
  return lmo_lib.sign(sign_scale)


def _check_alpha(alpha: Any, allow_extrapolation: bool) -> None:
  _checks.check_bool('allow_extrapolation', allow_extrapolation)
  if not allow_extrapolation:
    _checks.check_range('alpha', alpha, low=0.0, high=1.0)


def _build(
    learning_rate: ScalarOrSchedule,
    lmo: lmo_lib.LMO,
    b1: ScalarOrSchedule,
    b2: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule,
    weight_decay_mask: Any,
    shape_scale: str | None,
    dimension_numbers: Any,
    exclude: Any,
    fallback: optax.GradientTransformation | None,
    fallback_learning_rate: ScalarOrSchedule | None,
    fallback_b1: float,
    fallback_b2: float,
    fallback_eps: float,
    fallback_weight_decay: float,
    mu_dtype: Any,
    axis_name: Any,
    mesh: Any,
    shard_axis: Any,
    skip_nonfinite: bool,
) -> optax.GradientTransformationExtraArgs:
  _checks.check_range('learning_rate', learning_rate, low=0.0)
  _checks.check_range('weight_decay', weight_decay, low=0.0)
  partition.check_shape_scale(shape_scale)
  if mu_dtype is not None:
    _checks.check_float_dtype('mu_dtype', mu_dtype)
  if weight_decay_mask is not None and not callable(weight_decay_mask):
    _checks.check_bool_tree('weight_decay_mask', weight_decay_mask)
  if fallback is None:
    for name, beta in (('fallback_b1', fallback_b1),
                       ('fallback_b2', fallback_b2)):
      _checks.check_range(name, beta, low=0.0, high=1.0, high_inclusive=False)
    _checks.check_range('fallback_eps', fallback_eps, low=0.0)
    fb_lr = learning_rate if fallback_learning_rate is None else (
        fallback_learning_rate)
    _checks.check_range('fallback_learning_rate', fb_lr, low=0.0)
    _checks.check_range('fallback_weight_decay', fallback_weight_decay,
                        low=0.0)
    fallback = optax.adamw(fb_lr, b1=fallback_b1, b2=fallback_b2,
                           eps=fallback_eps,
                           weight_decay=fallback_weight_decay,
                           mu_dtype=mu_dtype)
  elif not isinstance(fallback, optax.GradientTransformation):
    raise TypeError('fallback must be an optax.GradientTransformation or'
                    f' None, got {fallback!r}.')
  matrices = optax.chain(
      transforms.scale_by_lion_k(lmo, b1, b2, mu_dtype=mu_dtype,
                                 dimension_numbers=dimension_numbers,
                                 axis_name=axis_name, mesh=mesh,
                                 shard_axis=shard_axis),
      transforms.scale_by_shape(shape_scale,
                                dimension_numbers=dimension_numbers),
      transforms.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  tx = partition.route(matrices, fallback,
                       dimension_numbers=dimension_numbers, exclude=exclude)
  if not isinstance(skip_nonfinite, bool):
    raise TypeError(f'skip_nonfinite must be a bool, got {skip_nonfinite!r}.')
  return transforms.skip_nonfinite(tx) if skip_nonfinite else tx


@_doc
def lion_k(
    learning_rate: ScalarOrSchedule,
    lmo: lmo_lib.LMO,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Lion-𝒦 with any LMO of `fanion_optax.lmo` as `∇𝒦`.

  `X ← X − ε·(s·lmo(b1·M + (1−b1)·g) + λ·X)`, `M ← b2·M + (1−b2)·g`. With
  `lmo.sign()` and `shape_scale=None` it is Lion.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    lmo: the oracle (`lmo.spectral()`, `lmo.mix(...)`, `lmo.schatten(4)`, …).
    b1: interpolation weight of the direction.
    b2: momentum decay.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Chen, Liu, Liang, Liu, arXiv:2310.05898.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> tx = fo.lion_k(1e-3, fo.lmo.schatten(4.0), weight_decay=0.1)
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> new_params = optax.apply_updates(params, updates)
  """
  return _build(learning_rate, lmo, b1, b2, **_common(locals()))


@_doc
def muon(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    polar: Any = 'polar_express',
    ns_steps: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Muon: momentum, then the polar factor `U Vᵀ` (the spectral-norm LMO).

  Jordan's update with Nesterov momentum μ (`m ← lerp(m, g, 1−μ)`, direction
  `lerp(g, m, μ)`), i.e. Lion-𝒦 with `b1 = μ²`, `b2 = μ`; without Nesterov
  `b1 = b2 = μ`. With decay λ, `σ₁(X) ≤ s/λ` is enforced implicitly.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form (Jordan's default).
    polar: `"polar_express"` (default), `"newton_schulz"` (Jordan's quintic,
      as `optax.contrib.muon`), `"svd"`, or `(a, b, c)` rows.
    ns_steps: polar iteration count (default 5).
    compute_dtype: arithmetic dtype of the polar iteration (`jnp.bfloat16`
      is fast on GPU/TPU; default float32).
    {common}

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
  oracle = _spectral(polar, ns_steps, compute_dtype)
  return _build(learning_rate, oracle, b1, b2, **_common(locals()))


def _ky_fan(k, method, iters, polar, ns_steps, compute_dtype):
  _check_polar(polar, ns_steps)
  return lmo_lib.ky_fan(k, method=method, iters=iters, polar=polar,
                        steps=ns_steps, compute_dtype=compute_dtype)


@_doc
def fanion(
    learning_rate: ScalarOrSchedule,
    k: int,
    *,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    method: str = 'subspace',
    iters: int | None = None,
    polar: Any = 'polar_express',
    ns_steps: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Fanion-k: momentum, then `U_k V_kᵀ` (the LMO dual to Ky Fan-k).

  Updates have rank k; matrices with `min(m, n) <= k` get the full polar
  factor, so `fanion(k >= min(m, n))` is Muon. With decay λ the weights
  satisfy `max(σ₁, Σσᵢ/k) ≤ s/λ`.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    k: rank of the update, ≥ 1 (static under `inject_hyperparams`).
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    method: `"subspace"` (warm-started subspace iteration kept in the state,
      `O(m·n·k)`) or `"svd"` (exact).
    iters: subspace iterations per step (default 2).
    polar: polar method for matrices with `min(m, n) <= k`.
    ns_steps: polar iteration count.
    compute_dtype: arithmetic dtype.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678; Ahn et al., arXiv:2504.05295.
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  oracle = _ky_fan(k, method, iters, polar, ns_steps, compute_dtype)
  return _build(learning_rate, oracle, b1, b2, **_common(locals()))


@_doc
def neon(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    method: str = 'subspace',
    iters: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Neon: Fanion-1, the rank-one update `u₁ v₁ᵀ`.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    method: `"subspace"` (warm-started power iteration) or `"svd"`.
    iters: power iterations per step (default 2).
    compute_dtype: arithmetic dtype.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  return fanion(learning_rate, 1, momentum=momentum, nesterov=nesterov,
                method=method, iters=iters, compute_dtype=compute_dtype,
                **_common(locals()))


def _mixture(alpha, allow_extrapolation, primary, secondary):
  _check_alpha(alpha, allow_extrapolation)
  if allow_extrapolation:
    return lmo_lib.Mixture(terms=((alpha, primary), (1 - alpha, secondary)))
  return lmo_lib.mix((alpha, primary), (1 - alpha, secondary))


@_doc
def f_muon(
    learning_rate: ScalarOrSchedule,
    alpha: ScalarOrSchedule = 0.5,
    *,
    allow_extrapolation: bool = False,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    polar: Any = 'polar_express',
    ns_steps: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """F-Muon: the direction `α·U Vᵀ + (1 − α)·G/‖G‖_F`.

  The LMO of the Minkowski sum of the spectral and Frobenius balls.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    alpha: weight α of the spectral term, in [0, 1].
    allow_extrapolation: accept α outside [0, 1].
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    polar: polar method.
    ns_steps: polar iteration count.
    compute_dtype: arithmetic dtype.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  oracle = _mixture(alpha, allow_extrapolation,
                    _spectral(polar, ns_steps, compute_dtype),
                    lmo_lib.frobenius())
  return _build(learning_rate, oracle, b1, b2, **_common(locals()))


@_doc
def s_muon(
    learning_rate: ScalarOrSchedule,
    alpha: ScalarOrSchedule = 0.5,
    sign_scale: ScalarOrSchedule = DEFAULT_SIGN_SCALE,
    *,
    allow_extrapolation: bool = False,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    polar: Any = 'polar_express',
    ns_steps: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """S-Muon: the direction `α·U Vᵀ + (1 − α)·η·sign(G)`.

  The LMO of the Minkowski sum of the spectral ball and the ℓ∞ ball of
  radius η.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    alpha: weight α of the spectral term, in [0, 1].
    sign_scale: η > 0 (default 3e-4, as in the paper's GPT runs; its
      synthetic problem used 0.01).
    allow_extrapolation: accept α outside [0, 1].
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    polar: polar method.
    ns_steps: polar iteration count.
    compute_dtype: arithmetic dtype.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  oracle = _mixture(alpha, allow_extrapolation,
                    _spectral(polar, ns_steps, compute_dtype),
                    _sign(sign_scale))
  return _build(learning_rate, oracle, b1, b2, **_common(locals()))


@_doc
def f_fanion(
    learning_rate: ScalarOrSchedule,
    k: int,
    alpha: ScalarOrSchedule = 0.5,
    *,
    allow_extrapolation: bool = False,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    method: str = 'subspace',
    iters: int | None = None,
    polar: Any = 'polar_express',
    ns_steps: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """F-Fanion-k: `α·U_k V_kᵀ + (1 − α)·G/‖G‖_F` (k = 1: F-Neon).

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    k: rank of the Ky Fan term, ≥ 1.
    alpha: weight α of the Ky Fan term, in [0, 1].
    allow_extrapolation: accept α outside [0, 1].
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    method: `"subspace"` or `"svd"`.
    iters: subspace iterations per step (default 2).
    polar: polar method for matrices with `min(m, n) <= k`.
    ns_steps: polar iteration count.
    compute_dtype: arithmetic dtype.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  oracle = _mixture(alpha, allow_extrapolation,
                    _ky_fan(k, method, iters, polar, ns_steps, compute_dtype),
                    lmo_lib.frobenius())
  return _build(learning_rate, oracle, b1, b2, **_common(locals()))


@_doc
def s_fanion(
    learning_rate: ScalarOrSchedule,
    k: int,
    alpha: ScalarOrSchedule = 0.5,
    sign_scale: ScalarOrSchedule = DEFAULT_SIGN_SCALE,
    *,
    allow_extrapolation: bool = False,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    method: str = 'subspace',
    iters: int | None = None,
    polar: Any = 'polar_express',
    ns_steps: int | None = None,
    compute_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    shape_scale: str | None = 'muon',
    dimension_numbers: Any = None,
    exclude: Any = (),
    fallback: optax.GradientTransformation | None = None,
    fallback_learning_rate: ScalarOrSchedule | None = None,
    fallback_b1: float = 0.9,
    fallback_b2: float = 0.999,
    fallback_eps: float = 1e-8,
    fallback_weight_decay: float = 0.0,
    mu_dtype: Any = None,
    axis_name: Any = None,
    mesh: Any = None,
    shard_axis: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """S-Fanion-k: `α·U_k V_kᵀ + (1 − α)·η·sign(G)` (k = 1: S-Neon).

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    k: rank of the Ky Fan term, ≥ 1.
    alpha: weight α of the Ky Fan term, in [0, 1].
    sign_scale: η > 0.
    allow_extrapolation: accept α outside [0, 1].
    momentum: μ in [0, 1), or a schedule.
    nesterov: Nesterov form.
    method: `"subspace"` or `"svd"`.
    iters: subspace iterations per step (default 2).
    polar: polar method for matrices with `min(m, n) <= k`.
    ns_steps: polar iteration count.
    compute_dtype: arithmetic dtype.
    {common}

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  b1, b2 = _momentum_betas(momentum, nesterov)
  oracle = _mixture(alpha, allow_extrapolation,
                    _ky_fan(k, method, iters, polar, ns_steps, compute_dtype),
                    _sign(sign_scale))
  return _build(learning_rate, oracle, b1, b2, **_common(locals()))




STRUCTURAL_ARGS = (
    'lmo', 'k', 'ns_steps', 'iters', 'polar', 'method', 'compute_dtype',
    'dimension_numbers', 'weight_decay_mask', 'exclude', 'fallback',
    'mu_dtype', 'axis_name', 'mesh', 'shard_axis', 'shape_scale')


def inject_hyperparams(
    factory: Any,
    static_args: str | tuple[str, ...] = (),
    hyperparam_dtype: Any = None,
) -> Any:
  """`optax.inject_hyperparams` with this package's structural args static.

  Numeric hyperparameters (learning rates, decays, momentum, `alpha`,
  `sign_scale`, `b1`, `b2`) become injectable and schedulable; `k`,
  `ns_steps`, `lmo`, `dimension_numbers`, masks and the other structural
  arguments stay static.

  Args:
    factory: an optimizer of this package (or any optax factory).
    static_args: further argument names to keep static.
    hyperparam_dtype: as in `optax.inject_hyperparams`.

  Returns:
    The wrapped factory.

  Example:
    >>> import fanion_optax as fo
    >>> tx = fo.inject_hyperparams(fo.fanion)(learning_rate=0.5, k=4)
    >>> import jax.numpy as jnp
    >>> state = tx.init({"w": jnp.ones((8, 8))})
    >>> hp = state.hyperparams
    >>> float(hp["learning_rate"]), "momentum" in hp, "k" in hp
    (0.5, True, False)
  """
  extra = (static_args,) if isinstance(static_args, str) else tuple(
      static_args)
  parameters = inspect.signature(factory).parameters
  static = tuple(a for a in STRUCTURAL_ARGS if a in parameters) + extra
  return optax.inject_hyperparams(factory, static_args=static,
                                  hyperparam_dtype=hyperparam_dtype)
