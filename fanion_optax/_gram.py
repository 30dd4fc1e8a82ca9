"""Gram Newton–Schulz: the polar iteration run on the small Gram matrix.

Every odd-quintic Newton–Schulz step on a wide `X` (m <= n) is
`X ← h(R)·X` with `R = X Xᵀ` and `h(R) = aI + bR + cR²`, so every iterate
is `X_t = Q_t X₀` for an m×m matrix `Q_t`. The Gram form keeps `R` and `Q`
(both m×m) and applies `Q` to `X₀` once, at the end:

```
R ← X₀ X₀ᵀ ;  Q ← I
per step:  H = aI + bR + cR² ;  Q ← H Q ;  R ← H (R H)
result:    X = Q X₀
```

A step costs four m×m products (8m³ FLOPs) instead of `4m²n + 2m³`; the
first step of a run needs no `H Q` and the last no new `R`. At aspect ratio
1:4 five steps cost ~0.56x the standard iteration, at 1:8 ~0.39x; below
n/m = 1.5 the standard iteration is cheaper (`gram_saves_flops`).

Restarting. In floating point `R` and `Q` accumulate rounding that the
standard iteration never sees: `Q` grows like the product of the steps'
slopes at zero (`|a|`, ~8 for Polar Express's first step), so errors of
`Q` reach the large singular directions of the output amplified by that
growth (float32, condition-1e3 spectrum, without restart: 2e-4 for five
Jordan steps, 5e-4 to 1e-3 for five Polar Express steps, 2e-3 to 4e-3 for
eight, relative to the standard iterate). A restart forms `X = Q X₀`,
recomputes `R = X Xᵀ`, resets `Q = I` and carries on from there;
`restart_steps` places restarts so that no run grows `Q` by more than
`RESTART_GROWTH` (one restart for five Jordan or Polar Express steps, two
for eight), which keeps the float32 result within 8e-5 of the standard
iterate (measured up to 1024×8192 on condition-1e3 spectra; within 2e-5
for m <= 64 and on Gaussian matrices). Each restart adds two m×n products.
Symmetrising `R` or `Q` after each product measured no gain.

Half precision. Products take `x.dtype` operands and accumulate in
float32 (`preferred_element_type`), so a bf16 input runs its m×n products
at bf16 speed and each m×n result is rounded once. The m×m recursion runs in
float32 (`recursion_dtype`): kept in bf16, Polar Express 5 ends with
2.4-2.6x the float32 LMO gap on condition-1e3 spectra, because the spurious
negative eigenvalues and drift of a rounded `R` are amplified along with
`Q`; in float32 it ends within 0.3% of it. The float32 `Q` is applied to
the bf16 `X₀` as `Q_hi + Q_lo`, two bf16 matrices (one extra m×m by m×n
product per run): rounded once to bf16, `Q`'s growth turns its rounding
into up to 12% more LMO gap. `fanion_optax.polar.newton_schulz_iterate`
is the standard iteration with the same float32 accumulation.

References:
  J. Zhang, N. Amsel, B. Chen, T. Dao, *Gram Newton-Schulz: A Fast,
  Hardware-Aware Newton-Schulz Algorithm for Muon* (2026),
  https://dao-lab.ai/blog/2026/gram-newton-schulz/ (code:
  https://github.com/Dao-AILab/gram-newton-schulz).

  SPEC.md §3.1 (the iteration and its coefficient rows) and §3.4 (the Gram
  form and restarting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from fanion_optax import _linalg

CoefficientRows = Sequence[Sequence[float]]
Gram = bool | Literal['auto']
"""`polar_factor`'s `gram=`: `True`, `False` or `"auto"`."""

RESTART_GROWTH = 50.0
"""Largest growth of `Q` (on any singular value) allowed between restarts.

Measured in float32 on condition-1e3 spectra (64×256): runs growing `Q` by
<= ~40 stay within 3e-5 of the standard iterate, by ~200 (the last six
Polar Express steps) reach 1e-4 to 2e-4, by ~500 (five Jordan steps) 2e-4
and by ~1000 (five Polar Express steps) 5e-4 to 1e-3. 50 restarts five
Jordan steps after the third, five Polar Express steps after the second and
eight after the second and fifth.
"""

_GRID = np.unique(
  np.concatenate([np.linspace(0.0, 1.0, 4001), np.geomspace(1e-9, 1.0, 2001)])
)[1:]


def restart_steps(
  rows: CoefficientRows, max_growth: float = RESTART_GROWTH
) -> tuple[int, ...]:
  """Where the Gram iteration restarts: after how many steps, increasing.

  Within a run the accumulated `Q` maps each singular value `s` of the
  run's first iterate to `f(s)/s`, with `f` the run's composed scalar
  polynomial; that growth amplifies rounding. This walks a grid of `s` in
  (0, 1] through the steps (Polar Express's safety only shrinks it) and
  starts a new run before the step that would lift the largest growth of
  the current run above `max_growth`. For the usual rows the largest growth
  is at `s → 0`, the product of the runs' `|a|`.

  Args:
    rows: `(a, b, c)` per step.
    max_growth: largest growth of `Q` allowed in one run, > 1.

  Returns:
    Step counts `t` in `[1, len(rows) - 1]` after which to restart:
    `()` for Jordan's or Polar Express's first two rows, `(3,)` for five
    Jordan rows, `(2,)` for five Polar Express rows, `(2, 5)` for eight.
  """
  s = _GRID.copy()
  growth = np.ones_like(s)
  restarts = []
  for t, (a, b, c) in enumerate(rows):
    step = np.abs(a + b * s**2 + c * s**4)
    if t > 0 and np.max(growth * step) > max_growth:
      restarts.append(t)
      growth = np.ones_like(s)
    growth = growth * step
    s = np.abs(a * s + b * s**3 + c * s**5)
  return tuple(restarts)


def _check_restarts(
  restart_after: Sequence[int], steps: int
) -> tuple[int, ...]:
  restarts = tuple(int(t) for t in restart_after)
  if any(not 0 < t < steps for t in restarts) or any(
    u <= t for t, u in zip(restarts, restarts[1:])
  ):
    raise ValueError(
      'restart_after must be increasing step counts in [1,'
      f' {steps - 1}] for {steps} steps, got {tuple(restart_after)!r}.'
    )
  return restarts


def _run_transform(
  x: jax.Array,
  rows: CoefficientRows,
  recursion: Any,
  precision: jax.lax.PrecisionLike,
) -> jax.Array:
  """The m×m `Q` with `Q x` the iterate after `rows` (one run, no restart)."""
  acc = _linalg.accumulation_dtype(recursion)
  eye = jnp.eye(x.shape[-2], dtype=acc)
  r = _linalg.matmul(x, _linalg.swap_last(x), acc, precision).astype(recursion)
  q = None
  for i, (a, b, c) in enumerate(rows):
    r_squared = _linalg.matmul(r, r, acc, precision)
    h = (b * r.astype(acc) + c * r_squared + a * eye).astype(recursion)
    # The first H is Q itself. H and R are polynomials in the same matrix,
    # so H R H needs no transposes; H Q (not Q H) keeps the standard
    # iteration's order X ← H X and measured 3-5x less float32 error.
    q = (
      h if q is None else _linalg.matmul(h, q, acc, precision).astype(recursion)
    )
    if i + 1 < len(rows):
      rh = _linalg.matmul(r, h, acc, precision).astype(recursion)
      r = _linalg.matmul(h, rh, acc, precision).astype(recursion)
  assert q is not None  # rows is never empty here
  return q


def _splits(q_dtype: Any, x_dtype: Any) -> bool:
  """Whether `Q` is applied as two `x_dtype` parts (it is more precise)."""
  return jnp.finfo(q_dtype).nmant > jnp.finfo(x_dtype).nmant


def _apply(
  q: jax.Array, x: jax.Array, precision: jax.lax.PrecisionLike
) -> jax.Array:
  """`Q x` rounded once to `x.dtype`, products in `x.dtype` operands."""
  acc = _linalg.accumulation_dtype(x.dtype)
  hi = q.astype(x.dtype)
  out = _linalg.matmul(hi, x, acc, precision)
  if _splits(q.dtype, x.dtype):
    # Q grows up to RESTART_GROWTH on small singular values; one rounding
    # to a half dtype would put that much error on the large ones too.
    lo = (q - hi.astype(q.dtype)).astype(x.dtype)
    out = out + _linalg.matmul(lo, x, acc, precision)
  return out.astype(x.dtype)


def gram_newton_schulz_iterate(
  x: jax.Array,
  rows: CoefficientRows,
  *,
  restart_after: Sequence[int] | None = None,
  recursion_dtype: Any = None,
  precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """`newton_schulz_iterate`'s result, computed on the m×m Gram matrix.

  Applies the same steps `X ← a·X + (b·A + c·A²)·X`, `A = X Xᵀ`, one per
  row, as the accumulated polynomial `X = Q X₀` (see the module docstring),
  restarting from `X = Q X₀` after the steps in `restart_after`.

  Args:
    x: `(..., m, n)`, wide (`m <= n`; tall inputs work but cost more than
      the standard iteration), already scaled so that `σ₁(x) <= 1`.
    rows: `(a, b, c)` per step, non-empty.
    restart_after: increasing step counts in `[1, len(rows) - 1]` after
      which to restart; `None` takes `restart_steps(rows)`, `()` never
      restarts.
    recursion_dtype: dtype of the m×m recursion (`R`, `H`, `Q`); default
      `_linalg.accumulation_dtype(x.dtype)`, i.e. float32 for half-precision `x`.
    precision: `jnp.matmul` precision of every product (`None`: JAX's
      default; on TPU, and on GPU where TF32 is allowed, float32 products
      then round their operands).

  Returns:
    The iterate, same shape and dtype as `x`.

  Raises:
    ValueError: for empty `rows` or bad `restart_after`.
  """
  rows = tuple(tuple(float(v) for v in row) for row in rows)
  if not rows:
    raise ValueError('rows must hold at least one (a, b, c) row.')
  restarts = (
    restart_steps(rows)
    if restart_after is None
    else _check_restarts(restart_after, len(rows))
  )
  recursion = (
    _linalg.accumulation_dtype(x.dtype)
    if recursion_dtype is None
    else jnp.dtype(recursion_dtype)
  )
  bounds = (0, *restarts, len(rows))
  for start, stop in zip(bounds, bounds[1:]):
    q = _run_transform(x, rows[start:stop], recursion, precision)
    x = _apply(q, x, precision)
  return x


def newton_schulz_flops(m: int, n: int, steps: int) -> int:
  """Matmul FLOPs of `steps` standard steps on one m×n matrix."""
  return steps * (4 * m * m * n + 2 * m**3)


def gram_newton_schulz_flops(
  m: int, n: int, steps: int, restarts: int = 0, *, split: bool = False
) -> int:
  """Matmul FLOPs of `gram_newton_schulz_iterate` on one m×n matrix.

  A run of `k` steps costs `4m²n + (8k - 6)m³`: `X Xᵀ` and `Q X` (m×n),
  `R²` every step, `H Q` every step but the first, `R H` and `H (R H)`
  every step but the last. `split` (half-precision `x`, wider recursion)
  adds one `Q X` per run.

  Args:
    m: rows (the small side).
    n: columns.
    steps: number of rows of coefficients, >= 1.
    restarts: number of restarts, in `[0, steps - 1]`.
    split: whether `Q` is applied in two parts.

  Returns:
    The FLOP count (multiply and add counted separately).
  """
  runs = restarts + 1
  per_run = 6 if split else 4
  return runs * per_run * m * m * n + (8 * steps - 6 * runs) * m**3


def gram_saves_flops(
  m: int, n: int, steps: int, restarts: int = 0, *, split: bool = False
) -> bool:
  """Whether the Gram iteration needs fewer matmul FLOPs than the standard.

  Without `split` this is exactly `n > 1.5·m` for any `steps` and
  `restarts < steps`: `4(steps - runs)·m²n` saved against
  `6(steps - runs)·m³` added. With `split` (bf16 input, float32 recursion)
  the crossover is `n/m > (6·steps - 6·runs) / (4·steps - 6·runs)`, 2.25
  for five steps with one restart, and never when `4·steps <= 6·runs`.
  """
  return gram_newton_schulz_flops(
    m, n, steps, restarts, split=split
  ) < newton_schulz_flops(m, n, steps)


def check_gram(gram: Any) -> Gram:
  """Raises `ValueError` unless `gram` is `True`, `False` or `"auto"`."""
  if isinstance(gram, (bool, np.bool_)) or (
    isinstance(gram, str) and gram == 'auto'
  ):
    return gram if isinstance(gram, str) else bool(gram)
  raise ValueError(f"gram must be True, False or 'auto', got {gram!r}.")


def use_gram(
  gram: Gram, shape: tuple[int, ...], dtype: Any, rows: CoefficientRows
) -> bool:
  """Whether `polar_factor` runs the Gram iteration on a wide `shape`.

  `"auto"` takes it exactly where `gram_saves_flops` (decided from the
  static shape and dtype, so it works under `jit`): aspect above 1.5 in
  float32, above `(6·steps - 6·runs) / (4·steps - 6·runs)` for half
  precision (2.25 for five steps), near-square matrices never.
  """
  if gram != 'auto':
    return bool(gram)
  m, n = shape[-2:]
  split = _splits(_linalg.accumulation_dtype(dtype), dtype)
  return gram_saves_flops(
    m, n, len(rows), len(restart_steps(rows)), split=split
  )
