"""fo.communication: collective bytes read from compiled HLO, against
closed forms for programs whose communication is known."""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fanion_optax as fo

N_DEV = 8
pytestmark = pytest.mark.skipif(
  jax.device_count() < N_DEV, reason='needs 8 host devices (conftest.py)'
)


def _mesh():
  return jax.make_mesh((N_DEV,), ('d',), axis_types=(AxisType.Auto,))


def _compiled(f, *args):
  return jax.jit(f).lower(*args).compile()


def _mapped(f):
  return jax.shard_map(f, mesh=_mesh(), in_specs=P('d'), out_specs=P('d'))


def test_all_reduce_of_a_tree_counts_every_array():
  psum = _mapped(functools.partial(jax.lax.psum, axis_name='d'))
  tree = {
    'a': jnp.ones((N_DEV * 3, 5)),
    'b': jnp.ones((N_DEV, 7), jnp.int32),
  }
  compiled = _compiled(psum, tree)
  # Per device: a (3, 5) float32 block and a (1, 7) int32 block.
  assert fo.communication.collective_bytes(compiled) == (3 * 5 + 7) * 4
  assert fo.communication.collective_bytes(compiled, ('all-gather',)) == 0
  largest, line = fo.communication.largest_collective(compiled)
  assert largest == 3 * 5 * 4 and 'all-reduce' in line


def test_a_loop_counts_once_per_trip():
  def body(x):
    return jax.lax.fori_loop(0, 3, lambda _, y: y + jax.lax.psum(y, 'd'), x)

  compiled = _compiled(_mapped(body), jnp.ones((N_DEV, 16)))
  assert fo.communication.collective_bytes(compiled) == 3 * 16 * 4


def test_a_loop_of_run_time_length_counts_unknown_trip_count():
  def body(x, n):
    return jax.lax.fori_loop(0, n, lambda _, y: y + jax.lax.psum(y, 'd'), x)

  f = jax.shard_map(
    body, mesh=_mesh(), in_specs=(P('d'), P()), out_specs=P('d')
  )
  compiled = _compiled(f, jnp.ones((N_DEV, 16)), jnp.int32(2))
  for trips in (1, 5):
    counted = fo.communication.collective_bytes(
      compiled, unknown_trip_count=trips
    )
    assert counted == trips * 16 * 4


def test_all_gather_of_a_sharded_matrix_is_the_whole_matrix():
  mesh = _mesh()
  x = jax.device_put(jnp.ones((64, 32)), NamedSharding(mesh, P('d', None)))
  gather = lambda y: jax.lax.with_sharding_constraint(
    y, NamedSharding(mesh, P())
  )
  compiled = _compiled(gather, x)
  assert fo.communication.collective_bytes(compiled, ('all-gather',)) == (
    64 * 32 * 4
  )
  assert fo.communication.largest_collective(compiled)[0] == 64 * 32 * 4


def test_bad_arguments():
  with pytest.raises(ValueError, match='opcodes must be among'):
    fo.communication.collective_bytes('ENTRY %m {\n}', ('all-sum',))
  with pytest.raises(ValueError, match='no ENTRY computation'):
    fo.communication.collective_bytes('HloModule m')
  assert fo.communication.largest_collective('HloModule m') == (0, '')


def test_largest_collective_per_matrix_of_a_stack():
  psum = _mapped(functools.partial(jax.lax.psum, axis_name='d'))
  compiled = _compiled(psum, jnp.ones((N_DEV * 4, 3, 5)))
  assert fo.communication.largest_collective(compiled)[0] == 4 * 3 * 5 * 4
  per_matrix = fo.communication.largest_collective(compiled, trailing_dims=2)
  assert per_matrix[0] == 3 * 5 * 4
  assert fo.communication.largest_collective(compiled, trailing_dims=0)[0] == 4
