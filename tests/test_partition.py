"""Tests for `fanion_optax.partition`: dimension numbers, labelling, routing.

References are plain NumPy transposes/reshapes written out per case, and
hand-computed fans and shape factors (SPEC.md §2.3).
"""

import ast
import math
import re
import warnings

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


# Block splits (SPEC §2.5): (shape, dimension numbers, batch, reduction and
# output axes, row and column block sizes, expected stack shapes).
BLOCK_CASES = [
  ((4, 12), DN(0, 1, output_blocks=3), (), (0,), (1,), (4,), (4, 4, 4),
   ((3, 4, 4),)),
  ((6, 16), DN(0, 1, output_blocks=(8, 4, 4)), (), (0,), (1,), (6,),
   (8, 4, 4), ((1, 6, 8), (2, 6, 4))),
  ((3, 8, 5), DN(1, 2, reduction_blocks=2), (0,), (1,), (2,), (4, 4), (5,),
   ((6, 4, 5),)),
  ((2, 8, 10), DN(1, 2, reduction_blocks=(2, 6), output_blocks=(3, 3, 4)),
   (0,), (1,), (2,), (2, 6), (3, 3, 4),
   ((4, 2, 3), (2, 2, 4), (4, 6, 3), (2, 6, 4))),
  ((2, 3, 8), DN((0, 1), 2, output_blocks=[4, 4]), (), (0, 1), (2,), (6,),
   (4, 4), ((2, 6, 4),)),
  ((8, 2, 3), DN(-1, 0, output_blocks=(2, 6)), (1,), (2,), (0,), (3,),
   (2, 6), ((2, 3, 2), (2, 3, 6))),
]  # fmt: skip


def _np_stacks(x, batch, reduction, output, rows, cols):
  """Independent reference: slice every block of every matrix out of the
  NumPy `(B, fan_in, fan_out)` view, group by block shape in row-major order
  of first appearance, batch entry first within a group."""
  m = _np_to_matrices(x, batch, reduction, output)
  blocks = []
  for r_i, r in enumerate(rows):
    for c_i, c in enumerate(cols):
      i, j = sum(rows[:r_i]), sum(cols[:c_i])
      blocks.append(((r, c), m[:, i : i + r, j : j + c]))
  shapes = list(dict.fromkeys(s for s, _ in blocks))
  return [
    np.stack([b for s, b in blocks if s == shape], axis=1).reshape(-1, *shape)
    for shape in shapes
  ]


@pytest.mark.parametrize(
  'shape,dn,batch,reduction,output,rows,cols,stacks', BLOCK_CASES
)
def test_blocks_to_stacks_match_numpy_and_round_trip(
  shape, dn, batch, reduction, output, rows, cols, stacks
):
  assert dn.stack_shapes(shape) == stacks
  x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
  got = dn.to_stacks(jnp.asarray(x))
  want = _np_stacks(x, batch, reduction, output, rows, cols)
  assert len(got) == len(want) == len(stacks)
  for g, w, s in zip(got, want, stacks):
    assert g.shape == s
    np.testing.assert_array_equal(np.asarray(g), w)
  back = dn.from_stacks(got, shape)
  assert back.shape == shape
  np.testing.assert_array_equal(np.asarray(back), x)


def test_equal_blocks_are_one_stack_of_head_matrices():
  # A head-packed (d, h·d_h) kernel: head t is columns [t·d_h, (t+1)·d_h).
  x = np.random.default_rng(4).standard_normal((5, 12)).astype(np.float32)
  dn = DN(0, 1, output_blocks=4)
  assert dn.fans(x.shape) == (5, 3)
  assert dn.matrix_shape(x.shape) == (4, 5, 3)
  mats = np.asarray(dn.to_matrices(jnp.asarray(x)))
  for head in range(4):
    np.testing.assert_array_equal(mats[head], x[:, 3 * head : 3 * head + 3])
  np.testing.assert_array_equal(dn.from_matrices(mats, x.shape), x)
  # Equal sizes as a tuple are the same split as the count.
  np.testing.assert_array_equal(
    DN(0, 1, output_blocks=(3, 3, 3, 3)).to_matrices(jnp.asarray(x)), mats
  )


def test_unequal_blocks_refuse_the_single_matrix_view():
  dn = DN(0, 1, output_blocks=(8, 4, 4))
  for call in (
    lambda: dn.matrix_shape((6, 16)),
    lambda: dn.fans((6, 16)),
    lambda: dn.to_matrices(jnp.zeros((6, 16))),
    lambda: dn.from_matrices(jnp.zeros((1, 6, 8)), (6, 16)),
  ):
    with pytest.raises(ValueError, match='2 shapes.*stack_shapes'):
      call()
  with pytest.raises(ValueError, match='as 2 stacks, got 1'):
    dn.from_stacks((jnp.zeros((1, 6, 8)),), (6, 16))


def test_blocks_list_is_stored_as_a_tuple():
  assert DN(0, 1, output_blocks=[2, 2]) == DN(0, 1, output_blocks=(2, 2))
  assert hash(DN(0, 1, output_blocks=[2, 2])) == hash(
    DN(0, 1, output_blocks=(2, 2))
  )


@pytest.mark.parametrize(
  'kwargs,error,match',
  [
    (dict(output_blocks=0), ValueError, r'output_blocks must be .*got 0\.'),
    (
      dict(reduction_blocks=(4, 0)),
      ValueError,
      r'reduction_blocks must be .*got \(4, 0\)',
    ),
    (dict(output_blocks=(-2, 4)), ValueError, r'output_blocks.*\(-2, 4\)'),
    (dict(output_blocks=()), ValueError, r'output_blocks.*non-empty.*\(\)'),
    (dict(output_blocks=2.0), TypeError, r'output_blocks.*got 2\.0'),
    (dict(output_blocks='3'), TypeError, r"output_blocks.*got '3'"),
    (dict(reduction_blocks=True), TypeError, r'reduction_blocks.*got True'),
    (dict(output_blocks=(2, 1.5)), TypeError, r'output_blocks.*\(2, 1\.5\)'),
  ],
)
def test_bad_blocks_fail_at_construction(kwargs, error, match):
  with pytest.raises(error, match=match):
    DN(0, 1, **kwargs)


@pytest.mark.parametrize(
  'dn,match',
  [
    (
      DN(0, 1, output_blocks=(4, 4)),
      r'output_blocks=\(4, 4\) sums to 8, but fan_out=10',
    ),
    (
      DN(0, 1, reduction_blocks=3),
      'reduction_blocks=3 does not divide fan_in=4',
    ),
  ],
)
def test_blocks_that_do_not_split_the_fan(dn, match):
  with pytest.raises(ValueError, match=match):
    dn.stack_shapes((4, 10))
  # resolve_dimension_numbers checks them too, naming the parameter.
  with pytest.raises(ValueError, match=match + r".*'attn/qkv' of shape"):
    partition.resolve_dimension_numbers(
      {'attn': {'qkv': jnp.zeros((4, 10))}}, dn
    )


def _train(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates_seen = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    updates_seen.append(updates)
  return params, updates_seen, state


# name: (fused shape, blocks keyword, block sizes, axis cut). A fused QKV
# kernel; a grouped-query one whose blocks have different shape factors
# (sqrt(8/4) for q, 1 for k and v); a head-packed output projection (each
# (4, 8) block has factor sqrt(8/4), the whole (8, 8) kernel 1). The blocks
# come in two shapes, so that the test compiles few programs.
FUSED = {
  'qkv': ((4, 12), dict(output_blocks=3), (4, 4, 4), 1),
  'gqa': ((4, 16), dict(output_blocks=(8, 4, 4)), (8, 4, 4), 1),
  'heads_in': ((8, 8), dict(reduction_blocks=2), (4, 4), 0),
}
FUSED_OPTIMIZERS = {
  'muon_svd': lambda **kw: fo.muon(
    0.1, polar_method='svd', weight_decay=0.1, **kw
  ),
  'fanion': lambda **kw: fo.fanion(0.1, 2, weight_decay=0.1, **kw),
}


def _separate(tree):
  """The fused leaves cut into their blocks, each stored on its own."""
  out = {}
  for name, (_, _, sizes, axis) in FUSED.items():
    parts = np.split(np.asarray(tree[name]), np.cumsum(sizes)[:-1], axis=axis)
    out.update({f'{name}{i}': jnp.asarray(p) for i, p in enumerate(parts)})
  return out


@pytest.mark.parametrize('opt', list(FUSED_OPTIMIZERS))
def test_fused_blocks_train_like_separate_parameters(opt):
  make = FUSED_OPTIMIZERS[opt]
  rng = np.random.default_rng(5)
  draw = lambda shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  fused = {name: draw(shape) for name, (shape, *_) in FUSED.items()}
  grads = [jax.tree.map(lambda x: draw(x.shape), fused) for _ in range(2)]
  dn = {name: DN(0, 1, **blocks) for name, (_, blocks, *_) in FUSED.items()}
  got_params, got_updates, state = _train(
    make(dimension_numbers=dn), fused, grads
  )
  ref_params, ref_updates, _ = _train(
    make(), _separate(fused), [_separate(g) for g in grads]
  )
  for got, ref in zip([got_params, *got_updates], [ref_params, *ref_updates]):
    got = _separate(got)
    assert got.keys() == ref.keys()
    for name in ref:
      np.testing.assert_allclose(
        np.asarray(got[name]),
        np.asarray(ref[name]),
        rtol=1e-5,
        atol=1e-6,
        err_msg=name,
      )
  if opt == 'fanion':
    # One warm-start subspace (batch, n, k) per stack, in tree order (gqa,
    # heads_in, qkv) then stack order: gqa's (1, 4, 8) and (2, 4, 4),
    # heads_in's (2, 4, 8), qkv's (3, 4, 4).
    lmo_state = state.matrices[0].lmo_state
    assert [s.shape for s in lmo_state] == [
      (1, 8, 2),
      (2, 4, 2),
      (2, 8, 2),
      (3, 4, 2),
    ]


@pytest.mark.parametrize(
  'dn,shape,factors',
  [
    # muon: sqrt(max(1, fan_out/fan_in)) of each (4, 8), (4, 4) block.
    (DN(0, 1, output_blocks=(8, 4, 4)), (4, 16), ('muon', [2**0.5] * 8 + [1.0] * 8, 1)),
    # rms: 0.2·sqrt(max(fan_in, fan_out)) of each (4, 8), (4, 4) block.
    (DN(0, 1, output_blocks=(8, 4, 4)), (4, 16), ('rms', [0.2 * 8**0.5] * 8 + [0.4] * 8, 1)),
    # reduction blocks (2, 4) and (6, 4): factors sqrt(2) and 1, by row.
    (DN(0, 1, reduction_blocks=(2, 6)), (8, 4), ('muon', [2**0.5] * 2 + [1.0] * 6, 0)),
    # equal blocks (4, 4) of a (4, 12) kernel: 1, not sqrt(3).
    (DN(0, 1, output_blocks=3), (4, 12), ('muon', [1.0] * 12, 1)),
  ],
)  # fmt: skip
def test_scale_by_shape_uses_each_blocks_fans(dn, shape, factors):
  mode, per_index, axis = factors
  u = {'w': jnp.ones(shape, jnp.float32)}
  out, _ = fo.scale_by_shape(mode, dimension_numbers=dn).update(u, None)
  expected = np.asarray(per_index, np.float32)
  expected = expected[:, None] if axis == 0 else expected[None, :]
  np.testing.assert_allclose(
    np.asarray(out['w']), np.broadcast_to(expected, shape), rtol=1e-6
  )


def test_embeddings_preset_matches_usual_names():
  hits = [
    'embed/embedding',
    'params/Embed_0/embedding',
    'model/embed_tokens/embedding',
    'tok_embeddings/weight',
    'wte/embedding',
    'transformer/wpe',
    'tok_emb/embedding',
    'lm_head/kernel',
    'head/kernel',
    'unembed/kernel',
    'params/logits/kernel',
  ]
  misses = [
    'attn/out/kernel',
    'h/0/attn/c_proj/kernel',
    'params/Dense_0/kernel',
    'attn/heads/kernel',
    'overhead/kernel',
    'attn/qkv/kernel',
  ]
  specs = partition.resolve_dimension_numbers(
    {name: jnp.zeros((2, 2)) for name in hits + misses},
    exclude=partition.EMBEDDINGS,
  )
  assert sorted(n for n, s in specs.items() if s is None) == sorted(hits)


VOCAB = 1024


def _gpt_params():
  return {
    'wte': {'embedding': jnp.zeros((VOCAB, 8))},
    'wpe': {'embedding': jnp.zeros((16, 8))},
    'h': {
      'attn': {'kernel': jnp.zeros((8, 24))},
      'mlp': {'kernel': jnp.zeros((8, 32))},
      'ln': {'scale': jnp.zeros((8,))},
    },
    'lm_head': {'kernel': jnp.zeros((8, VOCAB))},
  }


def _embedding_warnings(make, params):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    make().init(params)
  return [w for w in caught if 'look like embeddings' in str(w.message)]


def test_embeddings_on_the_lmo_warn_once_with_the_fix():
  params = _gpt_params()
  caught = _embedding_warnings(lambda: fo.muon(0.02), params)
  assert len(caught) == 1
  warning = caught[0]
  assert warning.category is UserWarning
  assert warning.filename == __file__  # stacklevel points at the caller
  text = str(warning.message)
  for name in ('lm_head/kernel', 'wte/embedding', 'wpe/embedding'):
    assert repr(name) in text
  assert 'h/attn' not in text and 'h/mlp' not in text
  fix = ast.literal_eval(re.search(r'exclude=(\(.*\))\n', text).group(1))
  specs = partition.resolve_dimension_numbers(params, exclude=fix)
  assert specs['h']['attn']['kernel'] == DN() and specs['wte'] == {
    'embedding': None
  }
  for make in (
    lambda: fo.muon(0.02, exclude=fix),
    lambda: fo.muon(0.02, exclude=partition.EMBEDDINGS),
    # Explicit dimension numbers keep them on the LMO on purpose.
    lambda: fo.muon(
      0.02, dimension_numbers=partition.default_dimension_numbers
    ),
  ):
    assert not _embedding_warnings(make, params)


def test_a_head_with_the_vocabulary_dimension_warns_by_shape():
  # Linen names: the embedding is matched by name (and excluded); the head
  # `Dense_1` only by its vocabulary-sized dimension.
  params = {
    'params': {
      'Embed_0': {'embedding': jnp.zeros((VOCAB, 8))},
      'Dense_0': {'kernel': jnp.zeros((8, 16)), 'bias': jnp.zeros(16)},
      'Dense_1': {'kernel': jnp.zeros((16, VOCAB))},
    }
  }
  caught = _embedding_warnings(lambda: fo.muon(0.02, exclude='Embed'), params)
  assert len(caught) == 1
  text = str(caught[0].message)
  assert "'params/Dense_1/kernel'" in text and 'Dense_0' not in text
  assert "exclude=('Embed', '^params/Dense_1/kernel$')" in text
  assert partition.embedding_like(
    params, partition.resolve_dimension_numbers(params, exclude='Embed')
  ) == ['params/Dense_1/kernel']


def test_plain_mlp_and_context_lengths_do_not_warn():
  mlp = {
    f'Dense_{i}': {'kernel': jnp.zeros(s), 'bias': jnp.zeros(s[1])}
    for i, s in enumerate([(784, 1024), (1024, 1024), (1024, 10)])
  }
  assert not _embedding_warnings(lambda: fo.muon(0.02), mlp)
  # A 1024-long position table is no vocabulary: a (8, 1024) MLP kernel
  # stays unflagged once the embeddings are excluded.
  gpt = {
    'wpe': {'embedding': jnp.zeros((1024, 8))},
    'fc': {'kernel': jnp.zeros((8, 1024))},
  }
  make = lambda: fo.muon(0.02, exclude=partition.EMBEDDINGS)
  assert not _embedding_warnings(make, gpt)


def test_nnx_optimizer_embedding_warning_names_nnx_paths():
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(VOCAB, 8, rngs=rngs)
      self.hidden = nnx.Linear(8, 8, rngs=rngs)

  model = Model(nnx.Rngs(0))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    nnx.Optimizer(model, fo.muon(0.02), wrt=nnx.Param)
  texts = [str(w.message) for w in caught if 'look like' in str(w.message)]
  assert len(texts) == 1 and "'embed/embedding'" in texts[0]
  assert 'hidden' not in texts[0]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    nnx.Optimizer(
      model, fo.muon(0.02, exclude=partition.EMBEDDINGS), wrt=nnx.Param
    )
  assert not [w for w in caught if 'look like' in str(w.message)]
