"""Optax transformations: the Lion-𝒦 direction, LMOs, shape scales, decay.

Lion-𝒦 (Chen, Liu, Liang, Liu, arXiv:2310.05898) with a convex `𝒦` whose
gradient `∇𝒦` is an LMO of the package:

    N_t     = b1·M_t + (1 − b1)·g_t
    M_{t+1} = b2·M_t + (1 − b2)·g_t
    X_{t+1} = X_t − ε_t·(s·∇𝒦(N_t) + λ·X_t)

`scale_by_lion_k` produces `∇𝒦(N_t)`, `scale_by_shape` multiplies by `s`,
`add_decayed_weights` adds `λ·X_t` and `optax.scale_by_learning_rate` applies
`−ε_t`. Muon's Nesterov momentum μ is `b1 = μ²`, `b2 = μ`.

References:
  L. Chen, B. Liu, K. Liang, Q. Liu, *Lion Secretly Solves Constrained
  Optimization, As Lyapunov Predicts*, arXiv:2310.05898.

  L. Chen, J. Li, Q. Liu, *Muon Optimizes Under Spectral Norm Constraints*,
  arXiv:2506.15054.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import optax

from fanion_optax import _linalg
from fanion_optax import _validate
from fanion_optax import distributed
from fanion_optax import lmo as lmo_lib
from fanion_optax import partition

ScalarOrSchedule = optax.ScalarOrSchedule


def _value_at(value: ScalarOrSchedule, count: jax.Array) -> Any:
  return value(count) if callable(value) else value


def _check_lmo(lmo: Any, split: distributed.Split) -> None:
  if not isinstance(lmo, lmo_lib.LMO):
    raise TypeError(f'lmo must be a fanion_optax.lmo.LMO, got {lmo!r}.')
  distributed.check_split(split)
  if isinstance(split, distributed.Compressed):
    lmo_lib.check_compressible(lmo, f'split={split!r}')


def _matrix_specs(tree: Any, dimension_numbers: Any, who: str) -> Any:
  """Resolves dimension numbers; every leaf of `tree` must be a matrix."""
  partition.check_float_params(tree, who)
  specs = partition.resolve_dimension_numbers(tree, dimension_numbers)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  for (path, leaf), spec in zip(leaves, treedef.flatten_up_to(specs)):
    if spec is None:
      raise ValueError(
        f'{who}: parameter {partition.path_name(path)!r} of shape'
        f' {jnp.shape(leaf)} has no dimension numbers. Pass'
        ' dimension_numbers=, or use an alias such as fanion_optax.muon that'
        ' routes non-matrix leaves to a fallback optimizer.'
      )
  return specs


def _map_matrices(fn, specs, *trees):
  """`fn(spec, *leaves)` over matrix leaves; `None` leaves stay `None`."""
  return jax.tree.map(
    lambda spec, *xs: None if spec is None else fn(spec, *xs),
    specs,
    *trees,
    is_leaf=lambda x: x is None,
  )


class ScaleByLionKState(NamedTuple):
  """State of `scale_by_lion_k`."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  """Number of updates so far, int32 scalar."""
  mu: optax.Updates
  """The momentum `M`, shaped like the parameters."""
  lmo_state: tuple[Any, ...]
  """Per matrix stack (one per leaf, more for a leaf split into blocks of
  several shapes), in tree order: the LMO's state on the
  `(batch, fan_in, fan_out)` view (`None` for stateless LMOs)."""


class ScaleByLmoState(NamedTuple):
  """State of `scale_by_lmo`: per matrix stack, the LMO's warm-start state."""

  lmo_state: tuple[Any, ...]


def _init_lmo_states(lmo, params, specs):
  """One LMO state per matrix stack, as a flat tuple.

  In tree order, then in each leaf's `DimensionNumbers.stack_shapes` order:
  one entry per leaf unless its dimension numbers split it into blocks of
  several shapes. A flat tuple rather than a parameter-shaped tree: Flax NNX
  wraps whatever sits at a parameter's path in a variable and rebuilds
  tuples inside it as its own `State`, which would break LMOs whose state is
  a tuple (mixtures).
  """
  spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
  return tuple(
    lmo.init(stack_shape, jnp.float32)
    for spec, p in zip(spec_leaves, treedef.flatten_up_to(params))
    if spec is not None
    for stack_shape in spec.stack_shapes(jnp.shape(p))
  )


def _apply_lmo(lmo, specs, directions, states, split):
  """The LMO on every matrix leaf; returns (directions, states).

  Leaves are viewed as `(batch, fan_in, fan_out)` stacks (one per block
  shape, `DimensionNumbers.to_stacks`) and handed to
  `distributed.apply_lmo`, which batches same-shape matrices and splits the
  work across devices as `split` asks; `states` is laid out as
  `_init_lmo_states` lays it out. Explicitly sharded leaves stay sharded
  for a compressible (low-rank) LMO without a split, whose power iteration
  then moves only thin blocks (`distributed.on_shards`); any other LMO
  gets its matrices whole.
  """
  spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
  leaves = treedef.flatten_up_to(directions)
  matrix_ids = [i for i, spec in enumerate(spec_leaves) if spec is not None]
  matrices = [leaves[i] for i in matrix_ids]

  def apply(matrices, states):
    stacks, counts = [], []
    for i, x in zip(matrix_ids, matrices):
      leaf_stacks = spec_leaves[i].to_stacks(x)
      stacks.extend(leaf_stacks)
      counts.append(len(leaf_stacks))
    outs, new_states = distributed.apply_lmo(
      lmo, stacks, list(states), split=split
    )
    merged, offset = [], 0
    for i, x, count in zip(matrix_ids, matrices, counts):
      merged.append(
        spec_leaves[i].from_stacks(outs[offset : offset + count], x.shape)
      )
      offset += count
    return merged, tuple(new_states)

  outs, new_states = distributed.on_shards(
    apply,
    (matrices, tuple(states)),
    (matrices, tuple(states)),
    gather=isinstance(split, (distributed.OverAxis, distributed.Compressed))
    or (split is None and not lmo.compressible),
  )
  merged = [None] * len(leaves)
  for i, out in zip(matrix_ids, outs):
    merged[i] = out
  return treedef.unflatten(merged), new_states


@dataclasses.dataclass(frozen=True, eq=False)
class _Step(lmo_lib.LMO):
  """`lmo` as the pipeline applies it to a stack of matrices.

  `distributed.apply_lmo` runs this in place of the LMO, so the adaptive
  scale and the error-feedback basis are computed per matrix wherever the
  matrix is (its device's share under `split`). With `with_basis` the state
  is `(lmo_state, basis)`: `apply_lmo` keeps a state's structure, so the
  basis slot comes in as a placeholder (`_basis_placeholders`) and goes
  out holding `update_with_basis`'s left factor. Under
  `distributed.compressed` `update` gets `mean`: the direction is that of
  the devices' mean input and `⟨N̄, D⟩ = mean_i ⟨N_i, D⟩` (one scalar per
  matrix crosses devices).
  """

  lmo: lmo_lib.LMO
  adaptive: bool = False
  with_basis: bool = False

  @property
  def compressible(self) -> bool:  # type: ignore[override]
    return self.lmo.compressible

  @property
  def transposable(self) -> bool:  # type: ignore[override]
    return self.lmo.transposable

  def stacks_on_cpu(self, shape):
    return self.lmo.stacks_on_cpu(shape)

  def cost(self, shape):
    return self.lmo.cost(shape)

  def _scale(self, g, direction, mean=None):
    if not self.adaptive:
      return direction
    wide = jnp.promote_types(g.dtype, jnp.float32)
    d = direction.astype(wide)
    dual = jnp.sum(g.astype(wide) * d, axis=(-2, -1), keepdims=True)
    if mean is not None:
      dual = mean(dual)
    return (dual * d).astype(direction.dtype)

  def __call__(self, g):
    return self._scale(g, self.lmo(g))

  def update(self, g, state, *, mean=None):
    # `mean` only reaches compressible LMOs (checked where the optimizer is
    # built): LMOs written against `update(g, state)` keep working.
    extra = {} if mean is None else {'mean': mean}
    if not self.with_basis:
      direction, state = self.lmo.update(g, state, **extra)
      return self._scale(g, direction, mean), state
    direction, basis, lmo_state = self.lmo.update_with_basis(
      g, state[0], **extra
    )
    return self._scale(g, direction, mean), (lmo_state, basis)

  def dual_norm(self, g):
    return self.lmo.dual_norm(g)


def _basis_placeholders(lmo, specs, tree, states):
  """Zeros shaped like each stack's basis (`None` where `Π = I`).

  `tree` holds the LMO's inputs; `states` is laid out as
  `_init_lmo_states` lays it out.
  """
  spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
  stacks = [
    jax.ShapeDtypeStruct(shape, x.dtype)
    for spec, x in zip(spec_leaves, treedef.flatten_up_to(tree))
    if spec is not None
    for shape in spec.stack_shapes(x.shape)
  ]

  def placeholder(stack, state):
    basis = jax.eval_shape(
      lambda g, s: lmo.update_with_basis(g, s)[1], stack, state
    )
    return None if basis is None else jnp.zeros(basis.shape, basis.dtype)

  return tuple(map(placeholder, stacks, states))


def _on_stacks(spec, x, fn, per_stack, *shared):
  """`x` with each `(batch, fan_in, fan_out)` stack replaced by `fn`.

  `fn(stack, item, *shared)` gets the stack's entry of `per_stack` and
  returns the new stack and the new item; returns `(x', items')`. Cutting
  blocks reshapes sharded axes and a projection contracts them, type
  errors under explicit sharding: `distributed.on_shards` runs `fn` with
  the axes Auto (nothing gathered), and the results keep the shardings of
  `x` and `per_stack`.
  """

  def apply(x, per_stack, *shared):
    pairs = [
      fn(stack, item, *shared)
      for stack, item in zip(spec.to_stacks(x), per_stack)
    ]
    new_x = spec.from_stacks([stack for stack, _ in pairs], x.shape)
    return new_x, [item for _, item in pairs]

  per_stack = list(per_stack)
  return distributed.on_shards(apply, (x, per_stack, *shared), (x, per_stack))


def _feed_back(specs, momentum, bases, b2):
  """`Π(E) + (I − Π)(E)/b2` per matrix, with `Π = P Pᵀ` from `bases`."""

  def feed_back(e, basis, b2):
    if basis is None:
      return e, basis
    used = basis @ (_linalg.swap_last(basis) @ e)
    return (used + (e - used) / b2).astype(e.dtype), basis

  spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
  bases = iter(bases)
  merged = []
  for spec, e in zip(spec_leaves, treedef.flatten_up_to(momentum)):
    if spec is None:
      merged.append(e)
      continue
    stacks = [next(bases) for _ in spec.stack_shapes(e.shape)]
    merged.append(_on_stacks(spec, e, feed_back, stacks, b2)[0])
  return treedef.unflatten(merged)


def scale_by_lion_k(
  lmo: lmo_lib.LMO,
  b1: ScalarOrSchedule = 0.9,
  b2: ScalarOrSchedule = 0.99,
  *,
  mu_dtype: jax.typing.DTypeLike | None = None,
  dimension_numbers: partition.DimensionNumbersSpec = None,
  split: distributed.Split = None,
  adaptive: bool = False,
  error_feedback: bool = False,
) -> optax.GradientTransformation:
  """The Lion-𝒦 direction `∇𝒦(b1·M + (1 − b1)·g)`, then `M ← b2·M + (1−b2)·g`.

  **Adaptive scaling** (`adaptive=True`) multiplies each matrix's direction
  `D = lmo(N)` by `⟨N, D⟩`. For an exact LMO that is the dual norm
  `‖N‖_†` (nuclear norm for `spectral`, `Σ_{i≤k} σᵢ` for `ky_fan`, `‖N‖_F`
  for `frobenius`, `η‖N‖₁` for `sign`, `Σ αᵢ‖N‖_†ᵢ` for a mixture), so the
  step is `‖N‖_†·lmo(N)`, the steepest-descent step of the norm (Bernstein
  and Newhouse, arXiv:2409.20325); for an approximate polar factor it is the
  inner product itself, as `optax.contrib.muon(adaptive=True)` computes it.
  Per matrix means per matrix of the `(batch, fan_in, fan_out)` view, and
  per block of a leaf split into blocks.

  **Error feedback** (`error_feedback=True`, low-rank LMOs only) is Dion's
  (Ahn et al., arXiv:2504.05295, Algorithm 1) in this Lion-𝒦 form. With
  `D_t = lmo(N_t) = P_t Q_tᵀ`, where `P_t` (`fan_in × k`, orthonormal
  columns) is the left factor the direction used, `Π_t(X) = P_t P_tᵀ X`, and
  `E_t = b2·M_t + (1 − b2)·g_t` the momentum without feedback:

      M_{t+1} = Π_t(E_t) + (I − Π_t)(E_t) / b2

  The part of the momentum the step used decays as usual; the part it did
  not use keeps its full weight (its decay is undone), so it is applied
  once it grows into the top-k. `b2` therefore also sets how fast the step
  moves on to other directions: a used direction keeps `b2` of its weight
  per step, so a smaller `b2` (Dion's μ) rotates through the spectrum
  sooner. On the char transformer benchmark momentum 0.8 does better than
  0.95 with error feedback (and for Muon too; `benchmarks/charlm.py`). With `Π = I` this is Lion-𝒦. With
  `b1 = b2 = μ` it is Dion's Algorithm 1 with Orth-Dion's `Q = orth(R)`
  exactly: Dion keeps `B = M_D + G`, steps along `P·orth(Bᵀ P)ᵀ` and sets
  `M_D ← B − (1 − μ)·P Pᵀ B`; here `M = (1 − μ)/μ·M_D` at every step, so
  `N = E = (1 − μ)·B` gives the same direction (an LMO ignores a positive
  factor) and, with an exact top-k, `P = U_k(B)`. A mixture (F-/S-Fanion-k)
  uses the `P` of its low-rank term: the step "used" the Ky Fan term's
  subspace, the full-rank term is a small correction. A Ky Fan LMO on a
  matrix with `min(m, n) <= k` gives the full polar factor: `Π = I` there.
  With `b1 ≠ b2` (Nesterov) `P` comes from `N` and is applied to `E`. The
  extra cost is `O(mnk)` per matrix (two products with `P`); it works with
  every `split`, each device computing `P` for its share (under
  `compressed`, every device has the same `P` and feeds back its own
  momentum: no communication).

  Args:
    lmo: the oracle `∇𝒦` (see `fanion_optax.lmo`); warm-started LMO state
      lives in this transformation's state.
    b1: interpolation weight of the direction, in [0, 1] (or a schedule of
      the step count).
    b2: momentum decay, in [0, 1) (or a schedule).
    mu_dtype: dtype of the momentum (default: the parameters' dtype).
    dimension_numbers: how each leaf is read as matrices (see
      `fanion_optax.partition.resolve_dimension_numbers`); every leaf must
      resolve to a matrix.
    split: how to share the LMO work between devices:
      `fanion_optax.distributed.over_axis(name)` inside `pmap`/`shard_map`
      with replicated updates, `over_mesh(mesh, axes)` under sharded `jit`,
      `compressed(name)` inside `pmap`/`shard_map` with local gradients
      (Ky Fan LMOs; the momentum is then per device), or `None` (see
      `fanion_optax.distributed`).
    adaptive: scale each matrix's direction by `⟨N, lmo(N)⟩` (above).
    error_feedback: Dion's error feedback (above). Needs a low-rank LMO
      (`lmo.low_rank`: `ky_fan`, or a `mix` with exactly one low-rank
      term) and `b2 > 0`; a `b2` schedule must stay positive.

  Returns:
    A `GradientTransformation` with `ScaleByLionKState`; its updates have the
    incoming updates' dtypes.

  Raises:
    ValueError: `error_feedback=True` with a full-rank LMO or `b2 = 0`;
      `split=compressed(name)` with an LMO that is not compressible.

  References:
    Chen, Liu, Liang, Liu, arXiv:2310.05898; Ahn et al., arXiv:2504.05295
    (Dion) and arXiv:2605.16341 (Orth-Dion); Bernstein and Newhouse,
    arXiv:2409.20325 (adaptive scaling).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> tx = fo.scale_by_lion_k(fo.lmo.sign(), b1=0.9, b2=0.99)
    >>> params = {"w": jnp.zeros((2, 3))}
    >>> grads = {"w": jnp.array([[1.0, -2.0, 0.0], [3.0, 0.5, -1.0]])}
    >>> updates, state = tx.update(grads, tx.init(params))
    >>> updates["w"].tolist()
    [[1.0, -1.0, 0.0], [1.0, 1.0, -1.0]]
  """
  _check_lmo(lmo, split)
  _validate.check_scalar('b1', b1, low=0.0, high=1.0)
  _validate.check_scalar('b2', b2, low=0.0, high=1.0, high_inclusive=False)
  mu_dtype = (
    None
    if mu_dtype is None
    else _validate.check_float_dtype('mu_dtype', mu_dtype)
  )
  _validate.check_bool('adaptive', adaptive)
  _validate.check_bool('error_feedback', error_feedback)
  if error_feedback:
    lmo_lib.check_low_rank(lmo)
    if not callable(b2) and _validate.is_concrete(b2) and float(b2) == 0:
      raise ValueError(
        'b2 must be in (0, 1) with error_feedback=True (the momentum the'
        f' step did not use is divided by b2), got {b2!r}.'
      )
  step = _Step(lmo, adaptive=adaptive, with_basis=error_feedback)

  def init_fn(params):
    specs = _matrix_specs(params, dimension_numbers, 'scale_by_lion_k')
    mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params)
    return ScaleByLionKState(
      count=jnp.zeros([], jnp.int32),
      mu=mu,
      lmo_state=_init_lmo_states(lmo, params, specs),
    )

  def update_fn(updates, state, params=None):
    del params
    specs = _matrix_specs(updates, dimension_numbers, 'scale_by_lion_k')
    beta1 = _value_at(b1, state.count)
    beta2 = _value_at(b2, state.count)

    def interpolate(beta, m, g):
      m32 = m.astype(jnp.promote_types(m.dtype, jnp.float32))
      g32 = g.astype(jnp.promote_types(g.dtype, jnp.float32))
      return beta * m32 + (1 - beta) * g32

    direction_in = jax.tree.map(
      lambda m, g: interpolate(beta1, m, g), state.mu, updates
    )
    lmo_state = state.lmo_state
    if error_feedback:
      bases = _basis_placeholders(lmo, specs, direction_in, lmo_state)
      lmo_state = tuple(zip(lmo_state, bases))
    directions, lmo_state = _apply_lmo(
      step, specs, direction_in, lmo_state, split
    )
    directions = jax.tree.map(
      lambda d, g: d.astype(g.dtype), directions, updates
    )
    mu = jax.tree.map(lambda m, g: interpolate(beta2, m, g), state.mu, updates)
    if error_feedback:
      mu = _feed_back(specs, mu, [b for _, b in lmo_state], beta2)
      lmo_state = tuple(s for s, _ in lmo_state)
    mu = jax.tree.map(lambda new, m: new.astype(m.dtype), mu, state.mu)
    return directions, ScaleByLionKState(
      count=cast(jax.Array, optax.safe_increment(state.count)),
      mu=mu,
      lmo_state=lmo_state,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_lmo(
  lmo: lmo_lib.LMO,
  *,
  dimension_numbers: partition.DimensionNumbersSpec = None,
  split: distributed.Split = None,
  adaptive: bool = False,
) -> optax.GradientTransformation:
  """Replaces each matrix update `u` by `lmo(u)` (to follow any momentum).

  Args:
    lmo: the oracle; warm-started state lives in this transformation's state.
    dimension_numbers: how each leaf is read as matrices.
    split: how to share the work between devices (see `scale_by_lion_k`).
    adaptive: return `⟨u, lmo(u)⟩·lmo(u)` per matrix, `‖u‖_†·lmo(u)` for an
      exact LMO (see `scale_by_lion_k`).

  Returns:
    A `GradientTransformation` with `ScaleByLmoState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> tx = optax.chain(optax.trace(0.9), fo.scale_by_lmo(fo.lmo.frobenius()))
    >>> params = {"w": jnp.zeros((1, 2))}
    >>> updates, _ = tx.update({"w": jnp.array([[3.0, 4.0]])}, tx.init(params))
    >>> updates["w"].tolist()
    [[0.6000000238418579, 0.800000011920929]]
  """
  _check_lmo(lmo, split)
  _validate.check_bool('adaptive', adaptive)
  step = _Step(lmo, adaptive=adaptive)

  def init_fn(params):
    specs = _matrix_specs(params, dimension_numbers, 'scale_by_lmo')
    return ScaleByLmoState(lmo_state=_init_lmo_states(lmo, params, specs))

  def update_fn(updates, state, params=None):
    del params
    specs = _matrix_specs(updates, dimension_numbers, 'scale_by_lmo')
    directions, lmo_state = _apply_lmo(
      step, specs, updates, state.lmo_state, split
    )
    return directions, ScaleByLmoState(lmo_state=lmo_state)

  return optax.GradientTransformation(init_fn, update_fn)


def _scale_blocks(spec, u, shape_scale):
  """`u` times the shape factor of each of its blocks' fans."""
  factors = [
    partition.shape_factor(fan_in, fan_out, mode=shape_scale)
    for _, fan_in, fan_out in spec.stack_shapes(u.shape)
  ]
  if len(set(factors)) == 1:
    return (u * factors[0]).astype(u.dtype)
  scale = lambda x, factor: ((x * factor).astype(u.dtype), factor)
  factors = [jnp.asarray(f, jnp.float32) for f in factors]
  return _on_stacks(spec, u, scale, factors)[0]


def scale_by_shape(
  shape_scale: partition.ShapeScale = 'muon',
  *,
  dimension_numbers: partition.DimensionNumbersSpec = None,
) -> optax.GradientTransformation:
  """Multiplies each matrix update by its shape factor `s`.

  Args:
    shape_scale: `"muon"` = `sqrt(max(1, fan_out/fan_in))`, `"rms"` =
      `0.2·sqrt(max(fan_in, fan_out))` (AdamW-matched RMS, so AdamW learning
      rates and decays transfer), `None` = 1.
    dimension_numbers: how each leaf is read as matrices (fans).

  Returns:
    A stateless `GradientTransformation`.

  References:
    Jordan et al. (2024); Liu et al., arXiv:2502.16982.
  """
  partition.check_shape_scale(shape_scale)

  def update_fn(updates, state, params=None):
    del params
    specs = _matrix_specs(updates, dimension_numbers, 'scale_by_shape')
    scaled = _map_matrices(
      lambda spec, u: _scale_blocks(spec, u, shape_scale), specs, updates
    )
    return scaled, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


class ScaleByNeuronNormState(NamedTuple):
  """State of `scale_by_neuron_norm`."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  """Number of updates so far, int32 scalar (for schedules)."""
  nu: tuple[jax.Array, ...]
  """Per matrix stack, laid out as `ScaleByLionKState.lmo_state`: the
  second moment of each neuron, `(batch, 1, fan_out)` float32."""


def _neuron_normalize(o, nu, beta2, eps):
  """NorMuon's normalisation of one `(batch, fan_in, fan_out)` stack.

  Returns `(0.2·√(mn)·Ô/‖Ô‖_F, ν)` for `ν ← β₂·ν + (1 − β₂)·mean(O⊙O)` over
  each column and `Ô = O / (√ν + ε)`.
  """
  _, fan_in, fan_out = o.shape
  o32 = o.astype(jnp.promote_types(o.dtype, jnp.float32))
  # A Flax kernel is (fan_in, fan_out): a neuron is a column. An empty
  # fan-in has an empty column, whose mean square is 0 rather than 0/0.
  mean_square = jnp.sum(o32 * o32, axis=-2, keepdims=True) / max(fan_in, 1)
  new_nu = beta2 * nu + (1 - beta2) * mean_square
  # As the Ky Fan warm start does: a non-finite direction (whose update is
  # NaN, a step `skip_nonfinite` skips) leaves each affected neuron's moment
  # at its last finite value rather than poisoning every later step.
  nu = jnp.where(jnp.isfinite(new_nu), new_nu, nu).astype(jnp.float32)
  denominator = jnp.sqrt(nu) + eps
  # √ν + ε = 0 only for ε = 0 and a neuron whose directions were all zero:
  # its column is zero and stays zero.
  o_hat = o32 / jnp.where(denominator == 0, 1, denominator)
  norm = jnp.sqrt(jnp.sum(o_hat * o_hat, axis=(-2, -1), keepdims=True))
  # `== 0`, not `> 0`: a zero matrix stays zero, a NaN norm reaches the
  # update (every entry NaN, as for the normalising LMOs).
  scale = (
    partition.RMS_MATCH
    * math.sqrt(fan_in * fan_out)
    / jnp.where(norm == 0, 1, norm)
  )
  return (o_hat * scale).astype(o.dtype), nu


def scale_by_neuron_norm(
  b2: ScalarOrSchedule = 0.95,
  eps: ScalarOrSchedule = 1e-8,
  *,
  dimension_numbers: partition.DimensionNumbersSpec = None,
) -> optax.GradientTransformation:
  """NorMuon's neuron-wise normalisation of an LMO direction `O`.

  Per matrix (each block of a split leaf is its own matrix), with one second
  moment `ν` per output neuron:

      ν ← b2·ν + (1 − b2)·mean_in(O ⊙ O)
      Ô = O / (√ν + eps)
      out = 0.2·√(m·n)·Ô / ‖Ô‖_F

  so every matrix's update has RMS 0.2, AdamW's (the RMS that
  `shape_scale="rms"` gives Muon's polar factor).
  Chained after `scale_by_lion_k` or `scale_by_lmo` with any LMO, then
  `add_decayed_weights(λ)` and `optax.scale_by_learning_rate(η)`, it is the
  paper's Algorithm 1 step `X ← X − η·λ·X − η̂·Ô` with
  `η̂ = 0.2·η·√(mn)/‖Ô‖_F`; `lion_k(..., neuron_b2=b2)` chains it so.

  Orientation: Flax lays kernels out as `(fan_in, fan_out)`, so a neuron is
  a column and the mean runs over the fan-in axis (the paper's rows are
  those of PyTorch's `(out, in)` weights). There is no bias correction, as
  in the paper. A zero direction gives a zero update; a non-finite one gives
  a NaN update and leaves the affected moments at their last finite values.

  Args:
    b2: decay of the second moment, in [0, 1) (or a schedule of the step
      count); 0 normalises by this step's direction alone.
    eps: added to `√ν`, ≥ 0 (or a schedule).
    dimension_numbers: how each leaf is read as matrices (see
      `fanion_optax.partition.resolve_dimension_numbers`); every leaf must
      resolve to a matrix.

  Returns:
    A `GradientTransformation` with `ScaleByNeuronNormState`; its updates
    have the incoming updates' dtypes.

  References:
    Z. Li, L. Liu, C. Liang, W. Chen, T. Zhao, *NorMuon: Making Muon more
    efficient and scalable*, arXiv:2510.05491, Algorithm 1; Liu et al.,
    arXiv:2502.16982 (the 0.2 RMS match).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> tx = optax.chain(
    ...     fo.scale_by_lmo(fo.lmo.spectral()), fo.scale_by_neuron_norm())
    >>> grads = {"w": jnp.array([[3.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}
    >>> updates, state = tx.update(grads, tx.init(grads))
    >>> float(jnp.sqrt(jnp.mean(updates["w"] ** 2)))  # RMS 0.2
    0.2...
    >>> state[1].nu[0].shape  # one second moment per neuron (column)
    (1, 1, 3)
  """
  _validate.check_scalar('b2', b2, low=0.0, high=1.0, high_inclusive=False)
  _validate.check_scalar('eps', eps, low=0.0)

  def init_fn(params):
    specs = _matrix_specs(params, dimension_numbers, 'scale_by_neuron_norm')
    spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
    nu = tuple(
      jnp.zeros((batch, 1, fan_out), jnp.float32)
      for spec, p in zip(spec_leaves, treedef.flatten_up_to(params))
      if spec is not None
      for batch, _, fan_out in spec.stack_shapes(jnp.shape(p))
    )
    return ScaleByNeuronNormState(count=jnp.zeros([], jnp.int32), nu=nu)

  def update_fn(updates, state, params=None):
    del params
    specs = _matrix_specs(updates, dimension_numbers, 'scale_by_neuron_norm')
    beta2 = _value_at(b2, state.count)
    epsilon = _value_at(eps, state.count)
    spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
    moments = iter(state.nu)
    out, nu = [], []
    for spec, u in zip(spec_leaves, treedef.flatten_up_to(updates)):
      if spec is None:
        out.append(u)
        continue
      stacks = [next(moments) for _ in spec.stack_shapes(u.shape)]
      normalized, moment = _on_stacks(
        spec, u, _neuron_normalize, stacks, beta2, epsilon
      )
      out.append(normalized)
      nu.extend(moment)
    return treedef.unflatten(out), ScaleByNeuronNormState(
      count=cast(jax.Array, optax.safe_increment(state.count)), nu=tuple(nu)
    )

  return optax.GradientTransformation(init_fn, update_fn)


class AddDecayedWeightsState(NamedTuple):
  """State of `add_decayed_weights`: the step count, for schedules."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


def add_decayed_weights(
  weight_decay: ScalarOrSchedule = 0.0,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
  """Adds `λ_t·params` to the updates (decoupled decay; λ may be scheduled).

  Leaves that are `None` in the updates (routed elsewhere) are skipped.

  Args:
    weight_decay: `λ >= 0` or a schedule of the step count.
    weight_decay_mask: a tree or prefix tree of booleans, or a callable
      `params -> tree`; `False` leaves get no decay.

  Returns:
    A `GradientTransformation`; `params` must be passed to `update`.
  """
  _validate.check_scalar('weight_decay', weight_decay, low=0.0)
  mask = weight_decay_mask
  if mask is not None and not callable(mask):
    _validate.check_bool_tree('weight_decay_mask', mask)

  def init_fn(params):
    del params
    return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('add_decayed_weights needs params in update().')
    decay = _value_at(weight_decay, state.count)
    if mask is None:
      full_mask = jax.tree.map(lambda _: True, updates)
    else:
      spec = mask(params) if callable(mask) else mask
      _validate.check_bool_tree('weight_decay_mask', spec)
      full_mask = jax.tree.map(
        lambda m, sub: jax.tree.map(lambda _: m, sub),
        spec,
        updates,
        is_leaf=lambda x: x is None or isinstance(x, bool),
      )
    new = jax.tree.map(
      lambda u, p, m: (u + decay * p).astype(u.dtype) if m else u,
      updates,
      params,
      full_mask,
    )
    return new, AddDecayedWeightsState(
      count=cast(jax.Array, optax.safe_increment(state.count))
    )

  return optax.GradientTransformation(init_fn, update_fn)


class SkipNonfiniteState(NamedTuple):
  """State of `skip_nonfinite`."""

  inner_state: Any
  skipped: jax.Array
  """Total number of skipped steps, int32."""
  consecutive: jax.Array
  """Skipped steps since the last applied one, int32."""


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def skip_nonfinite(
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Skips steps whose gradients, updates or new state contain NaN or Inf.

  A skipped step returns zero updates (the parameters stay exactly as they
  were, weight decay included) and keeps `inner`'s state as it was; the
  skip is counted in the state. Unlike `optax.apply_if_finite` there is no
  limit after which non-finite updates go through.

  Args:
    inner: the transformation to protect.

  Returns:
    A `GradientTransformationExtraArgs` with `SkipNonfiniteState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import fanion_optax as fo
    >>> tx = fo.skip_nonfinite(fo.muon(0.02))  # like optax.apply_if_finite
    >>> params = {"w": jnp.ones((2, 2))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((2, 2), jnp.nan)}, state,
    ...                            params)
    >>> updates["w"].tolist(), int(state.skipped)
    ([[0.0, 0.0], [0.0, 0.0]], 1)
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f'inner must be an optax.GradientTransformation, got {inner!r}.'
    )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    # Two buffers, not one shared zero: a jitted step that donates the state
    # would otherwise donate the same buffer twice.
    return SkipNonfiniteState(
      inner.init(params), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
    )

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_inner = inner.update(
      updates, state.inner_state, params, **extra_args
    )
    # The new state is checked too: finite gradients can still overflow a
    # second moment to inf, which would freeze the leaf from then on.
    ok = (
      _all_finite(updates) & _all_finite(new_updates) & _all_finite(new_inner)
    )
    keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(ok, a, b), new, old
    )
    out = jax.tree.map(
      lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates
    )
    skipped = jnp.where(ok, 0, 1).astype(jnp.int32)
    return out, SkipNonfiniteState(
      inner_state=keep(new_inner, state.inner_state),
      skipped=state.skipped + skipped,
      consecutive=jnp.where(ok, 0, state.consecutive + 1).astype(jnp.int32),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
