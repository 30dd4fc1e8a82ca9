"""Stress tests: ill-conditioning, rank deficiency, tied singular values and
a 4096×8 matrix.

* Condition number 1e8 (log-spaced and two-cluster spectra): every polar
  method is finite, within its output-σ bound, and loses little of the
  nuclear norm (the LMO gap of SPEC.md §3.1): SVD and 30 cubic steps ~0,
  8 Polar Express steps < 1e-3; the default 5 Polar Express steps and
  Jordan's quintic lose 0.07–0.21, mostly because their output σ₁ overshoots
  to ~1.12 / ~1.2 (the gap rescales by σ₁(O)).
* Exactly low-rank gradients (rank r < k): the Ky Fan LMO (subspace and
  SVD, cold and warm-started) returns rank r with unit singular values and
  captures Σσᵢ exactly; the polar iterations keep the null directions
  below 1e-3 (30 cubic steps: 1e-2); no NaN.
* Tied singular values: the top-k subspace is not unique when σ_k =
  σ_{k+1}. Documented behaviour of `ky_fan` (both top-k methods): it returns one
  optimal choice — finite, exactly k unit singular values and the rest 0,
  and ⟨G, O⟩ = Σ_{i≤k} σᵢ, the Ky Fan-k norm, which every optimal choice
  attains.
* A tall 4096×8 matrix: `polar_factor` (and the Ky Fan LMO, and Muon's update)
  transpose to the small side; no 4096×4096 Gram matrix appears in the
  jaxpr, and XLA's compiled temporary memory stays far below one.
"""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from reference import singular_values
from reference import with_spectrum

import fanion_optax as fo
from fanion_optax import lmo

polar_module = importlib.import_module('fanion_optax.polar')

CUBIC = ((1.5, -0.5, 0.0),) * 30

# Ill-conditioned, tied and rank-deficient spectra at realistic sizes: the
# slow tier (`python -m pytest -m slow`).
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------
# Condition number 1e8.

SPECTRA = {
  'log-spaced': lambda r: np.logspace(0, -8, r),
  'two-cluster': lambda r: np.r_[np.ones(r // 2), np.full(r - r // 2, 1e-8)],
}
# (method, steps): (largest LMO gap, largest output σ).
POLAR_METHODS = {
  ('svd', None): (1e-4, 1.0 + 1e-5),
  ('cubic-30', None): (1e-4, 1.0 + 1e-5),
  ('polar_express', 8): (1e-3, 1.0 + 1e-5),
  ('polar_express', None): (0.15, 1.125),
  ('newton_schulz', None): (0.25, 1.203),
}


@pytest.mark.parametrize('spectrum', sorted(SPECTRA))
@pytest.mark.parametrize('shape', [(64, 32), (32, 64), (48, 48)], ids=str)
def test_condition_1e8_every_polar_method(shape, spectrum):
  sigma = SPECTRA[spectrum](min(shape))
  assert sigma.max() / sigma.min() == pytest.approx(1e8)
  g = jnp.asarray(with_spectrum(shape, sigma))
  for (method, steps), (max_gap, max_sigma) in POLAR_METHODS.items():
    o = fo.polar_factor(
      g,
      polar_method=CUBIC if method == 'cubic-30' else method,
      polar_steps=steps,
    )
    assert np.isfinite(np.asarray(o)).all(), method
    gap = float(fo.lmo_gap(g, o))
    assert -1e-5 <= gap <= max_gap, (method, steps, gap)
    assert singular_values(o).max() <= max_sigma, (method, steps)
  # Low precision arithmetic stays finite on the same input.
  o = fo.polar_factor(g, compute_dtype=jnp.bfloat16)
  assert np.isfinite(np.asarray(o)).all()
  assert float(fo.lmo_gap(g, o)) < 0.2


def test_condition_1e8_ky_fan_and_batched():
  sigma = np.logspace(0, -8, 32)
  g = jnp.stack([with_spectrum((64, 32), sigma, seed=s) for s in range(3)])
  for oracle in (lmo.ky_fan(4), lmo.ky_fan(4, top_k_method='svd')):
    o = oracle(g)
    s = np.linalg.svd(np.asarray(o, np.float64), compute_uv=False)
    np.testing.assert_allclose(s[:, :4], 1.0, atol=1e-5)
    assert s[:, 4:].max() < 1e-5
    np.testing.assert_allclose(
      np.asarray(oracle.dual_norm(g)), sigma[:4].sum(), rtol=1e-5
    )
    captured = np.sum(np.asarray(g, np.float64) * np.asarray(o), (-2, -1))
    np.testing.assert_allclose(captured, sigma[:4].sum(), rtol=1e-4)


# ---------------------------------------------------------------------------
# Exactly low rank.


@pytest.mark.parametrize('rank', [1, 3])
@pytest.mark.parametrize('shape', [(40, 24), (24, 40)], ids=str)
def test_rank_deficient_ky_fan_has_rank_r(shape, rank):
  sigma = [3.0, 2.0, 1.0][:rank]
  g = jnp.asarray(with_spectrum(shape, sigma))
  for method in ('subspace', 'svd'):
    oracle = lmo.ky_fan(5, top_k_method=method)
    outputs = {'cold': oracle(g)}
    state = oracle.init(g.shape)
    for _ in range(3):
      outputs['warm'], state = oracle.update(g, state)
    for label, o in outputs.items():
      o = np.asarray(o)
      assert np.isfinite(o).all()
      s = singular_values(o)
      np.testing.assert_allclose(
        s[:rank], 1.0, atol=1e-5, err_msg=f'{method} {label}'
      )
      assert s[rank:].max() < 1e-5, (method, label)
      assert np.linalg.matrix_rank(o, tol=1e-3) == rank
      captured = float(np.sum(np.asarray(g, np.float64) * o))
      assert captured == pytest.approx(sum(sigma), rel=1e-5)
    if state is not None:
      assert np.isfinite(np.asarray(state)).all()


@pytest.mark.parametrize('rank', [1, 3])
def test_rank_deficient_polar_keeps_null_space_small(rank):
  g = jnp.asarray(with_spectrum((40, 24), [3.0, 2.0, 1.0][:rank]))
  for method, steps in POLAR_METHODS:
    o = fo.polar_factor(
      g,
      polar_method=CUBIC if method == 'cubic-30' else method,
      polar_steps=steps,
    )
    s = singular_values(o)
    assert np.isfinite(s).all()
    # Rounding noise (~1e-8) in the null space grows by the polynomial's
    # slope at 0: 1.5 per cubic step (1.5^30 ≈ 2e5), so the cubic keeps it
    # below 1e-2; the SVD masks it to 0.
    null = 1e-2 if method == 'cubic-30' else 1e-3
    assert s[rank:].max() < null, method
    assert s[:rank].min() > 0.6, method
  np.testing.assert_array_equal(
    np.asarray(fo.polar_factor(jnp.zeros((40, 24)))), np.zeros((40, 24))
  )


# ---------------------------------------------------------------------------
# Tied singular values.

TIES = {
  # Every singular value equal: every k-subspace is optimal.
  'all-equal': [1.0] * 24,
  # A tied cluster at the top, cut inside by k = 2, 3.
  'top-cluster': [2.0] * 4 + [1.0] * 8 + [0.5] * 12,
  # σ₂ = σ₃ = σ₄ below a distinct σ₁: k = 2, 3 cut inside the tie.
  'inner-cluster': [4.0, 2.0, 2.0, 2.0] + [0.5] * 20,
  # Fewer nonzero singular values than rows/columns, all tied.
  'tied-low-rank': [1.0] * 6,
}


@pytest.mark.parametrize('method', ['subspace', 'svd'])
@pytest.mark.parametrize(
  'shape',
  # The tall case transposes to the wide one: the slow tier runs it.
  [pytest.param((40, 24), marks=pytest.mark.slow), (24, 40)],
  ids=str,
)
@pytest.mark.parametrize('spectrum', sorted(TIES))
def test_ky_fan_with_tied_singular_values(spectrum, shape, method):
  sigma = np.asarray(TIES[spectrum])
  g = jnp.asarray(with_spectrum(shape, sigma, seed=1))
  for k in (1, 2, 3, 4):
    oracle = lmo.ky_fan(k, top_k_method=method)
    outputs = {'cold': oracle(g)}
    state = oracle.init(g.shape)
    for _ in range(3):
      outputs['warm'], state = oracle.update(g, state)
    ky_fan_norm = float(np.sort(sigma)[::-1][:k].sum())
    for label, o in outputs.items():
      o = np.asarray(o)
      assert np.isfinite(o).all()
      s = singular_values(o)
      where = f'k={k} {label}'
      np.testing.assert_allclose(s[:k], 1.0, atol=1e-5, err_msg=where)
      assert s[k:].max() < 1e-5, where
      captured = float(np.sum(np.asarray(g, np.float64) * o))
      assert captured == pytest.approx(ky_fan_norm, rel=1e-4), where
    assert float(oracle.dual_norm(g)) == pytest.approx(ky_fan_norm, rel=1e-5)


# ---------------------------------------------------------------------------
# A tall 4096×8 matrix: no 4096×4096 Gram matrix.

TALL = (4096, 8)
SMALL = TALL[0] * TALL[1]


def _sub_jaxprs(params):
  for value in params.values():
    for x in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(x, jax_core.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, jax_core.Jaxpr):
        yield x


def _largest_intermediate(jaxpr):
  """The most elements of any value computed in `jaxpr` (recursively)."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, math.prod(getattr(var.aval, 'shape', ())))
    for sub in _sub_jaxprs(eqn.params):
      largest = max(largest, _largest_intermediate(sub))
  return largest


def test_inspector_sees_a_gram_matrix():
  # Newton–Schulz on the tall orientation would form x xᵀ: 4096×4096.
  rows = fo.coefficient_schedule('polar_express')[0]
  jaxpr = jax.make_jaxpr(lambda x: polar_module.newton_schulz_iterate(x, rows))(
    jnp.ones(TALL)
  )
  assert _largest_intermediate(jaxpr.jaxpr) == TALL[0] ** 2


FUNCTIONS = {
  'polar-polar_express': lambda g: fo.polar_factor(g),
  'polar-newton_schulz': lambda g: fo.polar_factor(
    g, polar_method='newton_schulz'
  ),
  'polar-svd': lambda g: fo.polar_factor(g, polar_method='svd'),
  'polar-bf16': lambda g: fo.polar_factor(g, compute_dtype=jnp.bfloat16),
  'ky_fan-2-subspace': lambda g: lmo.ky_fan(2)(g),
  'ky_fan-2-svd': lambda g: lmo.ky_fan(2, top_k_method='svd')(g),
  'ky_fan-8-full-rank': lambda g: lmo.ky_fan(8)(g),
}


@pytest.mark.parametrize('shape', [TALL, TALL[::-1]], ids=str)
@pytest.mark.parametrize('name', sorted(FUNCTIONS))
def test_no_large_gram_matrix(name, shape):
  fn = FUNCTIONS[name]
  g = jnp.ones(shape)
  jaxpr = jax.make_jaxpr(fn)(g)
  assert _largest_intermediate(jaxpr.jaxpr) <= SMALL
  memory = jax.jit(fn).lower(g).compile().memory_analysis()
  if memory is not None:  # not every backend reports it
    # A 4096×4096 float32 Gram matrix alone is 64 MiB.
    assert memory.temp_size_in_bytes < 8 * SMALL * 4


def test_muon_update_on_tall_parameter_has_no_gram_matrix():
  params = {'w': jnp.ones(TALL)}
  tx = fo.muon(0.02)
  state = tx.init(params)
  g = {'w': jnp.asarray(with_spectrum(TALL, np.linspace(1.0, 0.1, 8)))}
  jaxpr = jax.make_jaxpr(tx.update)(g, state, params)
  assert _largest_intermediate(jaxpr.jaxpr) <= SMALL
  updates, _ = jax.jit(tx.update)(g, state, params)
  s = singular_values(updates['w'])
  # Muon's direction times the learning rate (shape factor 1: fan_out <
  # fan_in); all eight directions kept.
  assert s.max() <= 0.02 * 1.125 and s.min() > 0.02 * 0.8
