"""The LMO catalogue: linear minimisation oracles of matrix-norm balls.

For a norm with unit ball `B`, `lmo(G) = argmax_{D ∈ B} ⟨G, D⟩` (the ascent
sign: optimizers subtract it), so `⟨G, lmo(G)⟩ = ‖G‖_†`, the dual norm, and
`lmo(G)` is a subgradient of `‖·‖_†` at `G`. Every LMO here acts on a matrix
or a batch of matrices `(..., m, n)` and returns the input's shape and dtype.

| constructor       | lmo(G), G = U Σ Vᵀ   | dual_norm(G)     | norm(X) (ball)    |
|-------------------|----------------------|------------------|-------------------|
| `spectral()`      | `U Vᵀ`               | `Σ σᵢ` (nuclear) | `σ₁`              |
| `ky_fan(k)`       | `U_k V_kᵀ`           | `Σ_{i≤k} σᵢ`     | `max(σ₁, Σσᵢ/k)`  |
| `frobenius()`     | `G / ‖G‖_F`          | `‖G‖_F`          | `‖X‖_F`           |
| `sign(η)`         | `η·sign(G)`          | `η·‖G‖₁`         | `max|Xᵢⱼ| / η`    |
| `mix((α, a), …)`  | `Σ αᵢ lmoᵢ(G)`       | `Σ αᵢ ‖G‖_†ᵢ`    | no closed form    |
| `spectral_fn(h′)` | `U diag(h′(σ)) Vᵀ`   | `𝒦(G) = Σ h(σᵢ)` | when known        |

`spectral_fn` covers any spectral function `𝒦` (the Lion-𝒦 view, where
`∇𝒦` plays the LMO's role): `schatten(p)` and `huber_nuclear(δ)` are built on
it.

Each LMO is a frozen dataclass that validates itself when built (the
constructors below are thin conveniences), so a bad value fails where it is
written, with a message naming the field, the value and the accepted range.

Stateful LMOs (the warm-started Ky Fan subspace iteration) keep their state
outside: `state = lmo.init(shape, dtype)`, then
`direction, state = lmo.update(g, state)`. Stateless ones have the empty
state `None`.

Low-rank LMOs (`low_rank` is true: `ky_fan`, and a `mix` with exactly one
low-rank term) also give the left factor `P` of their direction,
`direction, P, state = lmo.update_with_basis(g, state)`, so that error
feedback (Dion) can remove from the momentum what the step used.

Compressible LMOs (`compressible` is true: `ky_fan`) compute the direction
of the mean of every data-parallel device's input from thin all-reduced
products: `lmo.update(g_i, state, mean=mean)` on each device, with `mean`
the mean over the devices (`fanion_optax.distributed.compressed`).

References:
  A. Kravatskiy, I. Kozyrev, N. Kozlov, A. Vinogradov, D. Merkulov,
  I. Oseledets, *The Ky Fan Norms and Beyond: Dual Norms and Combinations for
  Matrix Optimization*, arXiv:2512.09678.

  L. Chen, B. Liu, K. Liang, Q. Liu, *Lion Secretly Solves Constrained
  Optimization*, arXiv:2310.05898.

  T. Pethick et al., *Training Deep Learning Models with Norm-Constrained
  LMOs* (Scion), arXiv:2502.07529.

Example:
  >>> import jax.numpy as jnp
  >>> from fanion_optax import lmo
  >>> f_muon = lmo.mix((0.5, lmo.spectral(polar_method="svd")),
  ...                  (0.5, lmo.frobenius()))
  >>> g = jnp.array([[3.0, 0.0], [0.0, 4.0]])
  >>> float(f_muon.dual_norm(g))  # 0.5 * nuclear + 0.5 * Frobenius
  6.0
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import cast

import jax
import jax.numpy as jnp

from fanion_optax import _gram
from fanion_optax import _linalg
from fanion_optax import _validate
from fanion_optax import lowrank
from fanion_optax import polar as polar_lib

State = Any
Shape = tuple[int, ...]
TopKMethod = lowrank.TopKMethod
Mean = lowrank.Mean


def _frobenius_norm(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  scaled, exponent = _linalg.power_of_two_scaled(x)
  norm = jnp.sqrt(jnp.sum(jnp.square(scaled), axis=(-2, -1)))
  return _linalg.times_power_of_two(norm, exponent[..., 0, 0])


def _largest(s: jax.Array) -> jax.Array:
  return jnp.max(s, axis=-1, initial=0)


def _check_polar_options(polar_method, polar_steps, compute_dtype, eps, gram):
  polar_lib.coefficient_schedule(polar_method, polar_steps)
  _gram.check_gram(gram)
  if compute_dtype is not None:
    _validate.check_float_dtype('compute_dtype', compute_dtype)
  _validate.check_scalar('eps', eps, low=0.0, schedule=False)


def check_low_rank(lmo: LMO, name: str = 'error_feedback=True') -> None:
  """Raises `ValueError` unless `lmo.low_rank` (`update_with_basis` works).

  Args:
    lmo: the oracle.
    name: what needs a low-rank LMO, named in the message.
  """
  if not lmo.low_rank:
    raise ValueError(
      f'{name} needs a low-rank LMO: ky_fan(k) (Fanion-k, Neon), a mix'
      ' with exactly one low-rank term (F-/S-Fanion-k), or an LMO whose'
      ' low_rank is True and which implements update_with_basis; got'
      f' {lmo!r}. A full-rank direction uses the whole momentum: there is'
      ' nothing to feed back.'
    )


def matrix_cost(shape: Sequence[int]) -> int:
  """Newton–Schulz FLOPs of one iteration on an `(m, n)` matrix.

  `4·a²·b + 2·a³` with `a = min(m, n)`, `b = max(m, n)`: the iteration
  runs in the wide orientation, so `(768, 3072)` and `(3072, 768)` cost
  the same. `LMO.cost` of a polar factor (and the default).
  """
  a, b = sorted(shape[-2:])
  return 4 * a * a * b + 2 * a**3


def check_compressible(lmo: LMO, name: str) -> None:
  """Raises `ValueError` unless `lmo.compressible` (`update` takes `mean`).

  Args:
    lmo: the oracle.
    name: what needs a compressible LMO, named in the message.
  """
  if not lmo.compressible:
    raise ValueError(
      f'{name} needs a compressible LMO, ky_fan(k) (Fanion-k, Neon), whose'
      ' direction comes from thin m×k and n×k products of the mean'
      f' momentum; got {lmo!r}. Full-rank LMOs and mixtures (their'
      ' Frobenius or sign term) need the whole mean matrix: pmean the'
      ' gradients and use fanion_optax.distributed.over_axis(name).'
    )


class LMO(abc.ABC):
  """A linear minimisation oracle over a batch of matrices `(..., m, n)`."""

  stateful: bool = False
  low_rank: bool = False
  """Whether the direction has low rank and `update_with_basis` gives the
  subspace it used (what `error_feedback=True` needs)."""
  compressible: bool = False
  """Whether `update(g, state, mean=mean)` computes the direction of the
  mean over data-parallel devices from all-reduced thin products (what
  `fanion_optax.distributed.compressed` needs)."""
  transposable: bool = False
  """Whether `lmo(gᵀ) = lmo(g)ᵀ` (true of every unitarily invariant or
  entrywise ball): `fanion_optax.distributed.over_mesh` then stacks a tall
  stateless matrix with the wide ones of its transposed shape."""

  @abc.abstractmethod
  def __call__(self, g: jax.typing.ArrayLike) -> jax.Array:
    """The direction `argmax_{‖D‖ ≤ 1} ⟨g, D⟩`, stateless (cold start)."""

  def init(
    self, shape: Shape, dtype: jax.typing.DTypeLike = jnp.float32
  ) -> State:
    """The state for matrices of `shape` `(..., m, n)`; `None` if stateless."""
    del shape, dtype
    return None

  def update(
    self, g: jax.typing.ArrayLike, state: State, *, mean: Mean | None = None
  ) -> tuple[jax.Array, State]:
    """The direction and the next state (warm-started LMOs use `state`).

    With `mean` (the mean over data-parallel devices, each passing its own
    `g`; compressible LMOs only) the direction of the mean `g`, the same on
    every device.

    Raises:
      ValueError: `mean` for an LMO that is not `compressible`.
    """
    if mean is not None:
      check_compressible(self, 'update(mean=...)')
    return self(g), state

  def update_with_basis(
    self, g: jax.typing.ArrayLike, state: State, *, mean: Mean | None = None
  ) -> tuple[jax.Array, jax.Array | None, State]:
    """`update`, with the left factor `P` of the direction.

    `P` is `(..., m, r)` with orthonormal (or zero) columns such that
    `P Pᵀ` projects onto the column space the direction used: error
    feedback keeps the rest of the momentum undamped (Ahn et al.,
    arXiv:2504.05295). `None` means the whole space (`Π = I`), e.g. a Ky
    Fan LMO on a matrix with `min(m, n) <= k`, whose direction is the full
    polar factor.

    Raises:
      ValueError: the LMO is not `low_rank`.
    """
    del g, state, mean
    check_low_rank(self, 'update_with_basis')
    raise NotImplementedError(
      f'{type(self).__name__} sets low_rank = True but does not implement'
      ' update_with_basis.'
    )

  @abc.abstractmethod
  def dual_norm(self, g: jax.typing.ArrayLike) -> jax.Array:
    """`‖g‖_† = ⟨g, lmo(g)⟩` per matrix, shape `g.shape[:-2]`."""

  def norm(self, x: jax.typing.ArrayLike) -> jax.Array:
    """The ball's norm per matrix, where it has a closed form."""
    raise NotImplementedError(
      f'{type(self).__name__} has no closed-form ball norm: the norm whose'
      ' ball is a Minkowski sum of balls is an infimal convolution. Use the'
      ' norms of its terms (or dual_norm) instead.'
    )

  def stacks_on_cpu(self, shape: Sequence[int]) -> bool:
    """Whether `update` on a `(b, m, n)` stack is as fast on the CPU
    backend as `b` calls on its matrices.

    `fanion_optax.distributed.apply_lmo` then hands it a shape's matrices
    in one stack, which it compiles once, rather than each matrix alone
    (XLA:CPU's batched matmul is slower than separate 2-D ones), when there
    are at least `distributed.STACK_ON_CPU_FROM` of them. Default: false.
    """
    del shape
    return False

  def cost(self, shape: Sequence[int]) -> int:
    """FLOPs of one direction of an `(m, n)` matrix, up to a constant.

    What `fanion_optax.distributed.balance` shares out between devices;
    only ratios between shapes matter. Default: `matrix_cost`, the
    Newton–Schulz cost of a polar factor.
    """
    return matrix_cost(shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Spectral(LMO):
  """Spectral-norm ball: `lmo(G) = U Vᵀ`, Muon's direction (`spectral()`).

  A stateless LMO whose dual norm is the nuclear norm.

  References:
    Chen, Li, Liu, arXiv:2506.15054; Jordan et al. (2024).

  Attributes:
    polar_method: `"polar_express"`, `"newton_schulz"`, `"svd"` or
      coefficient rows (see `fanion_optax.polar.polar_factor`).
    polar_steps: iteration count (default 5).
    compute_dtype: arithmetic dtype (default: bfloat16 on GPU/TPU, float32
      on CPU; see `fanion_optax.polar.polar_factor`).
    eps: added to the normaliser.
    gram: Gram Newton–Schulz (`True`, `False` or `"auto"`, see
      `fanion_optax.polar.polar_factor`).
  """

  transposable = True
  polar_method: polar_lib.PolarMethod = 'polar_express'
  polar_steps: int | None = None
  compute_dtype: Any = None
  eps: float = polar_lib.DEFAULT_EPS
  gram: polar_lib.Gram = False

  def __post_init__(self):
    _check_polar_options(
      self.polar_method,
      self.polar_steps,
      self.compute_dtype,
      self.eps,
      self.gram,
    )

  def __call__(self, g):
    return polar_lib.polar_factor(
      g,
      polar_method=self.polar_method,
      polar_steps=self.polar_steps,
      compute_dtype=self.compute_dtype,
      eps=self.eps,
      gram=self.gram,
    )

  def dual_norm(self, g):
    return jnp.sum(_linalg.singular_values(g), axis=-1)

  def norm(self, x):
    return _largest(_linalg.singular_values(x))


@dataclasses.dataclass(frozen=True, eq=False)
class KyFan(LMO):
  """The LMO dual to the Ky Fan-k norm: `U_k V_kᵀ` (`ky_fan(k)`).

  Fanion-k's direction; k=1 is Neon. Its ball is `max(σ₁, Σσᵢ/k) ≤ 1` and
  its dual norm `Σ_{i≤k} σᵢ`. For a matrix with `min(m, n) <= k` it is the
  full polar factor, so that Fanion-k with a large k is Muon.

  It is `low_rank`: `update_with_basis` also returns `P = U_k`, the left
  factor of the direction (for error feedback), and `None` (`Π = I`) where
  the direction is the full polar factor.

  It is `compressible`: `update(g_i, state, mean=mean)` on each
  data-parallel device gives the direction of the mean `Σ g_i / n` from
  all-reduced `m×k` and `n×k` products (`lowrank.subspace_iteration`); a
  matrix with `min(m, n) <= k`, or `top_k_method="svd"`, all-reduces the
  whole matrix instead.

  References:
    Kravatskiy et al., arXiv:2512.09678; Ahn et al., arXiv:2504.05295.

  Attributes:
    k: number of singular pairs, `>= 1`.
    top_k_method: `"subspace"` (warm-started block subspace iteration,
      stateful) or `"svd"` (exact, stateless).
    subspace_iters: subspace iterations per call (default: 10 from the cold
      start — a stateless call, or the first `update` after `init` — then
      2).
    polar_method: polar method for matrices with `min(m, n) <= k` under
      `top_k_method="subspace"`; `"svd"` keeps those exact too.
    polar_steps: polar iteration count.
    compute_dtype: arithmetic dtype (at least float32 for Cholesky-QR/SVD).
    eps: added to the polar normaliser.
    gram: Gram Newton–Schulz for that polar factor (see
      `fanion_optax.polar.polar_factor`).
  """

  k: int = 1
  top_k_method: TopKMethod = 'subspace'
  subspace_iters: int | None = None
  polar_method: polar_lib.PolarMethod = 'polar_express'
  polar_steps: int | None = None
  compute_dtype: Any = None
  eps: float = polar_lib.DEFAULT_EPS
  gram: polar_lib.Gram = False

  low_rank = True
  compressible = True

  def __post_init__(self):
    object.__setattr__(self, 'k', _validate.check_int('k', self.k, minimum=1))
    _validate.check_choice('top_k_method', self.top_k_method, lowrank.METHODS)
    if self.subspace_iters is not None:
      _validate.check_int('subspace_iters', self.subspace_iters, minimum=0)
    _check_polar_options(
      self.polar_method,
      self.polar_steps,
      self.compute_dtype,
      self.eps,
      self.gram,
    )

  @property
  def stateful(self) -> bool:  # type: ignore[override]
    return self.top_k_method == 'subspace'

  @property
  def transposable(self) -> bool:  # type: ignore[override]
    # The subspace iteration starts from one side: only the exact top-k
    # commutes with transposition.
    return self.top_k_method == 'svd'

  def _is_full_rank(self, shape: Sequence[int]) -> bool:
    return self.k >= min(shape[-2], shape[-1])

  def stacks_on_cpu(self, shape):
    # The subspace iteration multiplies each matrix of a stack alone and
    # batches only the thin blocks (`lowrank.per_matrix`).
    return self.top_k_method == 'subspace' and not self._is_full_rank(shape)

  def cost(self, shape):
    if self._is_full_rank(shape) or self.top_k_method == 'svd':
      return matrix_cost(shape)
    # Per warm iteration two thin products (`A Q`, `Aᵀ P`) and Cholesky-QR
    # of the `(m + n) × k` blocks; then the Rayleigh–Ritz product and the
    # direction `P Qᵀ`.
    m, n = shape[-2:]
    iters = (
      lowrank.WARM_ITERS if self.subspace_iters is None else self.subspace_iters
    )
    return (4 * iters + 4) * m * n * self.k + 4 * iters * (m + n) * self.k**2

  def __call__(self, g):
    g = _validate.check_matrix('g', g)
    if self._is_full_rank(g.shape) and self.top_k_method == 'subspace':
      return polar_lib.polar_factor(
        g,
        polar_method=self.polar_method,
        polar_steps=self.polar_steps,
        compute_dtype=self.compute_dtype,
        eps=self.eps,
        gram=self.gram,
      )
    return lowrank.top_k_polar(
      g,
      self.k,
      top_k_method=self.top_k_method,
      subspace_iters=self.subspace_iters,
      compute_dtype=self.compute_dtype,
    )

  def init(self, shape, dtype=jnp.float32):
    shape = tuple(shape)
    if len(shape) < 2:
      raise ValueError(f'shape must have at least 2 axes, got {shape}.')
    if not self.stateful or self._is_full_rank(shape):
      return None
    # Zeros mark the cold start: the first update starts from the fixed
    # random subspace with the cold iteration count (`top_k_polar`).
    k = lowrank.effective_rank(shape, self.k)
    return jnp.zeros((*shape[:-2], shape[-1], k), jnp.float32)

  def update(self, g, state, *, mean=None):
    direction, _, state = self.update_with_basis(g, state, mean=mean)
    return direction, state

  def update_with_basis(self, g, state, *, mean=None):
    g = _validate.check_matrix('g', g)
    if self._is_full_rank(g.shape):
      # The full polar factor uses the whole matrix: `Π = I`.
      if mean is not None:
        wide = jnp.promote_types(g.dtype, jnp.float32)
        g = mean(g.astype(wide)).astype(g.dtype)
      return self(g), None, state
    direction, basis, subspace = lowrank.top_k_polar_with_basis(
      g,
      self.k,
      top_k_method=self.top_k_method,
      subspace_iters=self.subspace_iters,
      state=state if self.stateful else None,
      compute_dtype=self.compute_dtype,
      mean=mean,
    )
    if not self.stateful:
      return direction, basis, state
    subspace = cast(jax.Array, subspace)  # None only for an empty g
    # A zero or non-finite input carries no information about the subspace:
    # keep the previous one rather than a QR of zeros (or NaN) for the next
    # warm start. The basis is zero exactly when every Ritz value is (it is
    # the same on every device with `mean`, where no device sees the mean
    # input), and a non-finite input makes the subspace NaN: an `m×k` test
    # in place of two passes over `g`.
    informative = jnp.all(
      jnp.isfinite(subspace), axis=(-2, -1), keepdims=True
    ) & jnp.any(basis != 0, axis=(-2, -1), keepdims=True)
    return direction, basis, jnp.where(informative, subspace, state)

  def dual_norm(self, g):
    return jnp.sum(_linalg.singular_values(g)[..., : self.k], axis=-1)

  def norm(self, x):
    s = _linalg.singular_values(x)
    return jnp.maximum(_largest(s), jnp.sum(s, axis=-1) / self.k)


@dataclasses.dataclass(frozen=True, eq=False)
class Frobenius(LMO):
  """Frobenius ball: `lmo(G) = G / ‖G‖_F` (normalised SGD, `frobenius()`).

  Zero maps to zero.
  """

  transposable = True

  def __call__(self, g):
    g = _validate.check_matrix('g', g)
    x = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    return _linalg.frobenius_normalized(x).astype(g.dtype)

  def dual_norm(self, g):
    return _frobenius_norm(_validate.check_matrix('g', g))

  def norm(self, x):
    return _frobenius_norm(_validate.check_matrix('x', x))

  def cost(self, shape):
    return 2 * shape[-2] * shape[-1]


@dataclasses.dataclass(frozen=True, eq=False)
class Sign(LMO):
  """Scaled ℓ∞ ball `max|Xᵢⱼ| ≤ η`: `lmo(G) = η·sign(G)` (`sign(η)`).

  signSGD; Lion is Lion-𝒦 with this LMO (Chen, Liu, Liang, Liu,
  arXiv:2310.05898). Its dual norm is `η·‖G‖₁`.

  Attributes:
    scale: the radius η > 0, finite (a 0-d array is accepted, e.g. under
      `optax.inject_hyperparams`).
  """

  transposable = True
  scale: jax.typing.ArrayLike = 1.0

  def __post_init__(self):
    _validate.check_scalar(
      'scale', self.scale, low=0.0, low_inclusive=False, schedule=False
    )

  def __call__(self, g):
    g = _validate.check_matrix('g', g)
    wide = jnp.promote_types(g.dtype, jnp.float32)
    direction = cast(jax.Array, self.scale * jnp.sign(g).astype(wide))
    return direction.astype(g.dtype)

  def dual_norm(self, g):
    g = _validate.check_matrix('g', g)
    g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    return cast(jax.Array, self.scale * jnp.sum(jnp.abs(g), axis=(-2, -1)))

  def norm(self, x):
    x = _validate.check_matrix('x', x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.max(jnp.abs(x), axis=(-2, -1), initial=0) / self.scale

  def cost(self, shape):
    return shape[-2] * shape[-1]


@dataclasses.dataclass(frozen=True, eq=False)
class Mixture(LMO):
  """Minkowski sum of balls `Σ αᵢ·Bᵢ`: `lmo(G) = Σ αᵢ lmoᵢ(G)`.

  Attributes:
    terms: `(weight, lmo)` pairs; weights are finite scalars `>= 0`.
    allow_extrapolation: accept negative weights (the result is then no
      longer the LMO of a ball, e.g. F-Muon with α > 1).
  """

  terms: tuple[tuple[jax.typing.ArrayLike, LMO], ...] = ()
  allow_extrapolation: bool = False

  def __post_init__(self):
    _validate.check_bool('allow_extrapolation', self.allow_extrapolation)
    if not isinstance(self.terms, (tuple, list)) or not self.terms:
      raise ValueError(
        f'terms must hold at least one (weight, lmo) pair, got {self.terms!r}.'
      )
    for i, term in enumerate(self.terms):
      if not (
        isinstance(term, tuple) and len(term) == 2 and isinstance(term[1], LMO)
      ):
        raise TypeError(
          f'terms[{i}] must be a (weight, LMO) pair, got {term!r}.'
        )
      _validate.check_scalar(
        f'terms[{i}] weight',
        term[0],
        schedule=False,
        low=None if self.allow_extrapolation else 0.0,
      )
    object.__setattr__(self, 'terms', tuple(self.terms))

  @property
  def stateful(self) -> bool:  # type: ignore[override]
    return any(term.stateful for _, term in self.terms)

  @property
  def transposable(self) -> bool:  # type: ignore[override]
    return all(term.transposable for _, term in self.terms)

  @property
  def low_rank(self) -> bool:  # type: ignore[override]
    # With two low-rank terms the step uses two subspaces: no single `P`.
    return sum(bool(term.low_rank) for _, term in self.terms) == 1

  def stacks_on_cpu(self, shape):
    return all(term.stacks_on_cpu(shape) for _, term in self.terms)

  def cost(self, shape):
    return sum(term.cost(shape) for _, term in self.terms)

  def _combine(self, g, directions):
    wide = jnp.promote_types(g.dtype, jnp.float32)
    acc = cast(
      jax.Array,
      sum(
        weight * d.astype(wide)
        for (weight, _), d in zip(self.terms, directions)
      ),
    )
    return acc.astype(g.dtype)

  def __call__(self, g):
    g = _validate.check_matrix('g', g)
    return self._combine(g, [term(g) for _, term in self.terms])

  def init(self, shape, dtype=jnp.float32):
    return tuple(term.init(shape, dtype) for _, term in self.terms)

  def update(self, g, state, *, mean=None):
    if mean is not None:
      check_compressible(self, 'update(mean=...)')
    g = _validate.check_matrix('g', g)
    outputs = [term.update(g, s) for (_, term), s in zip(self.terms, state)]
    return (
      self._combine(g, [d for d, _ in outputs]),
      tuple(s for _, s in outputs),
    )

  def update_with_basis(self, g, state, *, mean=None):
    """`update`, with the left factor of its one low-rank term.

    What the step "used" is that term's subspace (the Ky Fan term of
    F-/S-Fanion-k); the full-rank terms are a small correction spread over
    every direction and are not fed back.
    """
    check_low_rank(self, 'update_with_basis')
    if mean is not None:
      check_compressible(self, 'update_with_basis(mean=...)')
    g = _validate.check_matrix('g', g)
    directions, states, basis = [], [], None
    for (_, term), s in zip(self.terms, state):
      if term.low_rank:
        d, basis, s = term.update_with_basis(g, s)
      else:
        d, s = term.update(g, s)
      directions.append(d)
      states.append(s)
    return self._combine(g, directions), basis, tuple(states)

  def dual_norm(self, g):
    return cast(
      jax.Array, sum(weight * term.dual_norm(g) for weight, term in self.terms)
    )


@dataclasses.dataclass(frozen=True, eq=False)
class SpectralFunction(LMO):
  """`∇𝒦(G) = U diag(h′(σ)) Vᵀ` for a spectral function 𝒦. See `spectral_fn`.

  Attributes:
    h_prime: maps singular values `(..., r)` (descending) to weights.
    value: optional `σ -> 𝒦`, so that `dual_norm` returns `𝒦(G)`.
    ball_norm: optional `σ -> ‖X‖`, the norm of the ball (`𝒦*`'s domain).
    name: shown in errors and reprs.
    homogeneous: `h_prime(c·σ) = h_prime(σ)` for `c > 0` (Schatten): it is
      then given the singular values of `G / max|G|`, which cannot
      overflow; otherwise the true ones (infinite past the dtype's range).
  """

  transposable = True
  h_prime: Callable[[jax.Array], jax.Array] = jnp.ones_like
  value: Callable[[jax.Array], jax.Array] | None = None
  ball_norm: Callable[[jax.Array], jax.Array] | None = None
  name: str = 'spectral_fn'
  homogeneous: bool = False

  def __post_init__(self):
    if not callable(self.h_prime):
      raise TypeError(f'h_prime must be callable, got {self.h_prime!r}.')
    for field in ('value', 'ball_norm'):
      fn = getattr(self, field)
      if fn is not None and not callable(fn):
        raise TypeError(f'{field} must be callable or None, got {fn!r}.')

  def __call__(self, g):
    g = _validate.check_matrix('g', g)
    if _linalg.is_empty(g):
      return g
    x = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    # The SVD of G itself overflows for entries near the dtype's maximum.
    scaled, exponent = _linalg.power_of_two_scaled(x)
    u, s, vh = _linalg.svd(scaled, full_matrices=False)
    keep = _linalg.singular_value_mask(s, x.shape)
    sigma = (
      s if self.homogeneous else _linalg.times_power_of_two(s, exponent[..., 0])
    )
    weights = jnp.where(keep, self.h_prime(sigma), 0.0).astype(x.dtype)
    return ((u * weights[..., None, :]) @ vh).astype(g.dtype)

  def dual_norm(self, g):
    if self.value is None:
      raise NotImplementedError(
        f'{self.name}: pass h= to spectral_fn to evaluate 𝒦(g).'
      )
    return self.value(_linalg.singular_values(g))

  def norm(self, x):
    if self.ball_norm is None:
      return super().norm(x)
    return self.ball_norm(_linalg.singular_values(x))


# The constructors are the classes: each validates itself when built.
spectral = Spectral
ky_fan = KyFan
frobenius = Frobenius
sign = Sign


def mix(
  *terms: tuple[jax.typing.ArrayLike, LMO], allow_extrapolation: bool = False
) -> Mixture:
  """The conic mixture `Σ αᵢ·lmoᵢ`: the LMO of the Minkowski sum `Σ αᵢ Bᵢ`.

  F-Muon is `mix((α, spectral()), (1 − α, frobenius()))`, S-Muon
  `mix((α, spectral()), (1 − α, sign(η)))`; the Fanion variants replace
  `spectral()` by `ky_fan(k)`.

  Args:
    *terms: `(weight, lmo)` pairs with finite weights `>= 0`.
    allow_extrapolation: accept negative weights.

  Returns:
    An `LMO` whose dual norm is `Σ αᵢ ‖·‖_†ᵢ` and whose state is the tuple of
    its terms' states.

  References:
    Kravatskiy et al., arXiv:2512.09678.
  """
  return Mixture(terms=terms, allow_extrapolation=allow_extrapolation)


def spectral_fn(
  h_prime: Callable[[jax.Array], jax.Array],
  *,
  h: Callable[[jax.Array], jax.Array] | None = None,
  name: str = 'spectral_fn',
) -> SpectralFunction:
  """`∇𝒦` for a spectral function `𝒦(X) = Σ h(σᵢ)`, via an SVD.

  `∇𝒦(G) = U diag(h′(σ)) Vᵀ`; directions of zero singular values are
  undetermined and get weight 0. Lion-𝒦 with this `∇𝒦` minimises
  `f(X) + 𝒦*(λX)/λ`.

  Args:
    h_prime: maps the singular values `(..., r)` (descending) to the weights
      `(..., r)`; an elementwise `h′` works as is.
    h: optional elementwise `h`, so that `dual_norm(G)` returns `𝒦(G)`.
    name: shown in errors and reprs.

  Returns:
    A stateless `LMO`.

  References:
    Chen, Liu, Liang, Liu, arXiv:2310.05898.
  """
  if h is not None and not callable(h):
    raise TypeError(f'h must be callable or None, got {h!r}.')
  value = None if h is None else (lambda s: jnp.sum(h(s), axis=-1))
  return SpectralFunction(h_prime=h_prime, value=value, name=name)


def schatten(p: float) -> SpectralFunction:
  """`∇‖·‖_{S_p}`: the LMO of the Schatten-q ball, `1/p + 1/q = 1`.

  `lmo(G) = U diag((σ/‖σ‖_p)^{p−1}) Vᵀ`; `p = 1` is the polar factor
  (spectral ball), `p = 2` is `G/‖G‖_F`, and `p → ∞` tends to Neon.

  Args:
    p: finite, `>= 1` (`p = ∞` is Neon: use `ky_fan(1)`).

  Returns:
    A stateless `LMO`: `dual_norm` is `‖G‖_{S_p}`, `norm` is `‖X‖_{S_q}`.
  """
  _validate.check_scalar('p', p, low=1.0, schedule=False)
  p = float(p)

  def p_norm(s):
    return _lp_norm(s, p)

  def h_prime(s):
    ratios, _ = _peak_ratios(s)
    norm = jnp.sum(ratios**p, axis=-1, keepdims=True) ** (1.0 / p)
    return (ratios / norm) ** (p - 1.0)

  def q_norm(s):
    return _largest(s) if p == 1.0 else _lp_norm(s, p / (p - 1.0))

  return SpectralFunction(
    h_prime=h_prime,
    value=p_norm,
    ball_norm=q_norm,
    name=f'schatten(p={p})',
    homogeneous=True,
  )


def _peak_ratios(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(s / max(s), max(s))` over the last axis, the ratio exactly 1 at peaks.

  XLA may divide by multiplying with a rounded reciprocal; a peak ratio one
  ulp below 1 raised to a large power `p` would lose `p` ulps.
  """
  peak = jnp.max(s, axis=-1, keepdims=True, initial=0)
  ratios = jnp.where(s >= peak, 1.0, s / jnp.where(peak > 0, peak, 1.0))
  return ratios, peak[..., 0]


def _lp_norm(s: jax.Array, p: float) -> jax.Array:
  """`‖s‖_p` over the last axis, scaled by the peak so it cannot overflow."""
  ratios, peak = _peak_ratios(s)
  return peak * jnp.sum(ratios**p, axis=-1) ** (1.0 / p)


def huber_nuclear(delta: float) -> SpectralFunction:
  """The Huber-smoothed nuclear norm: `h′(σ) = min(σ/δ, 1)`.

  `h(σ) = σ²/(2δ)` for `σ <= δ`, else `σ − δ/2`. Unlike an LMO its output
  is not scale-invariant: singular values below δ are damped. `norm` is `σ₁`
  (the domain of `𝒦*` is the spectral ball).

  Args:
    delta: smoothing width δ > 0, finite.

  Returns:
    A stateless `LMO`-like oracle for Lion-𝒦.
  """
  _validate.check_scalar(
    'delta', delta, low=0.0, low_inclusive=False, schedule=False
  )

  def h(s):
    return jnp.where(s <= delta, s * s / (2 * delta), s - delta / 2)

  return SpectralFunction(
    h_prime=lambda s: jnp.minimum(s / delta, 1.0),
    value=lambda s: jnp.sum(h(s), axis=-1),
    ball_norm=_largest,
    name=f'huber_nuclear(delta={delta})',
  )
