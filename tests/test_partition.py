"""Tests for `fanion_optax.partition`: dimension numbers, labelling, routing.

References are plain NumPy transposes/reshapes written out per case, and
hand-computed fans and shape factors (SPEC.md §2.3).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fanion_optax as fo
from fanion_optax import partition
from fanion_optax.partition import DimensionNumbers as DN

# (shape, dimension numbers, batch axes, reduction axes, output axes)
AXES_CASES = [
  ((4, 6), DN(), (), (0,), (1,)),
  ((4, 6), DN(1, 0), (), (1,), (0,)),
  ((3, 3, 4, 8), DN((0, 1, 2), 3), (), (0, 1, 2), (3,)),
  ((5, 6, 7), DN(1, 2), (0,), (1,), (2,)),
  ((2, 3, 4, 5), DN(-2, -1), (0, 1), (2,), (3,)),
  ((4, 3, 5), DN(0, -1), (1,), (0,), (2,)),
  ((8, 2, 4), DN(0, (1, 2)), (), (0,), (1, 2)),
  ((2, 6, 3, 4), DN((-1, 1), 2), (0,), (3, 1), (2,)),
]


def _np_to_matrices(x, batch, reduction, output):
  """Independent reference: transpose then reshape to (B, fan_in, fan_out)."""
  shape = x.shape
  b = math.prod(shape[a] for a in batch)
  fi = math.prod(shape[a] for a in reduction)
  fo_ = math.prod(shape[a] for a in output)
  return np.transpose(x, batch + reduction + output).reshape(b, fi, fo_)


@pytest.mark.parametrize('shape,dn,batch,reduction,output', AXES_CASES)
def test_axes_fans_and_matrix_shape(shape, dn, batch, reduction, output):
  assert dn.axes(len(shape)) == (batch, reduction, output)
  fan_in = math.prod(shape[a] for a in reduction)
  fan_out = math.prod(shape[a] for a in output)
  n_batch = math.prod(shape[a] for a in batch)
  assert dn.fans(shape) == (fan_in, fan_out)
  assert dn.matrix_shape(shape) == (n_batch, fan_in, fan_out)


@pytest.mark.parametrize('shape,dn,batch,reduction,output', AXES_CASES)
def test_to_from_matrices_match_numpy_and_round_trip(
  shape, dn, batch, reduction, output
):
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  mats = dn.to_matrices(jnp.asarray(x))
  np.testing.assert_array_equal(
    np.asarray(mats), _np_to_matrices(x, batch, reduction, output)
  )
  back = dn.from_matrices(mats, shape)
  assert back.shape == shape
  np.testing.assert_array_equal(np.asarray(back), x)


def test_conv_matrix_view_element_layout():
  # Flax conv kernel (kh, kw, in, out): row index is (i*kw + j)*in + c.
  x = np.random.default_rng(1).standard_normal((3, 3, 4, 8))
  mats = np.asarray(DN((0, 1, 2), 3).to_matrices(jnp.asarray(x)))
  assert mats.shape == (1, 36, 8)
  for i, j, c, o in [(0, 0, 0, 0), (2, 1, 3, 7), (1, 2, 0, 5)]:
    assert mats[0, (i * 3 + j) * 4 + c, o] == np.float32(x[i, j, c, o])


def test_stacked_matrix_view_keeps_each_layer():
  x = np.random.default_rng(2).standard_normal((3, 5, 7)).astype(np.float32)
  mats = np.asarray(DN(1, 2).to_matrices(jnp.asarray(x)))
  for layer in range(3):
    np.testing.assert_array_equal(mats[layer], x[layer])


@pytest.mark.parametrize(
  'dn,ndim,match',
  [
    (DN(0, 2), 2, 'output_axes'),
    (DN(-3, 1), 2, 'reduction_axes'),
    (DN((), 1), 2, 'reduction_axes.*empty'),
    (DN(0, ()), 2, 'output_axes.*empty'),
    (DN((0, 0), 1), 3, 'repeats'),
    (DN((0, 1), 1), 3, 'overlap'),
    (DN(-1, 1), 2, 'overlap'),
  ],
)
def test_axes_errors(dn, ndim, match):
  with pytest.raises(ValueError, match=match):
    dn.axes(ndim)


def test_path_name():
  path = (
    jax.tree_util.DictKey('layers'),
    jax.tree_util.SequenceKey(2),
    jax.tree_util.GetAttrKey('kernel'),
    jax.tree_util.FlattenedIndexKey(3),
  )
  assert partition.path_name(path) == 'layers/2/kernel/3'
  assert partition.path_name(()) == ''
  tree = {'enc': [{'w': 1.0}, {'w': 2.0}], 'head': {'kernel': 3.0}}
  names = [
    partition.path_name(p)
    for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]
  assert names == ['enc/0/w', 'enc/1/w', 'head/kernel']


@pytest.mark.parametrize(
  'fan_in,fan_out,mode,expected',
  [
    (6, 10, 'muon', math.sqrt(10 / 6)),
    (10, 6, 'muon', 1.0),
    (36, 8, 'muon', 1.0),
    (6, 10, 'rms', 0.2 * math.sqrt(10)),
    (36, 8, 'rms', 0.2 * 6.0),
    (6, 10, None, 1.0),
  ],
)
def test_shape_factor(fan_in, fan_out, mode, expected):
  assert partition.shape_factor(fan_in, fan_out, mode) == pytest.approx(
    expected, rel=1e-12
  )


def test_shape_factor_rejects_unknown_mode():
  with pytest.raises(ValueError, match='shape_scale'):
    partition.shape_factor(3, 4, 'spectral')


def _params():
  return {
    'w': jnp.zeros((4, 6)),
    'b': jnp.zeros((6,)),
    's': jnp.zeros(()),
    'conv': jnp.zeros((3, 3, 2, 4)),
    'embed': {'embedding': jnp.zeros((10, 4))},
    'stack': jnp.zeros((3, 5, 7)),
  }


def test_resolve_default_marks_2d_leaves():
  specs = partition.resolve_dimension_numbers(_params())
  assert specs['w'] == DN() and specs['embed']['embedding'] == DN()
  for name in ('b', 's', 'conv', 'stack'):
    assert specs[name] is None
  # The output has the structure of the params (None leaves included).
  assert jax.tree.structure(
    specs, is_leaf=lambda x: x is None
  ) == jax.tree.structure(_params())


@pytest.mark.parametrize(
  'exclude',
  [
    'embed',
    ['embed'],
    ('^embed/',),
    ['emb.d/embedding$', 'nomatch'],
    'bedding',
  ],
)  # searched, not matched
def test_resolve_exclude(exclude):
  specs = partition.resolve_dimension_numbers(_params(), exclude=exclude)
  assert specs['embed']['embedding'] is None
  assert specs['w'] == DN()


def test_resolve_exclude_does_not_match_other_leaves():
  specs = partition.resolve_dimension_numbers(_params(), exclude=['^w$'])
  assert specs['w'] is None
  assert specs['embed']['embedding'] == DN()


def test_resolve_tree_prefix_tree_and_callable_agree():
  params = _params()
  full = {
    'w': DN(),
    'b': None,
    's': None,
    'conv': DN((0, 1, 2), 3),
    'embed': {'embedding': None},
    'stack': DN(1, 2),
  }
  prefix = dict(full, embed=None)
  by_ndim = {2: DN(), 3: DN(1, 2), 4: DN((0, 1, 2), 3)}
  fn = lambda p: {
    **jax.tree.map(lambda x: by_ndim.get(x.ndim), p),
    'embed': None,
  }
  for spec in (full, prefix, fn):
    specs = partition.resolve_dimension_numbers(params, spec)
    assert specs == full


def test_resolve_single_dimension_numbers_for_all_leaves():
  params = {'a': jnp.zeros((2, 3, 4)), 'b': jnp.zeros((5, 3, 4))}
  specs = partition.resolve_dimension_numbers(params, DN(1, 2))
  assert specs == {'a': DN(1, 2), 'b': DN(1, 2)}


def test_resolve_error_names_parameter_path():
  params = {'layer': {'kernel': jnp.zeros((4, 6))}, 'bias': jnp.zeros(6)}
  spec = {'layer': {'kernel': DN(0, 2)}, 'bias': None}
  with pytest.raises(ValueError, match=r'layer/kernel.*\(4, 6\)'):
    partition.resolve_dimension_numbers(params, spec)


def test_resolve_single_dimension_numbers_on_vector_fails():
  with pytest.raises(ValueError, match="'b'"):
    partition.resolve_dimension_numbers(
      {'w': jnp.zeros((3, 4)), 'b': jnp.zeros(4)}, DN()
    )


def test_resolve_mismatched_tree():
  with pytest.raises(ValueError, match='dimension_numbers'):
    partition.resolve_dimension_numbers({'w': jnp.zeros((3, 4))}, {'v': DN()})


def test_resolve_wrong_spec_type():
  with pytest.raises(TypeError, match="'w'"):
    partition.resolve_dimension_numbers(
      {'w': jnp.zeros((3, 4))}, {'w': 'matrix'}
    )


def test_check_exclude():
  assert partition.check_exclude('a') == ('a',)
  assert partition.check_exclude(['a', 'b']) == ('a', 'b')
  with pytest.raises(ValueError, match='exclude'):
    partition.check_exclude(['(unclosed'])
  with pytest.raises(TypeError, match='exclude'):
    partition.check_exclude([3])


def test_select():
  tree = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  specs = {'w': DN(), 'b': None}
  mats = partition.select(tree, specs, matrices=True)
  rest = partition.select(tree, specs, matrices=False)
  assert mats['b'] is None and rest['w'] is None
  np.testing.assert_array_equal(mats['w'], tree['w'])
  np.testing.assert_array_equal(rest['b'], tree['b'])


def _has_masked_node(tree):
  leaves = jax.tree.leaves(
    tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )
  return any(isinstance(x, optax.MaskedNode) for x in leaves)


def test_route_sends_leaves_to_the_right_transformation():
  params = _params()
  grads = jax.tree.map(lambda x: jnp.ones_like(x), params)
  tx = partition.route(optax.scale(2.0), optax.scale(-3.0), exclude='embed')
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  expected = {
    'w': 2.0,
    'b': -3.0,
    's': -3.0,
    'conv': -3.0,
    'embed': {'embedding': -3.0},
    'stack': -3.0,
  }
  jax.tree.map(
    lambda u, g, e: np.testing.assert_array_equal(u, e * np.asarray(g)),
    updates,
    grads,
    expected,
  )
  assert isinstance(state, partition.RoutedState)
  assert not _has_masked_node(state) and not _has_masked_node(updates)


def test_route_with_dimension_numbers_and_stateful_inner():
  params = _params()
  specs = lambda p: jax.tree.map(
    lambda x: {3: DN(1, 2), 4: DN((0, 1, 2), 3)}.get(x.ndim), p
  )
  tx = partition.route(
    optax.trace(0.5), optax.sgd(1.0), dimension_numbers=specs
  )
  state = tx.init(params)
  # The matrix transformation keeps traces only for the 3-D/4-D leaves.
  trace = state.matrices.trace
  assert trace['w'] is None and trace['b'] is None
  assert trace['stack'].shape == (3, 5, 7) and trace['conv'].shape == (
    3,
    3,
    2,
    4,
  )
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
  # trace: 1 + 0.5 = 1.5 after two steps; sgd(1.0): -1.
  np.testing.assert_allclose(updates['stack'], 1.5)
  np.testing.assert_allclose(updates['conv'], 1.5)
  np.testing.assert_allclose(updates['w'], -1.0)
  np.testing.assert_allclose(updates['s'], -1.0)


def test_route_passes_extra_args():
  seen = {}

  def update_fn(updates, state, params=None, *, value=None):
    del params
    seen['value'] = value
    return updates, state

  inner = optax.GradientTransformationExtraArgs(
    optax.init_empty_state, update_fn
  )
  tx = partition.route(inner, optax.identity())
  params = {'w': jnp.ones((2, 3))}
  tx.update(params, tx.init(params), params, value=7)
  assert seen['value'] == 7


def test_public_dimension_numbers_is_partition_class():
  assert fo.DimensionNumbers is DN


def test_bare_array_parameters_route_through_aliases():
  x = jnp.arange(12.0).reshape(3, 4) / 10
  for tx in (
    fo.muon(0.01, weight_decay=0.1, polar_method='svd'),
    fo.fanion(0.01, 1, top_k_method='svd'),
  ):
    state = tx.init(x)
    updates, _ = tx.update(jnp.ones_like(x), state, x)
    assert updates.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(updates)))
  bias = jnp.ones(4)
  tx = fo.muon(0.01, fallback=optax.adamw(0.01))
  updates, _ = tx.update(bias, tx.init(bias), bias)
  # A lone vector goes to AdamW: first step moves each entry by lr.
  np.testing.assert_allclose(updates, -0.01 * np.ones(4), rtol=1e-4)
  # The default fallback is AdamW at its own 3e-4, not the matrix lr.
  tx = fo.muon(0.01)
  updates, _ = tx.update(bias, tx.init(bias), bias)
  np.testing.assert_allclose(updates, -3e-4 * np.ones(4), rtol=1e-4)
