"""Applying an LMO to many matrices, with the work split across devices.

On an accelerator, same-shape matrices are stacked into one batch
`(B, m, n)` (one batched kernel instead of many small ones); on the CPU
backend without a split, each matrix is its own 2-D problem, which XLA:CPU
runs faster than a batched one. On several devices each device would
otherwise orthogonalise every matrix; a **split** value says how to share
the work instead:

* `over_axis("batch")` — data parallel: inside `jax.pmap(...,
  axis_name="batch")` or `jax.shard_map`, with replicated updates, whole
  matrices of every shape are shared out by their cost (`balance` on
  `LMO.cost`: largest first to the least loaded device; a polar factor
  costs its Newton–Schulz FLOPs in the wide orientation, so a
  `(768, 3072)` and a `(3072, 768)` count alike, a Ky Fan direction its
  `O(m·n·k)`; no stack is padded), each device runs the LMO on its own
  matrices only
  (`lax.switch` on the device index), and the directions (and warm-start
  states) are gathered back to every device, typed as replicated.
  Per-device LMO FLOPs ≈ total / n when there are many matrices (GPT-2
  small on 8 devices: `benchmarks/distributed.py`).
* `over_mesh(mesh, axes)` — sharded jit: under `jax.jit` with parameters
  sharded by `NamedSharding` (Auto or Explicit axes), whole matrices are
  shared out by `balance` as above; each shape's matrices are laid out in
  one stack sharded over `axes`, every device's own in its slots, so XLA
  moves each matrix from its shards to its owner with all-to-all (never an
  all-gather: no device holds another's matrices), the owner runs the LMO
  inside `jax.shard_map` (`lax.switch` on the device index, its own slots
  only: the padding of a shape's stack costs bytes, not FLOPs), and the
  results go back the same way. Without a split GSPMD partitions every
  Newton–Schulz matmul of a sharded matrix and all-reduces partial Gram
  products every step.
* `compressed("batch")` — compressed data parallel, for Ky Fan LMOs
  (Fanion-k, Neon): inside `jax.pmap(..., axis_name="batch")` or
  `jax.shard_map`, every device passes its **local** gradient `g_i` (do
  not `pmean` the matrix gradients) and keeps its own momentum `M_i`. The
  direction is the Ky Fan LMO of the mean `N̄ = mean_i(b1·M_i + (1−b1)·g_i)`,
  computed from all-reduces of thin blocks only: per subspace iteration
  `mean(N_i Q)` (`m×k`) and `mean(N_iᵀ P)` (`n×k`, in the last iteration
  the Rayleigh–Ritz step), plus one scalar per matrix (the shared scale;
  with `adaptive=True` also `⟨N̄, D⟩`) — never `m×n`. The Cholesky-QR and
  small SVD run identically on every device, so the directions, the left
  bases and the warm-start subspaces are the same everywhere. The momentum update is
  linear (with error feedback too: every device applies the same
  `Π = P Pᵀ`), so `mean_i M_i` evolves exactly as the one-device momentum
  on the mean gradient, and the parameters equal the one-device run's.
  A matrix with `min(m, n) <= k` (the full polar factor) and
  `top_k_method="svd"` all-reduce that whole matrix. Non-matrix leaves:
  `fanion_optax.lion_k` averages their gradients over the axis before the
  fallback. Full-rank LMOs and mixtures raise `ValueError`. Communication
  per matrix and step: `t·(m+n)·k` floats for `t` subspace iterations
  (2 warm by default; `subspace_iters=1` is Dion's one power step, the
  thin factors once), against `m·n` for averaging the gradient; the cold
  first step runs 10 iterations.

  The matrices' optimizer state is then per device (`M_i`; the subspaces
  and step count are replicated). Only `mean_i M_i` affects the future
  parameters: to checkpoint, save the per-device state, or its mean over
  the devices, and restore that mean on every device.
* `None` — one device, or let XLA decide. Under `jax.jit` with sharded
  matrices (FSDP or tensor parallel, Auto or Explicit axes) a low-rank
  LMO (`ky_fan` with `k < min(m, n)`) runs its power iteration on the
  shards: thin products against the local rows or columns, Cholesky-QR
  (`k×k` Gram products) and a `k×k` SVD, and only those blocks (and, with
  error feedback, `Pᵀ E`) cross devices, never a matrix (Explicit axes need a
  mesh context, `jax.set_mesh`, on a jax without
  `jax.sharding.use_abstract_mesh`). Full-rank LMOs get their matrices
  whole.

The split is one frozen value that validates itself, so exclusive
combinations cannot be written. Multi-host runs use the same code after
`jax.distributed.initialize()`.

References:
  K. Ahn et al., *Dion: Distributed Orthonormalized Updates*, arXiv:2504.05295.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Sequence
from typing import Any
from typing import cast

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from fanion_optax import _linalg
from fanion_optax import lmo as lmo_lib


@dataclasses.dataclass(frozen=True)
class OverAxis:
  """Split the LMO work over a mapped axis (`pmap` / `shard_map`).

  Attributes:
    axis_name: the `axis_name` of the enclosing `jax.pmap` or the mesh axis
      (or tuple of axes) of the enclosing `jax.shard_map`; the updates must
      be replicated over it (`pmean` the gradients first).
  """

  axis_name: Hashable

  def __post_init__(self):
    _check_axis_name(self.axis_name)


def _check_axis_name(axis_name: Any) -> None:
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  if not names or any(n is None or not isinstance(n, Hashable) for n in names):
    raise TypeError(
      'axis_name must be a hashable axis name (or a tuple of'
      f' them), got {axis_name!r}.'
    )


@dataclasses.dataclass(frozen=True)
class Compressed:
  """Compressed data parallel over a mapped axis (`pmap` / `shard_map`).

  Each device passes its local gradient; only thin `m×k` and `n×k` products
  of the momentum are all-reduced (see the module docstring). Ky Fan LMOs
  only.

  Attributes:
    axis_name: the `axis_name` of the enclosing `jax.pmap` or the mesh axis
      (or tuple of axes) of the enclosing `jax.shard_map` over which the
      gradients differ.
  """

  axis_name: Hashable

  def __post_init__(self):
    _check_axis_name(self.axis_name)

  def mean(self, x: jax.Array) -> jax.Array:
    """`x` averaged over the devices of `axis_name`."""
    return jax.lax.pmean(x, self.axis_name)


@dataclasses.dataclass(frozen=True)
class OverMesh:
  """Split the LMO work over a mesh's devices under sharded `jax.jit`.

  Attributes:
    mesh: the `jax.sharding.Mesh` the parameters are sharded over.
    axes: the mesh axis (or axes) to split over; `None` takes all. On a 2-D
      `(data, model)` mesh prefer one axis (e.g. the FSDP axis): moving a
      matrix sharded over both axes to a stack sharded over both in one
      resharding can make XLA rematerialise it whole.
  """

  mesh: Mesh
  axes: str | tuple[str, ...] | None = None

  def __post_init__(self):
    if not isinstance(self.mesh, Mesh):
      raise TypeError(f'mesh must be a jax.sharding.Mesh, got {self.mesh!r}.')
    axes = self.axes
    if axes is None:
      axes = tuple(self.mesh.axis_names)
    elif isinstance(axes, str):
      axes = (axes,)
    elif isinstance(axes, (tuple, list)) and axes:
      axes = tuple(axes)
    else:
      raise TypeError(
        'axes must be a mesh axis name, a non-empty tuple of'
        f' them, or None, got {self.axes!r}.'
      )
    for axis in axes:
      if axis not in self.mesh.axis_names:
        raise ValueError(
          f'axes holds {axis!r}, which is not an axis of the'
          f' mesh {tuple(self.mesh.axis_names)}.'
        )
    object.__setattr__(self, 'axes', axes)


Split = OverAxis | OverMesh | Compressed | None
"""How the LMO work is shared between devices: see `over_axis`, `over_mesh`,
`compressed`."""


def over_axis(axis_name: Hashable) -> OverAxis:
  """Data parallel: split the work over `axis_name` of a `pmap`/`shard_map`.

  Example:
    >>> import fanion_optax as fo
    >>> tx = fo.muon(0.02, split=fo.distributed.over_axis("batch"))
  """
  return OverAxis(axis_name)


def over_mesh(mesh: Mesh, axes: str | Sequence[str] | None = None) -> OverMesh:
  """Sharded jit: split the work over `axes` of `mesh` (default: all)."""
  # A list becomes a tuple; `OverMesh` rejects any other non-tuple sequence.
  return OverMesh(
    mesh,
    cast(
      'str | tuple[str, ...] | None',
      tuple(axes) if isinstance(axes, list) else axes,
    ),
  )


def compressed(axis_name: Hashable) -> Compressed:
  """Compressed data parallel over `axis_name` of a `pmap`/`shard_map`.

  Every device passes its local gradient and keeps its own momentum; the
  Ky Fan direction of the mean momentum is computed from all-reduced
  `m×k` and `n×k` blocks, never `m×n` (see the module docstring).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import fanion_optax as fo
    >>> params = {"w": jnp.zeros((8, 16))}
    >>> g = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 16))  # 2 devices
    >>> tx = fo.fanion(0.02, 2, split=fo.distributed.compressed("batch"))
    >>> step = lambda g: tx.update({"w": g}, tx.init(params), params)[0]
    >>> local = jax.vmap(step, axis_name="batch")(g)["w"]  # or pmap
    >>> one = fo.fanion(0.02, 2)  # one device, on the mean gradient
    >>> mean = one.update({"w": g.mean(0)}, one.init(params), params)[0]
    >>> bool(jnp.allclose(local, mean["w"], atol=1e-6))
    True
  """
  return Compressed(axis_name)


def check_split(split: Any) -> None:
  """Raises `TypeError` unless `split` is `None` or a split value."""
  if split is not None and not isinstance(
    split, (OverAxis, OverMesh, Compressed)
  ):
    raise TypeError(
      'split must be None, fanion_optax.distributed.over_axis(name),'
      f' over_mesh(mesh, axes) or compressed(name), got {split!r}.'
    )


def _explicit_sharding(x: jax.Array) -> NamedSharding | None:
  """The sharding of `x` if it is sharded over explicit mesh axes."""
  try:
    sharding = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  if not isinstance(sharding, NamedSharding):
    return None
  explicit = jax.sharding.AxisType.Explicit
  if not any(t == explicit for t in getattr(sharding.mesh, 'axis_types', ())):
    return None
  if all(p is None for p in sharding.spec):
    return None
  return sharding


def _spec_of(x: Any) -> PartitionSpec:
  sharding = _explicit_sharding(x)
  return PartitionSpec() if sharding is None else sharding.spec


def on_shards(
  fn: Callable[..., Any],
  args: tuple[Any, ...],
  like: Any,
  *,
  gather: bool = False,
) -> Any:
  """`fn(*args)` on explicitly sharded arrays, with nothing gathered.

  With explicit sharding (`jax.sharding.AxisType.Explicit`, the default of
  `jax.make_mesh`) a reshape that merges a sharded axis, or a matmul that
  contracts one, is a type error. Inside `jax.sharding.auto_axes` the axes
  are Auto: XLA partitions `fn`, and a Ky Fan power iteration, an error
  feedback projection or a per-neuron norm then moves thin `m×k`/`n×k`
  blocks or vectors, never a whole matrix. Each output gets the sharding
  of the matching leaf of `like`. Without explicit axes: `fn(*args)`.

  With `gather=True`, or outside a mesh context (`jax.set_mesh`) on a jax
  without `jax.sharding.use_abstract_mesh`, the arrays are replicated for
  `fn` and its outputs resharded: a full-rank LMO needs every entry of its
  matrix, and one gather costs less than partitioned Newton–Schulz
  products every iteration.
  """
  shardings = [
    s for s in map(_explicit_sharding, jax.tree.leaves(args)) if s is not None
  ]
  if not shardings:
    return fn(*args)
  specs = jax.tree.map(_spec_of, like)
  mesh = shardings[0].mesh
  use_abstract_mesh = getattr(jax.sharding, 'use_abstract_mesh', None)
  if not gather:
    auto = jax.sharding.auto_axes(fn, out_sharding=specs)
    if jax.sharding.get_abstract_mesh().axis_names:
      return auto(*args)
    if use_abstract_mesh is not None:
      with use_abstract_mesh(getattr(mesh, 'abstract_mesh', mesh)):
        return auto(*args)
  whole = NamedSharding(mesh, PartitionSpec())
  replicated = jax.tree.map(
    lambda x: jax.sharding.reshard(x, whole) if _explicit_sharding(x) else x,
    args,
  )
  return jax.tree.map(
    lambda y, spec: jax.sharding.reshard(y, NamedSharding(mesh, spec)),
    fn(*replicated),
    specs,
  )


def _concat(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *trees)


def _take(tree: Any, start: int, size: int) -> Any:
  return jax.tree.map(lambda x: x[start : start + size], tree)


def _varies_over(x: jax.Array, axis_name: Any) -> bool:
  """Whether `x` is typed as varying over `axis_name` (checked shard_map)."""
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  aval = jax.typeof(x)
  # The varying axes are `aval.mat.varying` in jax 0.10-0.12 and
  # `aval.vma` in earlier releases; pmap types nothing as varying.
  vma = getattr(getattr(aval, 'mat', None), 'varying', None)
  if vma is None:
    vma = getattr(aval, 'vma', frozenset())
  return any(n in vma for n in names)


def _gather_replicated(
  x: jax.Array, axis_name: Any, start: jax.Array, total: int
) -> jax.Array:
  """Every device's share, concatenated on every device.

  An `all_gather` result is typed as varying over the axis, which
  `shard_map(check_vma=True)` refuses to return as replicated; there the
  shares are placed at their offsets and summed (`psum` is typed
  invariant). `pmap` and unchecked `shard_map` keep the cheaper gather.
  """
  if not _varies_over(x, axis_name):
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)
  placed = jax.lax.dynamic_update_slice_in_dim(
    jnp.zeros((total, *x.shape[1:]), x.dtype), x, start, axis=0
  )
  return jax.lax.psum(placed, axis_name)


def _check_replicated(state: Any, split: Compressed) -> None:
  """Raises unless the warm-start state is typed replicated (`shard_map`).

  A state typed as varying over the axis would make the directions vary
  too (and the subspace loop's carry change type); it is the same on
  every device, so it belongs in `P()`.
  """
  if any(_varies_over(s, split.axis_name) for s in jax.tree.leaves(state)):
    raise ValueError(
      f'split={split!r}: inside jax.shard_map the LMO state (the Ky Fan'
      ' warm-start subspaces, ScaleByLionKState.lmo_state) must be'
      f' replicated over {split.axis_name!r} (in_specs P()); only the'
      " matrices' momentum (ScaleByLionKState.mu) differs between devices."
    )


def _update_owned(
  lmo: lmo_lib.LMO,
  matrices: list[jax.Array],
  states: list[Any],
  split: OverMesh,
) -> list[tuple[jax.Array, Any]]:
  """`lmo.update` of each 2-D matrix on its owner device, under sharded jit.

  `balance` gives each device its share of whole matrices. Per shape, the
  matrices are laid out in one stack of `devices × slots` entries, device
  `d`'s own in its `slots` (zeros fill the rest; a tall matrix is stacked
  transposed with the wide ones where `lmo.transposable` and it has no
  state), and the stack is sharded
  along that axis: XLA moves each matrix from its shards to its owner with
  all-to-all, and back the same way, no device holding a copy of another's
  share. Inside `jax.shard_map`, `lax.switch` on the device index runs the
  LMO on the device's own slots only, so padding costs bytes, not FLOPs.
  """
  axes = cast(tuple[str, ...], split.axes)  # a tuple after __post_init__
  context = jax.sharding.get_abstract_mesh()
  # Inside `auto_axes` (Explicit meshes, see `on_shards`) the context mesh
  # has Auto axes; older jax keeps them Explicit there.
  mesh = context if context.axis_names else split.mesh
  explicit = jax.sharding.AxisType.Explicit
  reshard = any(t == explicit for t in getattr(mesh, 'axis_types', ()))
  devices = math.prod(split.mesh.shape[a] for a in axes)
  # A tall matrix joins the wide ones of its transposed shape (c_fc and
  # c_proj in one stack: less padding) where that gives the same result.
  flipped = [
    lmo.transposable and not jax.tree.leaves(s) and m.shape[0] > m.shape[1]
    for m, s in zip(matrices, states)
  ]
  matrices = [m.T if f else m for m, f in zip(matrices, flipped)]
  owners = balance([m.shape for m in matrices], devices, lmo.cost)
  signatures = [_signature(m, s) for m, s in zip(matrices, states)]
  keys = list(dict.fromkeys(signatures))
  # owned[d][g]: device d's matrices of shape group g, in slot order.
  owned = [
    [[i for i in own if signatures[i] == key] for key in keys] for own in owners
  ]
  slots = [max(len(o[g]) for o in owned) for g in range(len(keys))]
  first = {key: signatures.index(key) for key in keys}
  outs = [
    jax.eval_shape(lmo.update, matrices[first[k]], states[first[k]])
    for k in keys
  ]

  def layout(g, tree_of):
    pad = jax.tree.map(jnp.zeros_like, tree_of(first[keys[g]]))
    rows = []
    for d in range(devices):
      rows.extend(tree_of(i) for i in owned[d][g])
      rows.extend([pad] * (slots[g] - len(owned[d][g])))
    return jax.tree.map(lambda *t: jnp.stack(t), *rows)

  spec = lambda t: PartitionSpec(axes, *([None] * (t.ndim - 1)))

  def place(t, to):
    to = to if context.axis_names else NamedSharding(mesh, to)
    if reshard:
      return jax.sharding.reshard(t, to)
    return jax.lax.with_sharding_constraint(t, to)

  def unbatched(t):
    # Explicit typing forbids taking one slot of a stack sharded along the
    # slots: move the sharding onto a matrix axis that divides evenly.
    dims = [a for a in range(1, t.ndim) if t.shape[a] % devices == 0]
    to = [None] * t.ndim
    if dims:
      to[dims[0]] = axes
    return place(t, PartitionSpec(*to))

  constrain = lambda t: place(t, spec(t))
  xs = [
    jax.tree.map(constrain, layout(g, lambda i: matrices[i]))
    for g in range(len(keys))
  ]
  ss = [
    jax.tree.map(constrain, layout(g, lambda i: states[i]))
    for g in range(len(keys))
  ]

  def branch(device):
    def run(xs, ss):
      results = []
      for g, (x, s) in enumerate(zip(xs, ss)):
        count = len(owned[device][g])
        zeros = jax.tree.map(
          lambda o: jnp.zeros((slots[g], *o.shape), o.dtype), outs[g]
        )
        if count:
          done = _update_stack(lmo, x[:count], _take(s, 0, count))
          zeros = jax.tree.map(lambda z, r: z.at[:count].set(r), zeros, done)
        results.append(zeros)
      return results

    return run

  def local(xs, ss):
    index = jax.lax.axis_index(axes)
    return jax.lax.switch(index, [branch(d) for d in range(devices)], xs, ss)

  out_specs = [jax.tree.map(lambda o: PartitionSpec(axes), o) for o in outs]
  results_by_group = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(jax.tree.map(spec, xs), jax.tree.map(spec, ss)),
    out_specs=out_specs,
    check_vma=False,
  )(xs, ss)
  results: list[Any] = [None] * len(matrices)
  for g, stacked in enumerate(results_by_group):
    stacked = jax.tree.map(unbatched if reshard else constrain, stacked)
    for d in range(devices):
      for r, i in enumerate(owned[d][g]):
        direction, state = jax.tree.map(lambda t: t[d * slots[g] + r], stacked)
        results[i] = (direction.T if flipped[i] else direction, state)
  return results


matrix_cost = lmo_lib.matrix_cost


def balance(
  shapes: Sequence[Sequence[int]],
  devices: int,
  cost: Callable[[Sequence[int]], int] = matrix_cost,
) -> list[list[int]]:
  """Whole matrices to devices, largest first to the least loaded.

  Greedy longest-processing-time scheduling on `cost`: the largest load is
  at most 4/3 of the optimum (Graham), and for GPT-2 small's 48 matrices on
  8 devices within 3% of an even split, where padding each shape to a
  multiple of the device count costs up to 1.33x.

  Args:
    shapes: the `(..., m, n)` shape of each matrix.
    devices: how many devices share the work.
    cost: the work of one matrix (the splits pass their LMO's `cost`; a
      low-rank direction costs `O(m·n·k)`, not a polar factor's
      `O(min(m, n)²·max(m, n))`).

  Returns:
    For each device, the indices of its matrices, in increasing order.
  """
  loads = [0] * devices
  owners: list[list[int]] = [[] for _ in range(devices)]
  costs = [cost(shape) for shape in shapes]
  for i in sorted(range(len(shapes)), key=lambda i: -costs[i]):
    device = loads.index(min(loads))
    owners[device].append(i)
    loads[device] += costs[i]
  return [sorted(own) for own in owners]


def _update_balanced(
  lmo: lmo_lib.LMO, matrices: list[jax.Array], states: list[Any], axis_name
) -> list[tuple[jax.Array, Any]]:
  """`lmo.update` of each 2-D matrix on one device, the results on all.

  Every device holds every (replicated) matrix; `balance` gives each its
  share, `lax.switch` on the device index runs that share (so each
  device's program does its own matrices' work only), and one gather per
  dtype of flat buffers brings every result to every device.
  """
  devices = jax.lax.axis_size(axis_name)
  owners = balance([m.shape for m in matrices], devices, lmo.cost)
  specs: dict[Any, Any] = {}
  outs = []
  for m, s in zip(matrices, states):
    key = _signature(m, s)
    if key not in specs:
      specs[key] = jax.eval_shape(lmo.update, m, s)
    outs.append(specs[key])
  dtypes = sorted(
    {leaf.dtype for o in outs for leaf in jax.tree.leaves(o)}, key=str
  )

  def used(own, dtype):
    return sum(
      leaf.size
      for i in own
      for leaf in jax.tree.leaves(outs[i])
      if leaf.dtype == dtype
    )

  length = {d: max(used(own, d) for own in owners) for d in dtypes}

  def branch(own):
    def run(matrices, states):
      parts: dict[Any, list[jax.Array]] = {d: [] for d in dtypes}
      for group in _same_shape(own, matrices, states):
        x = jnp.stack([matrices[i] for i in group])
        state = jax.tree.map(
          lambda *t: jnp.stack(t), *[states[i] for i in group]
        )
        out = _update_stack(lmo, x, state)
        for row in range(len(group)):
          for leaf in jax.tree.leaves(jax.tree.map(lambda t: t[row], out)):
            parts[leaf.dtype].append(leaf.reshape(-1))
      return [
        jnp.concatenate(parts[d] + [jnp.zeros(length[d] - used(own, d), d)])
        for d in dtypes
      ]

    return run

  index = jax.lax.axis_index(axis_name)
  buffers = jax.lax.switch(
    index, [branch(own) for own in owners], matrices, states
  )
  # Each device's buffer differs; `+ 0·index` types it so (varying over
  # the axis inside a checked `shard_map`, as `switch` does not).
  zero = index * 0
  gathered = [
    _gather_replicated(
      b[None] + zero.astype(b.dtype), axis_name, index, devices
    )
    for b in buffers
  ]
  results: list[Any] = [None] * len(matrices)
  for device, own in enumerate(owners):
    offsets = dict.fromkeys(dtypes, 0)
    for group in _same_shape(own, matrices, states):
      for i in group:
        leaves = []
        for leaf in jax.tree.leaves(outs[i]):
          k, start = dtypes.index(leaf.dtype), offsets[leaf.dtype]
          flat = gathered[k][device, start : start + leaf.size]
          leaves.append(flat.reshape(leaf.shape))
          offsets[leaf.dtype] += leaf.size
        results[i] = jax.tree.unflatten(jax.tree.structure(outs[i]), leaves)
  return results


def _signature(matrix: jax.Array, state: Any) -> tuple[Any, ...]:
  """What `lmo.update`'s output shapes depend on."""
  leaves, structure = jax.tree.flatten(state)
  return (matrix.shape, matrix.dtype, structure, *map(jnp.shape, leaves))


def _same_shape(own: list[int], matrices, states) -> list[list[int]]:
  """`own` grouped by `_signature` (matrices that stack together)."""
  groups: dict[Any, list[int]] = {}
  for i in own:
    groups.setdefault(_signature(matrices[i], states[i]), []).append(i)
  return list(groups.values())


STACK_ON_CPU_FROM = 8
"""How many matrices of one shape `apply_lmo` stacks on the CPU backend,
for an LMO that `stacks_on_cpu`. A stacked group's program costs more to
compile than one matrix's, and XLA compiles the kernels of identical
per-matrix programs once: stacking pays for many matrices of a shape
(GPT-2 small's 12: `fo.fanion` compiles in 1.4x `fo.muon`'s time instead of
2x, `benchmarks/step.py`), not for ResNet-50's at most 6 (1.4x slower to
compile stacked)."""


def _per_matrix(lmo: lmo_lib.LMO, shape: tuple[int, ...], count: int) -> bool:
  """Whether `lmo` runs on `count` matrices of `shape` one at a time."""
  stack = lmo.stacks_on_cpu(shape) and count >= STACK_ON_CPU_FROM
  return jax.default_backend() == 'cpu' and not stack


def _update_stack(lmo: lmo_lib.LMO, x: jax.Array, state: Any):
  """`lmo.update` on a `(b, m, n)` stack, or per matrix (`_per_matrix`)."""
  if _per_matrix(lmo, x.shape[1:], x.shape[0]):
    return _update_per_matrix(lmo, x, state)
  return lmo.update(x, state)


def _update_per_matrix(lmo: lmo_lib.LMO, x: jax.Array, state: Any):
  """`lmo.update` on each 2-D matrix of a `(b, m, n)` stack, restacked.

  XLA:CPU runs `b` separate 2-D matmuls faster than one batched
  `(b, m, n)` matmul, and frees each matrix's temporaries sooner: on four
  GPT-2-small layers `fo.muon(polar_method="newton_schulz")` takes 1.01x
  the time and 0.85x the temp memory of a hand-written per-matrix kernel,
  against 1.10x and 1.27x stacked (`benchmarks/step.py`).
  """
  parts = [
    lmo.update(x[j], jax.tree.map(lambda s: s[j], state))
    for j in range(x.shape[0])
  ]
  return jax.tree.map(lambda *p: jnp.stack(p), *parts)


def apply_lmo(
  lmo: lmo_lib.LMO,
  matrices: Sequence[jax.Array],
  states: Sequence[Any],
  *,
  split: Split = None,
) -> tuple[list[jax.Array], list[Any]]:
  """`lmo.update` on each `(batch, m, n)` matrix stack, grouped by shape.

  Without a split on the CPU backend, one 2-D matrix at a time instead,
  unless `lmo.stacks_on_cpu(shape)` and the shape has at least
  `STACK_ON_CPU_FROM` matrices.

  Args:
    lmo: the oracle. Its state arrays must have the matrix batch axis first
      (true of every LMO in `fanion_optax.lmo`).
    matrices: `(b_i, m_i, n_i)` arrays.
    states: the LMO state of each.
    split: `None`, `over_axis(name)`, `over_mesh(mesh, axes)` or
      `compressed(name)` (then `lmo` must be `compressible`).

  Returns:
    The directions and new states, in the input order. Empty matrices
    (a zero-size axis) have empty directions and keep their state.

  Raises:
    ValueError: `compressed(name)` with an LMO that is not compressible.
  """
  check_split(split)
  if isinstance(split, Compressed):
    lmo_lib.check_compressible(lmo, f'split={split!r}')
  groups: dict[Any, list[int]] = {}
  out: list[Any] = list(matrices)  # empty matrices are their own direction
  new_states: list[Any] = list(states)
  live = [i for i, m in enumerate(matrices) if not _linalg.is_empty(m)]
  if isinstance(split, (OverAxis, OverMesh)) and live:
    items = [(i, j) for i in live for j in range(matrices[i].shape[0])]
    each = [matrices[i][j] for i, j in items]
    each_state = [jax.tree.map(lambda s: s[j], states[i]) for i, j in items]
    results = (
      _update_balanced(lmo, each, each_state, split.axis_name)
      if isinstance(split, OverAxis)
      else _update_owned(lmo, each, each_state, split)
    )
    for i in live:
      rows = [r for (owner, _), r in zip(items, results) if owner == i]
      out[i], new_states[i] = jax.tree.map(lambda *t: jnp.stack(t), *rows)
    return out, new_states
  for i in live:
    groups.setdefault((matrices[i].shape[1:], matrices[i].dtype), []).append(i)
  for key, members in list(groups.items()):
    count = sum(matrices[i].shape[0] for i in members)
    if split is None and _per_matrix(lmo, key[0], count):
      for i in groups.pop(key):
        out[i], new_states[i] = _update_per_matrix(lmo, matrices[i], states[i])
  for members in groups.values():
    sizes = [matrices[i].shape[0] for i in members]
    x = _concat([matrices[i] for i in members])
    state = _concat([states[i] for i in members])
    if isinstance(split, Compressed):
      _check_replicated(state, split)
      d, s = lmo.update(x, state, mean=split.mean)
    else:
      d, s = lmo.update(x, state)
    offset = 0
    for i, size in zip(members, sizes):
      out[i], new_states[i] = _take((d, s), offset, size)
      offset += size
  return out, new_states
