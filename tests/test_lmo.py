"""Tests for `fanion_optax.lmo`: the LMO catalogue, dual norms, ball norms.

Closed forms (SPEC.md §2.1) are evaluated with NumPy float64 SVDs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gapped_spectrum
from reference import gaussian
from reference import np_polar
from reference import np_top_k
from reference import singular_values
from reference import svd
from reference import to_f64
from reference import with_spectrum
from reference import x64

from fanion_optax import catalogue
from fanion_optax import lmo
from fanion_optax import lowrank
from fanion_optax import polar_factor

WIDE = (12, 20)
TALL = (20, 12)
BATCH = (2, 3, 6, 10)
PAIR = (2, 12, 20)
K = 3
ETA = 0.3
SCALES = [1e-20, 1e-3, 7.0, 1e20]


def _np_frobenius(x):
  return np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=(-2, -1)))


def _np_schatten(x, p):
  return np.sum(singular_values(x) ** p, axis=-1) ** (1.0 / p)


def _np_weighted(g, weights_fn):
  u, s, vh = svd(g)
  return (u * weights_fn(s)[..., None, :]) @ vh


# name -> (constructor, dual norm closed form, ball norm closed form or None,
#          direction closed form)
EXACT = {
  'spectral_svd': (
    lambda: lmo.spectral(polar_method='svd'),
    lambda g: singular_values(g).sum(-1),
    lambda x: singular_values(x)[..., 0],
    np_polar,
  ),
  'ky_fan_svd': (
    lambda: lmo.ky_fan(K, top_k_method='svd'),
    lambda g: singular_values(g)[..., :K].sum(-1),
    lambda x: np.maximum(
      singular_values(x)[..., 0], singular_values(x).sum(-1) / K
    ),
    lambda g: np_top_k(g, K),
  ),
  'frobenius': (
    lmo.frobenius,
    _np_frobenius,
    _np_frobenius,
    lambda g: g / _np_frobenius(g)[..., None, None],
  ),
  'sign': (
    lambda: lmo.sign(ETA),
    lambda g: ETA * np.abs(g).sum((-2, -1)),
    lambda x: np.abs(x).max((-2, -1)) / ETA,
    lambda g: ETA * np.sign(g),
  ),
  'schatten_1.5': (
    lambda: lmo.schatten(1.5),
    lambda g: _np_schatten(g, 1.5),
    lambda x: _np_schatten(x, 3.0),
    lambda g: _np_weighted(
      g, lambda s: (s / _np_schatten(g, 1.5)[..., None]) ** 0.5
    ),
  ),
  'schatten_3': (
    lambda: lmo.schatten(3),
    lambda g: _np_schatten(g, 3.0),
    lambda x: _np_schatten(x, 1.5),
    lambda g: _np_weighted(
      g, lambda s: (s / _np_schatten(g, 3.0)[..., None]) ** 2
    ),
  ),
  'f_muon': (
    lambda: lmo.mix(
      (0.5, lmo.spectral(polar_method='svd')), (0.5, lmo.frobenius())
    ),
    lambda g: 0.5 * singular_values(g).sum(-1) + 0.5 * _np_frobenius(g),
    None,
    lambda g: 0.5 * np_polar(g) + 0.5 * g / _np_frobenius(g)[..., None, None],
  ),
  's_fanion': (
    lambda: lmo.mix(
      (0.7, lmo.ky_fan(K, top_k_method='svd')), (0.3, lmo.sign(0.01))
    ),
    lambda g: (
      0.7 * singular_values(g)[..., :K].sum(-1)
      + 0.3 * 0.01 * np.abs(g).sum((-2, -1))
    ),
    None,
    lambda g: 0.7 * np_top_k(g, K) + 0.3 * 0.01 * np.sign(g),
  ),
}
EXACT_NAMES = sorted(EXACT)
BALL_NAMES = [name for name in EXACT_NAMES if EXACT[name][2] is not None]

# Every LMO: the exact ones above and the package's catalogue (where both
# have a name, the exact entry with its NumPy reference stands).
CATALOGUE = {
  **{name: EXACT[name][0] for name in EXACT},
  **{name: make for name, make in catalogue.LMOS.items() if name not in EXACT},
}
ALL_NAMES = sorted(CATALOGUE)
# Huber-nuclear's direction depends on the scale of G by design.
SCALE_INVARIANT = [name for name in ALL_NAMES if name != 'huber_nuclear']
STATELESS = [name for name in ALL_NAMES if not CATALOGUE[name]().stateful]


# ---------------------------------------------------------------------------
# Dual norms, ball norms, closed-form directions.


@pytest.mark.parametrize('shape', [WIDE, TALL])
@pytest.mark.parametrize('name', EXACT_NAMES)
def test_inner_product_equals_dual_norm(name, shape):
  make, dual, _, _ = EXACT[name]
  oracle = make()
  g = gaussian(shape, seed=1)
  d = oracle(g)
  assert d.shape == shape and d.dtype == jnp.float32
  inner = np.sum(g * to_f64(d))
  np.testing.assert_allclose(inner, float(oracle.dual_norm(g)), rtol=1e-5)
  np.testing.assert_allclose(inner, dual(g), rtol=1e-5)


@pytest.mark.parametrize('name', EXACT_NAMES)
def test_dual_norm_closed_form_batched(name):
  make, dual, _, _ = EXACT[name]
  g = gaussian(BATCH, seed=2)
  value = make().dual_norm(g)
  assert value.shape == BATCH[:-2]
  np.testing.assert_allclose(np.asarray(value), dual(g), rtol=1e-5)


@pytest.mark.parametrize('name', EXACT_NAMES)
def test_direction_closed_form(name):
  make, _, _, direction = EXACT[name]
  g = gaussian(PAIR, seed=3)
  np.testing.assert_allclose(to_f64(make()(g)), direction(g), atol=2e-5)


@pytest.mark.parametrize('name', BALL_NAMES)
def test_ball_norm_closed_form(name):
  make, _, ball, _ = EXACT[name]
  x = gaussian(BATCH, seed=4)
  value = make().norm(x)
  assert value.shape == BATCH[:-2]
  np.testing.assert_allclose(np.asarray(value), ball(x), rtol=1e-5)


@pytest.mark.parametrize('name', BALL_NAMES)
def test_lmo_lies_on_the_unit_sphere(name):
  make, _, ball, _ = EXACT[name]
  oracle = make()
  g = gaussian(PAIR, seed=5)
  d = oracle(g)
  np.testing.assert_allclose(np.asarray(oracle.norm(d)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(ball(to_f64(d)), 1.0, rtol=1e-5)


def test_mixture_norm_is_not_implemented():
  f_muon = EXACT['f_muon'][0]()
  with pytest.raises(NotImplementedError, match='infimal convolution'):
    f_muon.norm(gaussian(WIDE))


def test_spectral_fn_without_closed_forms_raises_not_implemented():
  oracle = lmo.spectral_fn(jnp.ones_like)
  with pytest.raises(NotImplementedError, match='h='):
    oracle.dual_norm(gaussian(WIDE))
  with pytest.raises(NotImplementedError):
    oracle.norm(gaussian(WIDE))


def test_spectral_fn_with_h_gives_its_value():
  oracle = lmo.spectral_fn(lambda s: 2.0 * s, h=jnp.square)
  g = gaussian(PAIR, seed=6)
  np.testing.assert_allclose(
    np.asarray(oracle.dual_norm(g)),
    np.sum(singular_values(g) ** 2, axis=-1),
    rtol=1e-5,
  )
  np.testing.assert_allclose(to_f64(oracle(g)), 2.0 * g, atol=1e-5)


# ---------------------------------------------------------------------------
# Special cases that coincide.


@pytest.mark.parametrize('k', [12, 13, 50])
def test_ky_fan_full_rank_is_the_polar_factor(k):
  g = gaussian(WIDE, seed=7)
  np.testing.assert_array_equal(
    np.asarray(lmo.ky_fan(k)(g)), np.asarray(polar_factor(g))
  )
  np.testing.assert_array_equal(
    np.asarray(lmo.ky_fan(k, polar_method='newton_schulz', polar_steps=3)(g)),
    np.asarray(polar_factor(g, polar_method='newton_schulz', polar_steps=3)),
  )
  np.testing.assert_allclose(
    np.asarray(lmo.ky_fan(k, polar_method='svd')(g)), np_polar(g), atol=2e-5
  )
  # top_k_method='svd' is exact whatever the polar method.
  np.testing.assert_allclose(
    np.asarray(
      lmo.ky_fan(
        k, top_k_method='svd', polar_method='newton_schulz', polar_steps=3
      )(g)
    ),
    np_polar(g),
    atol=2e-5,
  )
  # Its update path agrees and carries no state.
  oracle = lmo.ky_fan(k)
  assert oracle.init(WIDE) is None
  d, state = oracle.update(g, oracle.init(WIDE))
  assert state is None
  np.testing.assert_array_equal(np.asarray(d), np.asarray(polar_factor(g)))


@pytest.mark.parametrize('alpha', [0.3, 0.5])
@pytest.mark.parametrize('k', [1, K, 12])
def test_f_mixture_closed_form(alpha, k):
  g = gaussian(WIDE, seed=8)
  oracle = lmo.mix(
    (alpha, lmo.ky_fan(k, top_k_method='svd', polar_method='svd')),
    (1.0 - alpha, lmo.frobenius()),
  )
  expected = alpha * np_top_k(g, k) + (1 - alpha) * g / _np_frobenius(g)
  np.testing.assert_allclose(to_f64(oracle(g)), expected, atol=2e-5)


@pytest.mark.parametrize('alpha,eta', [(0.5, 0.01), (0.8, 3e-4)])
@pytest.mark.parametrize('k', [1, K, 12])
def test_s_mixture_closed_form(alpha, eta, k):
  g = gaussian(WIDE, seed=9)
  oracle = lmo.mix(
    (alpha, lmo.ky_fan(k, top_k_method='svd', polar_method='svd')),
    (1.0 - alpha, lmo.sign(eta)),
  )
  expected = alpha * np_top_k(g, k) + (1 - alpha) * eta * np.sign(g)
  np.testing.assert_allclose(to_f64(oracle(g)), expected, atol=2e-5)


def test_mixture_accepts_array_weights():
  g = gaussian(WIDE, seed=10)
  oracle = lmo.mix(
    (jnp.asarray(0.25), lmo.frobenius()), (jnp.asarray(0.75), lmo.sign(1.0))
  )
  expected = 0.25 * g / _np_frobenius(g) + 0.75 * np.sign(g)
  np.testing.assert_allclose(to_f64(oracle(g)), expected, atol=1e-6)


@pytest.mark.parametrize('shape', [WIDE, TALL])
def test_spectral_fn_ones_is_the_polar_factor(shape):
  g = gaussian(shape, seed=11)
  np.testing.assert_allclose(
    to_f64(lmo.spectral_fn(jnp.ones_like)(g)), np_polar(g), atol=2e-5
  )


def test_schatten_1_and_2_are_spectral_and_frobenius():
  g = gaussian(PAIR, seed=12)
  np.testing.assert_allclose(
    np.asarray(lmo.schatten(1)(g)),
    np.asarray(lmo.spectral(polar_method='svd')(g)),
    atol=2e-5,
  )
  np.testing.assert_allclose(
    np.asarray(lmo.schatten(2)(g)), np.asarray(lmo.frobenius()(g)), atol=2e-6
  )
  np.testing.assert_allclose(
    np.asarray(lmo.schatten(1).dual_norm(g)),
    singular_values(g).sum(-1),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    np.asarray(lmo.schatten(2).norm(g)), _np_frobenius(g), rtol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(lmo.schatten(1).norm(g)), singular_values(g)[..., 0], rtol=1e-5
  )


def test_large_schatten_p_tends_to_neon():
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=13)
  np.testing.assert_allclose(
    to_f64(lmo.schatten(200.0)(g)), np_top_k(g, 1), atol=1e-6
  )


@pytest.mark.parametrize('delta', [2.0, 4.0])
def test_huber_nuclear(delta):
  g = gaussian(PAIR, seed=14)
  oracle = lmo.huber_nuclear(delta)
  s = singular_values(g)
  assert s.min() < delta < s.max()  # both branches are exercised
  expected = _np_weighted(g, lambda s: np.minimum(s / delta, 1.0))
  np.testing.assert_allclose(to_f64(oracle(g)), expected, atol=2e-5)
  h = np.where(s <= delta, s * s / (2 * delta), s - delta / 2)
  np.testing.assert_allclose(
    np.asarray(oracle.dual_norm(g)), h.sum(-1), rtol=1e-5
  )
  np.testing.assert_allclose(np.asarray(oracle.norm(g)), s[..., 0], rtol=1e-5)
  # Not scale-invariant: below delta it is linear, huber(c g) = c g / delta.
  c = np.float32(0.5 * delta / s.max())
  np.testing.assert_allclose(to_f64(oracle(c * g)), c * g / delta, atol=1e-6)


@pytest.mark.parametrize('name', EXACT_NAMES)
def test_float64_under_x64(name):
  # float64 inputs give float64 directions and dual norms to float64
  # accuracy, and stay homogeneous of degree 0 far below float32's range.
  make, dual, _, direction = EXACT[name]
  oracle = make()
  g = np.random.default_rng(30).standard_normal(WIDE)
  with x64():
    d = oracle(jnp.asarray(g))
    value = oracle.dual_norm(jnp.asarray(g))
    tiny = oracle(jnp.asarray(1e-50 * g))
    assert d.dtype == jnp.float64 and value.dtype == jnp.float64
    d, value, tiny = np.asarray(d), float(value), np.asarray(tiny)
  np.testing.assert_allclose(d, direction(g), atol=1e-12)
  np.testing.assert_allclose(value, dual(g), rtol=1e-12)
  np.testing.assert_allclose(tiny, d, atol=1e-12)


def test_schatten_infinity_is_neon_or_rejected():
  # `p >= 1` admits p = inf, documented as the limit "p -> inf tends to Neon":
  # then it must be Neon (dual norm σ₁, ball norm nuclear), or be rejected.
  try:
    oracle = lmo.schatten(float('inf'))
  except ValueError as e:
    assert 'p' in str(e)
    return
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=31)
  np.testing.assert_allclose(to_f64(oracle(g)), np_top_k(g, 1), atol=1e-5)
  np.testing.assert_allclose(
    float(oracle.dual_norm(g)), singular_values(g)[0], rtol=1e-5
  )
  np.testing.assert_allclose(
    float(oracle.norm(g)), singular_values(g).sum(), rtol=1e-5
  )


# ---------------------------------------------------------------------------
# Invariances.


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('name', SCALE_INVARIANT)
def test_degree_zero_homogeneity(name, scale):
  oracle = CATALOGUE[name]()
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=15)
  base = np.asarray(oracle(g))
  scaled = np.asarray(oracle(np.float32(scale) * g))
  assert np.all(np.isfinite(scaled))
  np.testing.assert_allclose(scaled, base, atol=1e-5)


@pytest.mark.parametrize('shape', [WIDE, TALL])
@pytest.mark.parametrize('name', ALL_NAMES)
def test_oddness(name, shape):
  oracle = CATALOGUE[name]()
  g = with_spectrum(shape, gapped_spectrum(shape), seed=16)
  np.testing.assert_allclose(
    np.asarray(oracle(-g)), -np.asarray(oracle(g)), atol=1e-6
  )


@pytest.mark.parametrize('name', ALL_NAMES)
def test_zero_input_gives_zero(name):
  oracle = CATALOGUE[name]()
  d = np.asarray(oracle(jnp.zeros(PAIR)))
  assert d.shape == PAIR
  assert np.all(d == 0.0)
  if name not in ('spectral_fn_ones',):
    np.testing.assert_array_equal(
      np.asarray(oracle.dual_norm(jnp.zeros(PAIR))), 0.0
    )


@pytest.mark.parametrize('name', ALL_NAMES)
def test_batched_matches_per_matrix(name):
  oracle = CATALOGUE[name]()
  g = gaussian(PAIR, seed=17)
  g[1] = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=18)
  d = np.asarray(oracle(g))
  assert d.shape == PAIR
  # The subspace cold start only converges on the gapped matrix.
  rows = [1] if oracle.stateful else [0, 1]
  for i in rows:
    np.testing.assert_allclose(d[i], np.asarray(oracle(g[i])), atol=1e-5)
  if name != 'spectral_fn_ones':
    np.testing.assert_allclose(
      np.asarray(oracle.dual_norm(g)),
      [float(oracle.dual_norm(g[i])) for i in range(2)],
      rtol=1e-5,
    )


@pytest.mark.parametrize('name', ALL_NAMES)
def test_bfloat16_in_bfloat16_out(name):
  oracle = CATALOGUE[name]()
  g = jnp.asarray(
    with_spectrum(WIDE, gapped_spectrum(WIDE), seed=19), jnp.bfloat16
  )
  d = oracle(g)
  assert d.dtype == jnp.bfloat16 and d.shape == WIDE
  reference = np.asarray(oracle(g.astype(jnp.float32)))
  np.testing.assert_allclose(to_f64(d), reference, atol=1e-2)


@pytest.mark.parametrize('name', ALL_NAMES)
def test_jit_with_the_lmo_closed_over(name):
  oracle = CATALOGUE[name]()
  g = with_spectrum(WIDE, gapped_spectrum(WIDE), seed=20)
  np.testing.assert_allclose(
    np.asarray(jax.jit(lambda x: oracle(x))(g)),
    np.asarray(oracle(g)),
    atol=1e-5,
  )


# ---------------------------------------------------------------------------
# State.


def test_stateful_flags():
  assert lmo.ky_fan(K).stateful
  assert not lmo.ky_fan(K, top_k_method='svd').stateful
  assert not lmo.spectral().stateful
  assert not lmo.frobenius().stateful
  assert not lmo.sign().stateful
  assert not lmo.schatten(3).stateful
  assert lmo.mix((0.5, lmo.ky_fan(K)), (0.5, lmo.frobenius())).stateful
  assert not lmo.mix((0.5, lmo.spectral()), (0.5, lmo.frobenius())).stateful


@pytest.mark.parametrize('name', STATELESS)
def test_stateless_init_and_update(name):
  oracle = CATALOGUE[name]()
  # Stateless LMOs have the empty state `None` (mixtures: one per term).
  state = oracle.init(PAIR)
  if isinstance(oracle, lmo.Mixture):
    assert state == (None, None)
  else:
    assert state is None
  g = gaussian(PAIR, seed=21)
  d, new_state = oracle.update(g, state)
  assert new_state == state
  np.testing.assert_array_equal(np.asarray(d), np.asarray(oracle(g)))


def test_ky_fan_subspace_state_converges_on_a_fixed_matrix():
  oracle = lmo.ky_fan(K)
  state = oracle.init(PAIR)
  assert state.shape == (2, 20, K) and state.dtype == jnp.float32
  g = np.stack(
    [
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=22),
      gaussian(WIDE, seed=23),
    ]
  )
  for _ in range(30):
    d, state = oracle.update(g, state)
    assert state.shape == (2, 20, K)
    assert np.all(np.isfinite(np.asarray(state)))
  # The gapped matrix is exact; the Gaussian one (small gaps) has converged
  # in the Ky Fan-k value it captures.
  np.testing.assert_allclose(np.asarray(d[0]), np_top_k(g[0], K), atol=1e-4)
  capture = np.sum(g[1] * np.asarray(d[1], np.float64)) / np.sum(
    singular_values(g[1])[:K]
  )
  assert capture >= 0.9999
  s = np.asarray(state, np.float64)
  np.testing.assert_allclose(
    np.swapaxes(s, -1, -2) @ s, np.broadcast_to(np.eye(K), (2, K, K)), atol=1e-5
  )


def test_ky_fan_update_keeps_state_on_non_finite_input():
  oracle = lmo.ky_fan(K)
  g = np.stack(
    [
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=24),
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=25),
    ]
  )
  _, state = oracle.update(g, oracle.init(PAIR))
  bad = g.copy()
  bad[1, 3, 4] = np.nan
  bad[0] *= -1.0
  d, new_state = oracle.update(bad, state)
  new_state = np.asarray(new_state)
  assert np.all(np.isfinite(new_state))
  # The poisoned matrix keeps its previous state ...
  np.testing.assert_array_equal(new_state[1], np.asarray(state)[1])
  # ... and the healthy one is still updated (and tracks its top-k).
  np.testing.assert_allclose(np.asarray(d[0]), -np_top_k(g[0], K), atol=1e-4)
  v = new_state[0].astype(np.float64)
  _, _, vh = svd(g[0])
  np.testing.assert_allclose(v @ v.T, vh[:K].T @ vh[:K], atol=1e-4)
  # With the kept state the next finite step is as good as ever.
  d, _ = oracle.update(g, new_state)
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, K), atol=1e-4)


def test_mixture_state_is_the_tuple_of_its_terms_states():
  oracle = lmo.mix((0.5, lmo.ky_fan(K)), (0.5, lmo.frobenius()))
  state = oracle.init(PAIR)
  assert isinstance(state, tuple) and len(state) == 2
  assert state[0].shape == (2, 20, K)
  assert state[1] is None
  np.testing.assert_array_equal(
    np.asarray(state[0]), np.asarray(lmo.ky_fan(K).init(PAIR))
  )
  g = np.stack(
    [
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=26),
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=27),
    ]
  )
  for _ in range(3):
    d, state = oracle.update(g, state)
  assert isinstance(state, tuple) and len(state) == 2
  assert state[0].shape == (2, 20, K) and state[1] is None
  expected = 0.5 * np_top_k(g, K) + 0.5 * g / _np_frobenius(g)[:, None, None]
  np.testing.assert_allclose(np.asarray(d), expected, atol=1e-4)


def test_ky_fan_update_under_jit():
  oracle = lmo.ky_fan(K)
  g = np.stack(
    [
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=28),
      with_spectrum(WIDE, gapped_spectrum(WIDE), seed=29),
    ]
  )
  update = jax.jit(oracle.update)
  state = oracle.init(PAIR)
  for _ in range(3):
    d, state = update(g, state)
  np.testing.assert_allclose(np.asarray(d), np_top_k(g, K), atol=1e-4)


def test_init_rejects_vector_shape():
  with pytest.raises(ValueError, match='shape'):
    lmo.ky_fan(K).init((7,))


# ---------------------------------------------------------------------------
# Construction-time errors.


@pytest.mark.parametrize(
  'build,error,match',
  [
    (lambda: lmo.ky_fan(0), ValueError, 'k'),
    (lambda: lmo.ky_fan(1.5), TypeError, 'k'),
    (lambda: lmo.ky_fan(1, top_k_method='foo'), ValueError, 'top_k_method'),
    (lambda: lmo.ky_fan(1, subspace_iters=-1), ValueError, 'subspace_iters'),
    (lambda: lmo.ky_fan(1, polar_method='foo'), ValueError, 'polar_method'),
    (lambda: lmo.ky_fan(1, polar_steps=0), ValueError, 'polar_steps'),
    (lambda: lmo.spectral(polar_method='foo'), ValueError, 'polar_method'),
    (lambda: lmo.spectral(polar_steps=0), ValueError, 'polar_steps'),
    (lambda: lmo.spectral(polar_steps=9), ValueError, 'polar_steps'),
    (lambda: lmo.spectral(compute_dtype=jnp.int32), TypeError, 'compute_dtype'),
    (lambda: lmo.sign(-1.0), ValueError, 'scale'),
    (lambda: lmo.sign(0.0), ValueError, 'scale'),
    (lambda: lmo.sign(float('nan')), ValueError, 'scale'),
    (lambda: lmo.mix(), ValueError, 'terms'),
    (lambda: lmo.mix((-0.1, lmo.frobenius())), ValueError, 'weight'),
    (lambda: lmo.mix((0.5, 'notalmo')), TypeError, 'terms'),
    (lambda: lmo.mix(lmo.frobenius()), TypeError, 'terms'),
    (lambda: lmo.schatten(0.5), ValueError, 'p'),
    (lambda: lmo.huber_nuclear(0), ValueError, 'delta'),
    (lambda: lmo.huber_nuclear(-1.0), ValueError, 'delta'),
    (lambda: lmo.spectral_fn('ones'), TypeError, 'h_prime'),
    (lambda: lmo.spectral_fn(jnp.ones_like, h=3), TypeError, 'h'),
  ],
)
def test_construction_errors_name_the_argument(build, error, match):
  with pytest.raises(error, match=match):
    build()


@pytest.mark.parametrize(
  'name', ['spectral_svd', 'frobenius', 'sign', 'ky_fan', 'schatten_3']
)
def test_bad_inputs_at_call_time(name):
  oracle = CATALOGUE[name]()
  with pytest.raises(ValueError, match='g must be a matrix'):
    oracle(np.ones(5, np.float32))
  with pytest.raises(TypeError, match='g must have a floating dtype'):
    oracle(np.ones(WIDE, np.int32))


def test_ky_fan_first_update_after_init_uses_cold_iterations():
  # From init's random subspace the first update must converge as far as a
  # stateless (cold, 10-iteration) call; later updates are warm (2).
  g = jax.random.normal(jax.random.PRNGKey(11), (48, 32))
  oracle = lmo.ky_fan(4)
  first, state = oracle.update(g, oracle.init(g.shape))
  np.testing.assert_allclose(first, oracle(g), atol=1e-6)
  second, _ = oracle.update(g, state)
  warm = lowrank.top_k_polar(
    g, 4, state=state, subspace_iters=lowrank.WARM_ITERS
  )
  np.testing.assert_allclose(second, warm, atol=1e-6)


@pytest.mark.parametrize(
  'oracle',
  [
    lmo.ky_fan(8),
    lmo.spectral(polar_method='newton_schulz'),
    lmo.mix((0.5, lmo.spectral()), (0.5, lmo.frobenius())),
    lmo.sign(),
  ],
  ids=['ky_fan', 'spectral', 'f_mix', 'sign'],
)
def test_cost_tracks_xla_flops_across_shapes(oracle):
  """`LMO.cost` (what the device splits balance) is XLA's FLOP count up to
  one factor per LMO. A Ky Fan direction costs `O(m·n·k)`: a `(32, 2048)`
  matrix about what a `(256, 256)` one does, where its polar factor costs
  8x less (`matrix_cost`)."""
  shapes = [(32, 2048), (256, 256), (2048, 32)]
  ratios = []
  for shape in shapes:
    update = jax.jit(oracle.update).lower(jnp.ones(shape), oracle.init(shape))
    cost = update.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ratios.append(float(cost['flops']) / oracle.cost(shape))
  assert max(ratios) <= 1.15 * min(ratios), ratios
  if isinstance(oracle, lmo.KyFan):
    assert oracle.cost(shapes[0]) <= 1.25 * oracle.cost(shapes[1])
    assert lmo.matrix_cost(shapes[1]) >= 8 * lmo.matrix_cost(shapes[0])


@pytest.mark.parametrize('name', sorted(catalogue.LMOS))
def test_transposable_lmos_commute_with_transposition(name):
  """`transposable` lets the mesh split stack a tall matrix transposed; it
  must hold for the LMOs that claim it (the package's unitarily invariant
  and entrywise balls, solved exactly or by a polar iteration)."""
  oracle = catalogue.LMOS[name]()
  # The Ky Fan subspace iteration starts from one side (it is stateful, so
  # the split never transposes it anyway); the exact top-k commutes.
  assert oracle.transposable == (name not in {'ky_fan', 's_fanion_mix'})
  if not oracle.transposable:
    oracle = lmo.ky_fan(2, top_k_method='svd')
  g = jnp.asarray(gaussian((24, 9), seed=7))
  np.testing.assert_allclose(
    np.asarray(oracle(g.T).T), np.asarray(oracle(g)), atol=2e-5, rtol=1e-4
  )


def test_an_lmo_is_not_transposable_unless_it_says_so():
  class RowNormalised(lmo.LMO):
    def __call__(self, g):
      return g / jnp.linalg.norm(g, axis=-1, keepdims=True)

    def dual_norm(self, g):
      return jnp.sum(jnp.linalg.norm(g, axis=-1), axis=-1)

  assert not RowNormalised().transposable
  mixture = lmo.mix((0.5, lmo.spectral()), (0.5, RowNormalised()))
  assert not mixture.transposable
  assert lmo.mix((0.5, lmo.spectral()), (0.5, lmo.sign())).transposable


def test_stacks_on_cpu_only_where_the_matrices_stay_2d():
  """`stacks_on_cpu` hands a shape's matrices over as one stack on CPU: the
  Ky Fan subspace iteration (its products with G stay 2-D, only the thin
  blocks are batched), not a batched polar factor or full SVD."""
  wide, small = (64, 256), (2, 8)
  assert lmo.ky_fan(4).stacks_on_cpu(wide)
  assert not lmo.ky_fan(4).stacks_on_cpu(small)  # full polar factor
  assert not lmo.ky_fan(4, top_k_method='svd').stacks_on_cpu(wide)
  assert not lmo.spectral().stacks_on_cpu(wide)
  assert not lmo.frobenius().stacks_on_cpu(wide)
  assert lmo.mix((0.5, lmo.ky_fan(4)), (0.5, lmo.ky_fan(8))).stacks_on_cpu(wide)
  assert not lmo.mix(
    (0.5, lmo.ky_fan(4)), (0.5, lmo.frobenius())
  ).stacks_on_cpu(wide)


def test_ky_fan_program_has_no_constant_the_size_of_the_matrices():
  """The cold start is generated in the program (a hash of the index), not
  baked in as an `n×k` literal, and the cold/warm choice is read from the
  state: the lowered program is the same size for 16x larger matrices."""
  oracle = lmo.ky_fan(16)

  def lowered_size(n):
    shape = (4, 64, n)
    g = jax.ShapeDtypeStruct(shape, jnp.float32)
    text = jax.jit(oracle.update).lower(g, oracle.init(shape)).as_text()
    return len(text)

  small, large = lowered_size(256), lowered_size(4096)
  assert abs(large - small) <= 0.01 * small, (small, large)
