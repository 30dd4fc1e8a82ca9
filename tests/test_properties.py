"""Hypothesis property tests: every LMO and every optimizer on odd inputs.

Inputs range over a fixed bucket of shapes (1×1, 1×512, 512×1, tall, wide,
batched tall/wide), the dtypes float32, bfloat16 and float16, magnitudes
from 1e-30 to 1e30 (float16: its finite range) and exact zeros (whole
matrices, rows, columns, scattered entries). Properties:

* every LMO output is finite, has the input's shape and dtype, and lies in
  its ball (spectral family: σ₁ ≤ the method's bound, see `_polar_bound`;
  Ky Fan: max(σ₁, Σσᵢ/k); Frobenius: ‖·‖_F; sign: max|·| ≤ η; Schatten-p:
  the Schatten-q norm; a mixture: it is Σ αᵢ dᵢ with each dᵢ in its ball);
  a zero input gives exactly zero;
* degree-0 homogeneity `lmo(2ʲ·G) = lmo(G)` bit for bit (a power-of-two
  scale is exact in every dtype, so the LMO must not see the scale at all;
  Schatten-p, which skips the max-abs pre-scaling, to rounding; Huber is
  not homogeneous) and oddness `lmo(−G) = −lmo(G)` (bit for bit for the
  polynomial and elementwise oracles, to rounding where LAPACK is used);
* every optimizer alias keeps finite updates in the parameters' dtypes and
  an optimizer state whose tree structure and leaf shapes/dtypes do not
  change from step to step.

Everything runs eagerly (no `jit`): JAX then compiles each primitive once
per shape and dtype and every example after the first few reuses those
kernels, where jitting compiles every (LMO, shape, dtype) anew. Measured
(120 examples of the ball test, 2 cores): eager 34 s, jitted 126 s over the
seven shapes and 121 s over three (1×512, 16×5, 2×3×6): with ~20 LMOs and
three dtypes the jit cache rarely hits.
Hypothesis runs derandomized (a fixed seed per test) with no database, so
every run checks the same 710 cases (400, 250 and 60 examples); since the
cases are fixed, more examples per run would add fixed cases, not coverage
over time.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from reference import singular_values
from reference import to_f64

import fanion_optax as fo
from fanion_optax import catalogue
from fanion_optax import lmo

# ~1.5 min of eager LMO and optimizer calls (2 cores): the slow tier
# (`python -m pytest -m slow`).
pytestmark = pytest.mark.slow

SHAPES = [(1, 1), (1, 512), (512, 1), (16, 5), (5, 16), (2, 6, 3), (2, 3, 6)]
DTYPES = {
  'float32': jnp.float32,
  'bfloat16': jnp.bfloat16,
  'float16': jnp.float16,
}
# Decimal exponents of the input magnitude: 1e-30 … 1e30, except float16
# (finite range ~6e-8 … 65504; entries reach 6× the scale).
EXPONENTS = {
  'float32': (-30.0, 30.0),
  'bfloat16': (-30.0, 30.0),
  'float16': (-4.0, 4.0),
}
# Binary exponents j of the exact scale 2^j for homogeneity: entries in
# [1/16, 6]·2^j stay normal and finite (2^±100 ≈ 1e±30).
POW2 = {'float32': (-100, 100), 'bfloat16': (-100, 100), 'float16': (-10, 13)}
ZEROS = ['none', 'all', 'row', 'col', 'scattered']


def _settings(n):
  # No explain phase: it re-runs a failing case hundreds of times.
  return settings(
    max_examples=n,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
  )


# ---------------------------------------------------------------------------
# Inputs.


def _matrix(shape, dtype_name, seed, exponent, zeros, *, floor=0.0):
  """Gaussian entries (clipped to ±6) times 10^exponent, with zeros."""
  rng = np.random.default_rng(seed)
  g = np.clip(rng.standard_normal(shape), -6.0, 6.0)
  if floor:
    g = np.sign(g) * np.maximum(np.abs(g), floor)
  g = g * 10.0**exponent
  if zeros == 'all':
    g[...] = 0.0
  elif zeros == 'row':
    g[..., rng.integers(shape[-2]), :] = 0.0
  elif zeros == 'col':
    g[..., :, rng.integers(shape[-1])] = 0.0
  elif zeros == 'scattered':
    g[rng.random(shape) < 0.5] = 0.0
  return jnp.asarray(g.astype(np.float32), DTYPES[dtype_name])


def _eps(dtype):
  return float(jnp.finfo(dtype).eps)


def _tol(dtype, shape):
  """Slack for rounding the output to `dtype` (and float32 arithmetic)."""
  return 4.0 * _eps(dtype) * math.sqrt(min(shape[-2:])) + 1e-4


# ---------------------------------------------------------------------------
# The LMO catalogue and the ball each output must lie in.


def _polar_bound(polar_method, polar_steps=None):
  """sup over σ ∈ (0, 1] of the iteration's scalar map: the largest
  singular value the method can output (exact arithmetic).

  Jordan's quintic overshoots to ~1.2024 and 5 Polar Express steps to
  ~1.1236 (the truncated schedule has not converged); 8 Polar Express
  steps, the classic cubic run long enough and the SVD give 1.
  """
  rows, safety = fo.coefficient_schedule(polar_method, polar_steps)
  if rows is None:
    return 1.0
  s = np.concatenate([np.logspace(-12, 0, 20001), [1.0]]) / safety
  for a, b, c in rows:
    s = a * s + b * s**3 + c * s**5
  return max(1.0, float(s.max()))


CUBIC = ((1.5, -0.5, 0.0),) * 12


def _catalogue():
  """`{name: (lmo, ball)}`; `ball(out, g, dtype)` asserts membership."""

  def spectral_ball(bound, compute_eps=0.0):
    def check(out, g, dtype):
      tol = _tol(dtype, out.shape) + 4 * compute_eps
      assert singular_values(to_f64(out)).max(initial=0.0) <= bound + tol

    return check

  def ky_fan_ball(k, polar_bound):
    def check(out, g, dtype):
      s = singular_values(to_f64(out))
      full = k >= min(g.shape[-2:])
      bound = polar_bound if full else 1.0
      ball = np.maximum(s.max(axis=-1), s.sum(axis=-1) / k)
      assert np.all(ball <= bound + _tol(dtype, out.shape)), ball
      if not full:
        assert np.all(np.sum(s > 0.5, axis=-1) <= k)

    return check

  def frobenius_ball(out, g, dtype):
    norm = np.sqrt(np.sum(to_f64(out) ** 2, axis=(-2, -1)))
    assert np.all(norm <= 1.0 + _tol(dtype, out.shape)), norm

  def sign_ball(eta):
    def check(out, g, dtype):
      # The radius as the output dtype rounds it.
      radius = float(jnp.asarray(eta, dtype).astype(jnp.float32))
      assert np.all(np.abs(to_f64(out)) <= radius)

    return check

  def norm_ball(oracle):
    def check(out, g, dtype):
      norm = np.asarray(oracle.norm(out))
      assert np.all(norm <= 1.0 + _tol(dtype, out.shape)), norm

    return check

  def mixture_ball(terms):
    def check(out, g, dtype, stateful=False):
      total = 0.0
      for weight, (oracle, ball) in terms:
        if stateful:  # the terms' first warm-started step
          d = oracle.update(g, oracle.init(g.shape, jnp.float32))[0]
        else:
          d = oracle(g)
        ball(d, g, dtype)
        total = total + weight * to_f64(d)
      np.testing.assert_allclose(
        to_f64(out), total, rtol=2 * _eps(dtype), atol=2 * _eps(dtype)
      )

    return check

  def ball(oracle):
    """The ball of the oracle's outputs, from its type and settings."""
    if isinstance(oracle, lmo.Spectral):
      compute_eps = (
        0.0 if oracle.compute_dtype is None else _eps(oracle.compute_dtype)
      )
      return spectral_ball(
        _polar_bound(oracle.polar_method, oracle.polar_steps), compute_eps
      )
    if isinstance(oracle, lmo.KyFan):
      return ky_fan_ball(
        oracle.k, _polar_bound(oracle.polar_method, oracle.polar_steps)
      )
    if isinstance(oracle, lmo.Frobenius):
      return frobenius_ball
    if isinstance(oracle, lmo.Sign):
      return sign_ball(oracle.scale)
    if isinstance(oracle, lmo.Mixture):
      return mixture_ball([(w, (t, ball(t))) for w, t in oracle.terms])
    assert isinstance(oracle, lmo.SpectralFunction)
    # Schatten-p: the Schatten-q ball; Huber: the spectral ball (`norm`);
    # a custom h′ without a ball norm: h′ = 1 gives the spectral ball.
    return norm_ball(oracle) if oracle.ball_norm else spectral_ball(1.0)

  ns5, pe5 = _polar_bound('newton_schulz'), _polar_bound('polar_express')
  assert 1.20 < ns5 < 1.21 and 1.12 < pe5 < 1.13
  assert _polar_bound('polar_express', 8) < 1.0 + 1e-6
  assert _polar_bound(CUBIC) == 1.0

  # The package's catalogue, and settings it does not hold.
  oracles = {name: make() for name, make in catalogue.LMOS.items()} | {
    'spectral-polar_express-8': lmo.spectral(polar_steps=8),
    'spectral-polar_express-bf16-compute': lmo.spectral(
      compute_dtype=jnp.bfloat16
    ),
    'spectral-cubic-rows': lmo.spectral(polar_method=CUBIC),
    'ky_fan-1-subspace': lmo.ky_fan(1),
    'ky_fan-4-subspace-newton_schulz': lmo.ky_fan(
      4, polar_method='newton_schulz'
    ),
    'sign-0.01': lmo.sign(0.01),
    'schatten-1.5': lmo.schatten(1.5),
    'schatten-4': lmo.schatten(4.0),
    'three-term-mix': lmo.mix(
      (0.3, lmo.ky_fan(1, top_k_method='svd')),
      (0.3, lmo.frobenius()),
      (0.4, lmo.sign(0.01)),
    ),
  }
  return {name: (oracle, ball(oracle)) for name, oracle in oracles.items()}


CATALOGUE = _catalogue()
NAMES = sorted(CATALOGUE)
# Their outputs are polynomials or elementwise maps of G: exactly odd.
POLYNOMIAL = {
  'spectral_gram',
  'spectral',
  'spectral_newton_schulz',
  'spectral-polar_express-8',
  'spectral-polar_express-bf16-compute',
  'spectral-cubic-rows',
  'frobenius',
  'sign',
  'sign-0.01',
  'f_muon_mix',
}
NOT_HOMOGENEOUS = {'huber_nuclear'}
# SpectralFunction runs its SVD on G itself (no max-abs pre-scaling).
HOMOGENEOUS_TO_ROUNDING = {'schatten', 'schatten-1.5', 'schatten-4'}


def test_catalogue_covers_every_lmo_kind():
  kinds = {type(oracle).__name__ for oracle, _ in CATALOGUE.values()}
  assert kinds == {
    'Spectral',
    'KyFan',
    'Frobenius',
    'Sign',
    'Mixture',
    'SpectralFunction',
  }
  assert POLYNOMIAL <= set(NAMES) and NOT_HOMOGENEOUS <= set(NAMES)


# ---------------------------------------------------------------------------
# LMO properties.

matrices = st.fixed_dictionaries(
  {
    'shape': st.sampled_from(SHAPES),
    'dtype': st.sampled_from(sorted(DTYPES)),
    'seed': st.integers(0, 2**32 - 1),
    'zeros': st.sampled_from(ZEROS),
    'unit': st.floats(0.0, 1.0),
  }
)


@_settings(400)
@given(name=st.sampled_from(NAMES), m=matrices)
def test_lmo_output_finite_in_dtype_and_in_ball(name, m):
  lo, hi = EXPONENTS[m['dtype']]
  exponent = lo + (hi - lo) * m['unit']
  g = _matrix(m['shape'], m['dtype'], m['seed'], exponent, m['zeros'])
  oracle, ball = CATALOGUE[name]
  out = oracle(g)
  assert out.shape == g.shape and out.dtype == g.dtype
  assert np.all(np.isfinite(to_f64(out)))
  if m['zeros'] == 'all':
    assert not np.any(to_f64(out))
  ball(out, g, g.dtype)
  # The stateful path (an optimizer's first step: for the Ky Fan subspace
  # method 2 iterations from the cold start, not the 10 of a stateless
  # call) has the same properties and keeps its state's structure.
  state = oracle.init(g.shape, jnp.float32)
  out2, new_state = oracle.update(g, state)
  assert out2.dtype == g.dtype
  assert np.all(np.isfinite(to_f64(out2)))
  if m['zeros'] == 'all':
    assert not np.any(to_f64(out2))
  assert jax.tree.structure(
    new_state, is_leaf=lambda x: x is None
  ) == jax.tree.structure(state, is_leaf=lambda x: x is None)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.all(np.isfinite(a))
  if isinstance(oracle, lmo.Mixture):
    ball(out2, g, g.dtype, stateful=True)
  else:
    ball(out2, g, g.dtype)


@_settings(250)
@given(name=st.sampled_from(NAMES), m=matrices)
def test_lmo_homogeneous_of_degree_zero_and_odd(name, m):
  g = _matrix(m['shape'], m['dtype'], m['seed'], 0.0, m['zeros'], floor=1 / 16)
  oracle, _ = CATALOGUE[name]
  out = to_f64(oracle(g))
  lo, hi = POW2[m['dtype']]
  j = round(lo + (hi - lo) * m['unit'])
  scaled = jnp.asarray(
    np.asarray(g.astype(jnp.float32)) * np.float32(2.0**j), g.dtype
  )
  # The scaling is exact: the LMO sees the same matrix up to 2^j.
  np.testing.assert_array_equal(to_f64(scaled) / 2.0**j, to_f64(g))
  if name not in NOT_HOMOGENEOUS:
    if name in HOMOGENEOUS_TO_ROUNDING:
      np.testing.assert_allclose(
        to_f64(oracle(scaled)), out, atol=4 * _eps(g.dtype)
      )
    else:
      np.testing.assert_array_equal(to_f64(oracle(scaled)), out)
  negated = to_f64(oracle(-g))
  if name in POLYNOMIAL:
    np.testing.assert_array_equal(negated, -out)
  else:
    # An SVD of −G flips signs of singular vectors in LAPACK's own order:
    # the reconstruction differs by rounding, ~eps·√(rank) per entry.
    rounding = 4 * _eps(g.dtype) * math.sqrt(min(g.shape[-2:]))
    np.testing.assert_allclose(negated, -out, atol=rounding)


# ---------------------------------------------------------------------------
# Optimizers.

DN = fo.DimensionNumbers
PARAM_SHAPES = {
  'one': (1, 1),
  'row': (1, 512),
  'col': (512, 1),
  'tall': (16, 5),
  'wide': (5, 16),
  'stack_tall': (2, 6, 3),
  'stack_wide': (2, 3, 6),
  'bias': (5,),
}
DIMENSION_NUMBERS = {
  name: (None if len(shape) == 1 else DN(1, 2) if len(shape) == 3 else DN())
  for name, shape in PARAM_SHAPES.items()
}

# The catalogue, and one setting it does not hold.
OPTIMIZERS = dict(catalogue.OPTIMIZERS) | {
  'muon_newton_schulz_plain_rms': functools.partial(
    fo.muon,
    0.02,
    nesterov=False,
    polar_method='newton_schulz',
    shape_scale='rms',
  ),
}


def _params(dtype_name, seed, exponent, zeros):
  out = {}
  for i, (name, shape) in enumerate(sorted(PARAM_SHAPES.items())):
    # Vectors go to the default AdamW fallback in the same dtype (float16
    # included: see test_float16_default_fallback_is_finite).
    out[name] = _matrix(
      shape, dtype_name, seed + i, exponent, zeros if len(shape) > 1 else 'none'
    )
  return out


def _signature(tree):
  return (
    jax.tree.structure(tree, is_leaf=lambda x: x is None),
    [(x.shape, x.dtype) for x in jax.tree.leaves(tree)],
  )


@_settings(60)
@given(
  name=st.sampled_from(sorted(OPTIMIZERS)),
  dtype=st.sampled_from(sorted(DTYPES)),
  seed=st.integers(0, 2**31),
  unit=st.floats(0.0, 1.0),
  zeros=st.sampled_from(ZEROS),
  skip=st.booleans(),
)
def test_optimizer_updates_finite_and_state_structure_kept(
  name, dtype, seed, unit, zeros, skip
):
  lo, hi = EXPONENTS[dtype]
  exponent = lo + (hi - lo) * unit
  tx = OPTIMIZERS[name](dimension_numbers=DIMENSION_NUMBERS)
  if skip:
    tx = fo.skip_nonfinite(tx)
  params = _params(dtype, seed, 0.0, 'none')
  state = tx.init(params)
  signature = _signature(state)
  for step in range(2):
    grads = _params(dtype, seed + 100 * (step + 1), exponent, zeros)
    updates, state = tx.update(grads, state, params)
    assert _signature(state) == signature
    for key, u in updates.items():
      assert u.shape == params[key].shape and u.dtype == params[key].dtype
      assert np.all(np.isfinite(to_f64(u))), key
    params = optax.apply_updates(params, updates)
    assert all(np.all(np.isfinite(to_f64(p))) for p in params.values())
  if skip:
    # The policy's invariant: whatever the scale (AdamW's second moment
    # overflows for gradients near 1e30), the kept state is finite.
    assert all(np.all(np.isfinite(to_f64(x))) for x in jax.tree.leaves(state))


def test_float16_default_fallback_is_finite():
  """The default fallback computes in float32 for float16 parameters.

  Plain optax.adamw (b2=0.999) keeps nu in float16, where eps=1e-8 rounds
  to 0: zero gradients give 0/0 = NaN and gradients ~1e-3 give -inf. The
  default fallback (`fo.adamw_fallback()`) keeps float32 moments and casts
  its update back: it is float32 AdamW at 3e-4, b2=0.95, rounded to
  float16.
  """
  params = {'w': jnp.ones((4, 3), jnp.float16), 'b': jnp.ones(3, jnp.float16)}
  tx = fo.muon(0.02)
  for value, bad in ((0.0, np.isnan), (1e-3, np.isinf)):
    grads = jax.tree.map(lambda p: jnp.full_like(p, value), params)
    state = tx.init(params)
    assert state.fallback[0].nu['b'].dtype == jnp.float32
    updates, state = tx.update(grads, state, params)
    assert np.all(np.isfinite(to_f64(updates['w'])))
    assert updates['b'].dtype == jnp.float16
    assert np.all(np.isfinite(to_f64(updates['b'])))
    b32, g32 = (x['b'].astype(jnp.float32) for x in (params, grads))
    ref = optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    want, _ = ref.update(g32, ref.init(b32), b32)
    np.testing.assert_array_equal(
      to_f64(updates['b']), to_f64(want.astype(jnp.float16))
    )
    # The inputs are the hard case: plain float16 AdamW (optax's defaults,
    # the old fallback) is not finite here.
    plain = optax.adamw(3e-4)
    raw, _ = plain.update(grads['b'], plain.init(params['b']), params['b'])
    assert np.all(bad(to_f64(raw))), value
