"""Numerical helpers shared by the kernels: safe scaling, masks, CPU solvers."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fanion_optax import _validate

HALF_PRECISION_BACKENDS = ('gpu', 'cuda', 'rocm', 'tpu')
"""Backends whose default polar arithmetic is bfloat16 (`compute_dtype_of`)."""


def compute_dtype_of(dtype: Any, compute_dtype: Any) -> jnp.dtype:
  """The dtype to compute in: `compute_dtype`, else the platform's default.

  The default is bfloat16 operands on GPU and TPU, float32 on CPU, and
  float64 for float64 inputs. In bf16 the matmuls still accumulate in
  float32 (`matmul`), which keeps the LMO gap within 2% of float32's
  (`benchmarks/gram.py`), and training quality measured the same (the
  charlm and CNN benchmarks' bf16 rows); bf16 is what Jordan's, torch's,
  Dion's and levanter's Muon run on accelerators, at twice the matmul
  throughput. XLA:CPU has no fast bf16 matmul, so CPU keeps float32. The
  platform is `jax.default_backend()` when the function is traced.
  """
  if compute_dtype is not None:
    return _validate.check_float_dtype('compute_dtype', compute_dtype)
  wide = jnp.promote_types(dtype, jnp.float32)
  if wide == jnp.float32 and jax.default_backend() in HALF_PRECISION_BACKENDS:
    return jnp.dtype(jnp.bfloat16)
  return wide


def max_abs_scaled(x: jax.Array) -> jax.Array:
  """`x` over a power of two near `max|x|` per matrix; zero stays zero.

  Scaling by the largest entry first keeps the later Frobenius norm finite
  for entries up to the dtype's maximum, so every LMO stays homogeneous of
  degree 0. The scale is an exact power of two `2^e` (`frexp` of the peak),
  applied in two halves: the result is bitwise the same for `x` and
  `2^j·x`, and neither factor leaves the normal range (`x / peak` is
  compiled as `x * (1 / peak)`, and for a float32 peak above ~8.5e37 that
  reciprocal is subnormal and flushes to zero). Entries end in
  `[0.5, 1)·max|x|/peak`; subnormal peaks, which XLA treats as zero, stay.
  """
  return power_of_two_scaled(x)[0]


def power_of_two_scaled(
  x: jax.Array, mean: Callable[[jax.Array], jax.Array] | None = None
) -> tuple[jax.Array, jax.Array]:
  """`(max_abs_scaled(x), e)`: `x == ldexp(result, e)` per matrix, exactly.

  `e` has shape `x.shape[:-2] + (1, 1)`; `times_power_of_two` undoes the
  scaling of a value computed from the result (a norm, say). With `mean`
  (the mean over data-parallel devices) `e` comes from the mean of the
  devices' peaks: every device's `x` is scaled by the same power of two,
  which keeps products linear in `x` across devices (a per-device peak
  would not), and the mean peak bounds the mean matrix's entries.
  """
  peak = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True, initial=0)
  if mean is not None:
    peak = mean(peak)
  exponent = peak_exponent(peak)
  scaled = times_power_of_two(x, -exponent)
  # A matrix holding Inf or NaN becomes all NaN: LAPACK's SVD can loop
  # forever on Inf, and no direction is meaningful there.
  return jnp.where(jnp.isfinite(peak), scaled, jnp.nan), exponent


_UNSIGNED = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _float_layout(dtype: Any) -> tuple[Any, int, int]:
  """(unsigned type of the same width, mantissa bits, exponent bias)."""
  info = jnp.finfo(dtype)
  return _UNSIGNED[jnp.dtype(dtype).itemsize], info.nmant, info.maxexp - 1


def peak_exponent(peak: jax.Array) -> jax.Array:
  """`e` with `peak = f·2^e`, `f ∈ [0.5, 1)` (`frexp`'s exponent), as int32.

  Read from the exponent bits: `jnp.frexp` also handles subnormals, which
  costs a few dozen HLO ops per matrix (each matrix's program carries its
  own copy). Zero, subnormal and non-finite peaks get `e = 1`, the exponent
  of 1, so they are left as they are.
  """
  usable = (peak >= jnp.finfo(peak.dtype).tiny) & jnp.isfinite(peak)
  unsigned, mantissa_bits, bias = _float_layout(peak.dtype)
  bits = jax.lax.bitcast_convert_type(peak, unsigned) >> mantissa_bits
  return jnp.where(usable, bits.astype(jnp.int32) - (bias - 1), 1)


def _power_of_two(exponent: jax.Array, dtype: Any) -> jax.Array:
  """`2^exponent` in `dtype`, built from its bits: 0 below the normal range
  and Inf above it (as `ldexp` gives, subnormals flushed)."""
  unsigned, mantissa_bits, bias = _float_layout(dtype)
  biased = jnp.clip(exponent + bias, 0, 2 * bias + 1).astype(unsigned)
  return jax.lax.bitcast_convert_type(biased << mantissa_bits, dtype)


def times_power_of_two(x: jax.Array, exponent: jax.Array) -> jax.Array:
  """`x·2^exponent`, in two halves so that no factor leaves the normal range.

  Each half is an exact power-of-two factor made once per matrix from its
  bits and multiplied in: XLA:CPU's elementwise `ldexp` costs about 4x a
  multiply, which made the pre-scaling ~10% of a Newton–Schulz polar
  factor.
  """
  half = exponent >> 1  # floor(exponent / 2), in one op
  return (
    x * _power_of_two(half, x.dtype) * _power_of_two(exponent - half, x.dtype)
  )


def frobenius_normalized(
  x: jax.Array, *, safety: float = 1.0, eps: float = 0.0
) -> jax.Array:
  """`x / (safety·‖x‖_F + eps·max|x|)` per matrix, computed without overflow.

  That is `y / (safety·‖y‖_F + eps)` for `y = x / max|x|`: `eps` is relative
  to the largest entry, so the result is homogeneous of degree 0.
  """
  y = max_abs_scaled(x)
  ratio = jnp.max(jnp.abs(y), axis=(-2, -1), keepdims=True, initial=0)
  norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=(-2, -1), keepdims=True))
  denom = safety * norm + eps * ratio
  return y / jnp.where(denom > 0, denom, jnp.ones_like(denom))


def swap_last(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def singular_value_mask(s: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Marks the singular values that are numerically nonzero.

  Singular vectors of zero singular values are arbitrary; an LMO must give
  them weight 0 (as Newton–Schulz does), so that a zero or rank-deficient
  input yields a zero or low-rank direction rather than noise.
  """
  tol = (
    jnp.max(s, axis=-1, keepdims=True, initial=0)
    * max(shape[-2:])
    * jnp.finfo(s.dtype).eps
  )
  return s > tol


def one_matrix_at_a_time(x: jax.Array) -> bool:
  """Whether the kernels take the `(..., m, n)` batch `x` matrix by matrix:
  on the CPU backend, for more than one matrix."""
  return math.prod(x.shape[:-2]) > 1 and jax.default_backend() == 'cpu'


def per_matrix_on_cpu(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` of `(..., m, n)`, run one matrix at a time on the CPU backend.

  jaxlib's CPU LAPACK kernels (QR, SVD) split a batch over XLA's intra-op
  thread pool and block a pool thread while they wait. When as many batched
  calls run at once as the pool has threads (one per device under `pmap` or
  `shard_map` on emulated CPU devices, or independent shape groups of one
  program), every thread waits and the program hangs (jaxlib 0.10). A single
  matrix runs inline, so a loop over the matrices (`lax.map`) cannot
  deadlock, and its one call keeps the program the size of a single
  matrix's. GPU and TPU solvers keep the batched call.
  """

  def per_matrix(x: jax.Array, **kwargs: Any) -> Any:
    if not one_matrix_at_a_time(x):
      return fn(x, **kwargs)
    batch = x.shape[:-2]
    outs = jax.lax.map(
      functools.partial(fn, **kwargs), x.reshape(-1, *x.shape[-2:])
    )
    return jax.tree.map(lambda o: o.reshape(*batch, *o.shape[1:]), outs)

  return per_matrix


svd = per_matrix_on_cpu(jnp.linalg.svd)
qr = per_matrix_on_cpu(jnp.linalg.qr)
_cholesky = per_matrix_on_cpu(
  # The Gram is symmetric by construction and LAPACK reads one triangle.
  functools.partial(jax.lax.linalg.cholesky, symmetrize_input=False)
)


def _lower_inverse(lower: jax.Array) -> jax.Array:
  """`L⁻¹` of `(..., k, k)` lower-triangular matrices, with matmuls only.

  Block doubling: if `D` holds the inverses of `L`'s diagonal blocks of
  size `b` (zero elsewhere), the inverses of its blocks of size `2b` are
  `D − D·M·D`, where `M` is `L` restricted to the lower off-diagonal `b×b`
  block inside each `2b` block (`[[A, 0], [C, B]]⁻¹ = [[A⁻¹, 0], [−B⁻¹ C
  A⁻¹, B⁻¹]]`). Starting from `1/diag(L)`, `⌈log₂ k⌉` doublings give
  `L⁻¹` (the last blocks may be partial, which the formula allows), with
  the rounding of a blocked triangular inverse. LAPACK's `trsm` would do
  it in `k³` flops instead of `~4k³·log₂ k`, but on a loaded CPU its
  OpenBLAS threads made each `k×k` call 4.4x slower (a warm Fanion step
  on GPT-2 small makes ~600 of them).
  """
  k = lower.shape[-1]
  rows = jax.lax.broadcasted_iota(jnp.int32, (k, k), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (k, k), 1)
  diagonal = rows == cols  # a mask, not a gather of the diagonal
  inverse = jnp.where(diagonal, 1 / jnp.where(diagonal, lower, 1), 0)

  def double(level, inverse):
    block_row, block_col = rows >> level, cols >> level
    # The lower `b×b` block of each `2b×2b` block, `b = 2^level`.
    off = (block_row == (block_col ^ 1)) & ((block_row & 1) == 1)
    m = jnp.where(off, lower, 0)
    highest = jax.lax.Precision.HIGHEST
    return inverse - matmul(
      inverse, matmul(m, inverse, lower.dtype, highest), lower.dtype, highest
    )

  return jax.lax.fori_loop(0, (k - 1).bit_length(), double, inverse)


_CHOLESKY_QR_PASSES = 3
_ORTHONORMAL_TOL = 0.5
"""`‖QᵀQ − I‖_F` of the last pass's input above which `orthonormalize`
falls back to Householder QR: below it `κ(Q) < √3`, and one Cholesky-QR
pass then leaves `Q` orthonormal to a few units of rounding."""


def _cholesky_qr_pass(
  x: jax.Array, shift: jax.Array | float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(x R⁻¹, R, xᵀx)` with `RᵀR = xᵀx + shift·I`, `R` upper triangular."""
  highest = jax.lax.Precision.HIGHEST
  gram = matmul(swap_last(x), x, x.dtype, highest)
  eye = jnp.eye(x.shape[-1], dtype=x.dtype)
  lower = _cholesky(gram + shift * eye)
  q = matmul(x, swap_last(_lower_inverse(lower)), x.dtype, highest)
  return q, swap_last(lower), gram


def orthonormalize(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(q, r)` with `x = q r`: a thin QR of `(..., n, k)` blocks, `k ≤ n`.

  Shifted Cholesky-QR, three passes (Fukaya et al., *Shifted Cholesky QR
  for computing the QR factorization of ill-conditioned matrices*, SIAM J.
  Sci. Comput. 42, 2020): each pass is a `k×k` Gram product, a `k×k`
  Cholesky and a product with the inverse factor, so the `n×k` work is
  matmuls (fast on accelerators, partitioned without gathering when `x` is
  sharded along `n`) and LAPACK only sees `k×k`. The first pass adds
  `(n·k + k(k+1))·ε·‖x‖_F²` to the Gram's diagonal so that its Cholesky
  exists for any full-rank `x` up to `κ(x) ≈ 1/ε`; it keeps the span, and
  the two unshifted passes restore orthonormality. Whenever that fails —
  `x` numerically rank-deficient (a zero matrix, a gradient of rank < k) or
  non-finite — that block takes Householder QR instead (`qr`), whose `q`
  has orthonormal columns even then. `r`'s diagonal is positive on the
  Cholesky path; either way `q r = x`.
  """
  n, k = x.shape[-2:]
  eps = jnp.finfo(x.dtype).eps
  norm2 = jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)
  shift = (n * k + k * (k + 1)) * eps * norm2

  # One loop body for the three passes: a third of the program to compile.
  # The shift rides in the carry and is zero after the first pass.
  def one_pass(_, carry):
    q, r, _, shift = carry
    q, r_next, gram = _cholesky_qr_pass(q, shift)
    r = matmul(r_next, r, x.dtype, jax.lax.Precision.HIGHEST)
    return q, r, gram, jnp.zeros_like(shift)

  # `+ zeros_like(norm2)` types the carry like `x` (varying over the axes
  # `x` varies over inside a checked `shard_map`), as the loop requires.
  eye = jnp.eye(k, dtype=x.dtype) + jnp.zeros_like(norm2)
  q, r, gram, _ = jax.lax.fori_loop(
    0, _CHOLESKY_QR_PASSES, one_pass, (x, eye, eye, shift)
  )
  # ‖QᵀQ − I‖_F ≤ tol bounds the spectral norm too, so the last pass's
  # Cholesky succeeded; an entrywise bound does not (64×64 Grams within 0.5
  # of I entrywise can be indefinite, and their Cholesky returns NaN). False
  # for a NaN error too: a non-finite `x` makes the Gram non-finite.
  error = jnp.sum(jnp.square(gram - eye), axis=(-2, -1), keepdims=True)
  ok = error <= _ORTHONORMAL_TOL**2

  def householder(x):
    # Only the blocks that failed: the others keep their Cholesky-QR
    # factors, bit for bit, whatever their neighbours in the batch hold.
    q_h, r_h = qr(x)
    return jnp.where(ok, q, q_h), jnp.where(ok, r, r_h)

  return jax.lax.cond(jnp.all(ok), lambda x: (q, r), householder, x)


def singular_values(x: jax.typing.ArrayLike) -> jax.Array:
  """`(..., min(m, n))` singular values, descending, at least float32."""
  x = _validate.check_matrix('x', x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if x.size == 0:
    return jnp.zeros((*x.shape[:-2], min(x.shape[-2:])), x.dtype)
  return svd(x, compute_uv=False)


def is_empty(x: Any) -> bool:
  """True for a `(..., m, n)` shape or array with no entries."""
  shape = getattr(x, 'shape', x)
  return math.prod(shape) == 0


def accumulation_dtype(dtype: Any) -> jnp.dtype:
  """The dtype products accumulate in: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def matmul(
  a: jax.Array, b: jax.Array, out: Any, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
  """`a @ b` on the operands' dtype, accumulated and returned in `out`.

  bf16/f16 operands keep the accelerators' half-precision matmul speed
  while the sum is not rounded term by term (`preferred_element_type`).
  """
  return jnp.matmul(a, b, precision=precision, preferred_element_type=out)
