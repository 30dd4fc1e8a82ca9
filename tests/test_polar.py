"""Tests for `fanion_optax.polar`: polar-factor kernels and schedules.

Every reference here is independent of the code under test: NumPy SVDs in
float64, the coefficient table copied from SPEC.md §3.1, and a plain NumPy
re-implementation of the Newton–Schulz iteration.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import JORDAN
from reference import POLAR_EXPRESS_TABLE
from reference import SAFETY
from reference import gaussian
from reference import np_polar
from reference import with_spectrum
from reference import x64

from fanion_optax import coefficient_schedule
from fanion_optax import lmo_gap
from fanion_optax import polar_factor
from fanion_optax._linalg import compute_dtype_of

EPS = 1e-7
METHODS = ('svd', 'newton_schulz', 'polar_express')
# A few shapes reused throughout, so that JAX compiles each kernel few times.
WIDE = (12, 20)
TALL = (20, 12)
SQUARE = (16, 16)
BATCH = (2, 3, 6, 10)
ROW = (1, 9)
COL = (9, 1)
SHAPES = [WIDE, TALL, SQUARE, BATCH]
ITERATIVE = ('newton_schulz', 'polar_express')

# LMO-gap bounds, measured on the Gaussian and decaying-spectrum matrices
# below (and on 16x32, 32x16, 24x24, 8x64 ones while choosing), then given a
# margin:
#   Jordan, 5 steps:        0.07 - 0.25 measured  -> bound 0.3
#   Polar Express, 5 steps: 0.05 - 0.16 measured  -> bound 0.2
#   Polar Express, 8 steps: 6e-8 - 5e-6 measured  -> bound 1e-4
JORDAN_5_GAP = 0.3
POLAR_EXPRESS_5_GAP = 0.2
POLAR_EXPRESS_8_GAP = 1e-4


def _np_gap(g, o):
  g = np.asarray(g, np.float64)
  o = np.asarray(o, np.float64)
  nuclear = np.linalg.svd(g, compute_uv=False).sum(-1)
  sigma1 = np.linalg.svd(o, compute_uv=False)[..., 0]
  return 1.0 - np.sum(g * o, axis=(-2, -1)) / (nuclear * sigma1)


def _np_newton_schulz(g, rows, safety, eps=EPS):
  """SPEC §3.1 in NumPy float64: normalise, transpose tall, iterate."""
  x = np.asarray(g, np.float64)
  tall = x.shape[-2] > x.shape[-1]
  if tall:
    x = np.swapaxes(x, -1, -2)
  x = x / np.abs(x).max(axis=(-2, -1), keepdims=True)
  x = x / (safety * np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True)) + eps)
  for a, b, c in rows:
    gram = x @ np.swapaxes(x, -1, -2)
    x = a * x + (b * gram + c * gram @ gram) @ x
  if tall:
    x = np.swapaxes(x, -1, -2)
  return x


def _damped_polar_express_rows():
  rows = [
    (a / SAFETY, b / SAFETY**3, c / SAFETY**5)
    for a, b, c in POLAR_EXPRESS_TABLE[:-1]
  ]
  return tuple(rows) + POLAR_EXPRESS_TABLE[-1:]


def _f32(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32))


# ---------------------------------------------------------------------------
# Exact polar factor.


@pytest.mark.parametrize('shape', SHAPES)
def test_svd_matches_numpy_polar_factor(shape):
  g = gaussian(shape, seed=1)
  o = polar_factor(g, polar_method='svd')
  assert o.shape == shape and o.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(o), np_polar(g), atol=2e-5)


@pytest.mark.parametrize('shape', [WIDE, TALL])
def test_svd_output_is_orthonormal(shape):
  o = np.asarray(
    polar_factor(gaussian(shape, seed=2), polar_method='svd'), np.float64
  )
  small = o @ o.T if shape[0] <= shape[1] else o.T @ o
  np.testing.assert_allclose(small, np.eye(min(shape)), atol=1e-5)


# ---------------------------------------------------------------------------
# Coefficient schedules.


def test_coefficient_schedule_newton_schulz():
  rows, safety = coefficient_schedule('newton_schulz')
  assert safety == 1.0
  assert len(rows) == 5
  for row in rows:
    np.testing.assert_allclose(row, JORDAN, rtol=0, atol=0)
  rows3, _ = coefficient_schedule('newton_schulz', 3)
  assert len(rows3) == 3


def test_coefficient_schedule_polar_express_damping():
  rows, safety = coefficient_schedule('polar_express', 8)
  assert safety == pytest.approx(1.01)
  assert len(rows) == 8
  for i, (row, raw) in enumerate(zip(rows, POLAR_EXPRESS_TABLE)):
    a, b, c = raw
    if i < 7:
      expected = (a / 1.01, b / 1.01**3, c / 1.01**5)
    else:  # the table's 8th row is not damped
      expected = (a, b, c)
    np.testing.assert_allclose(row, expected, rtol=1e-14)
  # The 8th row really is undamped, the 7th really is damped.
  assert rows[7] == pytest.approx((1.875, -1.25, 0.375), rel=1e-15)
  assert rows[6][0] == pytest.approx(1.8750014808534479 / 1.01, rel=1e-14)


@pytest.mark.parametrize('steps', [1, 3, 5, 8])
def test_coefficient_schedule_polar_express_prefix(steps):
  rows, safety = coefficient_schedule('polar_express', steps)
  assert safety == pytest.approx(1.01)
  np.testing.assert_allclose(
    rows, _damped_polar_express_rows()[:steps], rtol=1e-14
  )


def test_coefficient_schedule_defaults():
  assert len(coefficient_schedule()[0]) == 5
  assert len(coefficient_schedule('polar_express')[0]) == 5
  assert coefficient_schedule('svd') == (None, 1.0)


def test_coefficient_schedule_explicit_rows():
  given = [(1.5, -0.5, 0), [2, -1.5, 0.5], np.array([1.0, 0.0, 0.0])]
  rows, safety = coefficient_schedule(given)
  assert safety == 1.0
  assert rows == ((1.5, -0.5, 0.0), (2.0, -1.5, 0.5), (1.0, 0.0, 0.0))
  assert all(isinstance(c, float) for row in rows for c in row)
  rows2, _ = coefficient_schedule(given, 2)
  assert rows2 == rows[:2]


# ---------------------------------------------------------------------------
# Newton–Schulz iterations against a NumPy re-implementation.


@pytest.mark.parametrize(
  'method,rows,safety',
  [
    ('newton_schulz', (JORDAN,) * 5, 1.0),
    ('polar_express', _damped_polar_express_rows()[:5], SAFETY),
  ],
)
@pytest.mark.parametrize('shape', SHAPES)
def test_named_iterations_match_numpy_reference(method, rows, safety, shape):
  g = gaussian(shape, seed=3)
  o = polar_factor(g, polar_method=method)
  assert o.shape == shape and o.dtype == jnp.float32
  np.testing.assert_allclose(
    np.asarray(o), _np_newton_schulz(g, rows, safety), atol=3e-5
  )


@pytest.mark.parametrize('steps', [1, 2, 8])
def test_polar_express_steps_match_numpy_reference(steps):
  g = gaussian(WIDE, seed=4)
  o = polar_factor(g, polar_method='polar_express', polar_steps=steps)
  ref = _np_newton_schulz(g, _damped_polar_express_rows()[:steps], SAFETY)
  np.testing.assert_allclose(np.asarray(o), ref, atol=3e-5)


def test_explicit_jordan_rows_equal_newton_schulz():
  g = gaussian(BATCH, seed=5)
  explicit = polar_factor(g, polar_method=[JORDAN] * 5)
  named = polar_factor(g, polar_method='newton_schulz')
  np.testing.assert_array_equal(np.asarray(explicit), np.asarray(named))
  # `steps` truncates explicit rows.
  np.testing.assert_array_equal(
    np.asarray(polar_factor(g, polar_method=[JORDAN] * 7, polar_steps=3)),
    np.asarray(polar_factor(g, polar_method='newton_schulz', polar_steps=3)),
  )


@pytest.mark.parametrize('shape', [WIDE, TALL])
def test_classic_cubic_converges_to_polar_factor(shape):
  m, n = shape
  g = with_spectrum((m, n), np.linspace(1.0, 0.5, min(m, n)), seed=6)
  o = polar_factor(g, polar_method=((1.5, -0.5, 0.0),) * 30)
  np.testing.assert_allclose(np.asarray(o), np_polar(g), atol=1e-5)


# ---------------------------------------------------------------------------
# LMO gap.


def test_lmo_gap_matches_numpy_reference():
  g = gaussian(BATCH, seed=7)
  o = gaussian(BATCH, seed=8)
  gap = lmo_gap(g, o)
  assert gap.shape == BATCH[:-2]
  np.testing.assert_allclose(
    np.asarray(gap), _np_gap(g, o), rtol=1e-5, atol=1e-6
  )
  # The exact polar factor has gap 0; a scaled copy of g has a known gap.
  np.testing.assert_allclose(
    np.asarray(lmo_gap(g, np_polar(g))), 0.0, atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(lmo_gap(g, 2.0 * g)), _np_gap(g, g), rtol=1e-5
  )


def test_lmo_gap_float64_under_x64():
  # Documented: "Computed in float64 when enabled, else float32."
  g = np.random.default_rng(9).standard_normal(WIDE)
  with x64():
    gap = lmo_gap(jnp.asarray(g), jnp.asarray(np_polar(g)))
    assert gap.dtype == jnp.float64
    assert abs(float(gap)) < 1e-12


GAP_SHAPES = [WIDE, TALL, SQUARE, (8, 40)]


def _gaps(g):
  """Reference gaps of Jordan-5, Polar-Express-5 and Polar-Express-8."""

  def gap(polar_method, polar_steps):
    return _np_gap(
      g, polar_factor(g, polar_method=polar_method, polar_steps=polar_steps)
    )

  return (
    gap('newton_schulz', 5),
    gap('polar_express', 5),
    gap('polar_express', 8),
  )


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('shape', GAP_SHAPES)
def test_gap_bounds_gaussian(shape, seed):
  g = gaussian(shape, seed)
  jordan, express5, express8 = _gaps(g)
  assert 0.0 < jordan < JORDAN_5_GAP
  assert 0.0 < express5 < POLAR_EXPRESS_5_GAP
  assert express8 < POLAR_EXPRESS_8_GAP
  # The library's lmo_gap agrees with the reference.
  o = polar_factor(g, polar_method='newton_schulz')
  np.testing.assert_allclose(float(lmo_gap(g, o)), jordan, atol=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('shape', [WIDE, TALL, SQUARE])
def test_polar_express_beats_jordan_on_gaussians(shape, seed):
  # Holds for aspect ratios up to ~2. For very wide Gaussians (8 x 40, well
  # conditioned) Jordan can be marginally ahead (measured 0.106 vs 0.112),
  # so that shape is only held to the absolute bounds above.
  jordan, express5, express8 = _gaps(gaussian(shape, seed))
  assert express5 < jordan
  assert express8 < express5


@pytest.mark.parametrize('spectrum', ['0.9^i', 'cond1e3'])
@pytest.mark.parametrize('shape', GAP_SHAPES)
def test_gap_bounds_decaying_spectrum(shape, spectrum):
  m, n = shape
  r = min(m, n)
  sigma = (
    0.9 ** np.arange(r) if spectrum == '0.9^i' else np.geomspace(1.0, 1e-3, r)
  )
  jordan, express5, express8 = _gaps(with_spectrum((m, n), sigma, seed=m + n))
  assert jordan < JORDAN_5_GAP
  assert express5 < POLAR_EXPRESS_5_GAP
  assert express8 < POLAR_EXPRESS_8_GAP


@pytest.mark.parametrize(
  'case', ['gauss_wide', 'gauss_tall', '0.9^i', 'cond1e2', 'cond1e3']
)
def test_polar_express_8_steps_singular_values_near_one(case):
  g = {
    'gauss_wide': gaussian(WIDE, seed=10),
    'gauss_tall': gaussian(TALL, seed=11),
    '0.9^i': with_spectrum(WIDE, 0.9 ** np.arange(12), seed=12),
    'cond1e2': with_spectrum(WIDE, np.geomspace(1, 1e-2, 12), seed=13),
    'cond1e3': with_spectrum(TALL, np.geomspace(1, 1e-3, 12), seed=14),
  }[case]
  o = polar_factor(g, polar_method='polar_express', polar_steps=8)
  s = np.linalg.svd(np.asarray(o, np.float64), compute_uv=False)
  np.testing.assert_allclose(s, 1.0, atol=1e-3)
  np.testing.assert_allclose(np.asarray(o), np_polar(g), atol=2e-3)


@pytest.mark.parametrize('shape', [WIDE, TALL, SQUARE])
def test_jordan_singular_values_land_in_documented_band(shape):
  # SPEC: "roughly [0.7, 1.2]"; measured [0.68, 1.14] on these matrices.
  g = gaussian(shape, seed=15)
  s = np.linalg.svd(
    _f32(polar_factor(g, polar_method='newton_schulz')), compute_uv=False
  )
  assert s.min() > 0.6 and s.max() < 1.25


# ---------------------------------------------------------------------------
# Edge cases.


@pytest.mark.parametrize('method', METHODS + ('explicit',))
@pytest.mark.parametrize('shape', SHAPES + [ROW, COL])
def test_zero_matrix_gives_exact_zeros(method, shape):
  method = ((1.5, -0.5, 0.0),) * 3 if method == 'explicit' else method
  o = np.asarray(polar_factor(jnp.zeros(shape), polar_method=method))
  assert o.shape == shape
  assert np.all(o == 0.0)


@pytest.mark.parametrize('method', METHODS)
def test_zero_matrix_in_batch_does_not_affect_others(method):
  g = gaussian(BATCH, seed=16)
  g[1, 2] = 0.0
  o = np.asarray(polar_factor(g, polar_method=method))
  assert np.all(o[1, 2] == 0.0)
  assert np.all(np.isfinite(o))
  np.testing.assert_allclose(
    o[0, 1], np.asarray(polar_factor(g[0, 1], polar_method=method)), atol=1e-5
  )


@pytest.mark.parametrize('transpose', [False, True])
@pytest.mark.parametrize('method', METHODS)
def test_vector_shaped_matrices(method, transpose):
  g = gaussian(ROW, seed=17)
  if transpose:
    g = g.T
  unit = g / np.linalg.norm(g)
  o = np.asarray(polar_factor(g, polar_method=method), np.float64)
  assert o.shape == g.shape
  if method == 'svd':
    np.testing.assert_allclose(o, unit, atol=1e-6)
  else:
    # Rank one: the iteration only rescales g/‖g‖ by p(1) for its polynomial.
    scale = np.sum(o * unit)
    np.testing.assert_allclose(o, scale * unit, atol=1e-6)
    assert 0.6 < scale < 1.25
  np.testing.assert_allclose(_np_gap(g, o), 0.0, atol=1e-6)


@pytest.mark.parametrize(
  'dtype,atol', [(jnp.bfloat16, 8e-3), (jnp.float16, 1e-3)]
)
@pytest.mark.parametrize('method', METHODS)
def test_half_precision_inputs(method, dtype, atol):
  g = jnp.asarray(gaussian(WIDE, seed=18), dtype)
  o = polar_factor(g, polar_method=method)
  assert o.dtype == dtype and o.shape == g.shape
  # The computation runs in float32 on the same (rounded) input; only the
  # final cast differs.
  ref = np.asarray(polar_factor(g.astype(jnp.float32), polar_method=method))
  np.testing.assert_allclose(_f32(o), ref, atol=atol)


@pytest.mark.parametrize('method', ITERATIVE)
def test_bfloat16_compute_dtype_iterations(method):
  g = gaussian(WIDE, seed=19)
  o = polar_factor(g, polar_method=method, compute_dtype=jnp.bfloat16)
  assert o.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(o)))
  exact = np.asarray(polar_factor(g, polar_method=method))
  np.testing.assert_allclose(np.asarray(o), exact, atol=0.1)
  assert _np_gap(g, o) < 0.3


@pytest.mark.parametrize('backend', ['gpu', 'tpu', 'cpu'])
def test_default_compute_dtype_follows_the_platform(backend, monkeypatch):
  """bfloat16 operands by default on GPU/TPU, float32 on CPU; float64 and
  an explicit `compute_dtype` are kept everywhere."""
  g = gaussian(WIDE, seed=21)
  expected = {
    method: np.asarray(
      polar_factor(
        g,
        polar_method=method,
        compute_dtype=jnp.float32 if backend == 'cpu' else jnp.bfloat16,
      )
    )
    for method in ITERATIVE
  }
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  half = backend != 'cpu'
  assert compute_dtype_of(jnp.float32, None) == (
    jnp.bfloat16 if half else jnp.float32
  )
  assert compute_dtype_of(jnp.float16, None) == (
    jnp.bfloat16 if half else jnp.float32
  )
  assert compute_dtype_of(jnp.float64, None) == jnp.float64
  assert compute_dtype_of(jnp.float32, 'float32') == jnp.float32
  for method in ITERATIVE:
    # Eager calls: the rule is read when the computation is traced.
    o = polar_factor(g, polar_method=method)
    assert o.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(o), expected[method])


def test_bfloat16_compute_dtype_svd():
  g = gaussian(WIDE, seed=20)
  o = polar_factor(g, polar_method='svd', compute_dtype=jnp.bfloat16)
  assert o.dtype == jnp.float32
  rounded = _f32(jnp.asarray(g, jnp.bfloat16))
  np.testing.assert_allclose(np.asarray(o), np_polar(rounded), atol=2e-5)
  np.testing.assert_allclose(np.asarray(o), np_polar(g), atol=5e-2)


@pytest.mark.parametrize('method', METHODS)
def test_float64_under_x64(method):
  g = np.random.default_rng(21).standard_normal(WIDE)
  with x64():
    o = polar_factor(jnp.asarray(g), polar_method=method)
    assert o.dtype == jnp.float64
    o = np.asarray(o)
  if method == 'svd':
    ref = np_polar(g)
  else:
    rows, safety = {
      'newton_schulz': ((JORDAN,) * 5, 1.0),
      'polar_express': (_damped_polar_express_rows()[:5], SAFETY),
    }[method]
    ref = _np_newton_schulz(g, rows, safety)
  np.testing.assert_allclose(o, ref, atol=1e-11)


def test_float64_polar_express_8_steps_is_exact():
  g = np.random.default_rng(22).standard_normal(WIDE)
  with x64():
    o = np.asarray(
      polar_factor(jnp.asarray(g), polar_method='polar_express', polar_steps=8)
    )
  np.testing.assert_allclose(o, np_polar(g), atol=1e-8)


@pytest.mark.parametrize('scale', [1e-20, 1e-3, 7.0, 1e20])
@pytest.mark.parametrize('method', METHODS)
def test_degree_zero_homogeneity(method, scale):
  g = gaussian(WIDE, seed=23)
  base = np.asarray(polar_factor(g, polar_method=method))
  scaled = np.asarray(polar_factor(np.float32(scale) * g, polar_method=method))
  assert np.all(np.isfinite(scaled))
  np.testing.assert_allclose(scaled, base, atol=1e-5)


@pytest.mark.parametrize('shape', [WIDE, TALL])
@pytest.mark.parametrize('method', METHODS)
def test_oddness(method, shape):
  g = gaussian(shape, seed=24)
  np.testing.assert_allclose(
    np.asarray(polar_factor(-g, polar_method=method)),
    -np.asarray(polar_factor(g, polar_method=method)),
    atol=1e-6,
  )


@pytest.mark.parametrize('method', METHODS)
def test_batched_matches_per_matrix(method):
  g = gaussian(BATCH, seed=25)
  o = np.asarray(polar_factor(g, polar_method=method))
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(
        o[i, j],
        np.asarray(polar_factor(g[i, j], polar_method=method)),
        atol=1e-6,
      )


@pytest.mark.parametrize('method', METHODS)
def test_jit_and_vmap(method):
  g = gaussian(BATCH, seed=26)
  f = functools.partial(polar_factor, polar_method=method)
  eager = np.asarray(f(g))
  # XLA may fuse differently under jit: float32 rounding only.
  np.testing.assert_allclose(np.asarray(jax.jit(f)(g)), eager, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(jax.jit(jax.vmap(f))(g)), eager, atol=1e-5
  )
  if method == 'svd':
    np.testing.assert_allclose(eager, np_polar(g), atol=2e-5)


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'polar_method': 'foo'}, 'polar_method'),
    ({'polar_method': 'newton_schulz', 'polar_steps': 0}, 'polar_steps'),
    ({'polar_method': 'polar_express', 'polar_steps': 0}, 'polar_steps'),
    ({'polar_method': 'polar_express', 'polar_steps': 9}, 'polar_steps'),
    ({'polar_method': [JORDAN] * 3, 'polar_steps': 4}, 'polar_steps'),
    ({'polar_method': [(1.0, 2.0)]}, 'polar_method'),
    ({'polar_method': [(1.0, 2.0, 3.0, 4.0)]}, 'polar_method'),
    ({'polar_method': []}, 'polar_method'),
    ({'polar_method': 3}, 'polar_method'),
    ({'polar_method': [('a', 'b', 'c')]}, 'polar_method'),
  ],
  ids=[
    'unknown_name',
    'ns_steps_0',
    'pe_steps_0',
    'pe_steps_9',
    'rows_too_few',
    'rows_of_2',
    'rows_of_4',
    'rows_empty',
    'not_a_sequence',
    'rows_of_strings',
  ],
)
def test_bad_method_or_steps_raise_value_error(kwargs, match):
  g = gaussian(WIDE)
  with pytest.raises(ValueError, match=match):
    polar_factor(g, **kwargs)
  with pytest.raises(ValueError, match=match):
    coefficient_schedule(kwargs['polar_method'], kwargs.get('polar_steps'))


@pytest.mark.parametrize('steps', [1.5, '3', True])
def test_non_int_steps_raise_type_error(steps):
  with pytest.raises(TypeError, match='polar_steps'):
    polar_factor(
      gaussian(WIDE), polar_method='newton_schulz', polar_steps=steps
    )


@pytest.mark.parametrize('shape', [(6,), ()])
def test_non_matrix_input_raises(shape):
  with pytest.raises(ValueError, match='g'):
    polar_factor(np.ones(shape, np.float32))
  with pytest.raises(ValueError, match='ndim'):
    polar_factor(np.ones(shape, np.float32), polar_method='svd')


@pytest.mark.parametrize('dtype', [np.int32, np.bool_])
def test_non_float_input_raises_type_error(dtype):
  with pytest.raises(TypeError, match='g must have a floating dtype'):
    polar_factor(np.ones(WIDE, dtype))


def test_non_float_compute_dtype_raises_type_error():
  with pytest.raises(TypeError, match='compute_dtype'):
    polar_factor(gaussian(WIDE), compute_dtype=jnp.int32)


def test_lmo_gap_bad_input_names_argument():
  with pytest.raises(ValueError, match='g must be a matrix'):
    lmo_gap(np.ones(4, np.float32), np.ones((2, 2), np.float32))
  with pytest.raises(ValueError, match='o must be a matrix'):
    lmo_gap(np.ones((2, 2), np.float32), np.ones(4, np.float32))


@pytest.mark.parametrize(
  'steps', [np.int64(3), np.asarray(3, np.int32), jnp.asarray(3)]
)
def test_integer_scalar_arrays_are_accepted_as_steps(steps):
  g = gaussian(WIDE, seed=27)
  np.testing.assert_array_equal(
    np.asarray(
      polar_factor(g, polar_method='newton_schulz', polar_steps=steps)
    ),
    np.asarray(polar_factor(g, polar_method='newton_schulz', polar_steps=3)),
  )


def test_traced_steps_raise_type_error():
  g = gaussian(WIDE, seed=28)
  with pytest.raises(TypeError, match='polar_steps must be a static int'):
    jax.jit(
      lambda s: polar_factor(g, polar_method='newton_schulz', polar_steps=s)
    )(3)


# ---------------------------------------------------------------------------
# Gram Newton–Schulz through `polar_factor(gram=...)` (the kernel itself is
# tested in test_gram.py).


@pytest.mark.parametrize('polar_method', ['newton_schulz', 'polar_express'])
@pytest.mark.parametrize('shape', [(32, 128), (128, 32), (2, 24, 96)])
@pytest.mark.parametrize('spectrum', ['gaussian', 'decaying'])
def test_gram_equals_standard_iteration(polar_method, shape, spectrum):
  if spectrum == 'gaussian':
    g = gaussian(shape, seed=40)
  else:
    sigma = np.logspace(0, -3, min(shape[-2:]))
    g = np.stack(
      [
        with_spectrum(shape[-2:], sigma, seed=41 + i)
        for i in range(int(np.prod(shape[:-2])))
      ]
    ).reshape(shape)
  standard = np.asarray(polar_factor(g, polar_method=polar_method))
  gram = np.asarray(polar_factor(g, polar_method=polar_method, gram=True))
  assert np.max(np.abs(gram - standard)) <= 1e-4 * np.max(np.abs(standard))
  # Both approximate the same exact polar factor equally well.
  exact = np_polar(np.asarray(g, np.float64))
  err_standard = np.max(np.abs(standard - exact))
  np.testing.assert_allclose(
    np.max(np.abs(gram - exact)), err_standard, rtol=1e-2, atol=1e-4
  )


def test_gram_auto_picks_by_aspect_ratio():
  square = gaussian((48, 48), seed=42)
  wide = gaussian((24, 96), seed=43)
  # Near-square: the standard iteration, bit for bit.
  np.testing.assert_array_equal(
    np.asarray(polar_factor(square, gram='auto')),
    np.asarray(polar_factor(square)),
  )
  # Aspect 1:4 (either orientation): the Gram iteration, bit for bit.
  for g in (wide, wide.T):
    np.testing.assert_array_equal(
      np.asarray(polar_factor(g, gram='auto')),
      np.asarray(polar_factor(g, gram=True)),
    )


def test_gram_zero_and_under_jit():
  assert not np.any(np.asarray(polar_factor(np.zeros((4, 16)), gram=True)))
  g = gaussian((16, 64), seed=44)
  jitted = jax.jit(functools.partial(polar_factor, gram=True))(g)
  # XLA fuses the jitted program differently from eager op-by-op calls: a
  # few float32 ulps of difference after the Gram iteration's 5 steps.
  np.testing.assert_allclose(jitted, polar_factor(g, gram=True), atol=5e-6)


@pytest.mark.parametrize('polar_method', ['newton_schulz', 'polar_express'])
def test_bfloat16_compute_accumulates_in_float32(polar_method):
  """bf16 Newton–Schulz loses at most 2% of the float32 LMO gap.

  Every product accumulates in float32 and rounds once per step (rounding
  after every operation, as 0.2.0 did, lost 10-15% here).
  """
  g = gaussian((64, 96), seed=45)
  gap32 = float(lmo_gap(g, polar_factor(g, polar_method=polar_method)))
  gap16 = float(
    lmo_gap(
      g, polar_factor(g, polar_method=polar_method, compute_dtype=jnp.bfloat16)
    )
  )
  assert gap16 <= 1.02 * gap32, (gap16, gap32)
