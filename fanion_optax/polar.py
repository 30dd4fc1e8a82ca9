"""Polar-factor kernels: approximate `U Vᵀ` of a matrix `G = U Σ Vᵀ`.

The polar factor is the linear minimisation oracle of the spectral-norm ball
(the direction Muon follows). It is computed by odd-polynomial Newton–Schulz
iterations on the wide orientation of the matrix, or exactly by an SVD.

References:
  K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks*
  (2024) — the quintic iteration (3.4445, −4.7750, 2.0315).

  N. Amsel, D. Persson, C. Musco, R. Gower, *The Polar Express: Optimal Matrix
  Sign Methods and Their Application to the Muon Algorithm*,
  arXiv:2505.16932 — the optimal per-step coefficients.

  L. Chen, J. Li, Q. Liu, *Muon Optimizes Under Spectral Norm Constraints*,
  arXiv:2506.15054.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from fanion_optax import _gram
from fanion_optax import _linalg
from fanion_optax import _validate

CoefficientRows = tuple[tuple[float, float, float], ...]
Gram = _gram.Gram
"""`polar_factor`'s `gram=`: `True`, `False` or `"auto"` (Gram Newton–Schulz)."""

PolarMethod = (
  Literal['newton_schulz', 'polar_express', 'svd'] | Sequence[Sequence[float]]
)

JORDAN_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Jordan's quintic: fast, not convergent (singular values end in ~[0.7, 1.2])."""

POLAR_EXPRESS_COEFFICIENTS: CoefficientRows = (
  (8.28721201814563, -23.595886519098837, 17.300387312530933),
  (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
  (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
  (3.3184196573706015, -2.488488024314874, 0.51004894012372),
  (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
  (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
  (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
  (1.875, -1.25, 0.375),
)
"""Polar Express optimal coefficients (Amsel et al.), before the safety factor."""

POLAR_EXPRESS_SAFETY = 1.01
DEFAULT_STEPS = 5
DEFAULT_EPS = 1e-7
METHODS = ('newton_schulz', 'polar_express', 'svd')


def _polar_express_rows() -> CoefficientRows:
  # Every row but the table's last is damped so that rounding cannot push a
  # singular value past the region where the polynomials map it towards 1.
  s = POLAR_EXPRESS_SAFETY
  damped = tuple(
    (a / s, b / s**3, c / s**5) for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:-1]
  )
  return damped + POLAR_EXPRESS_COEFFICIENTS[-1:]


def coefficient_schedule(
  polar_method: PolarMethod = 'polar_express',
  polar_steps: int | None = None,
) -> tuple[CoefficientRows | None, float]:
  """Resolves a polar method into coefficient rows and a normalisation safety.

  Args:
    polar_method: `"newton_schulz"`, `"polar_express"`, `"svd"`, or a
      sequence of finite `(a, b, c)` rows, one per step.
    polar_steps: number of steps; `None` takes 5 for the named iterations
      and every row of an explicit sequence.

  Returns:
    `(rows, safety)`: the rows to apply in order (`None` for `"svd"`) and the
    factor the Frobenius norm is multiplied by before the first step.

  Raises:
    ValueError: for an unknown method, non-finite rows, `polar_steps < 1`,
      or more steps than the table (8 for Polar Express) or the explicit
      sequence has.
  """
  if polar_steps is not None:
    polar_steps = _validate.check_int('polar_steps', polar_steps, minimum=1)
  unknown = (
    f'polar_method must be one of {METHODS} or a sequence of'
    f' (a, b, c) rows, got {polar_method!r}.'
  )
  if isinstance(polar_method, str):
    if polar_method == 'svd':
      return None, 1.0
    if polar_method == 'newton_schulz':
      return (JORDAN_COEFFICIENTS,) * (polar_steps or DEFAULT_STEPS), 1.0
    if polar_method == 'polar_express':
      rows = _polar_express_rows()
      polar_steps = polar_steps or DEFAULT_STEPS
      if polar_steps > len(rows):
        raise ValueError(
          f'polar_steps must be in [1, {len(rows)}] for'
          f' polar_method="polar_express", got {polar_steps}.'
        )
      return rows[:polar_steps], POLAR_EXPRESS_SAFETY
    raise ValueError(unknown)
  try:
    rows = tuple(tuple(float(c) for c in row) for row in polar_method)
  except (TypeError, ValueError):
    raise ValueError(unknown) from None
  if not rows or any(len(row) != 3 for row in rows):
    raise ValueError(
      'polar_method given as coefficient rows must be a non-empty sequence'
      f' of (a, b, c) triples, got {polar_method!r}.'
    )
  if not np.all(np.isfinite(rows)):
    raise ValueError(
      'polar_method given as coefficient rows must hold finite numbers,'
      f' got {polar_method!r}.'
    )
  polar_steps = polar_steps or len(rows)
  if polar_steps > len(rows):
    raise ValueError(
      f'polar_steps must be in [1, {len(rows)}] for the {len(rows)}'
      f' coefficient rows given, got {polar_steps}.'
    )
  return cast(CoefficientRows, rows[:polar_steps]), 1.0  # rows of 3


def newton_schulz_iterate(x: jax.Array, rows: CoefficientRows) -> jax.Array:
  """Applies `X ← a·X + (b·A + c·A²)·X`, `A = X Xᵀ`, once per row.

  Products accumulate in at least float32: `A`, `A²` and `B = b·A + c·A²`
  stay in float32, `B` is rounded once to `x.dtype` as the operand of `B X`
  and the new `X` is rounded once per step. For float32 and float64 this is
  plain arithmetic in that dtype; for bf16 it is what torch does (a bf16 run
  that rounded every operation lost 10-15% of the float32 LMO gap on
  64×96 matrices; this one stays within 1-2%: `benchmarks/gram.py`).

  Args:
    x: `(..., m, n)` with `m <= n`, already scaled so that `σ₁(x) <= 1`.
    rows: `(a, b, c)` per step.

  Returns:
    The iterate, same shape and dtype as `x`.
  """
  acc = _linalg.accumulation_dtype(x.dtype)
  for a, b, c in rows:
    gram = _linalg.matmul(x, _linalg.swap_last(x), acc)
    poly = b * gram + c * _linalg.matmul(gram, gram, acc)
    step = _linalg.matmul(poly.astype(x.dtype), x, acc)
    x = (a * x.astype(acc) + step).astype(x.dtype)
  return x


def _svd_polar(x: jax.Array) -> jax.Array:
  u, s, vh = _linalg.svd(x, full_matrices=False)
  keep = _linalg.singular_value_mask(s, x.shape).astype(x.dtype)
  return (u * keep[..., None, :]) @ vh


def polar_factor(
  g: jax.typing.ArrayLike,
  *,
  polar_method: PolarMethod = 'polar_express',
  polar_steps: int | None = None,
  compute_dtype: jax.typing.DTypeLike | None = None,
  eps: float = DEFAULT_EPS,
  gram: Gram = False,
) -> jax.Array:
  """Approximate polar factor `U Vᵀ` of `g = U Σ Vᵀ`.

  The input is divided by its largest entry and then by `safety·‖g‖_F + eps`,
  which puts every singular value in (0, 1]; wide orientation is used so the
  Gram matrix is the small side (tall inputs are transposed and back).
  Singular values that are exactly zero map to zero, so `polar_factor(0) =
  0`, and an empty matrix maps to itself.

  Args:
    g: `(..., m, n)`: a matrix or a batch of matrices over leading axes.
    polar_method: `"polar_express"` (Amsel et al., up to 8 steps),
      `"newton_schulz"` (Jordan's quintic), `"svd"` (exact), or a sequence
      of `(a, b, c)` rows.
    polar_steps: iteration count (default 5 for the named iterations).
    compute_dtype: dtype of the arithmetic; default bfloat16 operands on
      GPU/TPU (products accumulate in float32) and float32 on CPU; float64
      inputs stay float64 (see `docs/math.md`, "What is rounded where").
    eps: added to the normaliser, finite and >= 0.
    gram: run the iteration on the m×m Gram matrix of the wide orientation
      and apply the accumulated polynomial once (Gram Newton–Schulz, with
      restarts; the same iterate to ~1e-4 in float32, 0.56x the FLOPs at
      aspect 1:4 and 0.39x at 1:8 without restarts): `True`, `False`, or
      `"auto"` where it saves FLOPs (aspect above 1.5 in float32, above
      2.25 for half-precision compute). Ignored by `"svd"`. The default
      stays `False` until it is checked on GPU/TPU, where float32 matmuls
      may run at TF32/bf16 precision and the m×m recursion amplifies that.

  Returns:
    An array of `g`'s shape and dtype.

  References:
    Jordan et al. (2024); Amsel et al., arXiv:2505.16932; Zhang, Amsel,
    Chen, Dao, *Gram Newton-Schulz* (2026),
    https://dao-lab.ai/blog/2026/gram-newton-schulz/.

  Example:
    >>> import jax.numpy as jnp
    >>> from fanion_optax import polar_factor
    >>> o = polar_factor(jnp.array([[3.0, 0.0], [0.0, 0.5]]),
    ...                  polar_method="svd")
    >>> o.round(4).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  rows, safety = coefficient_schedule(polar_method, polar_steps)
  _validate.check_scalar('eps', eps, low=0.0, schedule=False)
  gram = _gram.check_gram(gram)
  g = _validate.check_matrix('g', g)
  dtype = _linalg.compute_dtype_of(g.dtype, compute_dtype)
  if _linalg.is_empty(g):
    return g
  x = g.astype(dtype)
  if rows is None:
    # LAPACK/cuSOLVER have no half-precision SVD.
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    return _svd_polar(_linalg.max_abs_scaled(x)).astype(g.dtype)
  shape = x.shape
  if math.prod(shape[:-2]) == 1:
    # XLA:CPU runs a batch of one matmul ~1.5x slower than the 2-D product.
    x = x.reshape(shape[-2:])
  tall = x.shape[-2] > x.shape[-1]
  if tall:
    x = _linalg.swap_last(x)
  x = _linalg.frobenius_normalized(x, safety=safety, eps=eps)
  if _gram.use_gram(gram, x.shape, x.dtype, rows):
    x = _gram.gram_newton_schulz_iterate(x, rows)
  else:
    x = newton_schulz_iterate(x, rows)
  if tall:
    x = _linalg.swap_last(x)
  return x.reshape(shape).astype(g.dtype)


def lmo_gap(g: jax.typing.ArrayLike, o: jax.typing.ArrayLike) -> jax.Array:
  """The spectral LMO gap `1 − ⟨G, O⟩ / (‖G‖_* · σ₁(O))`.

  Zero for the exact polar factor; the fraction of the steepest-descent value
  (the nuclear norm) that an approximate direction `O` loses once rescaled
  into the spectral ball. Computed in float64 when enabled, else float32.

  Args:
    g: `(..., m, n)` the input matrix.
    o: `(..., m, n)` the approximate direction.

  Returns:
    `(...)` the gap per matrix.
  """
  g = _validate.check_matrix('g', g)
  o = _validate.check_matrix('o', o)
  if g.shape != o.shape:
    raise ValueError(
      f'g and o must have the same shape, got {g.shape} and {o.shape}.'
    )
  dtype = jnp.promote_types(jnp.promote_types(g.dtype, o.dtype), jnp.float32)
  g, o = g.astype(dtype), o.astype(dtype)
  nuclear = jnp.sum(_linalg.singular_values(g), axis=-1)
  sigma1 = jnp.max(_linalg.singular_values(o), axis=-1, initial=0)
  inner = jnp.sum(g * o, axis=(-2, -1))
  return 1.0 - inner / (nuclear * sigma1)


def singular_value_bound(
  polar_method: PolarMethod = 'polar_express', polar_steps: int | None = None
) -> float:
  """The largest singular value `polar_factor` can output for this schedule.

  Newton–Schulz-type iterations act on each singular value `x ∈ (0, 1]` of
  the normalised input by the same scalar odd polynomial; this evaluates the
  composed map on a dense grid (linear and logarithmic) and returns its
  maximum: about 1.20 for Jordan's 5 steps, 1.12 for Polar Express at 5
  steps, 1 for `"svd"`. With weight decay λ the implicit ball of Muon is
  widened by this factor.

  Args:
    polar_method: as in `polar_factor`.
    polar_steps: as in `polar_factor`.

  Returns:
    The bound (a Python float, at least 1).
  """
  rows, safety = coefficient_schedule(polar_method, polar_steps)
  if rows is None:
    return 1.0
  x = (
    np.unique(
      np.concatenate(
        [np.linspace(0.0, 1.0, 200_001), np.geomspace(1e-9, 1.0, 20_001)]
      )
    )
    / safety
  )
  for a, b, c in rows:
    x = a * x + b * x**3 + c * x**5
  return max(1.0, float(np.max(np.abs(x))))
