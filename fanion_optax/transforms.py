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

from typing import Any
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import optax

from fanion_optax import _validate
from fanion_optax import distributed
from fanion_optax import lmo as lmo_lib
from fanion_optax import partition

ScalarOrSchedule = optax.ScalarOrSchedule


def _value_at(value: ScalarOrSchedule, count: jax.Array) -> Any:
  return value(count) if callable(value) else value


def _check_lmo(lmo: Any) -> None:
  if not isinstance(lmo, lmo_lib.LMO):
    raise TypeError(f'lmo must be a fanion_optax.lmo.LMO, got {lmo!r}.')


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
  """Per matrix leaf, in tree order: the LMO's state on the
  `(batch, fan_in, fan_out)` view (`None` for stateless LMOs)."""


class ScaleByLmoState(NamedTuple):
  """State of `scale_by_lmo`: per matrix leaf, the LMO's warm-start state."""

  lmo_state: tuple[Any, ...]


def _init_lmo_states(lmo, params, specs):
  """One LMO state per matrix leaf, as a flat tuple in tree order.

  A flat tuple rather than a parameter-shaped tree: Flax NNX wraps whatever
  sits at a parameter's path in a variable and rebuilds tuples inside it as
  its own `State`, which would break LMOs whose state is a tuple (mixtures).
  """
  spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
  return tuple(
    lmo.init(spec.matrix_shape(jnp.shape(p)), jnp.float32)
    for spec, p in zip(spec_leaves, treedef.flatten_up_to(params))
    if spec is not None
  )


def _apply_lmo(lmo, specs, directions, states, split):
  """The LMO on every matrix leaf; returns (directions, states).

  Leaves are viewed as `(batch, fan_in, fan_out)` stacks and handed to
  `distributed.apply_lmo`, which batches same-shape matrices and splits the
  work across devices as `split` asks.
  """
  spec_leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: x is None)
  leaves = treedef.flatten_up_to(directions)
  matrix_ids = [i for i, spec in enumerate(spec_leaves) if spec is not None]
  matrices, restorers = [], []
  for i in matrix_ids:
    whole, restore = distributed.replicate_explicit(leaves[i])
    matrices.append(spec_leaves[i].to_matrices(whole))
    restorers.append(restore)
  outs, new_states = distributed.apply_lmo(
    lmo, matrices, list(states), split=split
  )
  merged = [None] * len(leaves)
  for i, out, restore in zip(matrix_ids, outs, restorers):
    merged[i] = restore(spec_leaves[i].from_matrices(out, leaves[i].shape))
  return treedef.unflatten(merged), tuple(new_states)


def scale_by_lion_k(
  lmo: lmo_lib.LMO,
  b1: ScalarOrSchedule = 0.9,
  b2: ScalarOrSchedule = 0.99,
  *,
  mu_dtype: jax.typing.DTypeLike | None = None,
  dimension_numbers: partition.DimensionNumbersSpec = None,
  split: distributed.Split = None,
) -> optax.GradientTransformation:
  """The Lion-𝒦 direction `∇𝒦(b1·M + (1 − b1)·g)`, then `M ← b2·M + (1−b2)·g`.

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
      or `None` (see `fanion_optax.distributed`).

  Returns:
    A `GradientTransformation` with `ScaleByLionKState`; its updates have the
    incoming updates' dtypes.

  References:
    Chen, Liu, Liang, Liu, arXiv:2310.05898.

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
  _check_lmo(lmo)
  _validate.check_scalar('b1', b1, low=0.0, high=1.0)
  _validate.check_scalar('b2', b2, low=0.0, high=1.0, high_inclusive=False)
  distributed.check_split(split)
  mu_dtype = (
    None
    if mu_dtype is None
    else _validate.check_float_dtype('mu_dtype', mu_dtype)
  )

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
    directions, lmo_state = _apply_lmo(
      lmo, specs, direction_in, state.lmo_state, split
    )
    directions = jax.tree.map(
      lambda d, g: d.astype(g.dtype), directions, updates
    )
    mu = jax.tree.map(
      lambda m, g: interpolate(beta2, m, g).astype(m.dtype), state.mu, updates
    )
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
) -> optax.GradientTransformation:
  """Replaces each matrix update `u` by `lmo(u)` (to follow any momentum).

  Args:
    lmo: the oracle; warm-started state lives in this transformation's state.
    dimension_numbers: how each leaf is read as matrices.
    split: how to share the work between devices (see `scale_by_lion_k`).

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
  _check_lmo(lmo)
  distributed.check_split(split)

  def init_fn(params):
    specs = _matrix_specs(params, dimension_numbers, 'scale_by_lmo')
    return ScaleByLmoState(lmo_state=_init_lmo_states(lmo, params, specs))

  def update_fn(updates, state, params=None):
    del params
    specs = _matrix_specs(updates, dimension_numbers, 'scale_by_lmo')
    directions, lmo_state = _apply_lmo(
      lmo, specs, updates, state.lmo_state, split
    )
    return directions, ScaleByLmoState(lmo_state=lmo_state)

  return optax.GradientTransformation(init_fn, update_fn)


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
      lambda spec, u: (
        u * partition.shape_factor(*spec.fans(u.shape), mode=shape_scale)
      ).astype(u.dtype),
      specs,
      updates,
    )
    return scaled, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


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
