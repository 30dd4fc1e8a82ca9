"""Which parameters are matrices, and how each is seen as a batch of matrices.

A parameter is read as a batch of `(fan_in, fan_out)` matrices through
`DimensionNumbers`: the reduction (fan-in) axes, the output axes, and every
other axis a batch axis (stacked layers from `nn.scan`, experts, heads).
Flax lays kernels out as `(fan_in, fan_out)`: Dense `(in, out)`, Conv
`(kh, kw, in, out)` — PyTorch's `(out, in)` is the transpose. Fused and
head-packed kernels are cut into blocks (`reduction_blocks`,
`output_blocks`), each its own matrix: a fused QKV kernel `(d, 3d)` is
three `(d, d)` matrices.

Leaves without dimension numbers (vectors, scalars, and whatever `exclude`
names, typically embeddings and output heads: `EMBEDDINGS`) go to a
fallback optimizer; `route` warns when embedding-like leaves do not.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import sys
import warnings
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


def _check_blocks(name: str, blocks: Any) -> int | tuple[int, ...] | None:
  """`blocks` as `None`, an int or a tuple, or raises naming `name`."""
  if blocks is None:
    return None
  if isinstance(blocks, list):
    blocks = tuple(blocks)
  sizes = blocks if isinstance(blocks, tuple) else (blocks,)
  accepted = (
    f'dimension_numbers.{name} must be None, an int h >= 1 (h equal'
    ' blocks) or a non-empty tuple of block sizes >= 1'
  )
  if any(
    isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in sizes
  ):
    raise TypeError(f'{accepted}, got {blocks!r}.')
  if not sizes or any(s < 1 for s in sizes):
    raise ValueError(f'{accepted}, got {blocks!r}.')
  return (
    tuple(int(s) for s in blocks) if isinstance(blocks, tuple) else int(blocks)
  )


def _block_sizes(
  name: str, blocks: Any, size: int, side: str
) -> tuple[int, ...]:
  """The sizes of the blocks `blocks` cuts a fan of `size` into."""
  if blocks is None:
    return (size,)
  if isinstance(blocks, int):
    if size % blocks:
      raise ValueError(
        f'dimension_numbers.{name}={blocks} does not divide {side}={size}'
        ' into equal blocks.'
      )
    return (size // blocks,) * blocks
  if sum(blocks) != size:
    raise ValueError(
      f'dimension_numbers.{name}={blocks!r} sums to {sum(blocks)}, but'
      f' {side}={size}: the block sizes must add up to it.'
    )
  return blocks


def _offsets(sizes: Sequence[int]) -> list[int]:
  return [sum(sizes[:i]) for i in range(len(sizes))]


def _block_groups(
  rows: Sequence[int], cols: Sequence[int]
) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
  """The blocks grouped by shape, in row-major order of first appearance.

  Returns:
    `[((r, c), [(row_start, col_start), ...]), ...]`.
  """
  groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
  for r, i in zip(rows, _offsets(rows)):
    for c, j in zip(cols, _offsets(cols)):
      groups.setdefault((r, c), []).append((i, j))
  return list(groups.items())


@dataclasses.dataclass(frozen=True)
class DimensionNumbers:
  """How to read an array as a batch of `(fan_in, fan_out)` matrices.

  Attributes:
    reduction_axes: the fan-in axis or axes (contracted with the input).
    output_axes: the fan-out axis or axes.
    reduction_blocks: splits the (flattened) fan-in into blocks, each its own
      matrix: `None` (no split), an int `h` (`h` equal blocks) or a tuple of
      block sizes summing to the fan-in. A head-packed output projection
      `(h·d_h, d)` is `DimensionNumbers(0, 1, reduction_blocks=h)`.
    output_blocks: the same for the fan-out. A fused QKV kernel `(d, 3d)`
      is `output_blocks=3`; a grouped-query one `(d, d + 2·d_kv)` is
      `output_blocks=(d, d_kv, d_kv)`.

  Every other axis is a batch axis. Negative axes count from the end. With
  blocks, every block is an independent matrix for the LMO, the shape scale
  and the distributed split: the update is the one the blocks would get if
  stored as separate parameters. Blocks of unequal
  shapes give several stacks (`stack_shapes`, `to_stacks`, `from_stacks`);
  `fans`, `matrix_shape`, `to_matrices` and `from_matrices` describe the
  one stack and raise `ValueError` when there are several.

  Example:
    >>> from fanion_optax import DimensionNumbers
    >>> conv = DimensionNumbers(reduction_axes=(0, 1, 2), output_axes=3)
    >>> conv.matrix_shape((3, 3, 16, 32))
    (1, 144, 32)
    >>> DimensionNumbers(1, 2).matrix_shape((12, 768, 3072))  # stacked layers
    (12, 768, 3072)
    >>> DimensionNumbers(0, 1, output_blocks=3).matrix_shape((64, 192))  # QKV
    (3, 64, 64)
    >>> gqa = DimensionNumbers(0, 1, output_blocks=(64, 16, 16))
    >>> gqa.stack_shapes((64, 96))
    ((1, 64, 64), (2, 64, 16))
  """

  reduction_axes: int | Sequence[int] = 0
  output_axes: int | Sequence[int] = 1
  reduction_blocks: int | Sequence[int] | None = None
  output_blocks: int | Sequence[int] | None = None

  def __post_init__(self):
    for name in ('reduction_blocks', 'output_blocks'):
      object.__setattr__(self, name, _check_blocks(name, getattr(self, name)))

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

  def _grid(
    self, shape: Sequence[int]
  ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The batch size and the row and column block sizes for `shape`."""
    batch, reduction, output = self.axes(len(shape))
    rows = _block_sizes(
      'reduction_blocks',
      self.reduction_blocks,
      math.prod(shape[a] for a in reduction),
      'fan_in',
    )
    cols = _block_sizes(
      'output_blocks',
      self.output_blocks,
      math.prod(shape[a] for a in output),
      'fan_out',
    )
    return math.prod(shape[a] for a in batch), rows, cols

  def stack_shapes(
    self, shape: Sequence[int]
  ) -> tuple[tuple[int, int, int], ...]:
    """`(batch, fan_in, fan_out)` of each stack of same-shape blocks.

    One stack without blocks or with equal blocks; with unequal blocks one
    per distinct block shape, in row-major order of first appearance. A
    stack's batch counts every block of its shape in every batch entry.

    Raises:
      ValueError: axes that do not fit `shape`, or blocks that do not split
        its fans.
    """
    n, rows, cols = self._grid(shape)
    return tuple(
      (n * len(starts), r, c) for (r, c), starts in _block_groups(rows, cols)
    )

  def matrix_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """`(batch, fan_in, fan_out)` for an array of `shape` (one stack)."""
    stacks = self.stack_shapes(shape)
    if len(stacks) != 1:
      raise ValueError(
        f'{self!r} cuts an array of shape {tuple(shape)} into blocks of'
        f' {len(stacks)} shapes {stacks}: use stack_shapes, to_stacks and'
        ' from_stacks.'
      )
    return stacks[0]

  def fans(self, shape: Sequence[int]) -> tuple[int, int]:
    """`(fan_in, fan_out)` of each matrix (block) of an array of `shape`."""
    _, fan_in, fan_out = self.matrix_shape(shape)
    return fan_in, fan_out

  def to_stacks(self, x: jax.Array) -> tuple[jax.Array, ...]:
    """`x` as `(batch, fan_in, fan_out)` stacks, one per `stack_shapes`.

    Within a stack, blocks are ordered batch entry first, then row-major
    over the blocks of that entry.
    """
    batch, reduction, output = self.axes(x.ndim)
    n, rows, cols = self._grid(x.shape)
    m = jnp.transpose(x, batch + reduction + output).reshape(
      n, sum(rows), sum(cols)
    )
    groups = _block_groups(rows, cols)
    if len(groups) == 1:
      if len(rows) == len(cols) == 1:
        return (m,)
      (r, c), _ = groups[0]
      grid = m.reshape(n, len(rows), r, len(cols), c)
      return (
        grid.transpose(0, 1, 3, 2, 4).reshape(n * len(rows) * len(cols), r, c),
      )
    return tuple(
      jnp.stack(
        [m[:, i : i + r, j : j + c] for i, j in starts], axis=1
      ).reshape(n * len(starts), r, c)
      for (r, c), starts in groups
    )

  def from_stacks(
    self, stacks: Sequence[jax.Array], shape: Sequence[int]
  ) -> jax.Array:
    """The exact inverse of `to_stacks` for an array of the original `shape`.

    Raises:
      ValueError: a number of stacks other than `len(stack_shapes(shape))`.
    """
    batch, reduction, output = self.axes(len(shape))
    n, rows, cols = self._grid(shape)
    groups = _block_groups(rows, cols)
    if len(stacks) != len(groups):
      raise ValueError(
        f'{self!r} reads an array of shape {tuple(shape)} as {len(groups)}'
        f' stacks, got {len(stacks)}.'
      )
    if len(groups) == 1:
      (r, c), _ = groups[0]
      m = (
        stacks[0]
        .reshape(n, len(rows), len(cols), r, c)
        .transpose(0, 1, 3, 2, 4)
        .reshape(n, sum(rows), sum(cols))
      )
    else:
      blocks = {}
      for ((r, c), starts), stack in zip(groups, stacks):
        stack = stack.reshape(n, len(starts), r, c)
        for t, start in enumerate(starts):
          blocks[start] = stack[:, t]
      m = jnp.concatenate(
        [
          jnp.concatenate([blocks[i, j] for j in _offsets(cols)], axis=2)
          for i in _offsets(rows)
        ],
        axis=1,
      )
    order = batch + reduction + output
    y = m.reshape(tuple(shape[a] for a in order))
    return jnp.transpose(y, tuple(order.index(a) for a in range(len(shape))))

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """Transposes and reshapes `x` to `(batch, fan_in, fan_out)` (one stack)."""
    self.matrix_shape(x.shape)
    return self.to_stacks(x)[0]

  def from_matrices(self, y: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Inverse of `to_matrices` for an array of the original `shape`."""
    self.matrix_shape(shape)
    return self.from_stacks((y,), shape)


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
        spec.stack_shapes(jnp.shape(leaf))
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


EMBEDDINGS = (
  r'(?i)(^|/)[^/]*embed[^/]*(/|$)',
  r'(?i)(^|/)(wte|wpe|tok_emb|pos_emb)(/|$)',
  r'(?i)(^|/)(lm_head|head|unembed|logits)(/|$)',
)
"""An `exclude` preset: embeddings and output heads under the usual names.

A path component containing `embed` (Flax NNX `nnx.Embed` and Linen
`nn.Embed` both name their table `embedding`, and Linen's default module
name is `Embed_0`; also `embed_tokens`, `tok_embeddings`, `unembed`), GPT-2's
`wte`/`wpe` and nanoGPT's `tok_emb`/`pos_emb`, and the head names `lm_head`,
`head`, `unembed` and `logits` as whole components (`attn/out` is not
matched). Pass `exclude=fanion_optax.partition.EMBEDDINGS`, or extend it:
`exclude=(*fanion_optax.partition.EMBEDDINGS, 'my_head')`.
"""

VOCAB_MIN = 1000
"""Smallest dimension that counts as a vocabulary for `embedding_like`."""

_POSITIONAL = re.compile(r'(?i)(wpe|pos)')
_EMBEDDING_NAMES = tuple(re.compile(p) for p in EMBEDDINGS)
# Frames of these packages sit between the user's `init` call and the
# warning (optax chains, Flax NNX's Optimizer, jax transformations).
_LIBRARIES = ('fanion_optax', 'optax', 'flax', 'jax', 'jaxlib')


def embedding_like(params: Any, specs: Any) -> list[str]:
  """Paths of matrix leaves that look like embeddings or output heads.

  A leaf with dimension numbers is flagged when its path matches
  `EMBEDDINGS`, or when one of its dimensions is a vocabulary size: the
  largest dimension, if at least `VOCAB_MIN`, of another leaf whose path
  matches `EMBEDDINGS` (a token embedding, excluded or not) and is not
  positional (`wpe`, `pos…`: a context length is no vocabulary). This
  catches an output head with a generic name, such as Linen's `Dense_3`.

  Args:
    params: the parameter tree; only shapes are read.
    specs: `resolve_dimension_numbers(params, ...)`.

  Returns:
    The flagged paths (`path_name`), in tree order.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  named = []
  for path, leaf in leaves:
    name = path_name(path)
    matched = any(p.search(name) for p in _EMBEDDING_NAMES)
    named.append((name, jnp.shape(leaf), matched))
  vocab = {
    max(shape)
    for name, shape, matched in named
    if matched
    and len(shape) >= 2
    and max(shape) >= VOCAB_MIN
    and not _POSITIONAL.search(name)
  }
  return [
    name
    for (name, shape, matched), spec in zip(named, treedef.flatten_up_to(specs))
    if spec is not None and (matched or vocab & set(shape))
  ]


def _user_stacklevel() -> int:
  """`warnings.warn`'s `stacklevel` for the first frame outside libraries."""
  frame, level = sys._getframe(2), 2
  while frame is not None and (
    frame.f_globals.get('__name__', '').partition('.')[0] in _LIBRARIES
  ):
    frame, level = frame.f_back, level + 1
  return level


def _warn_embedding_like(
  params: Any, specs: Any, exclude: Sequence[str]
) -> None:
  """One `UserWarning` listing `embedding_like` leaves, with the fix."""
  flagged = embedding_like(params, specs)
  if not flagged:
    return
  fix = tuple(exclude) + tuple(f'^{re.escape(name)}$' for name in flagged)
  warnings.warn(
    f'{len(flagged)} parameter(s) that look like embeddings or output heads'
    f' go to the LMO: {", ".join(map(repr, flagged))}. Embeddings and'
    ' output heads are usually trained by the fallback (AdamW); to send'
    f' them there, pass\n    exclude={fix!r}\n'
    '(fanion_optax.partition.EMBEDDINGS covers the usual Flax names). To'
    ' keep them on the LMO, pass dimension_numbers= explicitly (e.g.'
    ' fanion_optax.partition.default_dimension_numbers).',
    UserWarning,
    stacklevel=_user_stacklevel(),
  )


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

  With the default `dimension_numbers=None`, `init` warns once (a
  `UserWarning` naming the paths and the `exclude=` line that fixes it) when
  leaves that look like embeddings or output heads (`embedding_like`) would
  go to `matrix_tx`. Excluding them, or passing `dimension_numbers`
  explicitly, silences it.

  Args:
    matrix_tx: applied to leaves with dimension numbers.
    fallback_tx: applied to the rest.
    dimension_numbers: see `resolve_dimension_numbers`.
    exclude: regexes over leaf paths that go to the fallback (`EMBEDDINGS`
      is a preset for embeddings and output heads).

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
    if dimension_numbers is None:
      _warn_embedding_like(params, specs, exclude)
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
