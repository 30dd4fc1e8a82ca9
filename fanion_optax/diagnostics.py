"""Weights against the implicit constraint `‖X‖ ≤ s/λ` of Lion-𝒦 with decay.

With decoupled decay λ > 0, shape factor s and ε·λ ≤ 1, the iterates of
`X ← X − ε(s·lmo(N) + λX)` are driven into the LMO's ball of radius `s/λ`
and stay there: outside, the excess shrinks by `(1 − ελ)` per step.

References:
  L. Chen, J. Li, Q. Liu, *Muon Optimizes Under Spectral Norm Constraints*,
  arXiv:2506.15054.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from fanion_optax import _validate
from fanion_optax import lmo as lmo_lib
from fanion_optax import partition
from fanion_optax import polar as polar_lib


class ConstraintEntry(NamedTuple):
  """One matrix leaf (or one block shape of it) of a `constraint_report`."""

  norm: np.ndarray
  """The ball norm of each matrix of the leaf, shape `(batch,)`."""
  radius: float
  """The implied radius `s/λ` (infinite without decay)."""
  holds: bool
  """Whether every matrix satisfies `norm <= radius·(1 + rtol)`."""
  contraction: float | None
  """`1 − ε·λ`, the factor the excess shrinks by per step (if ε is given)."""


def _polar_widening(lmo: lmo_lib.LMO) -> float:
  """How far the LMO's polar approximation can overshoot the unit ball."""
  if isinstance(lmo, (lmo_lib.Spectral, lmo_lib.KyFan)):
    return polar_lib.singular_value_bound(lmo.polar_method, lmo.polar_steps)
  return 1.0


def _rounding(lmo: lmo_lib.LMO) -> float:
  """Relative rounding of the LMO's arithmetic: its compute dtype's epsilon.

  A bfloat16 polar iteration settles σ₁ a few tenths of a percent above
  `singular_value_bound` on every step, inside its rounding (eps 2⁻⁷).
  """
  dtype = getattr(lmo, 'compute_dtype', None)
  return float(np.finfo(jnp.dtype(dtype or jnp.float32)).eps)


def _value_at(name: str, value: Any, step: int | None) -> float:
  if not callable(value):
    return value
  if step is None:
    raise ValueError(
      f'{name} is a schedule: pass step= (the step count at'
      ' which to evaluate it).'
    )
  return float(cast(Any, value)(step))


def constraint_report(
  params: Any,
  lmo: lmo_lib.LMO,
  *,
  weight_decay: float,
  learning_rate: float | None = None,
  shape_scale: partition.ShapeScale = 'muon',
  dimension_numbers: Any = None,
  exclude: Any = (),
  rtol: float | None = None,
  step: int | None = None,
) -> dict[str, ConstraintEntry]:
  """Per matrix leaf: the weights' ball norm, the radius `s/λ`, and a verdict.

  Args:
    params: the parameter tree.
    lmo: the optimizer's LMO; its `norm` is the ball's norm (a mixture has
      none: report one of its terms).
    weight_decay: λ ≥ 0 (0 gives an infinite radius), or a schedule
      evaluated at `step`.
    learning_rate: ε, to report the contraction `1 − ελ` (must be ≤ 1/λ),
      or a schedule evaluated at `step`.
    shape_scale: as the optimizer's `shape_scale`.
    dimension_numbers: as the optimizer's `dimension_numbers`.
    exclude: as the optimizer's `exclude`.
    rtol: relative slack. Exact LMOs keep the weights inside `s/λ` up to
      rounding, but approximate polar factors have singular values above 1
      and widen the ball by as much (1.12 for Polar Express at 5 steps, 1.20
      for Jordan's Newton–Schulz), and rounding in the compute dtype adds
      to it. Default: that widening (`polar.singular_value_bound` of the
      LMO's polar method) plus the larger of 1e-3 and the compute dtype's
      epsilon.
    step: the step count at which schedules of `weight_decay` and
      `learning_rate` are evaluated (needed when either is a schedule).

  Returns:
    `{path: ConstraintEntry}` for every matrix leaf. Blocks
    (`DimensionNumbers.reduction_blocks` / `output_blocks`) are matrices of
    their own: `norm` has one entry per block (batch entry first), and a
    leaf cut into blocks of several shapes has one entry per shape, keyed
    `'path[fan_inxfan_out]'` (e.g. `'attn/qkv[64x16]'`), each with the
    radius of its own shape factor.

  Example:
    >>> import jax.numpy as jnp
    >>> import fanion_optax as fo
    >>> params = {"w": 3.0 * jnp.eye(4)}
    >>> report = fo.diagnostics.constraint_report(
    ...     params, fo.lmo.spectral(), weight_decay=0.5)
    >>> entry = report["w"]
    >>> float(entry.norm[0]), entry.radius, entry.holds
    (3.0, 2.0, False)
  """
  if not isinstance(lmo, lmo_lib.LMO):
    raise TypeError(f'lmo must be a fanion_optax.lmo.LMO, got {lmo!r}.')
  if step is not None:
    _validate.check_int('step', step, minimum=0)
  weight_decay = _value_at('weight_decay', weight_decay, step)
  _validate.check_scalar('weight_decay', weight_decay, low=0.0)
  if rtol is None:
    rtol = _polar_widening(lmo) - 1.0 + max(1e-3, _rounding(lmo))
  _validate.check_scalar('rtol', rtol, low=0.0, schedule=False)
  partition.check_shape_scale(shape_scale)
  if learning_rate is not None:
    learning_rate = _value_at('learning_rate', learning_rate, step)
    _validate.check_scalar('learning_rate', learning_rate, low=0.0)
    if weight_decay * learning_rate > 1:
      raise ValueError(
        'learning_rate * weight_decay must be <= 1 for the constraint to'
        f' hold, got {learning_rate} * {weight_decay}.'
      )
  specs = partition.resolve_dimension_numbers(
    params, dimension_numbers, exclude
  )
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  report = {}
  for (path, leaf), spec in zip(leaves, treedef.flatten_up_to(specs)):
    if spec is None:
      continue
    leaf = jnp.asarray(leaf)
    stacks = spec.to_stacks(leaf)
    name = partition.path_name(path)
    for stack in stacks:
      _, fan_in, fan_out = stack.shape
      s = partition.shape_factor(fan_in, fan_out, mode=shape_scale)
      radius = s / weight_decay if weight_decay > 0 else float('inf')
      norm = np.asarray(lmo.norm(stack), dtype=np.float64)
      key = name if len(stacks) == 1 else f'{name}[{fan_in}x{fan_out}]'
      report[key] = ConstraintEntry(
        norm=norm,
        radius=radius,
        holds=bool(np.all(norm <= radius * (1 + rtol))),
        contraction=None
        if learning_rate is None
        else (1.0 - learning_rate * weight_decay),
      )
  return report
