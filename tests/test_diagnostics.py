"""Tests for `fanion_optax.diagnostics.constraint_report`.

Norms are checked against NumPy closed forms (SPEC.md §2.1 table): σ₁ for the
spectral ball, `max(σ₁, Σσᵢ/k)` for the Ky Fan dual ball, `‖X‖_F`,
`max|Xᵢⱼ|/η`, and the Schatten-q norm; radii against `s/λ` (SPEC §2.3).
"""

import importlib
import math

import jax.numpy as jnp
import numpy as np
import pytest
from reference import singular_values
from reference import with_spectrum

import fanion_optax as fo
from fanion_optax.diagnostics import ConstraintEntry
from fanion_optax.partition import DimensionNumbers as DN

_polar = importlib.import_module('fanion_optax.polar')


def _rand(shape, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _params():
  return {
    'w': jnp.asarray(_rand((6, 10), 0)),
    'stack': jnp.asarray(_rand((3, 5, 7), 1)),
    'conv': jnp.asarray(_rand((3, 3, 4, 8), 2)),
    'b': jnp.asarray(_rand((10,), 3)),
  }


SPECS = {'w': DN(), 'stack': DN(1, 2), 'conv': DN((0, 1, 2), 3), 'b': None}


def _views(params):
  """NumPy matrix views: (batch, fan_in, fan_out)."""
  return {
    'w': np.asarray(params['w'])[None],
    'stack': np.asarray(params['stack']),
    'conv': np.asarray(params['conv']).reshape(1, 36, 8),
  }


FANS = {'w': (6, 10), 'stack': (5, 7), 'conv': (36, 8)}


def _shape_factor(fan_in, fan_out, mode):
  return {
    'muon': math.sqrt(max(1.0, fan_out / fan_in)),
    'rms': 0.2 * math.sqrt(max(fan_in, fan_out)),
    None: 1.0,
  }[mode]


def _np_norms(name, x):
  sv = singular_values(x)
  if name == 'spectral':
    return sv[..., 0]
  if name.startswith('ky_fan'):
    k = int(name.split('_')[-1])
    return np.maximum(sv[..., 0], sv.sum(-1) / k)
  if name == 'frobenius':
    return np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=(-2, -1)))
  if name == 'sign':
    return np.max(np.abs(np.asarray(x, np.float64)), axis=(-2, -1)) / 0.05
  if name == 'schatten_4':  # ball of Schatten-4 dual: Schatten-4/3
    return np.sum(sv ** (4 / 3), axis=-1) ** 0.75
  if name == 'huber':
    return sv[..., 0]
  raise AssertionError(name)


LMOS = {
  'spectral': fo.lmo.spectral(),
  'ky_fan_1': fo.lmo.ky_fan(1),
  'ky_fan_3': fo.lmo.ky_fan(3, top_k_method='svd'),
  'frobenius': fo.lmo.frobenius(),
  'sign': fo.lmo.sign(0.05),
  'schatten_4': fo.lmo.schatten(4.0),
  'huber': fo.lmo.huber_nuclear(0.1),
}


@pytest.mark.parametrize('lmo_name', list(LMOS))
@pytest.mark.parametrize('shape_scale', ['muon', 'rms', None])
def test_norms_and_radii_match_closed_forms(lmo_name, shape_scale):
  params = _params()
  lam = 0.3
  report = fo.diagnostics.constraint_report(
    params,
    LMOS[lmo_name],
    weight_decay=lam,
    shape_scale=shape_scale,
    dimension_numbers=SPECS,
  )
  assert set(report) == {'w', 'stack', 'conv'}
  for name, view in _views(params).items():
    entry = report[name]
    assert isinstance(entry, ConstraintEntry)
    assert entry.norm.shape == (view.shape[0],)
    np.testing.assert_allclose(entry.norm, _np_norms(lmo_name, view), rtol=2e-5)
    radius = _shape_factor(*FANS[name], shape_scale) / lam
    assert entry.radius == pytest.approx(radius, rel=1e-12)
    # Default slack: the LMO's polar overshoot (SPEC §3.1) plus 1e-3.
    lmo = LMOS[lmo_name]
    method = getattr(lmo, 'polar_method', None)
    widen = (
      _polar.singular_value_bound(method, lmo.polar_steps)
      if method is not None
      else 1.0
    )
    assert entry.holds == bool(np.all(entry.norm <= radius * (widen + 1e-3)))
    assert entry.contraction is None


@pytest.mark.parametrize(
  'sigma,k,expected',
  [
    ((3.0, 1.0, 1.0, 1.0, 1.0, 1.0), 2, 4.0),  # Σσ/k wins
    ((5.0, 1.0), 2, 5.0),  # σ₁ wins
    ((2.0, 2.0, 2.0), 3, 2.0),  # tie
    ((2.0, 1.5, 0.5), 1, 4.0),  # k = 1: the nuclear norm
  ],
)
def test_ky_fan_ball_norm_both_branches(sigma, k, expected):
  x = with_spectrum((8, 10), sigma)
  report = fo.diagnostics.constraint_report(
    {'w': x}, fo.lmo.ky_fan(k), weight_decay=1.0, shape_scale=None
  )
  np.testing.assert_allclose(report['w'].norm, [expected], rtol=1e-5)


@pytest.mark.parametrize(
  'sigma1,lam,holds',
  [
    (1.9, 0.5, True),  # radius 2
    (2.0, 0.5, True),  # on the boundary
    (2.001, 0.5, True),  # within rtol = 1e-3
    (2.01, 0.5, False),
    (2.5, 0.5, False),
  ],
)
def test_holds_flag(sigma1, lam, holds):
  x = with_spectrum((6, 6), (sigma1, 1.0, 0.5))
  entry = fo.diagnostics.constraint_report(
    {'w': x}, fo.lmo.spectral(polar_method='svd'), weight_decay=lam
  )['w']
  assert entry.radius == pytest.approx(2.0)
  np.testing.assert_allclose(entry.norm, [sigma1], rtol=1e-5)
  assert entry.holds is holds


def test_rtol_controls_slack():
  x = {'w': with_spectrum((6, 6), (2.05, 1.0))}
  lmo = fo.lmo.spectral(polar_method='svd')
  assert not fo.diagnostics.constraint_report(x, lmo, weight_decay=0.5)[
    'w'
  ].holds
  assert fo.diagnostics.constraint_report(x, lmo, weight_decay=0.5, rtol=0.03)[
    'w'
  ].holds


def test_zero_decay_gives_infinite_radius():
  entry = fo.diagnostics.constraint_report(
    {'w': _rand((4, 6), 0, scale=1e6)},
    fo.lmo.spectral(),
    weight_decay=0.0,
    learning_rate=0.1,
  )['w']
  assert entry.radius == math.inf
  assert entry.holds
  assert entry.contraction == pytest.approx(1.0)


@pytest.mark.parametrize('lr,lam', [(0.1, 2.0), (0.02, 0.5), (1.0, 1.0)])
def test_contraction(lr, lam):
  entry = fo.diagnostics.constraint_report(
    {'w': _rand((4, 6), 0)},
    fo.lmo.spectral(),
    weight_decay=lam,
    learning_rate=lr,
  )['w']
  assert entry.contraction == pytest.approx(1 - lr * lam, rel=1e-12)


def test_step_too_large_raises():
  with pytest.raises(ValueError, match='learning_rate'):
    fo.diagnostics.constraint_report(
      {'w': jnp.ones((2, 3))},
      fo.lmo.spectral(),
      weight_decay=2.0,
      learning_rate=0.6,
    )


@pytest.mark.parametrize(
  'kwargs,error,match',
  [
    (dict(weight_decay=-0.1), ValueError, 'weight_decay'),
    (dict(weight_decay=0.1, learning_rate=-1.0), ValueError, 'learning_rate'),
    (dict(weight_decay=0.1, shape_scale='max'), ValueError, 'shape_scale'),
    (dict(weight_decay=0.1, rtol=-1e-3), ValueError, 'rtol'),
  ],
)
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    fo.diagnostics.constraint_report(
      {'w': jnp.ones((2, 3))}, fo.lmo.spectral(), **kwargs
    )


def test_lmo_must_be_an_lmo():
  with pytest.raises(TypeError, match='lmo'):
    fo.diagnostics.constraint_report(
      {'w': jnp.ones((2, 3))}, jnp.sign, weight_decay=0.1
    )


@pytest.mark.parametrize(
  'lmo',
  [
    fo.lmo.mix((0.5, fo.lmo.spectral()), (0.5, fo.lmo.frobenius())),
    fo.lmo.mix((0.5, fo.lmo.ky_fan(2)), (0.5, fo.lmo.sign(0.01))),
    fo.lmo.spectral_fn(lambda s: s),
  ],
)
def test_no_closed_form_norm_raises(lmo):
  with pytest.raises(NotImplementedError):
    fo.diagnostics.constraint_report(
      {'w': jnp.ones((3, 4))}, lmo, weight_decay=0.1
    )


def test_exclude_and_default_dimension_numbers():
  params = {
    'embed': {'embedding': jnp.ones((10, 4))},
    'dense': {'kernel': 2.0 * jnp.eye(4), 'bias': jnp.ones(4)},
    'conv': jnp.ones((3, 3, 2, 4)),
  }
  report = fo.diagnostics.constraint_report(
    params, fo.lmo.spectral(), weight_decay=1.0, exclude=['embed']
  )
  # Default: only 2-D leaves are matrices; 'embed' is excluded.
  assert list(report) == ['dense/kernel']
  np.testing.assert_allclose(report['dense/kernel'].norm, [2.0], rtol=1e-6)


def test_docstring_example():
  report = fo.diagnostics.constraint_report(
    {'w': 3.0 * jnp.eye(4)}, fo.lmo.spectral(), weight_decay=0.5
  )
  entry = report['w']
  assert (float(entry.norm[0]), entry.radius, entry.holds) == (3.0, 2.0, False)


def test_default_slack_follows_the_polar_overshoot():
  # sigma_1 = 2.1 against radius 2: outside the exact ball, inside the ball
  # widened by Polar Express 5 steps' overshoot (1.1236), not Jordan-free.
  x = {'w': np.diag([2.1, 1.0, 0.5]).astype(np.float32)}
  report = lambda lmo: (
    fo.diagnostics.constraint_report(
      x, lmo, weight_decay=0.5, shape_scale=None
    )['w'].holds
  )
  assert report(fo.lmo.spectral())
  assert not report(fo.lmo.spectral(polar_method='svd'))
  assert not report(fo.lmo.spectral(polar_steps=8))
  assert _polar.singular_value_bound('polar_express', 5) == pytest.approx(
    1.1236, abs=1e-3
  )
  assert _polar.singular_value_bound('newton_schulz', 5) == pytest.approx(
    1.2024, abs=1e-3
  )


def test_blocks_are_reported_as_matrices_of_their_own():
  # A grouped-query kernel cut into (4, 8), (4, 4), (4, 4) blocks and a
  # fused QKV kernel into three (4, 4): every block is a matrix with the
  # radius of its own shape factor (sqrt(8/4) and 1), not the whole
  # kernel's (sqrt(16/4) = 2 and sqrt(12/4)).
  gqa, qkv = _rand((4, 16), 7), _rand((4, 12), 8)
  report = fo.diagnostics.constraint_report(
    {'gqa': jnp.asarray(gqa), 'qkv': jnp.asarray(qkv)},
    fo.lmo.spectral(),
    weight_decay=0.5,
    rtol=0.0,
    dimension_numbers={
      'gqa': DN(0, 1, output_blocks=(8, 4, 4)),
      'qkv': DN(0, 1, output_blocks=3),
    },
  )
  assert list(report) == ['gqa[4x8]', 'gqa[4x4]', 'qkv']
  sigma1 = lambda *blocks: [singular_values(b)[0] for b in blocks]
  expected = {
    'gqa[4x8]': (sigma1(gqa[:, :8]), math.sqrt(2) / 0.5),
    'gqa[4x4]': (sigma1(gqa[:, 8:12], gqa[:, 12:]), 1 / 0.5),
    'qkv': (sigma1(qkv[:, :4], qkv[:, 4:8], qkv[:, 8:]), 1 / 0.5),
  }
  for key, (norms, radius) in expected.items():
    np.testing.assert_allclose(report[key].norm, norms, rtol=1e-5)
    assert report[key].radius == pytest.approx(radius, rel=1e-12)
    assert report[key].holds == bool(max(norms) <= radius)
