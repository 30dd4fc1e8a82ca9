"""Bytes a compiled step moves between devices, read from its HLO.

A low-rank optimizer is chosen for what it does not send: compressed data
parallel (`fanion_optax.distributed.compressed`) all-reduces thin `m×k` and
`n×k` blocks instead of gradients, and the sharded power iteration moves
thin blocks instead of gathering matrices. These functions check that on
the compiled program itself (deterministic, no devices or timing needed):
the sizes of the results of its collectives, with loops counted once per
trip.

Example:
  >>> import functools, jax, jax.numpy as jnp
  >>> from jax.sharding import PartitionSpec as P
  >>> import fanion_optax as fo
  >>> mesh = jax.make_mesh((1,), ("data",))
  >>> mean = jax.shard_map(
  ...     functools.partial(jax.lax.pmean, axis_name="data"),
  ...     mesh=mesh, in_specs=P(), out_specs=P())
  >>> compiled = jax.jit(mean).lower(jnp.ones((4, 8))).compile()
  >>> fo.communication.collective_bytes(compiled)  # 4·8 float32
  128
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any
from typing import Literal

from fanion_optax import _validate

Collective = Literal[
  'all-reduce',
  'all-gather',
  'all-to-all',
  'reduce-scatter',
  'collective-permute',
]
COLLECTIVES: tuple[Collective, ...] = (
  'all-reduce',
  'all-gather',
  'all-to-all',
  'reduce-scatter',
  'collective-permute',
)

_DTYPE_BYTES = {
  'pred': 1,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}
_HEADER = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_INSTRUCTION = re.compile(
  r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z][\w\-]*)\('
)
_SHAPE = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _text(compiled: Any) -> str:
  return compiled if isinstance(compiled, str) else compiled.as_text()


def _bytes(result: str) -> int:
  return sum(
    math.prod(int(d) for d in dims.split(',') if d) * _DTYPE_BYTES[dtype]
    for dtype, dims in _SHAPE.findall(result)
    if dtype in _DTYPE_BYTES
  )


def _wanted(opcodes: Sequence[str]) -> set[str]:
  unknown = sorted(set(opcodes) - set(COLLECTIVES))
  if unknown:
    raise ValueError(
      f'opcodes must be among {COLLECTIVES}, got {unknown} in {opcodes!r}.'
    )
  return set(opcodes) | {f'{op}-start' for op in opcodes}


def collective_bytes(
  compiled: Any,
  opcodes: Sequence[Collective] = ('all-reduce',),
  unknown_trip_count: int = 1,
) -> int:
  """Bytes per device that the `opcodes` collectives of one step yield.

  Sums the result sizes of those instructions (and their asynchronous
  `-start` forms), entering called computations: a `while` body counts once
  per trip (XLA's `known_trip_count`, else `unknown_trip_count`, for a loop
  whose count is decided at run time, such as the Ky Fan LMO's cold/warm
  subspace iterations), a `conditional` its costliest branch, a combined
  collective every array of its tuple. For an all-reduce each device sends
  and receives about its result size, whatever the algorithm; for an
  all-gather the result is what each device ends up holding.

  Args:
    compiled: `jax.jit(f).lower(...).compile()`, or its `as_text()`.
    opcodes: the collectives to count (from `COLLECTIVES`).
    unknown_trip_count: trips of a `while` loop without a known count.

  Returns:
    The bytes summed over those instructions' results.

  Raises:
    ValueError: an opcode outside `COLLECTIVES`, a negative
      `unknown_trip_count`, or text without an ENTRY computation (pass the
      compiled module, not the lowered one).
  """
  wanted = _wanted(opcodes)
  unknown_trip_count = _validate.check_int(
    'unknown_trip_count', unknown_trip_count, minimum=0
  )
  bodies: dict[str, list[str]] = {}
  entry = None
  body: list[str] | None = None
  for line in _text(compiled).splitlines():
    if line and not line[0].isspace():
      header = _HEADER.match(line)
      body = None if header is None else bodies.setdefault(header[2], [])
      if header is not None and header[1]:
        entry = header[2]
    elif body is not None:
      body.append(line)
  if entry is None:
    raise ValueError(
      'compiled has no ENTRY computation: pass jax.jit(f).lower(...)'
      '.compile() or its as_text().'
    )
  totals: dict[str, int] = {}

  def total(name: str) -> int:
    if name not in totals:
      totals[name] = sum(map(instruction, bodies.get(name, ())))
    return totals[name]

  def instruction(line: str) -> int:
    match = _INSTRUCTION.match(line)
    if match is None:
      return 0
    result, opcode = match.groups()
    if opcode in wanted:
      return _bytes(result)
    if opcode == 'while':
      trips = _TRIP_COUNT.search(line)
      count = unknown_trip_count if trips is None else int(trips[1])
      body = re.search(r'body=%?([\w.\-]+)', line)
      return 0 if body is None else count * total(body[1])
    if opcode == 'conditional':
      listed = re.search(r'branch_computations=\{([^}]*)\}', line)
      names = re.findall(
        r'%?([\w.\-]+)' if listed else r'_computation=%?([\w.\-]+)',
        listed[1] if listed else line,
      )
      return max(map(total, names), default=0)
    return sum(map(total, re.findall(r'(?:calls|to_apply)=%?([\w.\-]+)', line)))

  return total(entry)


def largest_collective(
  compiled: Any,
  opcodes: Sequence[Collective] = COLLECTIVES,
  *,
  trailing_dims: int | None = None,
) -> tuple[int, str]:
  """The largest array, in bytes, that any one `opcodes` instruction yields.

  A combined collective's tuple counts array by array: this asks whether
  some collective moves a whole matrix, not how many thin blocks XLA
  combined into one instruction.

  Args:
    compiled: `jax.jit(f).lower(...).compile()`, or its `as_text()`.
    opcodes: the collectives to look at (from `COLLECTIVES`).
    trailing_dims: count only each array's last `trailing_dims` axes (2:
      one matrix of a batch that stacks same-shape matrices on leading
      axes, as `fanion_optax.distributed.apply_lmo` does); `None`: all.

  Returns:
    `(bytes, instruction text)`; `(0, '')` when there is none.

  Raises:
    ValueError: an opcode outside `COLLECTIVES`, or a negative
      `trailing_dims`.
  """
  wanted = _wanted(opcodes)
  if trailing_dims is not None:
    trailing_dims = _validate.check_int(
      'trailing_dims', trailing_dims, minimum=0
    )
  largest = (0, '')
  for line in _text(compiled).splitlines():
    match = _INSTRUCTION.match(line)
    if match is None or match[2] not in wanted:
      continue
    for dtype, dims in _SHAPE.findall(match[1]):
      shape = [d for d in dims.split(',') if d]
      if trailing_dims is not None:
        shape = shape[len(shape) - trailing_dims :] if trailing_dims else []
      size = _bytes(f'{dtype}[{",".join(shape)}]')
      largest = max(largest, (size, line.strip()))
  return largest
