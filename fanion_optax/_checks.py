"""Argument checks and small numerical helpers shared by every module.

Errors name the argument, the value received and the accepted range, so a
mistake in a long config surfaces at construction time with a readable message.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
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
        f' optax.inject_hyperparams, pass static_args=({name!r},).')
  if (isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
      and jnp.issubdtype(value.dtype, jnp.integer)):
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f'{name} must be an int >= {minimum}, got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')
  return int(value)


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
  """Raises `ValueError` if a concrete scalar `value` lies outside the range.

  Arrays under `jit` (tracers) and schedules (callables) are not checked:
  their values are unknown at construction time.
  """
  if callable(value) or not is_concrete(value):
    return
  try:
    values = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise TypeError(f'{name} must be a real number, got {value!r}.') from None
  if values.size == 0:
    return
  lo_bad = low is not None and (
      np.any(values < low) if low_inclusive else np.any(values <= low))
  hi_bad = high is not None and (
      np.any(values > high) if high_inclusive else np.any(values >= high))
  if lo_bad or hi_bad or np.any(np.isnan(values)):
    lo = '' if low is None else ('[' if low_inclusive else '(') + f'{low}'
    hi = '' if high is None else f'{high}' + (']' if high_inclusive else ')')
    if low is not None and high is not None:
      accepted = f'in {lo}, {hi}'
    elif low is not None:
      accepted = ('>= ' if low_inclusive else '> ') + f'{low}'
    else:
      accepted = ('<= ' if high_inclusive else '< ') + f'{high}'
    raise ValueError(f'{name} must be {accepted}, got {value!r}.')


def check_matrix(name: str, x: Any) -> jax.Array:
  """Returns `x` as an array with at least 2 axes of floating dtype."""
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
        f'{name} must be a matrix or a batch of matrices (ndim >= 2), got'
        f' shape {x.shape}.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{name} must have a floating dtype, got {x.dtype}.')
  return x


def check_float_dtype(name: str, value: Any) -> jnp.dtype:
  """Returns `value` as a floating `jnp.dtype`, or raises naming `name`."""
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    raise TypeError(f'{name} must be a floating dtype such as jnp.float32 or'
                    f' "bfloat16", got {value!r}.') from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f'{name} must be a floating dtype such as jnp.float32 or'
                    f' "bfloat16", got {dtype}.')
  return dtype


def check_bool(name: str, value: Any) -> None:
  """Raises `TypeError` unless `value` is a Python bool."""
  if not isinstance(value, bool):
    raise TypeError(f'{name} must be a bool, got {value!r}.')


def check_bool_tree(name: str, tree: Any) -> None:
  """Raises `TypeError` unless every leaf of `tree` is a bool (or None)."""
  bad = [leaf for leaf in jax.tree.leaves(tree)
         if not isinstance(leaf, (bool, np.bool_))]
  if bad:
    raise TypeError(f'{name} must be a tree of bools (or a callable returning'
                    f' one), got a leaf {bad[0]!r}.')


def resolve_compute_dtype(dtype: Any, compute_dtype: Any) -> jnp.dtype:
  """The dtype to compute in: `compute_dtype`, else at least float32."""
  if compute_dtype is not None:
    return check_float_dtype('compute_dtype', compute_dtype)
  return jnp.promote_types(dtype, jnp.float32)


def max_abs_scaled(x: jax.Array) -> jax.Array:
  """`x / max|x|` per matrix (last two axes); zero matrices stay zero.

  Dividing by the largest entry first keeps the later Frobenius norm finite
  for entries as large as 1e30 and nonzero for entries as small as 1e-30 in
  float32, so every LMO stays exactly homogeneous of degree 0.
  """
  peak = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  return x / jnp.where(peak > 0, peak, jnp.ones_like(peak))


def frobenius_normalized(x: jax.Array, *, safety: float = 1.0,
                         eps: float = 0.0) -> jax.Array:
  """`x / (safety * ||x||_F + eps)` per matrix, after `max_abs_scaled`."""
  x = max_abs_scaled(x)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  denom = safety * norm + eps
  return x / jnp.where(denom > 0, denom, jnp.ones_like(denom))


def swap_last(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def singular_value_mask(s: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Marks the singular values that are numerically nonzero.

  Singular vectors of zero singular values are arbitrary; an LMO must give
  them weight 0 (as Newton–Schulz does), so that a zero or rank-deficient
  input yields a zero or low-rank direction rather than noise.
  """
  tol = (jnp.max(s, axis=-1, keepdims=True) * max(shape[-2:])
         * jnp.finfo(s.dtype).eps)
  return s > tol


def per_matrix_on_cpu(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` of `(..., m, n)`, run one matrix at a time on the CPU backend.

  jaxlib's CPU LAPACK kernels (QR, SVD) split a batch over XLA's intra-op
  thread pool and block a pool thread while they wait. When as many batched
  calls run at once as the pool has threads (one per device under `pmap` or
  `shard_map` on emulated CPU devices, or independent shape groups of one
  program), every thread waits and the program hangs (jaxlib 0.10). A single
  matrix runs inline, so one call per matrix cannot deadlock, and the
  independent calls still run in parallel. GPU and TPU solvers keep the
  batched call.
  """
  def per_matrix(x: jax.Array, **kwargs: Any) -> Any:
    batch = x.shape[:-2]
    if math.prod(batch) <= 1 or jax.default_backend() != 'cpu':
      return fn(x, **kwargs)
    flat = x.reshape(-1, *x.shape[-2:])
    outs = [fn(flat[i], **kwargs) for i in range(flat.shape[0])]
    return jax.tree.map(
        lambda *o: jnp.stack(o).reshape(*batch, *o[0].shape), *outs)
  return per_matrix


svd = per_matrix_on_cpu(jnp.linalg.svd)
qr = per_matrix_on_cpu(jnp.linalg.qr)
