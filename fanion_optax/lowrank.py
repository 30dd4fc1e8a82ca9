"""Top-k singular subspaces and the Ky Fan-k LMO direction `U_k V_kᵀ`.

For `k ≪ min(m, n)` the direction `U_k V_kᵀ` costs `O(m·n·k)` by block
subspace iteration with a Rayleigh–Ritz step, warm-started from the previous
step's right subspace (the idea behind Dion): the optimizer's momentum drifts
slowly, so one or two multiplications per step keep the subspace converged.

References:
  K. Ahn et al., *Dion: Distributed Orthonormalized Updates*, arXiv:2504.05295.

  A. Kravatskiy et al., *The Ky Fan Norms and Beyond: Dual Norms and
  Combinations for Matrix Optimization*, arXiv:2512.09678.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal
from typing import overload

import jax
import jax.numpy as jnp

from fanion_optax import _linalg
from fanion_optax import _validate

TopKMethod = Literal['subspace', 'svd']
Mean = Callable[[jax.Array], jax.Array]
"""The mean over data-parallel devices (`jax.lax.pmean` over an axis)."""
METHODS = ('subspace', 'svd')
WARM_ITERS = 2
COLD_ITERS = 10
_COLD_START_SEED = 0x9E3779B9


def effective_rank(shape: tuple[int, ...], k: int) -> int:
  """`min(k, m, n)` for a `(..., m, n)` shape."""
  return min(k, shape[-2], shape[-1])


def initial_subspace(
  shape: tuple[int, ...], k: int, dtype: jax.typing.DTypeLike = jnp.float32
) -> jax.Array:
  """A fixed random orthonormal right subspace, the cold start.

  Args:
    shape: `(..., m, n)`, the shape of the matrices.
    k: subspace dimension (clipped to `min(m, n)`).
    dtype: the dtype of the subspace (at least float32 is used).

  Returns:
    `(..., n, min(k, m, n))` with orthonormal columns, identical for every
    matrix of the batch and on every platform (the orthonormalised
    `_hashed_uniform` matrix).
  """
  return _cold_start(shape, effective_rank(shape, k), dtype, 0)


def _hashed_uniform(shape: tuple[int, int], dtype: jnp.dtype) -> jax.Array:
  """Uniform entries in `[-1, 1)` from a hash of their index.

  MurmurHash3's 32-bit finaliser of `index + seed`: a dozen integer ops,
  the same on every platform and sharding, where `jax.random` would add a
  Threefry implementation (a third of a Ky Fan update's HLO) to the step
  of every matrix.
  """
  index = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(shape[1])
  x = index + jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
  x = x + jnp.uint32(_COLD_START_SEED)
  for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
    x = (x ^ (x >> shift)) * jnp.uint32(factor)
  x = x ^ (x >> 16)
  # The top 24 bits, exactly representable in float32.
  return (x >> 8).astype(dtype) * (2.0**-23) - 1.0


def _cold_start(
  shape: tuple[int, ...],
  k: int,
  dtype: jax.typing.DTypeLike,
  iters: int | jax.Array,
) -> jax.Array:
  """`initial_subspace`, orthonormalised only where that matters.

  A power step keeps only the span of its input, so with at least one
  iteration the hashed matrix itself starts the same iteration (up to
  rounding) without a Cholesky-QR in every step's program; a static 0
  iterations uses the start as the Ritz basis, which must be orthonormal.
  """
  n = shape[-1]
  start = _hashed_uniform((n, k), jnp.promote_types(dtype, jnp.float32))
  if isinstance(iters, int) and iters == 0:
    start, _ = _linalg.orthonormalize(start)
  return jnp.broadcast_to(start, (*shape[:-2], n, k))


def top_k_svd(g: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact top-k singular triplets via a full SVD.

  Args:
    g: `(..., m, n)`.
    k: number of pairs (`<= min(m, n)`).

  Returns:
    `(u, s, v)`: `(..., m, k)`, `(..., k)`, `(..., n, k)`, descending `s`.
  """
  u, s, vh = _linalg.svd(g, full_matrices=False)
  return u[..., :k], s[..., :k], _linalg.swap_last(vh[..., :k, :])


def _reduced(mean: Mean | None, x: jax.Array) -> jax.Array:
  return x if mean is None else mean(x)


def _thin_svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The thin SVD `(u, s, vh)` of `(..., n, k)` blocks through a `k×k` one.

  `x = Q T` (`_linalg.orthonormalize`) and `T = A Σ Bᵀ` give `x = (Q A) Σ
  Bᵀ`: LAPACK only sees `T`.
  """
  q, t = _linalg.orthonormalize(x)
  a, s, bh = _linalg.svd(t)
  return q @ a, s, bh


Matrices = jax.Array | tuple[jax.Array, ...]
"""A batch of `(m, n)` matrices as the subspace iteration multiplies them:
one `(..., m, n)` array, or a tuple of 2-D matrices (`per_matrix`)."""


def per_matrix(x: jax.Array) -> Matrices:
  """`x`, as a tuple of its 2-D matrices on the CPU backend.

  XLA:CPU multiplies `b` separate 2-D matrices faster than one `(b, m, n)`
  batch, while the thin `(b, ·, k)` work stays batched: the program then
  holds one copy of the Cholesky-QR and Rayleigh–Ritz steps per shape
  rather than per matrix (compile time), and XLA folds the slices of a
  stack built by concatenating matrices back into those matrices.
  """
  if not _linalg.one_matrix_at_a_time(x):
    return x
  flat = x.reshape(-1, *x.shape[-2:])
  return tuple(flat[i] for i in range(flat.shape[0]))


def _map(fn: Callable[[jax.Array], jax.Array], x: Matrices) -> Matrices:
  return tuple(map(fn, x)) if isinstance(x, tuple) else fn(x)


def times(x: Matrices, y: jax.Array, *, transpose: bool = False) -> jax.Array:
  """`x @ y` (`xᵀ @ y` with `transpose`) for `y` of `(b, ·, ·)` blocks."""
  if not isinstance(x, tuple):
    return (_linalg.swap_last(x) if transpose else x) @ y
  flat = y.reshape(-1, *y.shape[-2:])
  return jnp.stack(
    [(xi.T if transpose else xi) @ yi for xi, yi in zip(x, flat)]
  ).reshape(*y.shape[:-2], -1, y.shape[-1])


def _power_step(
  mean: Mean | None,
  _,
  carry: tuple[Matrices, jax.Array, jax.Array, jax.Array],
) -> tuple[Matrices, jax.Array, jax.Array, jax.Array]:
  g, q, _, _ = carry
  p, _ = _linalg.orthonormalize(_reduced(mean, times(g, q)))
  q, t = _linalg.orthonormalize(_reduced(mean, times(g, p, transpose=True)))
  return g, q, p, t


# Module level (not a closure over `g`): eagerly, `fori_loop` then finds its
# traced body in JAX's cache instead of compiling it on every call.
_local_power_step = functools.partial(_power_step, None)


def subspace_iteration(
  g: Matrices,
  q: jax.Array,
  subspace_iters: int | jax.Array,
  *,
  mean: Mean | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Block power iteration `P = orth(G Q)`, `Q = orth(Gᵀ P)`, then Rayleigh–Ritz.

  Each iteration orthonormalises both thin blocks, so each has condition
  number `σ₁/σ_k` of `G` restricted to the subspace, not its square (as
  `orth(Gᵀ G Q)` would), within reach of Cholesky-QR
  (`_linalg.orthonormalize`: matmuls, and LAPACK on `k×k` only). The last
  iteration's `Gᵀ` product is the Rayleigh–Ritz step: with `R = Gᵀ P = Q T`
  and the `k×k` SVD `T = A Σ Bᵀ`, the Ritz triplets of `Pᵀ G` are
  `(P B, Σ, Q A)`. So `t` iterations cost `2t` products with `G` and, with
  `mean`, all-reduce `t` blocks of `m×k` and `t` of `n×k`: one power step
  per optimizer step (warm) is the thin-factor traffic of Dion,
  `(m + n)·k` numbers per matrix. At convergence `P B (Q A)ᵀ = U_k V_kᵀ`
  exactly: `P` spans the top-k left subspace, and for any orthonormal
  basis `P = U_k W` the Ritz factors undo `W`.

  With `mean`, `G` is the mean of the devices' `g` (each device passes its
  own) and only thin products cross devices: `mean(g Q)` and `mean(gᵀ P)`.
  Every device then holds the same `(u, s, v)`.

  Args:
    g: `(..., m, n)`, or its matrices as `per_matrix` gives them.
    q: `(..., n, k)` starting right subspace, the same on every device;
      only its span matters, except with a static 0 iterations, which needs
      orthonormal columns.
    subspace_iters: number of `Gᵀ G` multiplications. A traced count must be
      at least 1 (one loop body serves every count); a static 0 keeps `q`
      and takes the Ritz triplets of `G Q`.
    mean: `None` (one device), or the mean over the data-parallel devices
      (`functools.partial(jax.lax.pmean, axis_name=...)`).

  Returns:
    `(u, s, v)` Ritz triplets `(..., m, k)`, `(..., k)`, `(..., n, k)`,
    descending `s`.

  References:
    Ahn et al., arXiv:2504.05295 (Dion: one power step per optimizer step,
    all-reducing the thin factors).
  """
  if isinstance(subspace_iters, int) and subspace_iters == 0:
    u, s, wh = _thin_svd(_reduced(mean, times(g, q)))
    return u, s, q @ _linalg.swap_last(wh)
  body = (
    _local_power_step if mean is None else functools.partial(_power_step, mean)
  )
  first = g[0] if isinstance(g, tuple) else g
  # Zeros typed like the loop's outputs (inside a checked `shard_map`,
  # varying over the axes `g @ q` varies over; replicated after a `mean`),
  # as the loop requires; the body overwrites them.
  corner = (
    q[..., :1, :1] if mean is not None else first[..., :1, :1] * q[..., :1, :1]
  )
  corner = jnp.zeros_like(corner)
  p = corner + jnp.zeros((first.shape[-2], q.shape[-1]), q.dtype)
  t = corner + jnp.zeros((q.shape[-1],) * 2, q.dtype)
  _, q, p, t = jax.lax.fori_loop(0, subspace_iters, body, (g, q, p, t))
  a, s, bh = _linalg.svd(t)
  return p @ _linalg.swap_last(bh), s, q @ a


@overload
def top_k_polar(
  g: jax.typing.ArrayLike,
  k: int,
  *,
  top_k_method: TopKMethod = ...,
  subspace_iters: int | None = ...,
  state: jax.Array | None = ...,
  return_state: Literal[False] = ...,
  compute_dtype: jax.typing.DTypeLike | None = ...,
) -> jax.Array: ...


@overload
def top_k_polar(
  g: jax.typing.ArrayLike,
  k: int,
  *,
  top_k_method: TopKMethod = ...,
  subspace_iters: int | None = ...,
  state: jax.Array | None = ...,
  return_state: Literal[True],
  compute_dtype: jax.typing.DTypeLike | None = ...,
) -> tuple[jax.Array, jax.Array | None]: ...


@overload
def top_k_polar(
  g: jax.typing.ArrayLike,
  k: int,
  *,
  top_k_method: TopKMethod = ...,
  subspace_iters: int | None = ...,
  state: jax.Array | None = ...,
  return_state: bool,
  compute_dtype: jax.typing.DTypeLike | None = ...,
) -> jax.Array | tuple[jax.Array, jax.Array | None]: ...


def top_k_polar(
  g: jax.typing.ArrayLike,
  k: int,
  *,
  top_k_method: TopKMethod = 'subspace',
  subspace_iters: int | None = None,
  state: jax.Array | None = None,
  return_state: bool = False,
  compute_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array | None]:
  """`U_k V_kᵀ`: the top-k singular pairs of `g`, each with weight 1.

  This is the LMO of the ball `max(σ₁, Σσᵢ/k) ≤ 1`, dual to the Ky Fan-k norm
  `Σ_{i≤k} σᵢ`. Singular values that are zero get weight 0. When
  `k >= min(m, n)` the result is the exact polar factor `U Vᵀ`.

  Args:
    g: `(..., m, n)`: a matrix or a batch over leading axes.
    k: number of singular pairs, `>= 1`.
    top_k_method: `"subspace"` (warm-startable block subspace iteration,
      `O(mnk)` per iteration) or `"svd"` (exact).
    subspace_iters: subspace iterations; default 2 when `state` is given
      (warm), 10 from the cold start (no state, or a zero state for any
      matrix of the batch). Ignored by `"svd"`.
    state: `(..., n, min(k, m, n))` right subspace from a previous call
      (`return_state=True`); `None`, or zeros for a matrix, starts from a
      fixed random subspace (cold).
    return_state: also return the new right subspace (`V_k`, in float32).
    compute_dtype: dtype of the arithmetic (at least float32; the Cholesky
      and SVD steps have no half-precision kernels).

  Returns:
    The direction, of `g`'s shape and dtype, and with `return_state=True`
    the pair `(direction, new_state)` (for an empty `g`, `state` as given).

  Raises:
    ValueError: `k < 1`, an unknown `top_k_method`, or a state of the wrong
      shape.

  References:
    Ahn et al., arXiv:2504.05295; Kravatskiy et al., arXiv:2512.09678.

  Example:
    >>> import jax.numpy as jnp
    >>> from fanion_optax import top_k_polar
    >>> g = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
    >>> top_k_polar(g, 2, top_k_method="svd").tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
  """
  direction, _, new_state = top_k_polar_with_basis(
    g,
    k,
    top_k_method=top_k_method,
    subspace_iters=subspace_iters,
    state=state,
    compute_dtype=compute_dtype,
  )
  return (direction, new_state) if return_state else direction


def top_k_polar_with_basis(
  g: jax.typing.ArrayLike,
  k: int,
  *,
  top_k_method: TopKMethod = 'subspace',
  subspace_iters: int | None = None,
  state: jax.Array | None = None,
  compute_dtype: jax.typing.DTypeLike | None = None,
  mean: Mean | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """`top_k_polar`, with the left factor of the direction and the new state.

  The direction is `P Vᵀ` with `P = U_k` (`m×k`, orthonormal columns): `P Pᵀ`
  projects onto the column space the step used, which is what error feedback
  (Dion) removes from the momentum. It comes from the same SVD or Ritz step
  as the direction, so it costs nothing more than `top_k_polar`.

  Args:
    g: `(..., m, n)`.
    k: number of singular pairs, `>= 1`.
    top_k_method: `"subspace"` or `"svd"` (see `top_k_polar`).
    subspace_iters: subspace iterations (see `top_k_polar`).
    state: the right subspace from a previous call, or `None`.
    compute_dtype: dtype of the arithmetic (at least float32).
    mean: `None` (one device), or the mean over data-parallel devices
      (`jax.lax.pmean` over an axis) when each device passes its own `g`:
      the result is then that of the mean `g`, the same on every device,
      computed from all-reduced `m×k` and `n×k` products only (see
      `subspace_iteration`), plus one scalar per matrix (the shared scale).
      `"svd"` and `k >= min(m, n)` need the whole matrix: they all-reduce
      `g` itself.

  Returns:
    `(direction, basis, new_state)`: the direction of `top_k_polar`; the
    left factor `(..., m, min(k, m, n))` in the compute dtype, with the
    column of every singular value the direction gives weight 0 set to
    zero (so `basis @ basisᵀ` is the projector onto the direction's column
    space); and the new right subspace `(..., n, min(k, m, n))` in float32
    (for an empty `g`, `state` as given).

  References:
    Ahn et al., arXiv:2504.05295.

  Example:
    >>> import jax.numpy as jnp
    >>> from fanion_optax import lowrank
    >>> g = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
    >>> _, basis, _ = lowrank.top_k_polar_with_basis(g, 1, top_k_method="svd")
    >>> abs(basis).tolist()
    [[1.0], [0.0], [0.0]]
  """
  k = _validate.check_int('k', k, minimum=1)
  _validate.check_choice('top_k_method', top_k_method, METHODS)
  iters = subspace_iters
  if iters is not None:
    iters = _validate.check_int('subspace_iters', iters, minimum=0)
  g = _validate.check_matrix('g', g)
  dtype = jnp.promote_types(
    _linalg.compute_dtype_of(g.dtype, compute_dtype), jnp.float32
  )
  if _linalg.is_empty(g):
    m = g.shape[-2]
    basis = jnp.zeros((*g.shape[:-2], m, effective_rank(g.shape, k)), dtype)
    return g, basis, state
  k = effective_rank(g.shape, k)
  exact = top_k_method == 'svd' or k == min(g.shape[-2:])
  x = g.astype(dtype)
  if mean is not None and exact:
    x, mean = mean(x), None
  if exact:
    u, s, v = top_k_svd(_linalg.max_abs_scaled(x), k)
  else:
    # With `mean`, one power of two for every device (see
    # `_linalg.power_of_two_scaled`).
    matrices = _map(
      lambda x: _linalg.power_of_two_scaled(x, mean)[0],
      x if mean is not None else per_matrix(x),
    )
    if state is None:
      iters = COLD_ITERS if iters is None else iters
      q = _cold_start(x.shape, k, dtype, iters)
    else:
      expected = (*x.shape[:-2], x.shape[-1], k)
      if tuple(state.shape) != expected:
        raise ValueError(
          f'state must have shape {expected} for g of shape {g.shape} and'
          f' k={k}, got {tuple(state.shape)}.'
        )
      # A zero state (`KyFan.init`, or no informative step yet) is the cold
      # start, matrix by matrix; the count is decided at run time, so one
      # loop body serves the cold first step and the warm ones.
      cold = jnp.all(state == 0, axis=(-2, -1), keepdims=True)
      if iters is None:
        iters = jnp.where(jnp.any(cold), COLD_ITERS, WARM_ITERS)
      start = _cold_start(x.shape, k, dtype, iters)
      q = jnp.where(cold, start, state.astype(dtype))
    u, s, v = subspace_iteration(matrices, q, iters, mean=mean)
  keep = _linalg.singular_value_mask(s, x.shape).astype(dtype)
  basis = u * keep[..., None, :]
  direction = times(per_matrix(basis), _linalg.swap_last(v))
  return direction.astype(g.dtype), basis, v.astype(jnp.float32)
