"""Which parameters are matrices, and how each is seen as a batch of matrices.

A parameter is read as a batch of `(fan_in, fan_out)` matrices through
`DimensionNumbers`: the reduction (fan-in) axes, the output axes, and every
other axis a batch axis (stacked layers from `nn.scan`, experts, heads).
Flax lays kernels out as `(fan_in, fan_out)`: Dense `(in, out)`, Conv
`(kh, kw, in, out)` — PyTorch's `(out, in)` is the transpose.

Leaves without dimension numbers (vectors, scalars, and whatever `exclude`
names, typically embeddings and output heads) go to a fallback optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fanion_optax import _validate

ShapeScale = Literal['muon', 'rms'] | None
SHAPE_SCALES = ('muon', 'rms', None)
RMS_MATCH = 0.2
"""Moonlight's AdamW-matching update RMS (Liu et al., arXiv:2502.16982)."""


@dataclasses.dataclass(frozen=True)
class DimensionNumbers:
  """How to read an array as a batch of `(fan_in, fan_out)` matrices.

  Attributes:
    reduction_axes: the fan-in axis or axes (contracted with the input).
    output_axes: the fan-out axis or axes.

  Every other axis is a batch axis. Negative axes count from the end.

  Example:
    >>> from fanion_optax import DimensionNumbers
    >>> conv = DimensionNumbers(reduction_axes=(0, 1, 2), output_axes=3)
    >>> conv.matrix_shape((3, 3, 16, 32))
    (1, 144, 32)
    >>> DimensionNumbers(1, 2).matrix_shape((12, 768, 3072))  # stacked layers
    (12, 768, 3072)
  """

  reduction_axes: int | Sequence[int] = 0
  output_axes: int | Sequence[int] = 1

  def axes(
    self, ndim: int
  ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """`(batch, reduction, output)` axes, non-negative, for an `ndim` array.

    Raises:
      ValueError: axes out of range, empty, or shared by both groups.
    """

    def normalize(name, axes):
      if isinstance(axes, int):
        axes = (axes,)
      elif isinstance(axes, (tuple, list)):
        axes = tuple(axes)
      else:
        raise TypeError(
          f'dimension_numbers.{name} must be an int or a'
          f' sequence of ints, got {axes!r}.'
        )
      if not axes:
        raise ValueError(f'dimension_numbers.{name} must not be empty.')
      out = []
      for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, int):
          raise TypeError(
            f'dimension_numbers.{name} must hold ints, got {axes!r}.'
          )
        if not -ndim <= ax < ndim:
          raise ValueError(
            f'dimension_numbers.{name}={axes!r} does not fit an array with'
            f' {ndim} axes: axes must be in [-{ndim}, {ndim}).'
          )
        out.append(ax % ndim)
      if len(set(out)) != len(out):
        raise ValueError(f'dimension_numbers.{name}={axes!r} repeats an axis.')
      return tuple(out)

    reduction = normalize('reduction_axes', self.reduction_axes)
    output = normalize('output_axes', self.output_axes)
    if set(reduction) & set(output):
      raise ValueError(
        f'dimension_numbers reduction_axes={self.reduction_axes!r} and'
        f' output_axes={self.output_axes!r} overlap.'
      )
    batch = tuple(a for a in range(ndim) if a not in reduction + output)
    return batch, reduction, output

  def fans(self, shape: Sequence[int]) -> tuple[int, int]:
    """`(fan_in, fan_out)` for an array of `shape`."""
    _, reduction, output = self.axes(len(shape))
    return (
      math.prod(shape[a] for a in reduction),
      math.prod(shape[a] for a in output),
    )

  def matrix_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """`(batch, fan_in, fan_out)` for an array of `shape`."""
    batch, _, _ = self.axes(len(shape))
    return (math.prod(shape[a] for a in batch), *self.fans(shape))

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """Transposes and reshapes `x` to `(batch, fan_in, fan_out)`."""
    batch, reduction, output = self.axes(x.ndim)
    return jnp.transpose(x, batch + reduction + output).reshape(
      self.matrix_shape(x.shape)
    )

  def from_matrices(self, y: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Inverse of `to_matrices` for an array of the original `shape`."""
    batch, reduction, output = self.axes(len(shape))
    order = batch + reduction + output
    y = y.reshape(tuple(shape[a] for a in order))
    return jnp.transpose(y, tuple(order.index(a) for a in range(len(shape))))


def is_dimension_numbers(x: Any) -> bool:
  """Whether `x` is a `DimensionNumbers` (a leaf of a specification tree)."""
  return isinstance(x, DimensionNumbers)


def shape_factor(fan_in: int, fan_out: int, mode: ShapeScale) -> float:
  """The update scale `s` for a `(fan_in, fan_out)` matrix.

  Args:
    fan_in: input dimension.
    fan_out: output dimension.
    mode: `"muon"` = `sqrt(max(1, fan_out/fan_in))` (Jordan et al.);
      `"rms"` = `0.2·sqrt(max(fan_in, fan_out))`, AdamW's update RMS
      (Liu et al., arXiv:2502.16982); `None` = 1.

  Returns:
    `s`, so that the implicit constraint radius is `s/λ`.
  """
  check_shape_scale(mode)
  if fan_in == 0 or fan_out == 0:
    return 1.0  # an empty matrix has an empty update: any scale will do
  if mode == 'muon':
    return math.sqrt(max(1.0, fan_out / fan_in))
  if mode == 'rms':
    return RMS_MATCH * math.sqrt(max(fan_in, fan_out))
  return 1.0


def check_shape_scale(mode: Any) -> None:
  """Raises `ValueError` unless `mode` is `"muon"`, `"rms"` or `None`."""
  _validate.check_choice('shape_scale', mode, SHAPE_SCALES)


def check_float_params(tree: Any, who: str) -> None:
  """Raises `TypeError` naming the first parameter path of non-float dtype.

  An integer or boolean parameter would receive a direction cast to its
  dtype, which truncates to zero: it would be silently frozen.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = getattr(leaf, 'dtype', None)
    dtype = jnp.result_type(leaf) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f'{who}: parameter {path_name(path)!r} has dtype {dtype}, but only'
        ' floating parameters can be optimized (an integer one would be'
        ' silently frozen). Keep it out of the optimized tree.'
      )


def path_name(path: Sequence[Any]) -> str:
  """`'layers/0/kernel'`-style name of a pytree key path.

  A trailing `.value` attribute (the array inside a Flax NNX `Variable`) is
  dropped, so a leaf has the same name whether `nnx.Optimizer` passes
  variables (at `init`) or raw arrays (at `update`).
  """
  keys = list(path)
  if (
    keys
    and isinstance(keys[-1], jax.tree_util.GetAttrKey)
    and (keys[-1].name == 'value')
  ):
    keys.pop()
  parts = []
  for key in keys:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


DimensionNumbersSpec = Any
"""A tree, prefix tree or callable `params -> tree` of `DimensionNumbers`
(or `None` for leaves that go to the fallback)."""


def default_dimension_numbers(params: Any) -> Any:
  """2-D leaves are `(fan_in, fan_out)` matrices; other leaves: `None`."""
  return jax.tree.map(
    lambda x: DimensionNumbers() if jnp.ndim(x) == 2 else None, params
  )


def resolve_dimension_numbers(
  params: Any,
  dimension_numbers: DimensionNumbersSpec = None,
  exclude: Sequence[str] | str = (),
) -> Any:
  """A full tree of `DimensionNumbers` or `None`, one per leaf of `params`.

  Args:
    params: the parameter (or update) tree; only shapes are read.
    dimension_numbers: `None` (2-D leaves are matrices), a `DimensionNumbers`
      for every leaf, a tree or prefix tree of them (with `None` for fallback
      subtrees), or a callable `params -> such a tree`.
    exclude: regular expressions searched in each leaf's path name
      (`path_name`); matching leaves get `None`.

  Returns:
    A tree with `params`' structure whose leaves are `DimensionNumbers` or
    `None`.

  Raises:
    ValueError: dimension numbers that do not fit a leaf's shape (the path is
      named), or a tree that does not match `params`.
  """
  if callable(dimension_numbers) and not is_dimension_numbers(
    dimension_numbers
  ):
    dimension_numbers = dimension_numbers(params)
  if dimension_numbers is None:
    full = default_dimension_numbers(params)
  else:
    is_spec = lambda x: x is None or is_dimension_numbers(x)
    try:
      full = jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda _: spec, sub),
        dimension_numbers,
        params,
        is_leaf=is_spec,
      )
    except ValueError as err:
      raise ValueError(
        'dimension_numbers must be a DimensionNumbers, a tree or prefix'
        f' tree of them matching the parameters, or a callable: {err}'
      ) from None
  patterns = [re.compile(p) for p in _as_patterns(exclude)]
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  specs = treedef.flatten_up_to(full)
  out = []
  for (path, leaf), spec in zip(leaves, specs):
    name = path_name(path)
    if spec is not None and any(p.search(name) for p in patterns):
      spec = None
    if spec is not None:
      if not is_dimension_numbers(spec):
        raise TypeError(
          f'dimension_numbers for {name!r} must be DimensionNumbers or'
          f' None, got {spec!r}.'
        )
      try:
        spec.axes(jnp.ndim(leaf))
      except ValueError as err:
        raise ValueError(
          f'{err} (parameter {name!r} of shape {jnp.shape(leaf)})'
        ) from None
    out.append(spec)
  return treedef.unflatten(out)


def _as_patterns(exclude: Sequence[str] | str) -> tuple[str, ...]:
  patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
  for p in patterns:
    if not isinstance(p, str):
      raise TypeError(f'exclude must hold regex strings, got {p!r}.')
    try:
      re.compile(p)
    except re.error as err:
      raise ValueError(f'exclude holds an invalid regex {p!r}: {err}') from None
  return patterns


def check_exclude(exclude: Sequence[str] | str) -> tuple[str, ...]:
  """Validates `exclude` at construction time (raises on a bad regex)."""
  return _as_patterns(exclude)


def select(tree: Any, specs: Any, *, matrices: bool) -> Any:
  """`tree` with `None` where a leaf is not (or, if not `matrices`, is) one."""
  return jax.tree.map(
    lambda x, spec: x if (spec is not None) == matrices else None,
    tree,
    specs,
    is_leaf=lambda x: x is None,
  )


class RoutedState(NamedTuple):
  """State of `route`: the matrix and fallback transformations' states."""

  matrices: optax.OptState
  fallback: optax.OptState


def route(
  matrix_tx: optax.GradientTransformation,
  fallback_tx: optax.GradientTransformation,
  *,
  dimension_numbers: DimensionNumbersSpec = None,
  exclude: Sequence[str] | str = (),
) -> optax.GradientTransformationExtraArgs:
  """Sends matrix leaves to `matrix_tx` and the others to `fallback_tx`.

  Each inner transformation sees the full tree with `None` in place of the
  other's leaves, so states hold no `optax.MaskedNode` (Flax NNX's
  `nnx.Optimizer` stores them as they are).

  Args:
    matrix_tx: applied to leaves with dimension numbers.
    fallback_tx: applied to the rest.
    dimension_numbers: see `resolve_dimension_numbers`.
    exclude: regexes over leaf paths that go to the fallback.

  Returns:
    A `GradientTransformationExtraArgs` with `RoutedState`.
  """
  exclude = check_exclude(exclude)
  matrix_tx = optax.with_extra_args_support(matrix_tx)
  fallback_tx = optax.with_extra_args_support(fallback_tx)

  def specs_of(tree):
    return resolve_dimension_numbers(tree, dimension_numbers, exclude)

  def init_fn(params):
    check_float_params(params, 'init')
    specs = specs_of(params)
    return RoutedState(
      matrices=matrix_tx.init(select(params, specs, matrices=True)),
      fallback=fallback_tx.init(select(params, specs, matrices=False)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    specs = specs_of(updates)
    outputs = []
    for tx, inner, is_matrix in (
      (matrix_tx, state.matrices, True),
      (fallback_tx, state.fallback, False),
    ):
      part = select(updates, specs, matrices=is_matrix)
      if not jax.tree.leaves(part):
        # Nothing routed here (a bare array selects to a bare None, which
        # transformations needing params would reject).
        outputs.append((part, inner))
        continue
      outputs.append(
        tx.update(
          part,
          inner,
          None if params is None else select(params, specs, matrices=is_matrix),
          **extra_args,
        )
      )
    (matrix_updates, matrix_state), (fallback_updates, fallback_state) = outputs
    merged = jax.tree.map(
      lambda spec, a, b: b if spec is None else a,
      specs,
      matrix_updates,
      fallback_updates,
      is_leaf=lambda x: x is None,
    )
    return merged, RoutedState(matrices=matrix_state, fallback=fallback_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
