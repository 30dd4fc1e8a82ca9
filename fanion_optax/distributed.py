"""Applying an LMO to many matrices, with the work split across devices.

Same-shape matrices are stacked into one batch `(B, m, n)` (one batched
kernel instead of many small ones). On several devices each device would
otherwise orthogonalise every matrix; instead:

* **pmap / data parallel** (`axis_name=`): inside `jax.pmap(...,
  axis_name=...)` (or `shard_map`), with replicated updates, device `i`
  takes rows `[i·B/n, (i+1)·B/n)` of each padded stack, runs the LMO on its
  share, and an `all_gather` returns every direction (and warm-start state)
  to every device. Per-device LMO FLOPs ≈ total / n.
* **sharded jit** (`mesh=`, `shard_axis=`): under `jax.jit` with parameters
  sharded by `NamedSharding`, each stack is resharded along its batch axis
  over `shard_axis` (XLA moves whole matrices to their owners with
  all-to-all), orthogonalised locally inside `jax.shard_map` (no
  cross-device Gram products), and resharded back. Without it GSPMD
  partitions every Newton–Schulz matmul of a sharded matrix and all-reduces
  partial Gram products every step.

Which to use: `axis_name` when you `pmap` (or `shard_map`) a replicated
training step; `mesh`/`shard_axis` when you `jit` over a mesh with sharded
parameters (FSDP, tensor parallel); neither on one device. Multi-host runs
use the same code after `jax.distributed.initialize()`.

References:
  K. Ahn et al., *Dion: Distributed Orthonormalized Updates*, arXiv:2504.05295.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from fanion_optax import lmo as lmo_lib


def check_split_options(axis_name: Any, mesh: Any, shard_axis: Any
                        ) -> tuple[str, ...] | None:
  """Validates the work-split options; returns the mesh axes to split over."""
  if axis_name is not None and mesh is not None:
    raise ValueError('axis_name (pmap) and mesh (sharded jit) are exclusive;'
                     f' got axis_name={axis_name!r} and a mesh.')
  if mesh is None:
    if shard_axis is not None:
      raise ValueError('shard_axis needs mesh=; got mesh=None.')
    return None
  if not isinstance(mesh, Mesh):
    raise TypeError(f'mesh must be a jax.sharding.Mesh, got {mesh!r}.')
  axes = mesh.axis_names if shard_axis is None else (
      (shard_axis,) if isinstance(shard_axis, str) else tuple(shard_axis))
  for axis in axes:
    if axis not in mesh.axis_names:
      raise ValueError(f'shard_axis {axis!r} is not an axis of the mesh'
                       f' {mesh.axis_names}.')
  return tuple(axes)


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


def replicate_explicit(x: jax.Array) -> tuple[jax.Array, Any]:
  """Replicates an explicitly sharded `x`; returns it and a restorer.

  With explicit sharding (`jax.sharding.AxisType.Explicit`, the default of
  `jax.make_mesh`) a reshape that merges a sharded axis, or a matmul that
  contracts one, is a type error; the LMO therefore sees whole matrices, and
  its output is resharded back to `x`'s sharding.
  """
  sharding = _explicit_sharding(x)
  if sharding is None:
    return x, lambda y: y
  replicated = jax.sharding.reshard(
      x, NamedSharding(sharding.mesh, PartitionSpec()))
  return replicated, lambda y: jax.sharding.reshard(y, sharding)


def _concat(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *trees)


def _take(tree: Any, start: int, size: int) -> Any:
  return jax.tree.map(lambda x: x[start:start + size], tree)


def _pad_batch(tree: Any, total: int, mode: str) -> Any:
  def pad(x):
    extra = total - x.shape[0]
    if extra == 0:
      return x
    widths = [(0, extra)] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, widths, mode=mode)
  return jax.tree.map(pad, tree)


def _update_pmap(lmo: lmo_lib.LMO, x, state, axis_name):
  devices = jax.lax.axis_size(axis_name)
  batch = x.shape[0]
  share = math.ceil(batch / devices)
  # Padding matrices are zero (their direction is zero); padding states
  # repeat a real one so warm starts stay well conditioned.
  x = _pad_batch(x, share * devices, 'constant')
  state = _pad_batch(state, share * devices, 'edge')
  start = jax.lax.axis_index(axis_name) * share
  mine = jax.lax.dynamic_slice_in_dim(x, start, share, axis=0)
  my_state = jax.tree.map(
      lambda s: jax.lax.dynamic_slice_in_dim(s, start, share, axis=0), state)
  out, new_state = lmo.update(mine, my_state)
  gather = lambda t: jax.lax.all_gather(t, axis_name, axis=0, tiled=True)
  return _take((gather(out), jax.tree.map(gather, new_state)), 0, batch)


def _update_mesh(lmo: lmo_lib.LMO, x, state, mesh: Mesh,
                 axes: tuple[str, ...]):
  devices = math.prod(mesh.shape[a] for a in axes)
  batch = x.shape[0]
  total = math.ceil(batch / devices) * devices
  x = _pad_batch(x, total, 'constant')
  state = _pad_batch(state, total, 'edge')
  spec = lambda t: PartitionSpec(axes, *([None] * (t.ndim - 1)))
  explicit = jax.sharding.AxisType.Explicit
  if any(t == explicit for t in getattr(mesh, 'axis_types', ())):
    constrain = lambda t: jax.sharding.reshard(
        t, NamedSharding(mesh, spec(t)))
  else:
    constrain = lambda t: jax.lax.with_sharding_constraint(
        t, NamedSharding(mesh, spec(t)))
  x = constrain(x)
  state = jax.tree.map(constrain, state)
  local = jax.shard_map(
      lmo.update, mesh=mesh,
      in_specs=(spec(x), jax.tree.map(spec, state)),
      out_specs=(spec(x), jax.tree.map(spec, state)),
      check_vma=False)
  out, new_state = local(x, state)
  if any(t == explicit for t in getattr(mesh, 'axis_types', ())):
    # Explicit sharding forbids slicing a sharded axis unevenly.
    whole = NamedSharding(mesh, PartitionSpec())
    out, new_state = jax.tree.map(
        lambda t: jax.sharding.reshard(t, whole), (out, new_state))
  return _take((out, new_state), 0, batch)


def apply_lmo(
    lmo: lmo_lib.LMO,
    matrices: Sequence[jax.Array],
    states: Sequence[Any],
    *,
    axis_name: Any = None,
    mesh: Mesh | None = None,
    shard_axis: str | Sequence[str] | None = None,
) -> tuple[list[jax.Array], list[Any]]:
  """`lmo.update` on each `(batch, m, n)` matrix stack, grouped by shape.

  Args:
    lmo: the oracle. Its state arrays must have the matrix batch axis first
      (true of every LMO in `fanion_optax.lmo`).
    matrices: `(b_i, m_i, n_i)` arrays.
    states: the LMO state of each.
    axis_name: split across the devices of this mapped axis (pmap).
    mesh: split across this mesh's devices (sharded jit).
    shard_axis: the mesh axes to split over (default: all). On a 2-D
      `(data, model)` mesh prefer one axis (e.g. the FSDP axis): moving a
      matrix sharded over both axes to a stack sharded over both in one
      resharding can make XLA rematerialise it whole.

  Returns:
    The directions and new states, in the input order.
  """
  axes = check_split_options(axis_name, mesh, shard_axis)
  groups: dict[Any, list[int]] = {}
  for i, m in enumerate(matrices):
    groups.setdefault((m.shape[1:], m.dtype), []).append(i)
  out: list[Any] = [None] * len(matrices)
  new_states: list[Any] = [None] * len(matrices)
  for members in groups.values():
    sizes = [matrices[i].shape[0] for i in members]
    x = _concat([matrices[i] for i in members])
    state = _concat([states[i] for i in members])
    if axis_name is not None:
      d, s = _update_pmap(lmo, x, state, axis_name)
    elif axes is not None:
      d, s = _update_mesh(lmo, x, state, mesh, axes)
    else:
      d, s = lmo.update(x, state)
    offset = 0
    for i, size in zip(members, sizes):
      out[i], new_states[i] = _take((d, s), offset, size)
      offset += size
  return out, new_states
