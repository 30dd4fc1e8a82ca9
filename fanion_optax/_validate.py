"""Argument checks, run once where a value is built.

Every message names the argument (or parameter path), the value received and
the accepted range, so a mistake in a long config fails at construction time
with a readable message. Values that cannot be inspected then — tracers under
`jit` and schedules (callables) — are left to run time.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.core  # jax imports it; named here for type checkers
import jax.numpy as jnp
import numpy as np


def is_concrete(value: Any) -> bool:
  """True when `value` can be inspected on the host (not a tracer)."""
  return not isinstance(value, jax.core.Tracer)


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
  """Returns `value` as an int, or raises if it is not an int >= `minimum`."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
      f'{name} must be a static int, got a traced value. With'
      f' optax.inject_hyperparams, pass static_args=({name!r},), or use'
      ' fanion_optax.inject_hyperparams, which does.'
    )
  if (
    isinstance(value, (np.ndarray, jax.Array))
    and value.ndim == 0
    and jnp.issubdtype(value.dtype, jnp.integer)
  ):
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f'{name} must be an int >= {minimum}, got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')
  return int(value)


def _describe(low, high, low_inclusive, high_inclusive) -> str:
  lo = '' if low is None else ('[' if low_inclusive else '(') + f'{low}'
  hi = '' if high is None else f'{high}' + (']' if high_inclusive else ')')
  if low is not None and high is not None:
    return f'a finite real number in {lo}, {hi}'
  if low is not None:
    return (
      'a finite real number ' + ('>= ' if low_inclusive else '> ') + (f'{low}')
    )
  if high is not None:
    return (
      'a finite real number '
      + ('<= ' if high_inclusive else '< ')
      + (f'{high}')
    )
  return 'a finite real number'


def check_scalar(
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_inclusive: bool = True,
  high_inclusive: bool = True,
  schedule: bool = True,
) -> None:
  """Raises unless `value` is a finite real scalar in the range.

  A hyperparameter is a Python number or a 0-d array (what
  `optax.inject_hyperparams` passes); with `schedule=True` a callable of the
  step count is accepted unchecked. An array with more than one element is a
  `TypeError`: it would broadcast against the updates (a per-column
  learning rate) instead of failing.
  """
  accepted = _describe(low, high, low_inclusive, high_inclusive)
  if callable(value) and not isinstance(value, (np.ndarray, jax.Array)):
    if schedule:
      return
    raise TypeError(f'{name} must be {accepted}, got the callable {value!r}.')
  if isinstance(value, bool) or value is None or isinstance(value, str):
    raise TypeError(
      f'{name} must be {accepted}'
      f'{" or a schedule" if schedule else ""}, got {value!r}.'
    )
  if isinstance(value, jax.core.Tracer):
    if jnp.ndim(value) != 0:
      raise TypeError(
        f'{name} must be a scalar, got a traced array of shape'
        f' {jnp.shape(value)}.'
      )
    return
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):
    array = None
  if array is None or not (
    np.issubdtype(array.dtype, np.integer)
    or np.issubdtype(array.dtype, np.floating)
  ):
    raise TypeError(
      f'{name} must be {accepted}'
      f'{" or a schedule" if schedule else ""}, got {value!r}.'
    )
  if array.ndim != 0:
    raise TypeError(
      f'{name} must be a scalar ({accepted}), got an array of'
      f' shape {array.shape}: {value!r}.'
    )
  v = float(array)
  bad = (
    not np.isfinite(v)
    or (low is not None and (v < low if low_inclusive else v <= low))
    or (high is not None and (v > high if high_inclusive else v >= high))
  )
  if bad:
    raise ValueError(f'{name} must be {accepted}, got {value!r}.')


def check_float_dtype(name: str, value: Any) -> jnp.dtype:
  """Returns `value` as a floating `jnp.dtype`, or raises naming `name`."""
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    raise TypeError(
      f'{name} must be a floating dtype such as jnp.float32 or'
      f' "bfloat16", got {value!r}.'
    ) from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f'{name} must be a floating dtype such as jnp.float32 or'
      f' "bfloat16", got {dtype}.'
    )
  return dtype


def check_bool(name: str, value: Any) -> None:
  """Raises `TypeError` unless `value` is a Python bool."""
  if not isinstance(value, bool):
    raise TypeError(f'{name} must be a bool, got {value!r}.')


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  """Raises `ValueError` unless `value` is one of `choices`."""
  if isinstance(value, (str, type(None))) and value in choices:
    return
  raise ValueError(f'{name} must be one of {choices}, got {value!r}.')


def check_bool_tree(name: str, tree: Any) -> None:
  """Raises `TypeError` unless every leaf of `tree` is a bool (or None)."""
  bad = [
    leaf
    for leaf in jax.tree.leaves(tree)
    if not isinstance(leaf, (bool, np.bool_))
  ]
  if bad:
    raise TypeError(
      f'{name} must be a tree of bools (or a callable returning'
      f' one), got a leaf {bad[0]!r}.'
    )


def check_matrix(name: str, x: Any) -> jax.Array:
  """Returns `x` as an array with at least 2 axes of floating dtype."""
  if x is None or isinstance(x, (str, bytes, dict)):
    raise TypeError(f'{name} must be an array of shape (..., m, n), got {x!r}.')
  try:
    x = jnp.asarray(x)
  except (TypeError, ValueError) as err:
    raise TypeError(
      f'{name} must be an array of shape (..., m, n), got'
      f' {type(x).__name__}: {err}'
    ) from None
  if x.ndim < 2:
    raise ValueError(
      f'{name} must be a matrix or a batch of matrices (ndim >= 2), got'
      f' shape {x.shape}.'
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{name} must have a floating dtype, got {x.dtype}.')
  return x
