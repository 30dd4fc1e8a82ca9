"""Compressed data parallel (`distributed.compressed`): local gradients, thin
all-reduces, and the one-device run on the mean gradient."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fanion_optax as fo

N_DEV = 8
K = 2
STEPS = 10
LionK = fo.transforms.ScaleByLionKState

pytestmark = pytest.mark.skipif(
  jax.device_count() < N_DEV,
  reason='needs XLA_FLAGS=--xla_force_host_platform_device_count=8 '
  '(set by tests/conftest.py before JAX starts)',
)

# Two low-rank matrices (wide and tall), one with min(m, n) <= K (the full
# polar factor: its gradient is averaged whole) and a vector for AdamW.
# NumPy data: eager jax.random would compile once per shape.
SHAPES = {'wide': (8, 16), 'tall': (16, 6), 'small': (2, 8), 'bias': (16,)}
LOW_RANK = ('wide', 'tall')


def _normal(seed, shapes):
  rng = np.random.default_rng(seed)
  return {
    name: rng.standard_normal(shape).astype(np.float32)
    for name, shape in shapes.items()
  }


PARAMS = _normal(0, SHAPES)


def _local_grads(step):
  """`(N_DEV, ...)` per leaf: a different gradient on every device."""
  return _normal(100 + step, {k: (N_DEV, *s) for k, s in SHAPES.items()})


@functools.cache
def _optimizer(error_feedback, split):
  # Error feedback runs with the adaptive scale: both cross devices.
  return fo.fanion(
    0.05,
    K,
    weight_decay=0.1,
    error_feedback=error_feedback,
    adaptive=error_feedback,
    split=split,
  )


@functools.cache
def _one_device(error_feedback):
  """The one-device run on the mean gradient: the final (params, state)."""
  tx = _optimizer(error_feedback, None)
  update = jax.jit(tx.update)
  params, state = PARAMS, tx.init(PARAMS)
  for t in range(STEPS):
    mean = jax.tree.map(lambda g: g.mean(0), _local_grads(t))
    updates, state = update(mean, state, params)
    params = jax.tree.map(jnp.add, params, updates)
  return params, state


def _mesh():
  return jax.make_mesh((N_DEV,), ('batch',), axis_types=(AxisType.Auto,))


@functools.cache
def _pmap_update(error_feedback):
  """The `pmap` step and the replicated initial `(params, state)`."""
  tx = _optimizer(error_feedback, fo.distributed.compressed('batch'))
  sharding = NamedSharding(_mesh(), P('batch'))
  # Inputs placed as pmap places its outputs: one compilation, not two.
  replicate = lambda t: jax.device_put(
    jax.tree.map(lambda x: np.stack([x] * N_DEV), t), sharding
  )
  update = jax.pmap(tx.update, axis_name='batch')
  step = lambda t, p, s: update(jax.device_put(_local_grads(t), sharding), s, p)
  return step, replicate(PARAMS), replicate(tx.init(PARAMS))


def _run_pmap(error_feedback, steps, params=None, state=None, start=0):
  """Per-device `(params, state)` (stacked on axis 0) after `steps` steps."""
  step, params0, state0 = _pmap_update(error_feedback)
  params = params0 if params is None else params
  state = state0 if state is None else state
  for t in range(start, start + steps):
    updates, state = step(t, params, state)
    params = jax.tree.map(jnp.add, params, updates)
  return params, state


def _state_specs(state):
  """Each device's momentum over 'batch' (stacked along axis 0); the
  subspaces, counts and the fallback's state replicated."""

  def spec(node):
    if isinstance(node, LionK):
      return node._replace(
        count=P(),
        mu=jax.tree.map(lambda _: P('batch'), node.mu),
        lmo_state=jax.tree.map(lambda _: P(), node.lmo_state),
      )
    return jax.tree.map(lambda _: P(), node)

  return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, LionK))


def _tile_momentum(state):
  """The one-device state with every device's momentum stacked on axis 0."""
  tile = lambda m: jnp.concatenate([m] * N_DEV, axis=0)
  return jax.tree.map(
    lambda n: (
      n._replace(mu=jax.tree.map(tile, n.mu)) if isinstance(n, LionK) else n
    ),
    state,
    is_leaf=lambda x: isinstance(x, LionK),
  )


@functools.cache
def _shard_map_update(error_feedback):
  """The compiled `shard_map` step (checked replication), and the initial
  state (momenta stacked over 'batch') and params, placed."""
  tx = _optimizer(error_feedback, fo.distributed.compressed('batch'))
  mesh = _mesh()
  state = _tile_momentum(tx.init(PARAMS))
  specs = _state_specs(state)
  grads = _flat_grads(0)
  step = jax.jit(
    jax.shard_map(
      tx.update,
      mesh=mesh,
      in_specs=(P('batch'), specs, P()),
      out_specs=(P(), specs),
    )
  )
  place = lambda t, s: jax.device_put(
    t, jax.tree.map(lambda p: NamedSharding(mesh, p), s)
  )
  state = place(state, specs)
  params = place(PARAMS, jax.tree.map(lambda _: P(), PARAMS))
  compiled = step.lower(grads, state, params).compile()
  return compiled, state, params


def _flat_grads(step):
  """Local gradients concatenated along axis 0 (device d's rows d·m…)."""
  return jax.tree.map(
    lambda g: g.reshape(N_DEV * g.shape[1], *g.shape[2:]), _local_grads(step)
  )


def _momentum(state):
  return state.matrices[0].mu


def _assert_close(actual, expected, atol=1e-5):
  for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4
    )


def _check_against_one_device(params, momenta, state, error_feedback):
  """One device's `params` and `state`; `momenta`: `(N_DEV, ...)` leaves."""
  ref_params, ref_state = _one_device(error_feedback)
  _assert_close(params, ref_params)
  # Only the mean momentum is the one-device momentum.
  _assert_close(
    jax.tree.map(lambda m: m.mean(0), momenta), _momentum(ref_state)
  )
  _assert_close(state.matrices[0].lmo_state, ref_state.matrices[0].lmo_state)
  _assert_close(state.fallback, ref_state.fallback)


@pytest.mark.parametrize(
  'mapping, error_feedback',
  [
    # The fast case is the one with the most machinery (shard_map, error
    # feedback); the docstring example of `compressed` covers vmap.
    ('shard_map', True),
    pytest.param('pmap', False, marks=pytest.mark.slow),
    pytest.param('pmap', True, marks=pytest.mark.slow),
    pytest.param('shard_map', False, marks=pytest.mark.slow),
  ],
)
def test_equals_one_device_on_mean_gradient(mapping, error_feedback):
  """10 steps with a different gradient on every device: the parameters
  (low-rank, full-rank and AdamW leaves), the warm-start subspaces, the
  fallback's state and the mean momentum equal the one-device run on the
  mean gradient (error feedback runs with the adaptive scale)."""
  if mapping == 'pmap':
    params, state = _run_pmap(error_feedback, STEPS)
    momenta = _momentum(state)
    for d in range(N_DEV):
      mine = lambda t: jax.tree.map(lambda x: x[d], t)
      _check_against_one_device(
        mine(params), momenta, mine(state), error_feedback
      )
  else:
    compiled, state, params = _shard_map_update(error_feedback)
    for t in range(STEPS):
      updates, state = compiled(_flat_grads(t), state, params)
      params = jax.tree.map(jnp.add, params, updates)
    momenta = jax.tree.map(
      lambda m: m.reshape(N_DEV, -1, *m.shape[1:]), _momentum(state)
    )
    _check_against_one_device(params, momenta, state, error_feedback)
  # Each device kept its own momentum: they differ.
  for name in LOW_RANK:
    assert not np.allclose(momenta[name][0], momenta[name][1], atol=1e-3)


def test_restoring_the_mean_momentum_keeps_the_trajectory():
  """A checkpoint may keep the devices' mean momentum only: restored on
  every device, the next steps give the parameters of the run that kept
  each device's own."""
  half = STEPS // 2
  params, state = _run_pmap(False, half)
  lion = state.matrices[0]
  mean = jax.tree.map(
    lambda m: np.stack([np.asarray(m).mean(0)] * N_DEV), lion.mu
  )
  restored = jax.device_put(
    state._replace(matrices=(lion._replace(mu=mean), *state.matrices[1:])),
    NamedSharding(_mesh(), P('batch')),
  )
  params, _ = _run_pmap(False, STEPS - half, params, restored, start=half)
  expected, _ = _one_device(False)
  for d in range(N_DEV):
    _assert_close(jax.tree.map(lambda x: x[d], params), expected)


_SHAPE = re.compile(r'\b[a-z]+\d*\[([\d,]*)\]')


def _all_reduce_sizes(hlo):
  """Element counts of every all-reduce result (combined ones split)."""
  sizes = []
  for line in hlo.splitlines():
    match = re.search(r'=\s*(.*?)\s+all-reduce(?:-start)?\(', line)
    if match:
      sizes += [
        int(np.prod([int(d) for d in dims.split(',') if d]))
        for dims in _SHAPE.findall(match.group(1))
      ]
  return sizes


def test_compiled_step_all_reduces_only_thin_blocks():
  """The compiled `shard_map` step never all-reduces a low-rank matrix:
  only `m×k` and `n×k` blocks, per-matrix scalars (the shared scale, the
  adaptive inner product), the full-rank matrix and the AdamW vector."""
  compiled, _, _ = _shard_map_update(True)
  sizes = _all_reduce_sizes(compiled.as_text())
  thin = {SHAPES[name][axis] * K for name in LOW_RANK for axis in (0, 1)}
  averaged = {int(np.prod(SHAPES[name])) for name in ('small', 'bias')}
  assert set(sizes) <= thin | averaged | {1}, sizes
  assert thin <= set(sizes), sizes
  for name in LOW_RANK:
    assert int(np.prod(SHAPES[name])) not in sizes


def test_full_rank_and_mixture_lmos_are_refused():
  split = fo.distributed.compressed('batch')
  for make, lmo in (
    (lambda: fo.muon(0.02, split=split), 'Spectral'),
    (lambda: fo.f_fanion(0.02, 2, split=split), 'Mixture'),
    (lambda: fo.scale_by_lmo(fo.lmo.frobenius(), split=split), 'Frobenius'),
  ):
    with pytest.raises(
      ValueError,
      match=rf"split=Compressed\(axis_name='batch'\) needs a compressible"
      rf' LMO, ky_fan\(k\).*got {lmo}\(',
    ):
      make()
  with pytest.raises(ValueError, match='needs a compressible LMO'):
    fo.distributed.apply_lmo(
      fo.lmo.spectral(), [jnp.ones((1, 2, 3))], [None], split=split
    )
  with pytest.raises(TypeError, match='axis_name must be a hashable'):
    fo.distributed.compressed(None)
  fo.distributed.check_split(split)  # accepted


def test_a_varying_subspace_state_is_refused_under_shard_map():
  """The warm-start state is the same on every device; typed as varying it
  would make the directions vary: a clear error, not a loop type error."""
  tx = _optimizer(False, fo.distributed.compressed('batch'))
  state = jax.tree.map(lambda x: np.stack([x] * N_DEV), tx.init(PARAMS))
  step = jax.shard_map(
    lambda g, s, p: tx.update(g, jax.tree.map(lambda x: x[0], s), p),
    mesh=_mesh(),
    in_specs=(P('batch'), P('batch'), P()),
    out_specs=(P(), P()),
  )
  with pytest.raises(ValueError, match='must be\\s+replicated over'):
    jax.eval_shape(step, _flat_grads(0), state, PARAMS)
