"""QK-clip: caps attention logits by rescaling query and key heads.

Kimi K2 (Kimi Team, arXiv:2507.20534, §2.1 and Algorithm 1, "MuonClip")
trains with Muon and, after every optimizer step, rescales the query and key
projections of each attention head `h` whose largest pre-softmax logit in
that step's forward pass, `S_h`, exceeds a threshold `τ`:

    γ_h = τ / S_h,    W_q^h ← γ_h^α · W_q^h,    W_k^h ← γ_h^(1−α) · W_k^h

A logit `q·k` is bilinear in `(W_q, W_k)`, so every logit of head `h` is
multiplied by `γ_h`: with the weights that produced `S_h` its maximum
becomes exactly `τ`. As in the paper:

- `S_h` comes from the forward pass of the step (the weights before the
  update) and the scaling applies to the weights after it, so on the same
  batch the clipped head's maximum logit is `τ·S'_h/S_h`, where `S'_h` is
  the maximum with the updated, unclipped weights.
- The clip is per head: heads with `S_h ≤ τ` keep their updated weights
  bit for bit, so only the offending heads are touched.
- A key shared by several query heads is left as it is and each query head
  takes the whole factor `γ_h` (K2 does this for the shared rotary key of
  MLA: scaling a shared key would shrink the logits of heads that are below
  `τ`). Here that rule covers grouped-query and multi-query attention
  (`num_kv_heads < num_heads`); `alpha` then does not apply.

Not in the paper: a non-finite `S_h` (the forward pass overflowed) leaves
its head untouched, since `τ/∞ = 0` would erase the head and NaN would
poison it (wrap the optimizer in `fanion_optax.skip_nonfinite` to skip such
steps instead).

The transform reads the updated weights `params + updates`, so it composes
after any optimizer: `optax.chain(tx, qk_clip(...))` returns updates `u'`
with `params + u'` equal to the clipped `params + u`.

References:
  Kimi Team, *Kimi K2: Open Agentic Intelligence*, arXiv:2507.20534.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import optax

from fanion_optax import _validate
from fanion_optax import partition
from fanion_optax import transforms

HeadLayout = Literal['packed', 'heads', 'fused']
HEAD_LAYOUTS = ('packed', 'heads', 'fused')


def _check_pattern(name: str, pattern: Any) -> None:
  if not isinstance(pattern, str):
    raise TypeError(
      f'{name} must be a parameter path or regex string, got {pattern!r}.'
    )
  try:
    re.compile(pattern)
  except re.error as err:
    raise ValueError(
      f'{name}={pattern!r} is not a valid regex: {err}'
    ) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class QKLayout:
  """Where the query and key heads of one attention layer sit.

  Attributes:
    logits: the key of this layer in `qk_clip`'s `max_logits` argument.
    query: the path name of the query kernel (as
      `fanion_optax.partition.path_name` writes it, e.g.
      `'blocks/0/attn/query/kernel'`), or a regex that must match whole path
      names; a regex may match several leaves (e.g. `'q/(kernel|bias)'`:
      with biases the logits are bilinear in kernel and bias together, so
      both must be scaled).
    key: the same for the key kernel; `None` with `layout='fused'`.
    num_heads: the number of query heads.
    num_kv_heads: the number of key heads (grouped-query attention: query
      head `h` reads key head `h // (num_heads // num_kv_heads)`);
      `None` means `num_heads`.
    layout: how the heads sit in the trailing axes of each matched leaf:
      `'packed'`: one axis `num_heads·head_dim`, head `h` in columns
      `[h·head_dim, (h+1)·head_dim)` (`nnx.Linear(d, num_heads·head_dim)`);
      `'heads'`: two axes `(num_heads, head_dim)`
      (`nnx.LinearGeneral(d, (num_heads, head_dim))`,
      `nnx.MultiHeadAttention`); `'fused'`: one fused QKV axis
      `(num_heads + 2·num_kv_heads)·head_dim` holding the packed queries,
      then the keys, then the values (`nnx.Linear(d, 3·d)` split in thirds).

  Example:
    >>> import fanion_optax as fo
    >>> fo.QKLayout(logits='blocks/0', query='blocks/0/attn/qkv/kernel',
    ...             num_heads=4, layout='fused').num_kv_heads is None
    True
  """

  logits: str | int
  query: str
  key: str | None = None
  num_heads: int
  num_kv_heads: int | None = None
  layout: HeadLayout = 'packed'

  def __post_init__(self):
    if isinstance(self.logits, bool) or not isinstance(self.logits, str | int):
      raise TypeError(
        f'QKLayout.logits must be a str or int key of max_logits, got'
        f' {self.logits!r}.'
      )
    _validate.check_choice('QKLayout.layout', self.layout, HEAD_LAYOUTS)
    _check_pattern('QKLayout.query', self.query)
    if self.layout == 'fused':
      if self.key is not None and self.key != self.query:
        raise ValueError(
          "QKLayout.key must be None (or the query's path) with"
          f" layout='fused', where queries and keys share one kernel; got"
          f' key={self.key!r}, query={self.query!r}.'
        )
    elif self.key is None:
      raise ValueError(
        f'QKLayout.key is required with layout={self.layout!r} (the path or'
        ' regex of the key kernel).'
      )
    else:
      _check_pattern('QKLayout.key', self.key)
    _validate.check_int('QKLayout.num_heads', self.num_heads)
    if self.num_kv_heads is not None:
      _validate.check_int('QKLayout.num_kv_heads', self.num_kv_heads)
      if self.num_heads % self.num_kv_heads:
        raise ValueError(
          f'QKLayout.num_kv_heads={self.num_kv_heads!r} must divide'
          f' num_heads={self.num_heads!r}.'
        )

  @property
  def kv_heads(self) -> int:
    """The number of key heads."""
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads


class QKClipState(NamedTuple):
  """State of `qk_clip`: the step count, for scheduled hyperparameters."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


Role = Literal['query', 'key', 'fused']


def _leaf_scale(
  layout: QKLayout, role: Role, name: str, shape: tuple[int, ...], q, k
) -> jax.Array:
  """Per-column factors for a leaf, broadcastable against its shape."""
  heads = layout.kv_heads if role == 'key' else layout.num_heads
  where = (
    f'qk_clip: {role} parameter {name!r} of shape {shape} (layer'
    f' {layout.logits!r}, layout={layout.layout!r}'
  )
  if layout.layout == 'heads':
    if len(shape) < 2 or shape[-2] != heads:
      raise ValueError(
        f'{where}) must end in axes (heads, head_dim) with heads={heads}.'
      )
    return (q if role == 'query' else k)[:, None]
  if not shape:
    raise ValueError(f'{where}) is a scalar; it holds no heads.')
  if layout.layout == 'packed':
    if shape[-1] % heads:
      raise ValueError(
        f'{where}) needs a last axis divisible by the {heads} heads.'
      )
    return jnp.repeat(q if role == 'query' else k, shape[-1] // heads)
  slots = layout.num_heads + 2 * layout.kv_heads
  if shape[-1] % slots:
    raise ValueError(
      f'{where}) needs a last axis (num_heads + 2·num_kv_heads)·head_dim,'
      f' divisible by {slots}.'
    )
  head_dim = shape[-1] // slots
  return jnp.concatenate(
    [
      jnp.repeat(q, head_dim),
      jnp.repeat(k, head_dim),
      jnp.ones(layout.kv_heads * head_dim, q.dtype),
    ]
  )


def _assign(
  names: Sequence[str], layers: Sequence[QKLayout]
) -> dict[int, tuple[int, Role]]:
  """`{leaf index: (layer index, role)}`; each pattern must match a leaf."""
  roles: dict[int, tuple[int, Role]] = {}
  for j, layout in enumerate(layers):
    patterns: list[tuple[Role, str]] = (
      [('fused', layout.query)]
      if layout.layout == 'fused'
      else [('query', layout.query), ('key', cast(str, layout.key))]
    )
    for role, pattern in patterns:
      compiled = re.compile(pattern)
      hits = [i for i, n in enumerate(names) if compiled.fullmatch(n)]
      if not hits:
        shown = ', '.join(repr(n) for n in names[:8])
        more = ', …' if len(names) > 8 else ''
        raise ValueError(
          f'qk_clip: the {"query" if role == "fused" else role} pattern'
          f' {pattern!r} of layer {layout.logits!r} matches no parameter'
          f' path (it must match a whole path); paths: {shown}{more}.'
        )
      for i in hits:
        if i in roles:
          other, other_role = roles[i]
          raise ValueError(
            f'qk_clip: parameter {names[i]!r} is matched twice: as the'
            f' {other_role} of layer {layers[other].logits!r} and as the'
            f' {role} of layer {layout.logits!r}; it would be scaled twice.'
          )
        roles[i] = (j, role)
  return roles


def _head_factors(layout, max_logits, threshold, alpha):
  """`(query factors (num_heads,), key factors (num_kv_heads,))`."""
  if layout.logits not in max_logits:
    raise ValueError(
      f'qk_clip: max_logits has no entry {layout.logits!r} (the logits key'
      f' of a QKLayout); it has {sorted(map(repr, max_logits))}.'
    )
  s = jnp.asarray(max_logits[layout.logits])
  if s.shape != (layout.num_heads,):
    raise ValueError(
      f'qk_clip: max_logits[{layout.logits!r}] must have shape'
      f' (num_heads,) = ({layout.num_heads},), one maximum logit per query'
      f' head, got shape {s.shape}.'
    )
  s = s.astype(jnp.promote_types(s.dtype, jnp.float32))
  clip = jnp.isfinite(s) & (s > threshold)
  gamma = jnp.where(clip, threshold / jnp.where(clip, s, 1), 1).astype(s.dtype)
  if layout.kv_heads < layout.num_heads:
    return gamma, jnp.ones(layout.kv_heads, s.dtype)
  return gamma**alpha, gamma ** (1 - alpha)


def qk_clip(
  threshold: optax.ScalarOrSchedule = 100.0,
  *,
  layers: QKLayout | Sequence[QKLayout],
  alpha: optax.ScalarOrSchedule = 0.5,
) -> optax.GradientTransformationExtraArgs:
  """Rescales the query and key heads whose logits exceeded `threshold`.

  Chain it after the optimizer: `optax.chain(tx, qk_clip(...))`. Its
  `update(updates, state, params, *, max_logits)` needs the parameters and
  `max_logits`, a mapping from each layer's `QKLayout.logits` key to the
  per-head maximum pre-softmax logit of the step's forward pass, shape
  `(num_heads,)` (as the model computes its logits, e.g. with the
  `1/√head_dim` factor). Missing `max_logits` is an error rather than a
  silent no-op, which would hide a model that forgot to report its logits.
  With `nnx.Optimizer`: `optimizer.update(model, grads, max_logits=...)`.

  For each head `h` with `S_h = max_logits[...][h] > threshold` (finite),
  `γ = threshold/S_h`; the updated query head is multiplied by `γ^alpha`
  and the key head by `γ^(1−alpha)` (with shared keys, `num_kv_heads <
  num_heads`, the query head by `γ` and the key not at all). Other heads'
  updates pass through bit for bit. See the module docstring for the
  paper's rules.

  Args:
    threshold: `τ > 0` (K2 uses 100), or a schedule of the step count.
    layers: one `QKLayout` per attention layer. Two layouts may share a
      `logits` key: MLA with separate kernels for the non-rotary and the
      rotary parts is two layouts, the rotary one with `num_kv_heads=1`
      (its key is shared by all heads), which is K2's rule.
    alpha: the query's share of the scaling, in [0, 1] (0.5 in K2), or a
      schedule.

  Returns:
    A `GradientTransformationExtraArgs` with `QKClipState`.

  Raises:
    ValueError: at `update`, for a layout whose pattern matches no path, a
      leaf matched twice, shapes that do not hold the heads, missing
      `params` or `max_logits`, or `max_logits` entries of the wrong shape.
    TypeError: at `update`, `max_logits` that is not a mapping.

  References:
    Kimi Team, arXiv:2507.20534 (Algorithm 1, MuonClip).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> layer = fo.QKLayout(logits='attn', query='q', key='k', num_heads=2)
    >>> tx = optax.chain(optax.sgd(0.1), fo.qk_clip(10.0, layers=layer))
    >>> params = {'q': jnp.ones((2, 4)), 'k': jnp.ones((2, 4))}
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, _ = tx.update(grads, tx.init(params), params,
    ...                        max_logits={'attn': jnp.array([40.0, 5.0])})
    >>> optax.apply_updates(params, updates)['q'].tolist()  # √(10/40) = 0.5
    [[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]
  """
  _validate.check_scalar('threshold', threshold, low=0.0, low_inclusive=False)
  _validate.check_scalar('alpha', alpha, low=0.0, high=1.0)
  if isinstance(layers, QKLayout):
    layers = (layers,)
  elif isinstance(layers, (list, tuple)) and layers:
    layers = tuple(layers)
  else:
    raise TypeError(
      f'layers must be a QKLayout or a non-empty sequence of them, got'
      f' {layers!r}.'
    )
  for layout in layers:
    if not isinstance(layout, QKLayout):
      raise TypeError(
        f'layers must hold fanion_optax.QKLayout values, got {layout!r}.'
      )

  def init_fn(params):
    del params
    return QKClipState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, max_logits=None, **extra):
    del extra  # meant for the other transformations of a chain
    if params is None:
      raise ValueError('qk_clip needs params in update().')
    if max_logits is None:
      raise ValueError(
        'qk_clip needs max_logits=, the per-head maximum logits of the'
        " step's forward pass: tx.update(updates, state, params,"
        ' max_logits={key: (num_heads,) array}) (nnx.Optimizer:'
        ' optimizer.update(model, grads, max_logits=...)); keys expected:'
        f' {sorted({repr(layout.logits) for layout in layers})}.'
      )
    if not isinstance(max_logits, Mapping):
      raise TypeError(
        f'max_logits must be a mapping from QKLayout.logits keys to'
        f' (num_heads,) arrays, got {type(max_logits).__name__}.'
      )
    tau = transforms._value_at(threshold, state.count)
    share = transforms._value_at(alpha, state.count)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    names = [partition.path_name(path) for path, _ in leaves]
    roles = _assign(names, layers)
    factors = [
      _head_factors(layout, max_logits, tau, share) for layout in layers
    ]
    param_leaves = treedef.flatten_up_to(params)
    out = []
    for i, ((_, u), p) in enumerate(zip(leaves, param_leaves)):
      if i not in roles:
        out.append(u)
        continue
      j, role = roles[i]
      scale = _leaf_scale(layers[j], role, names[i], u.shape, *factors[j])
      dtype = jnp.promote_types(u.dtype, jnp.float32)
      u32, p32 = u.astype(dtype), jnp.asarray(p, dtype)
      # `where`, not `(p + u)·1 − p`, keeps unclipped columns exact.
      clipped = jnp.where(scale != 1, (p32 + u32) * scale - p32, u32)
      out.append(clipped.astype(u.dtype))
    return treedef.unflatten(out), QKClipState(
      count=cast(jax.Array, optax.safe_increment(state.count))
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
