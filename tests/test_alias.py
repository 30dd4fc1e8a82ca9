"""Tests for the named optimizers of `fanion_optax.alias`.

References are independent of the code under test: Jordan's Muon written in
NumPy (float64, `np.linalg.svd` for `U Vᵀ`), the closed forms of the F-/S-
mixtures (Kravatskiy et al.), `optax.lion` and `optax.adamw` for Lion and the
fallback, and the implicit-constraint inequalities of SPEC.md §2.2.
"""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import np_polar
from reference import np_top_k
from reference import svd
from tiers import tiered

import fanion_optax as fo
from fanion_optax import catalogue
from fanion_optax.partition import DimensionNumbers as DN

# ---------------------------------------------------------------------------
# NumPy reference helpers.


def _rand(shape, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _flat(tree):
  """`{'['a']['b']': np.ndarray}` for every leaf of a (nested) tree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def _to_mats(x, axes):
  batch, red, out = axes
  s = x.shape
  return np.transpose(x, batch + red + out).reshape(
    math.prod(s[a] for a in batch),
    math.prod(s[a] for a in red),
    math.prod(s[a] for a in out),
  )


def _from_mats(y, shape, axes):
  order = sum(axes, ())
  return np.transpose(y.reshape([shape[a] for a in order]), np.argsort(order))


def _fans(shape, axes):
  _, red, out = axes
  return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)


def _np_shape_factor(fan_in, fan_out, mode):
  if mode == 'muon':
    return math.sqrt(max(1.0, fan_out / fan_in))
  if mode == 'rms':
    return 0.2 * math.sqrt(max(fan_in, fan_out))
  assert mode is None
  return 1.0


def _np_frob(x):
  return x / np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True))


def _np_mix(alpha, first, second):
  return lambda x: alpha * first(x) + (1 - alpha) * second(x)


def _np_eta_sign(eta):
  return lambda x: eta * np.sign(x)


def _at(value, t):
  return float(value(t)) if callable(value) else value


MAT2 = ((), (0,), (1,))
CONV = ((), (0, 1, 2), (3,))
STACK = ((0,), (1,), (2,))


def _np_muon(
  x0,
  grads,
  *,
  lr,
  momentum,
  wd,
  views,
  nesterov=True,
  shape_scale='muon',
  lmo=np_polar,
):
  """Jordan's Muon on the leaves named in `views` (flat dicts of arrays).

  `m ← μ m + (1−μ) g`; direction `(1−μ) g + μ m` (Nesterov) or `m`;
  `X ← X − lr·(s·lmo(direction) + wd·X)` on the matrix view. `lr`, `momentum`
  and `wd` may be schedules of the step; `wd` may be a dict per leaf.
  Returns the list of parameter dicts after each step.
  """
  x = {k: np.asarray(x0[k], np.float64) for k in views}
  m = {k: np.zeros_like(v) for k, v in x.items()}
  out = []
  for t, g_all in enumerate(grads):
    eps, mu = _at(lr, t), _at(momentum, t)
    for k, axes in views.items():
      g = np.asarray(g_all[k], np.float64)
      m[k] = mu * m[k] + (1 - mu) * g
      d = (1 - mu) * g + mu * m[k] if nesterov else m[k]
      o = _from_mats(lmo(_to_mats(d, axes)), d.shape, axes)
      s = _np_shape_factor(*_fans(d.shape, axes), shape_scale)
      lam = _at(wd[k] if isinstance(wd, dict) else wd, t)
      x[k] = x[k] - eps * (s * o + lam * x[k])
    out.append({k: v.copy() for k, v in x.items()})
  return out


def _run(tx, params, grads, jit=False):
  """Runs `tx` from `params` over `grads`; returns flat params after each."""
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(_flat(params))
  return out, state


def _assert_trajectories(got, want, keys, atol=3e-5, rtol=1e-5):
  for step, (g, w) in enumerate(zip(got, want)):
    for k in keys:
      np.testing.assert_allclose(
        g[k], w[k], atol=atol, rtol=rtol, err_msg=f'{k} at step {step}'
      )


def _grads(shapes, steps, seed=0):
  return [
    {
      k: jnp.asarray(_rand(s, 1000 * seed + 10 * t + i))
      for i, (k, s) in enumerate(shapes.items())
    }
    for t in range(steps)
  ]


# ---------------------------------------------------------------------------
# Muon against Jordan's update.

# 'wide' and 'wide2' share a shape: the library stacks same-shape matrices
# into one batch, which must not mix them.
MUON_SHAPES = {
  'wide': (6, 10),
  'wide2': (6, 10),
  'tall': (10, 6),
  'conv': (3, 3, 4, 8),
  'stack': (3, 5, 7),
}
MUON_SPECS = {
  'wide': DN(),
  'wide2': DN(),
  'tall': DN(),
  'conv': DN((0, 1, 2), 3),
  'stack': DN(1, 2),
}
MUON_VIEWS = {
  "['wide']": MAT2,
  "['wide2']": MAT2,
  "['tall']": MAT2,
  "['conv']": CONV,
  "['stack']": STACK,
}


@pytest.mark.parametrize('nesterov', [True, False])
@pytest.mark.parametrize('shape_scale', ['muon', 'rms', None])
def test_muon_matches_jordan_numpy(nesterov, shape_scale):
  lr, mu, wd = 0.05, 0.9, 0.2
  params = {
    k: jnp.asarray(_rand(s, 7 + i))
    for i, (k, s) in enumerate(MUON_SHAPES.items())
  }
  grads = _grads(MUON_SHAPES, 4)
  tx = fo.muon(
    lr,
    momentum=mu,
    nesterov=nesterov,
    polar_method='svd',
    weight_decay=wd,
    shape_scale=shape_scale,
    dimension_numbers=MUON_SPECS,
  )
  got, _ = _run(tx, params, grads)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=lr,
    momentum=mu,
    wd=wd,
    views=MUON_VIEWS,
    nesterov=nesterov,
    shape_scale=shape_scale,
  )
  _assert_trajectories(got, want, MUON_VIEWS)


def test_muon_update_is_scaled_orthogonal_without_decay():
  # With wd = 0 the update of a (6, 10) matrix is −lr·s·U Vᵀ: all σ = lr·s.
  lr = 0.03
  tx = fo.muon(lr, polar_method='svd')
  params = {'w': jnp.zeros((6, 10))}
  updates, _ = tx.update(
    {'w': jnp.asarray(_rand((6, 10), 0))}, tx.init(params), params
  )
  sv = np.linalg.svd(np.asarray(updates['w'], np.float64), compute_uv=False)
  np.testing.assert_allclose(sv, lr * math.sqrt(10 / 6), rtol=1e-5)


# ---------------------------------------------------------------------------
# Lion-𝒦 with the sign LMO is optax.lion.


@pytest.mark.parametrize('b1,b2,wd', [(0.9, 0.99, 0.1), (0.5, 0.7, 0.0)])
def test_lion_k_sign_equals_optax_lion(b1, b2, wd):
  lr = 0.01
  shapes = {'a': (6, 10), 'b': (10, 6)}
  params = {
    k: jnp.asarray(_rand(s, i)) for i, (k, s) in enumerate(shapes.items())
  }
  grads = _grads(shapes, 5)
  ours = fo.lion_k(lr, fo.lmo.sign(), b1, b2, weight_decay=wd, shape_scale=None)
  ref = optax.lion(lr, b1, b2, weight_decay=wd)
  got, _ = _run(ours, params, grads)
  want, _ = _run(ref, params, grads)
  _assert_trajectories(got, want, want[0], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------
# F-/S- mixtures against their closed forms on the Lion-𝒦 direction.

MIX_SHAPES = {'wide': (6, 10), 'tall': (10, 6), 'wide2': (6, 10)}
MIX_VIEWS = {"['wide']": MAT2, "['tall']": MAT2, "['wide2']": MAT2}


@pytest.mark.parametrize('name', ['f_muon', 's_muon', 'f_fanion', 's_fanion'])
def test_mixtures_match_closed_forms(name):
  lr, mu, wd, alpha, eta, k = 0.05, 0.9, 0.1, 0.3, 0.05, 2
  common = dict(momentum=mu, weight_decay=wd)
  if name == 'f_muon':
    tx = fo.f_muon(lr, alpha, polar_method='svd', **common)
    ref = _np_mix(alpha, np_polar, _np_frob)
  elif name == 's_muon':
    tx = fo.s_muon(lr, alpha, eta, polar_method='svd', **common)
    ref = _np_mix(alpha, np_polar, _np_eta_sign(eta))
  elif name == 'f_fanion':
    tx = fo.f_fanion(lr, k, alpha, top_k_method='svd', **common)
    ref = _np_mix(alpha, functools.partial(np_top_k, k=k), _np_frob)
  else:
    tx = fo.s_fanion(lr, k, alpha, eta, top_k_method='svd', **common)
    ref = _np_mix(alpha, functools.partial(np_top_k, k=k), _np_eta_sign(eta))
  params = {
    k_: jnp.asarray(_rand(s, 3 + i))
    for i, (k_, s) in enumerate(MIX_SHAPES.items())
  }
  grads = _grads(MIX_SHAPES, 4, seed=1)
  got, _ = _run(tx, params, grads)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=lr,
    momentum=mu,
    wd=wd,
    views=MIX_VIEWS,
    lmo=ref,
  )
  _assert_trajectories(got, want, MIX_VIEWS)


def test_alpha_extrapolation_follows_closed_form():
  lr, alpha = 0.05, 1.5
  tx = fo.f_muon(
    lr, alpha, allow_extrapolation=True, polar_method='svd', shape_scale=None
  )
  params = {'w': jnp.zeros((6, 10))}
  g = _rand((6, 10), 5)
  updates, _ = tx.update({'w': jnp.asarray(g)}, tx.init(params), params)
  want = -lr * (alpha * np_polar(g) + (1 - alpha) * _np_frob(g))
  np.testing.assert_allclose(np.asarray(updates['w']), want, atol=1e-6)


# ---------------------------------------------------------------------------
# Fanion: rank, equivalences.


@pytest.mark.parametrize(
  'method,k',
  [('svd', 1), ('svd', 2), ('svd', 3), ('subspace', 1), ('subspace', 2)],
)
def test_fanion_update_rank_is_k(method, k):
  lr = 0.05
  tx = fo.fanion(lr, k, top_k_method=method, shape_scale=None)
  params = {'w': jnp.zeros((6, 10))}
  state = tx.init(params)
  for g in _grads({'w': (6, 10)}, 3):
    updates, state = tx.update(g, state, params)
    u = np.asarray(updates['w'], np.float64)
    assert np.linalg.matrix_rank(u, tol=1e-4 * lr) == k
    sv = np.linalg.svd(u, compute_uv=False)
    np.testing.assert_allclose(sv[:k], lr, rtol=1e-5)
    np.testing.assert_array_less(sv[k:], 1e-5 * lr)


def test_fanion_svd_matches_numpy_top_k():
  lr, k, mu = 0.05, 2, 0.9
  params = {
    'wide': jnp.asarray(_rand((6, 10), 0)),
    'tall': jnp.asarray(_rand((10, 6), 1)),
    'wide2': jnp.asarray(_rand((6, 10), 2)),
  }
  grads = _grads(MIX_SHAPES, 4)
  tx = fo.fanion(lr, k, top_k_method='svd', momentum=mu, weight_decay=0.1)
  got, _ = _run(tx, params, grads)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=lr,
    momentum=mu,
    wd=0.1,
    views=MIX_VIEWS,
    lmo=functools.partial(np_top_k, k=k),
  )
  _assert_trajectories(got, want, MIX_VIEWS)


def test_fanion_subspace_is_close_to_exact_top_k():
  # Gradients with a clear gap after σ₂ (a fixed rank-2 signal plus noise):
  # the Ky Fan-2 value ⟨N, D⟩ of the subspace direction is within 1% of the
  # exact Σ_{i≤k} σᵢ(N) from the cold start, and the warm start converges.
  k, mu = 2, 0.5
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.standard_normal((6, k)))
  v, _ = np.linalg.qr(rng.standard_normal((10, k)))
  signal = (u * np.array([10.0, 6.0])) @ v.T
  tx = fo.fanion(1.0, k, momentum=mu, nesterov=False, shape_scale=None)
  params = {'w': jnp.zeros((6, 10))}
  state = tx.init(params)
  m = np.zeros((6, 10))
  for t in range(6):
    g = (signal + _rand((6, 10), 3000 + t)).astype(np.float32)
    updates, state = tx.update({'w': jnp.asarray(g)}, state, params)
    m = mu * m + (1 - mu) * g  # without Nesterov, N_t = M_{t+1}
    value = np.sum(m * -np.asarray(updates['w'], np.float64))
    exact = np.linalg.svd(m, compute_uv=False)[:k].sum()
    assert 0.99 * exact <= value <= exact * (1 + 1e-5)
    if t >= 3:
      assert value >= (1 - 1e-4) * exact


@pytest.mark.parametrize('polar', ['svd', 'polar_express', 'newton_schulz'])
@pytest.mark.parametrize('k', [6, 10])
def test_fanion_full_rank_equals_muon(polar, k):
  shapes = {'a': (6, 10), 'b': (10, 6)}
  params = {
    k_: jnp.asarray(_rand(s, i)) for i, (k_, s) in enumerate(shapes.items())
  }
  grads = _grads(shapes, 3)
  got, _ = _run(
    fo.fanion(0.05, k, polar_method=polar, weight_decay=0.1), params, grads
  )
  want, _ = _run(
    fo.muon(0.05, polar_method=polar, weight_decay=0.1), params, grads
  )
  _assert_trajectories(got, want, want[0], atol=1e-6, rtol=1e-6)
  if polar == 'svd':
    ref = _np_muon(
      _flat(params),
      [_flat(g) for g in grads],
      lr=0.05,
      momentum=0.95,
      wd=0.1,
      views={"['a']": MAT2, "['b']": MAT2},
    )
    _assert_trajectories(got, ref, ref[0])


@pytest.mark.parametrize('method', ['svd', 'subspace'])
def test_neon_is_fanion_one(method):
  shapes = {'a': (6, 10), 'b': (10, 6)}
  params = {
    k_: jnp.asarray(_rand(s, i)) for i, (k_, s) in enumerate(shapes.items())
  }
  grads = _grads(shapes, 3)
  got, _ = _run(
    fo.neon(0.05, top_k_method=method, weight_decay=0.1), params, grads
  )
  want, _ = _run(
    fo.fanion(0.05, 1, top_k_method=method, weight_decay=0.1), params, grads
  )
  _assert_trajectories(got, want, want[0], atol=1e-7, rtol=1e-7)
  if method == 'svd':
    ref = _np_muon(
      _flat(params),
      [_flat(g) for g in grads],
      lr=0.05,
      momentum=0.95,
      wd=0.1,
      views={"['a']": MAT2, "['b']": MAT2},
      lmo=functools.partial(np_top_k, k=1),
    )
    _assert_trajectories(got, ref, ref[0])


# ---------------------------------------------------------------------------
# The implicit constraint ‖X‖ ≤ s/λ (Chen, Li, Liu; SPEC §2.2).


def _constraint_cases():
  alpha = 0.5
  return {
    # name: (optimizer, LMO whose ball norm is checked, the support
    #        function σ_B(G) = dual norm of the optimizer's own LMO)
    'muon': (
      lambda lr, wd: fo.muon(lr, polar_method='svd', weight_decay=wd),
      fo.lmo.spectral(polar_method='svd'),
      lambda g: svd(g)[1].sum(),
    ),
    'fanion_svd': (
      lambda lr, wd: fo.fanion(lr, 2, top_k_method='svd', weight_decay=wd),
      fo.lmo.ky_fan(2, top_k_method='svd'),
      lambda g: svd(g)[1][:2].sum(),
    ),
    'fanion_subspace': (
      lambda lr, wd: fo.fanion(lr, 2, weight_decay=wd),
      fo.lmo.ky_fan(2, top_k_method='svd'),
      lambda g: svd(g)[1][:2].sum(),
    ),
    # F-Muon's ball α·B_spec + (1−α)·B_F has no closed-form norm. Both
    # balls lie in the spectral unit ball (σ₁ ≤ ‖·‖_F), so the Minkowski
    # sum lies in α·B_spec + (1−α)·B_spec = B_spec: σ₁(X) ≤ s/λ is a valid
    # necessary condition, checked with the spectral LMO's norm. The
    # support-function check below (⟨T, X⟩ ≤ r·σ_B(T) with
    # σ_B = α‖·‖_* + (1−α)‖·‖_F) is the tight one for this ball.
    'f_muon': (
      lambda lr, wd: fo.f_muon(lr, alpha, polar_method='svd', weight_decay=wd),
      fo.lmo.spectral(polar_method='svd'),
      lambda g: (
        alpha * svd(g)[1].sum()
        + (1 - alpha) * np.linalg.norm(np.asarray(g, np.float64))
      ),
    ),
  }


@pytest.mark.parametrize('name', list(_constraint_cases()))
def test_implicit_constraint(name):
  make, ball, support = _constraint_cases()[name]
  lr, lam, steps = 0.1, 2.0, 60
  shape = (6, 10)
  radius = math.sqrt(10 / 6) / lam  # s/λ with the "muon" shape factor
  target = _rand(shape, 1, scale=50.0)  # unconstrained minimiser, huge
  tx = make(lr, lam)
  params = {'w': jnp.asarray(_rand(shape, 2, scale=3.0))}  # starts outside
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(lambda x: x - target, params)  # ∇ ½‖X − T‖²
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def report(params):
    entry = fo.diagnostics.constraint_report(
      params, ball, weight_decay=lam, learning_rate=lr
    )['w']
    assert entry.radius == pytest.approx(radius, rel=1e-12)
    assert entry.contraction == pytest.approx(1 - lr * lam, rel=1e-12)
    return float(entry.norm[0]), entry

  norm, entry = report(params)
  assert norm > 5 * radius and not entry.holds
  contraction = entry.contraction
  for _ in range(steps):
    params, state = step(params, state)
    new_norm, entry = report(params)
    excess = norm - radius
    if excess > 0:  # outside: the excess shrinks by at least 1 − ελ
      assert new_norm - radius <= contraction * excess + 1e-5 * norm
    else:  # inside: stays inside
      assert new_norm <= radius * (1 + 1e-4)
    norm = new_norm
  assert entry.holds
  # Necessary condition for X ∈ r·B, B the optimizer's own ball (for F-Muon
  # the Minkowski sum): ⟨T, X⟩ ≤ r·σ_B(T), σ_B the support function (dual
  # norm). Since ‖T‖ ≫ r, the iterates approach the fixed point
  # X* ≈ r·lmo(T), where equality holds: the constraint is active, not slack.
  x = np.asarray(params['w'], np.float64)
  value = float(np.sum(target * x))
  bound = radius * support(target)
  assert 0.95 * bound <= value <= bound * (1 + 1e-4)


def test_implicit_constraint_from_inside_stays_inside():
  lr, lam = 0.05, 0.5
  shape = (6, 10)
  radius = math.sqrt(10 / 6) / lam
  target = _rand(shape, 4, scale=50.0)
  for tx in (
    fo.muon(lr, polar_method='svd', weight_decay=lam, momentum=0.0),
    fo.neon(lr, top_k_method='svd', weight_decay=lam),
  ):
    params = {'w': jnp.zeros(shape)}
    state = tx.init(params)
    sigma = []
    for _ in range(30):
      grads = jax.tree.map(lambda x: x - target, params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      sigma.append(
        np.linalg.svd(np.asarray(params['w'], np.float64), compute_uv=False)[0]
      )
    assert max(sigma) <= radius * (1 + 1e-5)
    assert sigma[-1] >= 0.5 * radius  # the ball is reached, not just kept


# ---------------------------------------------------------------------------
# Fallback routing.


def _fallback_params():
  return {
    'w': jnp.asarray(_rand((6, 10), 0)),
    'b': jnp.asarray(_rand(10, 1)),
    's': jnp.asarray(0.5),
    'embed': {'embedding': jnp.asarray(_rand((10, 6), 2))},
  }


def test_fallback_adamw_for_vectors_scalars_and_excluded():
  params = _fallback_params()
  grads = [
    jax.tree.map(lambda x, t=t: jnp.asarray(_rand(x.shape, 50 + t)), params)
    for t in range(3)
  ]
  tx = fo.muon(
    0.05,
    polar_method='svd',
    momentum=0.9,
    weight_decay=0.1,
    exclude=['embed'],
    fallback=fo.adamw_fallback(
      0.01, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.2
    ),
  )
  got, _ = _run(tx, params, grads)
  fb = lambda t: {'b': t['b'], 's': t['s'], 'embed': t['embed']}
  want, _ = _run(
    optax.adamw(0.01, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.2),
    fb(params),
    [fb(g) for g in grads],
  )
  _assert_trajectories(got, want, want[0], atol=1e-6, rtol=1e-6)
  ref = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=0.05,
    momentum=0.9,
    wd=0.1,
    views={"['w']": MAT2},
  )
  _assert_trajectories(got, ref, ["['w']"])


DEFAULT_FALLBACK = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)


@pytest.mark.parametrize('name', ['muon', 'fanion', 's_muon', 'lion_k'])
def test_default_fallback_is_adamw_3e4_not_the_matrix_learning_rate(name):
  # The fallback has its own learning rate (3e-4, b2 = 0.95): the matrix
  # learning rate of an LMO optimizer is a step length in its norm, far too
  # large for AdamW. Vectors, scalars and excluded matrices all get it.
  lr = 0.02
  make = {
    'muon': lambda **kw: fo.muon(lr, **kw),
    'fanion': lambda **kw: fo.fanion(lr, 1, weight_decay=0.3, **kw),
    's_muon': lambda **kw: fo.s_muon(lr, 0.5, 1e-3, **kw),
    'lion_k': lambda **kw: fo.lion_k(lr, fo.lmo.sign(), **kw),
  }[name]
  params = _fallback_params()
  grads = [
    jax.tree.map(lambda x, t=t: jnp.asarray(_rand(x.shape, 9 + t)), params)
    for t in range(4)
  ]
  got, state = _run(make(exclude=['embed']), params, grads)
  fb = lambda t: {'b': t['b'], 's': t['s'], 'embed': t['embed']}
  keys = ["['b']", "['s']", "['embed']['embedding']"]

  def reference(tx):
    return _run(tx, fb(params), [fb(g) for g in grads])[0]

  want = reference(optax.adamw(3e-4, **DEFAULT_FALLBACK))
  _assert_trajectories(got, want, keys, atol=1e-7, rtol=1e-6)
  # The same as the exported default, and as an explicit fallback=.
  explicit, _ = _run(
    make(exclude=['embed'], fallback=fo.adamw_fallback()), params, grads
  )
  _assert_trajectories(got, explicit, explicit[0], atol=0, rtol=0)
  # The check tells the old default (AdamW at the matrix learning rate,
  # b2 = 0.999) and a fallback at b2 = 0.999 apart from the new one: their
  # displacements differ by more than 0.1%.
  moved = got[-1]["['b']"] - np.asarray(params['b'])
  for wrong in (
    optax.adamw(lr, weight_decay=0.0),
    optax.adamw(3e-4, **dict(DEFAULT_FALLBACK, b2=0.999)),
  ):
    other = reference(wrong)[-1]["['b']"] - np.asarray(params['b'])
    assert not np.allclose(other, moved, rtol=1e-3, atol=0)
  assert state.fallback[0].mu['b'].dtype == jnp.float32


def test_user_fallback_is_used():
  params = {
    'w': jnp.asarray(_rand((6, 10), 0)),
    'b': jnp.asarray(_rand(10, 1)),
    'embed': jnp.asarray(_rand((10, 6), 2)),
  }
  grads = [
    jax.tree.map(lambda x, t=t: jnp.asarray(_rand(x.shape, 20 + t)), params)
    for t in range(3)
  ]
  tx = fo.muon(
    0.05,
    polar_method='svd',
    exclude='embed',
    fallback=optax.sgd(0.1, momentum=0.5),
  )
  state = tx.init(params)
  trace = {k: np.zeros(params[k].shape) for k in ('b', 'embed')}
  for g in grads:
    updates, state = tx.update(g, state, params)
    for k in trace:
      trace[k] = 0.5 * trace[k] + np.asarray(g[k], np.float64)
      np.testing.assert_allclose(
        np.asarray(updates[k]), -0.1 * trace[k], rtol=1e-6, atol=1e-7
      )
  assert state.fallback[0].trace['b'].shape == (10,)
  assert state.fallback[0].trace['w'] is None


NESTED = {
  'enc': {'stack': (3, 5, 7), 'conv': (3, 3, 4, 8)},
  'head': {'kernel': (6, 10)},
  'bias': (10,),
}
_by_ndim = {2: DN(), 3: DN(1, 2), 4: DN((0, 1, 2), 3)}
DN_SPECS = {
  'tree': (
    {
      'enc': {'stack': DN(1, 2), 'conv': DN((0, 1, 2), 3)},
      'head': {'kernel': None},
      'bias': None,
    },
    {"['enc']['stack']": STACK, "['enc']['conv']": CONV},
  ),
  'prefix': (
    {'enc': DN(-2, -1), 'head': None, 'bias': None},
    {"['enc']['stack']": STACK, "['enc']['conv']": ((0, 1), (2,), (3,))},
  ),
  'callable': (
    lambda p: jax.tree.map(lambda x: _by_ndim.get(x.ndim), p),
    {
      "['enc']['stack']": STACK,
      "['enc']['conv']": CONV,
      "['head']['kernel']": MAT2,
    },
  ),
}


@pytest.mark.parametrize('kind', list(DN_SPECS))
def test_dimension_numbers_tree_prefix_and_callable(kind):
  spec, views = DN_SPECS[kind]
  params = jax.tree.map(
    lambda s: jnp.asarray(_rand(s, len(s))),
    NESTED,
    is_leaf=lambda x: isinstance(x, tuple),
  )
  grads = [
    jax.tree.map(
      lambda x, t=t: jnp.asarray(_rand(x.shape, 30 + t + x.ndim)), params
    )
    for t in range(3)
  ]
  tx = fo.muon(
    0.05,
    polar_method='svd',
    momentum=0.9,
    weight_decay=0.1,
    dimension_numbers=spec,
    fallback=fo.adamw_fallback(0.01, b2=0.999),
  )
  got, _ = _run(tx, params, grads)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=0.05,
    momentum=0.9,
    wd=0.1,
    views=views,
  )
  _assert_trajectories(got, want, views)
  rest = [k for k in got[0] if k not in views]
  adam = optax.adamw(0.01, weight_decay=0.0)
  x = {k: _flat(params)[k] for k in rest}
  state = adam.init(x)
  for g, step in zip(grads, got):
    updates, state = adam.update({k: _flat(g)[k] for k in rest}, state, x)
    x = optax.apply_updates(x, updates)
    for k in rest:
      np.testing.assert_allclose(step[k], x[k], rtol=1e-6, atol=1e-7)
  assert rest  # some leaves did go to the fallback


@pytest.mark.parametrize('mask_kind', ['tree', 'prefix', 'callable'])
def test_weight_decay_mask(mask_kind):
  mask = {
    'tree': {'a': True, 'b': False, 'v': True},
    'prefix': {'a': True, 'b': False, 'v': False},
    'callable': lambda p: jax.tree.map(lambda x: x.shape[0] == 6, p),
  }[mask_kind]
  shapes = {'a': (6, 10), 'b': (10, 6), 'v': (10,)}
  params = {
    k: jnp.asarray(_rand(s, i)) for i, (k, s) in enumerate(shapes.items())
  }
  grads = _grads(shapes, 3)
  tx = fo.muon(
    0.05,
    polar_method='svd',
    momentum=0.9,
    weight_decay=0.5,
    weight_decay_mask=mask,
  )
  got, _ = _run(tx, params, grads)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=0.05,
    momentum=0.9,
    wd={"['a']": 0.5, "['b']": 0.0},
    views={"['a']": MAT2, "['b']": MAT2},
  )
  _assert_trajectories(got, want, want[0])


# ---------------------------------------------------------------------------
# inject_hyperparams and schedules.


def _small_problem(seed=0):
  shapes = {'w': (6, 10), 'b': (10,)}
  params = {
    k: jnp.asarray(_rand(s, seed + i))
    for i, (k, s) in enumerate(shapes.items())
  }
  return params, _grads(shapes, 3, seed=seed + 1)


@pytest.mark.parametrize('name', ['muon', 'fanion', 's_muon'])
def test_inject_hyperparams_matches_plain(name):
  params, grads = _small_problem()
  if name == 'muon':
    kw = dict(
      learning_rate=0.05, momentum=0.9, weight_decay=0.1, polar_method='svd'
    )
    injected = optax.inject_hyperparams(fo.muon)(**kw)
    plain = fo.muon(**kw)
  elif name == 'fanion':
    kw = dict(
      learning_rate=0.05,
      k=2,
      momentum=0.9,
      weight_decay=0.1,
      top_k_method='svd',
    )
    injected = optax.inject_hyperparams(fo.fanion, static_args=('k',))(**kw)
    plain = fo.fanion(**kw)
  else:
    kw = dict(
      learning_rate=0.05,
      alpha=0.3,
      sign_scale=0.05,
      momentum=0.9,
      weight_decay=0.1,
      polar_method='svd',
    )
    injected = optax.inject_hyperparams(fo.s_muon)(**kw)
    plain = fo.s_muon(**kw)
  got, state = _run(injected, params, grads, jit=True)
  want, _ = _run(plain, params, grads, jit=True)
  _assert_trajectories(got, want, want[0], atol=1e-6, rtol=1e-5)
  # Doubling the injected learning rate doubles the matrix update
  # −ε(s·O + λX); the AdamW fallback has its own learning rate (3e-4 by
  # default), so its update does not change.
  update = jax.jit(injected.update)
  u1, _ = update(grads[0], state, params)
  hp = dict(
    state.hyperparams, learning_rate=2 * state.hyperparams['learning_rate']
  )
  u2, _ = update(grads[0], state._replace(hyperparams=hp), params)
  np.testing.assert_allclose(
    np.asarray(u2['w']), 2 * np.asarray(u1['w']), rtol=1e-5, atol=1e-8
  )
  np.testing.assert_array_equal(np.asarray(u2['b']), np.asarray(u1['b']))
  assert np.all(np.asarray(u1['b']) != 0)


def test_inject_hyperparams_changing_momentum_and_decay():
  params, grads = _small_problem(3)
  tx = optax.inject_hyperparams(fo.muon)(
    learning_rate=0.05, momentum=0.9, weight_decay=0.1, polar_method='svd'
  )
  state = tx.init(params)
  hp = dict(
    state.hyperparams, momentum=jnp.asarray(0.5), weight_decay=jnp.asarray(0.4)
  )
  state = state._replace(hyperparams=hp)
  update = jax.jit(tx.update)
  traj = []
  p = params
  for g in grads:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    traj.append(_flat(p))
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=0.05,
    momentum=0.5,
    wd=0.4,
    views={"['w']": MAT2},
  )
  _assert_trajectories(traj, want, want[0])


def test_inject_hyperparams_k_must_be_static():
  params, grads = _small_problem()
  tx = optax.inject_hyperparams(fo.fanion)(learning_rate=0.05, k=2)
  # Without static_args, k becomes an int32 array: init outside jit still
  # works (a concrete integer array is accepted), but under jit the traced k
  # is rejected with a message telling the user what to do.
  state = tx.init(params)
  with pytest.raises(TypeError, match=r"static_args=\('k',\)"):
    jax.jit(tx.update)(grads[0], state, params)


def test_inject_hyperparams_with_callable_arguments_as_static_args():
  # inject_hyperparams treats every callable argument as a schedule of the
  # step count; callables that are not schedules (a dimension_numbers
  # function, an LMO) must be listed in static_args.
  by_ndim = lambda p: jax.tree.map(
    lambda x: {2: DN(), 3: DN(1, 2)}.get(x.ndim), p
  )
  params = {
    'w': jnp.asarray(_rand((6, 10), 0)),
    'stack': jnp.asarray(_rand((3, 5, 7), 1)),
    'b': jnp.asarray(_rand((10,), 2)),
  }
  grads = [
    jax.tree.map(lambda x, t=t: jnp.asarray(_rand(x.shape, 40 + t)), params)
    for t in range(2)
  ]
  injected = optax.inject_hyperparams(
    fo.muon, static_args=('dimension_numbers',)
  )(learning_rate=0.05, polar_method='svd', dimension_numbers=by_ndim)
  got, state = _run(injected, params, grads, jit=True)
  assert state.inner_state.matrices[0].mu['stack'].shape == (3, 5, 7)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=0.05,
    momentum=0.95,
    wd=0.0,
    views={"['w']": MAT2, "['stack']": STACK},
  )
  _assert_trajectories(got, want, want[0])
  injected = optax.inject_hyperparams(fo.lion_k, static_args=('lmo',))(
    learning_rate=0.01, lmo=fo.lmo.sign(), b1=0.9, b2=0.99, shape_scale=None
  )
  got, _ = _run(
    injected, {'w': params['w']}, [{'w': g['w']} for g in grads], jit=True
  )
  want, _ = _run(
    optax.lion(0.01, 0.9, 0.99, weight_decay=0.0),
    {'w': params['w']},
    [{'w': g['w']} for g in grads],
  )
  _assert_trajectories(got, want, want[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('name', ['muon', 'f_muon'])
def test_schedules_equal_per_step_constants(name):
  lr = optax.linear_schedule(0.1, 0.02, 3)
  wd = optax.linear_schedule(0.0, 0.6, 3)
  mom = optax.linear_schedule(0.5, 0.95, 3)
  params, _ = _small_problem(5)
  grads = _grads({'w': (6, 10), 'b': (10,)}, 4, seed=6)
  # The fallback takes a schedule of its own (here the same one).
  fallback = fo.adamw_fallback(lr, b2=0.999)
  if name == 'muon':
    tx = fo.muon(
      lr, momentum=mom, weight_decay=wd, polar_method='svd', fallback=fallback
    )
    ref_lmo = np_polar
  else:
    tx = fo.f_muon(
      lr,
      0.4,
      momentum=mom,
      weight_decay=wd,
      polar_method='svd',
      fallback=fallback,
    )
    ref_lmo = _np_mix(0.4, np_polar, _np_frob)
  got, _ = _run(tx, params, grads, jit=True)
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in grads],
    lr=lr,
    momentum=mom,
    wd=wd,
    views={"['w']": MAT2},
    lmo=ref_lmo,
  )
  _assert_trajectories(got, want, want[0])
  adam, _ = _run(
    optax.adamw(lr, weight_decay=0.0),
    {'b': params['b']},
    [{'b': g['b']} for g in grads],
  )
  _assert_trajectories(got, adam, ["['b']"], atol=1e-7, rtol=1e-6)
  # The schedules really change the step: a constant-ε run differs.
  const, _ = _run(
    fo.muon(0.1, momentum=0.5, weight_decay=0.0, polar_method='svd'),
    params,
    grads,
  )
  assert not np.allclose(const[-1]["['w']"], got[-1]["['w']"], atol=1e-3)


# ---------------------------------------------------------------------------
# Properties over every optimizer of the package.

LR = 0.01
# Every optimizer configuration of the package's catalogue, at one step size.
OPTIMIZERS = {
  name: functools.partial(entry, LR)
  for name, entry in catalogue.OPTIMIZERS.items()
}
PROP_SHAPES = {'w': (6, 10), 'tall': (10, 6), 'b': (10,), 's': ()}


def _prop_problem(dtype=jnp.float32):
  params = {
    k: jnp.asarray(_rand(s, i), dtype)
    for i, (k, s) in enumerate(PROP_SHAPES.items())
  }
  grads = [
    {
      k: jnp.asarray(_rand(s, 100 + 10 * t + i), dtype)
      for i, (k, s) in enumerate(PROP_SHAPES.items())
    }
    for t in range(5)
  ]
  return params, grads


@pytest.mark.parametrize('name', tiered(OPTIMIZERS))
def test_bf16_params_give_bf16_updates(name):
  tx = OPTIMIZERS[name](weight_decay=0.1)
  params, grads = _prop_problem(jnp.bfloat16)
  state = tx.init(params)
  for g in grads[:2]:
    updates, state = tx.update(g, state, params)
    for k, u in updates.items():
      assert u.dtype == jnp.bfloat16, k
      assert np.all(np.isfinite(np.asarray(u, np.float32)))
    params = optax.apply_updates(params, updates)
    for k, p in params.items():
      assert p.dtype == jnp.bfloat16, k
  assert state.matrices[0].mu['w'].dtype == jnp.bfloat16
  # The default fallback keeps its moments in float32 whatever mu_dtype.
  assert state.fallback[0].mu['b'].dtype == jnp.float32
  assert state.fallback[0].nu['b'].dtype == jnp.float32
  assert np.any(np.asarray(updates['w'], np.float32) != 0)
  assert np.any(np.asarray(updates['b'], np.float32) != 0)


@pytest.mark.parametrize('name', ['muon', 'fanion', 's_fanion', 'lion'])
def test_mu_dtype_float32_momentum(name):
  tx = OPTIMIZERS[name](weight_decay=0.1, mu_dtype=jnp.float32)
  params, grads = _prop_problem(jnp.bfloat16)
  state = tx.init(params)
  updates, state = tx.update(grads[0], state, params)
  for k in ('w', 'tall'):
    assert state.matrices[0].mu[k].dtype == jnp.float32
    assert updates[k].dtype == jnp.bfloat16
  for k in ('b', 's'):  # the default fallback's moments are float32
    assert state.fallback[0].mu[k].dtype == jnp.float32
  # The stored momentum is the exact float32 (1 − b2)·g, not a bf16 rounding.
  b2 = {'lion': 0.99}.get(name, 0.95)
  np.testing.assert_allclose(
    np.asarray(state.matrices[0].mu['w']),
    (1 - b2) * np.asarray(grads[0]['w'], np.float32),
    rtol=1e-6,
  )
  new = optax.apply_updates(params, updates)
  assert all(p.dtype == jnp.bfloat16 for p in new.values())


@pytest.mark.parametrize('name', tiered(OPTIMIZERS))
def test_jit_traces_once(name):
  tx = OPTIMIZERS[name](weight_decay=0.1)
  params, grads = _prop_problem()
  # One matrix and one vector keep the compilation short.
  params = {'w': params['w'], 'b': params['b']}
  grads = [{'w': g['w'], 'b': g['b']} for g in grads]
  traces = []

  def step(g, state, params):
    traces.append(1)
    return tx.update(g, state, params)

  step = jax.jit(step)
  state = tx.init(params)
  for g in grads:
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
  assert len(traces) == 1
  assert all(np.all(np.isfinite(np.asarray(p))) for p in params.values())


def _masked_nodes(tree):
  leaves = jax.tree.leaves(
    tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )
  return [x for x in leaves if isinstance(x, optax.MaskedNode)]


@pytest.mark.parametrize('name', tiered(OPTIMIZERS))
def test_no_masked_node(name):
  tx = OPTIMIZERS[name](weight_decay=0.1, exclude=['tall'])
  params, grads = _prop_problem()
  state = tx.init(params)
  assert not _masked_nodes(state)
  updates, state = tx.update(grads[0], state, params)
  assert not _masked_nodes(state) and not _masked_nodes(updates)
  assert set(updates) == set(params)
  assert all(isinstance(u, jax.Array) for u in updates.values())


# ---------------------------------------------------------------------------
# Warm-started Fanion state.


def test_fanion_warm_state_shapes_updates_and_nan_guard():
  k = 2
  shapes = {'stack': (3, 5, 7), 'w': (6, 10), 'b': (7,)}
  tx = fo.fanion(
    0.05, k, dimension_numbers={'stack': DN(1, 2), 'w': DN(), 'b': None}
  )
  params = {k_: jnp.zeros(s) for k_, s in shapes.items()}
  state = tx.init(params)
  lmo_state = state.matrices[0].lmo_state
  assert [s.shape for s in lmo_state] == [(3, 7, k), (1, 10, k)]
  for g in _grads(shapes, 3):
    updates, state = tx.update(g, state, params)
    new = state.matrices[0].lmo_state
    for old, cur in zip(lmo_state, new):
      assert cur.shape == old.shape
      assert not np.allclose(np.asarray(old), np.asarray(cur), atol=1e-3)
    lmo_state = new
  bad = dict(_grads(shapes, 1, seed=4)[0], w=jnp.full((6, 10), jnp.nan))
  _, state = tx.update(bad, state, params)
  new = state.matrices[0].lmo_state
  assert all(np.all(np.isfinite(np.asarray(s))) for s in new)
  np.testing.assert_array_equal(np.asarray(new[1]), np.asarray(lmo_state[1]))


def test_fanion_warm_state_of_same_shape_leaves_stays_separate():
  # 'a' and 'b' share a shape (stacked into one batch by the library): a NaN
  # in 'b' keeps b's subspace and leaves a's update and subspace alone.
  tx = fo.fanion(0.05, 2, shape_scale=None)
  params = {'a': jnp.zeros((6, 10)), 'b': jnp.zeros((6, 10))}
  state = tx.init(params)
  g = _grads({'a': (6, 10), 'b': (6, 10)}, 2, seed=7)
  updates, state = tx.update(g[0], state, params)
  before = state.matrices[0].lmo_state
  bad = dict(g[1], b=jnp.full((6, 10), jnp.nan))
  updates, state = tx.update(bad, state, params)
  after = state.matrices[0].lmo_state
  assert [s.shape for s in after] == [(1, 10, 2), (1, 10, 2)]
  np.testing.assert_array_equal(np.asarray(after[1]), np.asarray(before[1]))
  assert not np.allclose(np.asarray(after[0]), np.asarray(before[0]), atol=1e-3)
  u = np.asarray(updates['a'], np.float64)
  assert np.all(np.isfinite(u))
  np.testing.assert_allclose(
    np.linalg.svd(u, compute_uv=False)[:2], 0.05, rtol=1e-5
  )
  assert np.all(np.isnan(np.asarray(updates['b'])))


def test_f_fanion_state_holds_subspace_of_ky_fan_term():
  tx = fo.f_fanion(0.05, 3)
  state = tx.init({'w': jnp.zeros((6, 10)), 'b': jnp.zeros(10)})
  ((subspace, frob),) = state.matrices[0].lmo_state
  assert subspace.shape == (1, 10, 3) and frob is None


# ---------------------------------------------------------------------------
# Bad input.


def _bad(id_, error, match, make):
  return pytest.param(make, error, match, id=id_)


@pytest.mark.parametrize(
  'make,error,match',
  [
    _bad('lr-muon', ValueError, 'learning_rate', lambda: fo.muon(-0.1)),
    _bad('lr-fanion', ValueError, 'learning_rate', lambda: fo.fanion(-1e-3, 2)),
    _bad(
      'wd-muon',
      ValueError,
      'weight_decay',
      lambda: fo.muon(0.1, weight_decay=-0.1),
    ),
    _bad(
      'wd-lion_k',
      ValueError,
      'weight_decay',
      lambda: fo.lion_k(0.1, fo.lmo.sign(), weight_decay=-1.0),
    ),
    _bad(
      'momentum-one', ValueError, 'momentum', lambda: fo.muon(0.1, momentum=1.0)
    ),
    _bad(
      'momentum-negative',
      ValueError,
      'momentum',
      lambda: fo.muon(0.1, momentum=-0.1),
    ),
    _bad(
      'momentum-fanion',
      ValueError,
      'momentum',
      lambda: fo.fanion(0.1, 2, momentum=1.0),
    ),
    _bad(
      'momentum-f_muon',
      ValueError,
      'momentum',
      lambda: fo.f_muon(0.1, momentum=-0.1),
    ),
    _bad(
      'nesterov', TypeError, 'nesterov', lambda: fo.muon(0.1, nesterov='yes')
    ),
    _bad('k-zero-fanion', ValueError, r'\bk\b', lambda: fo.fanion(0.1, 0)),
    _bad('k-zero-f_fanion', ValueError, r'\bk\b', lambda: fo.f_fanion(0.1, 0)),
    _bad('k-float', TypeError, r'\bk\b', lambda: fo.fanion(0.1, 2.5)),
    _bad(
      'top_k_method',
      ValueError,
      r'\btop_k_method\b',
      lambda: fo.fanion(0.1, 2, top_k_method='lanczos'),
    ),
    _bad(
      'subspace_iters',
      ValueError,
      r'\bsubspace_iters\b',
      lambda: fo.fanion(0.1, 2, subspace_iters=-1),
    ),
    _bad(
      'alpha-f_muon', ValueError, 'alpha', lambda: fo.f_muon(0.1, alpha=1.5)
    ),
    _bad(
      'alpha-s_fanion',
      ValueError,
      'alpha',
      lambda: fo.s_fanion(0.1, 2, alpha=-0.5),
    ),
    # The messages below must name the optimizer's own argument
    # (`polar_method`, `polar_steps`, `sign_scale`), not some other name of
    # the inner LMO's (`scale`).
    _bad(
      'polar_method-muon',
      ValueError,
      r'\bpolar_method\b',
      lambda: fo.muon(0.1, polar_method='foo'),
    ),
    _bad(
      'polar_method-fanion',
      ValueError,
      r'\bpolar_method\b',
      lambda: fo.fanion(0.1, 2, polar_method='foo'),
    ),
    _bad(
      'polar_steps',
      ValueError,
      r'^polar_steps must be an int >= 1, got 0\.$',
      lambda: fo.muon(0.1, polar_steps=0),
    ),
    _bad(
      'sign_scale-s_muon',
      ValueError,
      r'\bsign_scale\b',
      lambda: fo.s_muon(0.1, sign_scale=0.0),
    ),
    _bad(
      'sign_scale-s_fanion',
      ValueError,
      r'\bsign_scale\b',
      lambda: fo.s_fanion(0.1, 2, sign_scale=-1.0),
    ),
    _bad(
      'shape_scale',
      ValueError,
      'shape_scale',
      lambda: fo.muon(0.1, shape_scale='spectral'),
    ),
    _bad(
      'fallback',
      TypeError,
      'fallback',
      lambda: fo.muon(0.1, fallback=lambda g: g),
    ),
    _bad(
      'adamw_fallback-learning_rate',
      ValueError,
      r'\blearning_rate\b',
      lambda: fo.muon(0.1, fallback=fo.adamw_fallback(-1.0)),
    ),
    _bad(
      'adamw_fallback-b1',
      ValueError,
      r'\bb1\b',
      lambda: fo.adamw_fallback(b1=1.0),
    ),
    _bad(
      'adamw_fallback-b2',
      ValueError,
      r'\bb2\b',
      lambda: fo.adamw_fallback(b2=-0.5),
    ),
    _bad(
      'adamw_fallback-eps',
      ValueError,
      r'\beps\b',
      lambda: fo.adamw_fallback(eps=-1e-8),
    ),
    _bad(
      'adamw_fallback-weight_decay',
      ValueError,
      r'\bweight_decay\b',
      lambda: fo.adamw_fallback(weight_decay=-0.2),
    ),
    _bad('split', TypeError, r'\bsplit\b', lambda: fo.muon(0.1, split='batch')),
    _bad('exclude', ValueError, 'exclude', lambda: fo.muon(0.1, exclude=['('])),
    _bad('lmo', TypeError, 'lmo', lambda: fo.lion_k(0.1, 'sign')),
    _bad(
      'skip_nonfinite',
      TypeError,
      r'\binner\b',
      lambda: fo.skip_nonfinite('yes'),
    ),
  ],
)
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_alpha_extrapolation_is_accepted_when_allowed():
  for tx in (
    fo.f_muon(0.1, 1.5, allow_extrapolation=True),
    fo.s_fanion(0.1, 2, -0.5, 0.01, allow_extrapolation=True),
  ):
    params = {'w': jnp.ones((6, 10))}
    updates, _ = tx.update(params, tx.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates['w'])))


def test_dimension_numbers_not_fitting_raise_at_init_with_path():
  tx = fo.muon(
    0.1, dimension_numbers={'layer': {'kernel': DN(0, 2)}, 'bias': None}
  )
  params = {'layer': {'kernel': jnp.zeros((4, 6))}, 'bias': jnp.zeros(6)}
  with pytest.raises(ValueError, match=r'layer/kernel'):
    tx.init(params)
  tx = fo.muon(0.1, dimension_numbers=DN(1, 2))
  with pytest.raises(ValueError, match="'w'"):
    tx.init({'w': jnp.zeros((4, 6))})


# ---------------------------------------------------------------------------
# skip_nonfinite.


def test_skip_nonfinite_wrapping_an_optimizer_skips_whole_steps():
  lr, wd = 0.05, 0.1
  params = {
    'w': jnp.asarray(_rand((6, 10), 0)),
    'b': jnp.asarray(_rand((10,), 1)),
  }
  finite = _grads({'w': (6, 10), 'b': (10,)}, 2, seed=8)
  nan_in_vector = dict(finite[0], b=finite[0]['b'].at[3].set(jnp.nan))
  inf_in_matrix = dict(finite[0], w=finite[0]['w'].at[0, 0].set(jnp.inf))
  tx = fo.skip_nonfinite(
    fo.muon(
      lr,
      polar_method='svd',
      momentum=0.9,
      weight_decay=wd,
      fallback=fo.adamw_fallback(lr, b2=0.999),
    )
  )
  update = jax.jit(tx.update)
  state = tx.init(params)
  p = params
  traj = []
  for g in (finite[0], nan_in_vector, inf_in_matrix, finite[1]):
    old = p
    updates, state = update(g, state, p)
    p = optax.apply_updates(p, updates)
    bad = g is not finite[0] and g is not finite[1]
    if bad:  # nothing moves, weight decay included
      for k in p:
        np.testing.assert_array_equal(np.asarray(p[k]), np.asarray(old[k]))
    else:
      traj.append(_flat(p))
  assert int(state.skipped) == 2 and int(state.consecutive) == 0
  # The skipped steps left no trace: same as running on the finite ones.
  want = _np_muon(
    _flat(params),
    [_flat(g) for g in finite],
    lr=lr,
    momentum=0.9,
    wd=wd,
    views={"['w']": MAT2},
  )
  _assert_trajectories(traj, want, want[0])
  adam, _ = _run(
    optax.adamw(lr, weight_decay=0.0),
    {'b': params['b']},
    [{'b': g['b']} for g in finite],
  )
  _assert_trajectories(traj, adam, ["['b']"], atol=1e-7, rtol=1e-6)


def test_package_inject_hyperparams_keeps_structure_static():
  params = {
    'w': jax.random.normal(jax.random.PRNGKey(3), (6, 5)),
    'c': jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5)),
  }
  dims = {'w': fo.DimensionNumbers(), 'c': fo.DimensionNumbers(1, 2)}
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
  plain = fo.fanion(
    0.1, 2, top_k_method='svd', dimension_numbers=dims, weight_decay=0.05
  )
  injected = fo.inject_hyperparams(fo.fanion)(
    learning_rate=0.1,
    k=2,
    top_k_method='svd',
    dimension_numbers=dims,
    weight_decay=0.05,
  )
  state = injected.init(params)
  assert 'k' not in state.hyperparams
  assert 'dimension_numbers' not in state.hyperparams
  got, _ = jax.jit(injected.update)(grads, state, params)
  want, _ = plain.update(grads, plain.init(params), params)
  for key in params:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7)
  lion = fo.inject_hyperparams(fo.lion_k)(learning_rate=0.1, lmo=fo.lmo.sign())
  assert 'lmo' not in lion.init(params).hyperparams


# ---------------------------------------------------------------------------
# Presets over the one lion_k pipeline.

PIPELINE_OPTIONS = (
  'weight_decay',
  'weight_decay_mask',
  'shape_scale',
  'dimension_numbers',
  'exclude',
  'fallback',
  'mu_dtype',
  'split',
  'neuron_b2',
  'neuron_eps',
  'adaptive',
  'error_feedback',
)
# name: (preset, its own arguments, static_args for optax.inject_hyperparams)
PRESETS = {
  'muon': (fo.muon, {}, ()),
  'fanion': (fo.fanion, {'k': 2}, ('k',)),
  'neon': (fo.neon, {}, ()),
  'f_muon': (fo.f_muon, {'alpha': 0.3}, ()),
  's_muon': (fo.s_muon, {'alpha': 0.3, 'sign_scale': 0.01}, ()),
  'f_fanion': (fo.f_fanion, {'k': 2, 'alpha': 0.3}, ('k',)),
  's_fanion': (fo.s_fanion, {'k': 2, 'alpha': 0.3, 'sign_scale': 0.01}, ('k',)),
}


def test_pipeline_options_are_lion_k_keyword_options():
  params = inspect.signature(fo.lion_k).parameters.values()
  assert (
    tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    == PIPELINE_OPTIONS
  )


@pytest.mark.parametrize('name', list(PRESETS))
def test_preset_signature_lists_pipeline_options(name):
  preset = PRESETS[name][0]
  params = inspect.signature(preset).parameters
  lion = inspect.signature(fo.lion_k).parameters
  assert 'learning_rate' in params
  assert not any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
  )
  for option in PIPELINE_OPTIONS:
    assert option in params, option
    assert params[option].kind is inspect.Parameter.KEYWORD_ONLY, option
    assert params[option].default == lion[option].default, option


@pytest.mark.parametrize('wrapper', ['optax', 'package'])
@pytest.mark.parametrize('name', tiered(PRESETS, fast={'muon', 'fanion'}))
def test_preset_weight_decay_is_injectable(name, wrapper):
  preset, own, static = PRESETS[name]
  lr, wd = 0.05, 0.1
  kw = dict(learning_rate=lr, weight_decay=wd, **own)
  if wrapper == 'optax':
    injected = optax.inject_hyperparams(preset, static_args=static)(**kw)
  else:
    injected = fo.inject_hyperparams(preset)(**kw)
  params, grads = _small_problem(7)
  got, state = _run(injected, params, grads, jit=True)
  want, _ = _run(preset(**kw), params, grads, jit=True)
  _assert_trajectories(got, want, want[0], atol=1e-6, rtol=1e-5)
  assert 'weight_decay' in state.hyperparams
  np.testing.assert_allclose(state.hyperparams['weight_decay'], wd)
  # The injected λ is the one used: raising it by Δ adds −ε·Δ·X to the
  # matrix update and leaves the fallback's alone.
  update = jax.jit(injected.update)
  u1, _ = update(grads[0], state, params)
  hp = dict(state.hyperparams, weight_decay=jnp.asarray(wd + 0.5))
  u2, _ = update(grads[0], state._replace(hyperparams=hp), params)
  np.testing.assert_allclose(
    np.asarray(u2['w']) - np.asarray(u1['w']),
    -lr * 0.5 * np.asarray(params['w']),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_array_equal(np.asarray(u2['b']), np.asarray(u1['b']))


def _equal_runs(*txs):
  """Runs every `tx` over the same problem; all trajectories bit-equal."""
  shapes = {'wide': (6, 10), 'tall': (10, 6), 'b': (10,)}
  params = {
    k: jnp.asarray(_rand(s, 60 + i)) for i, (k, s) in enumerate(shapes.items())
  }
  grads = _grads(shapes, 3, seed=9)
  runs = [_run(tx, params, grads)[0] for tx in txs]
  for run in runs[1:]:
    _assert_trajectories(run, runs[0], runs[0][0], atol=0, rtol=0)
  moved = runs[0][-1]["['wide']"] - np.asarray(params['wide'])
  assert np.all(np.isfinite(moved)) and np.any(moved != 0)
  return runs[0]


OPTIONS_CASES = {
  'defaults': {},
  'options': dict(
    momentum=0.9, weight_decay=0.1, shape_scale='rms', exclude=['tall']
  ),
}


@pytest.mark.parametrize('case', list(OPTIONS_CASES))
@pytest.mark.parametrize('top_k_method', ['subspace', 'svd'])
def test_neon_equals_fanion_one_exactly(top_k_method, case):
  kw = dict(OPTIONS_CASES[case], top_k_method=top_k_method)
  _equal_runs(
    fo.neon(0.05, **kw),
    fo.fanion(0.05, 1, **kw),
    fo.lion_k(
      0.05,
      fo.lmo.ky_fan(1, top_k_method=top_k_method),
      b1=kw.get('momentum', 0.95) ** 2,
      b2=kw.get('momentum', 0.95),
      **{k: v for k, v in kw.items() if k in PIPELINE_OPTIONS},
    ),
  )


@pytest.mark.parametrize('case', list(OPTIONS_CASES))
@pytest.mark.parametrize('kind', ['f', 's'])
def test_full_rank_mixtures_equal_their_fanion_and_lion_k_exactly(kind, case):
  lr, a, eta = 0.05, 0.3, 0.01
  kw = OPTIONS_CASES[case]
  mu = kw.get('momentum', 0.95)
  options = {k: v for k, v in kw.items() if k in PIPELINE_OPTIONS}
  if kind == 'f':
    muon_tx = fo.f_muon(lr, a, **kw)
    fanion_tx = fo.f_fanion(lr, None, a, **kw)
    second = fo.lmo.frobenius()
  else:
    muon_tx = fo.s_muon(lr, a, eta, **kw)
    fanion_tx = fo.s_fanion(lr, None, a, eta, **kw)
    second = fo.lmo.sign(eta)
  lion_tx = fo.lion_k(
    lr,
    fo.lmo.mix((a, fo.lmo.spectral()), (1 - a, second)),
    b1=mu**2,
    b2=mu,
    **options,
  )
  _equal_runs(muon_tx, fanion_tx, lion_tx)


def test_positional_calls():
  lr, mu = 0.02, 0.95
  spectral, frobenius = fo.lmo.spectral(), fo.lmo.frobenius()
  # s_muon(learning_rate, alpha, sign_scale).
  got = _equal_runs(
    fo.s_muon(0.02, 0.5, 1e-3),
    fo.s_muon(lr, alpha=0.5, sign_scale=1e-3),
    fo.lion_k(
      lr, fo.lmo.mix((0.5, spectral), (0.5, fo.lmo.sign(1e-3))), mu**2, mu
    ),
  )
  other = _equal_runs(fo.s_muon(0.02, 0.5))  # the default η = 3e-4
  assert not np.allclose(
    got[-1]["['wide']"], other[-1]["['wide']"], rtol=0, atol=1e-6
  )
  # fanion(learning_rate, k).
  _equal_runs(
    fo.fanion(0.02, 4),
    fo.fanion(learning_rate=lr, k=4),
    fo.lion_k(lr, fo.lmo.ky_fan(4), mu**2, mu),
  )
  tx = fo.fanion(0.02, 4, shape_scale=None)
  params = {'w': jnp.zeros((6, 10))}
  updates, _ = tx.update(
    {'w': jnp.asarray(_rand((6, 10), 3))}, tx.init(params), params
  )
  sv = np.linalg.svd(np.asarray(updates['w'], np.float64), compute_uv=False)
  np.testing.assert_allclose(sv[:4], lr, rtol=1e-4)
  np.testing.assert_array_less(sv[4:], 1e-4 * lr)
  # f_fanion(learning_rate, k, alpha).
  got = _equal_runs(
    fo.f_fanion(0.02, 4, 0.3),
    fo.f_fanion(lr, k=4, alpha=0.3),
    fo.lion_k(
      lr, fo.lmo.mix((0.3, fo.lmo.ky_fan(4)), (1 - 0.3, frobenius)), mu**2, mu
    ),
  )
  other = _equal_runs(fo.f_fanion(0.02, 4))  # the default α = 0.5
  assert not np.allclose(
    got[-1]["['wide']"], other[-1]["['wide']"], rtol=0, atol=1e-6
  )


def test_neon_refuses_k():
  # Neon is Fanion-1: its documented keywords are fanion's but `k`, so a
  # `k` is a mistake to report, not a silent Fanion-k.
  with pytest.raises(TypeError, match=r'\bk\b'):
    fo.neon(0.1, k=4)


REMOVED_OPTIONS = {
  'skip_nonfinite': True,
  'fallback_learning_rate': 0.01,
  'fallback_b1': 0.9,
  'fallback_b2': 0.95,
  'fallback_eps': 1e-8,
  'fallback_weight_decay': 0.0,
  'axis_name': 'batch',
  'mesh': None,
  'shard_axis': 'x',
  'polar': 'svd',
  'ns_steps': 5,
  'method': 'svd',
  'iters': 2,
}


@pytest.mark.parametrize('name', [*PRESETS, 'lion_k'])
def test_removed_options_are_refused(name):
  if name == 'lion_k':
    make = functools.partial(fo.lion_k, 0.1, fo.lmo.sign())
  else:
    preset, own, _ = PRESETS[name]
    make = functools.partial(preset, 0.1, **own)
  make()  # the call itself is fine
  for option, value in REMOVED_OPTIONS.items():
    with pytest.raises(
      TypeError, match=f"unexpected keyword argument '{option}'"
    ):
      make(**{option: value})
  with pytest.raises(TypeError, match=r'\bsplit\b'):
    make(split='batch')
