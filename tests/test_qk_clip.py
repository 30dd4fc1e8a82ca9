"""QK-clip (Kimi K2, arXiv:2507.20534, Algorithm 1) on a toy attention layer.

The references are plain NumPy: the attention logits of a single layer
(`x W_q` against `x W_k`, per head, scaled by `1/√head_dim`) and the paper's
per-head rule applied to each head's own `(d, head_dim)` matrices. The
per-head maximum logits `S` come from the pre-step weights (the forward pass
of the step); the clip scales the post-step weights, so a clipped head's
maximum logit afterwards is `τ·S'/S`, with `S'` the post-step unclipped
maximum (exactly `τ` when the step changes nothing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fanion_optax as fo

D, H, DH, B, T = 8, 4, 4, 2, 5
TAU = 3.0
HOT = (0, 2)  # heads whose logits start above TAU


def _inputs(seed=0):
  return np.random.default_rng(seed).normal(size=(B, T, D)).astype(np.float32)


def _weights(kv_heads=H, seed=1):
  """Query and key kernels, packed `(d, heads·head_dim)`; HOT heads large."""
  rng = np.random.default_rng(seed)
  wq = rng.normal(size=(D, H * DH)).astype(np.float32) / np.sqrt(D)
  wk = rng.normal(size=(D, kv_heads * DH)).astype(np.float32) / np.sqrt(D)
  for h in HOT:
    wq[:, h * DH : (h + 1) * DH] *= 4.0
    if kv_heads == H:
      wk[:, h * DH : (h + 1) * DH] *= 4.0
  return wq.astype(np.float32), wk.astype(np.float32)


def _max_logits(x, wq, wk, bq=None, bk=None):
  """Per-head maximum of `q·k/√head_dim` over batch, queries and keys."""
  q = x @ np.asarray(wq, np.float64) + (0 if bq is None else bq)
  k = x @ np.asarray(wk, np.float64) + (0 if bk is None else bk)
  heads, kv_heads = q.shape[-1] // DH, k.shape[-1] // DH
  q = q.reshape(B, T, heads, DH)
  k = np.repeat(k.reshape(B, T, kv_heads, DH), heads // kv_heads, axis=2)
  return (np.einsum('bihd,bjhd->bhij', q, k) / np.sqrt(DH)).max(axis=(0, 2, 3))


def _reference_clip(wq, wk, s, tau, alpha):
  """The paper's loop over heads, on each head's own columns (MHA)."""
  wq, wk = np.array(wq, np.float64), np.array(wk, np.float64)
  for h in range(len(s)):
    if s[h] > tau:
      gamma = tau / s[h]
      wq[:, h * DH : (h + 1) * DH] *= gamma**alpha
      wk[:, h * DH : (h + 1) * DH] *= gamma ** (1 - alpha)
  return wq, wk


def _grads(shape_q, shape_k, seed=2):
  rng = np.random.default_rng(seed)
  return {
    'q': rng.normal(size=shape_q).astype(np.float32),
    'k': rng.normal(size=shape_k).astype(np.float32),
  }


LAYER = fo.QKLayout(logits='attn', query='q', key='k', num_heads=H)


def _step(tx, params, grads, s, **extra):
  updates, _ = tx.update(
    grads, tx.init(params), params, max_logits={'attn': s}, **extra
  )
  return updates


def _columns(w, heads):
  return np.concatenate(
    [np.asarray(w)[:, h * DH : (h + 1) * DH] for h in heads]
  )


@pytest.mark.parametrize('lr', [0.0, 0.05])
def test_clipped_heads_reach_tau_up_to_the_steps_own_change(lr):
  x = _inputs()
  wq, wk = _weights()
  s = _max_logits(x, wq, wk)
  assert np.all(s[list(HOT)] > 2 * TAU) and np.all(np.delete(s, HOT) < TAU)
  params = {'q': jnp.asarray(wq), 'k': jnp.asarray(wk)}
  grads = _grads(wq.shape, wk.shape)
  plain = optax.apply_updates(
    params, optax.sgd(lr).update(grads, optax.sgd(lr).init(params))[0]
  )
  tx = optax.chain(optax.sgd(lr), fo.qk_clip(TAU, layers=LAYER))
  new = optax.apply_updates(params, _step(tx, params, grads, s))
  after_step = _max_logits(x, plain['q'], plain['k'])
  after_clip = _max_logits(x, new['q'], new['k'])
  hot = list(HOT)
  np.testing.assert_allclose(
    after_clip[hot], TAU * after_step[hot] / s[hot], rtol=2e-6
  )
  if lr == 0.0:
    np.testing.assert_allclose(after_clip[hot], TAU, rtol=2e-6)
  else:
    assert not np.allclose(after_step[hot], s[hot])  # the step mattered
  cold = [h for h in range(H) if h not in HOT]
  for name in ('q', 'k'):  # the other heads: the step's weights, bit for bit
    np.testing.assert_array_equal(
      _columns(new[name], cold), _columns(plain[name], cold)
    )
  np.testing.assert_array_equal(after_clip[cold], after_step[cold])


def test_after_muon_matches_the_paper_on_the_updated_weights():
  x = _inputs()
  wq, wk = _weights()
  s = _max_logits(x, wq, wk)
  params = {'q': jnp.asarray(wq), 'k': jnp.asarray(wk)}
  grads = _grads(wq.shape, wk.shape)
  muon = fo.muon(0.05, weight_decay=0.1)
  tx = optax.chain(muon, fo.qk_clip(TAU, layers=LAYER))

  @jax.jit  # one compilation instead of many eager ones
  def steps(params, grads, s):
    return (
      optax.apply_updates(
        params, muon.update(grads, muon.init(params), params)[0]
      ),
      optax.apply_updates(params, _step(tx, params, grads, s)),
    )

  plain, new = steps(params, grads, s)
  ref_q, ref_k = _reference_clip(plain['q'], plain['k'], s, TAU, 0.5)
  np.testing.assert_allclose(new['q'], ref_q, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(new['k'], ref_k, rtol=1e-6, atol=1e-7)
  after_step = _max_logits(x, plain['q'], plain['k'])
  after_clip = _max_logits(x, new['q'], new['k'])
  hot = list(HOT)
  np.testing.assert_allclose(
    after_clip[hot], TAU * after_step[hot] / s[hot], rtol=2e-6
  )


def _to_layout(layout, wq, wk, wv):
  if layout == 'packed':
    return {'q': wq, 'k': wk, 'v': wv}
  if layout == 'heads':
    return {
      n: w.reshape(D, -1, DH) for n, w in (('q', wq), ('k', wk), ('v', wv))
    }
  return {'qkv': np.concatenate([wq, wk, wv], axis=-1)}


def _from_layout(layout, tree):
  if layout == 'fused':
    q, k, _ = np.split(np.asarray(tree['qkv']), 3, axis=-1)
    return q, k
  return (np.asarray(tree[n]).reshape(D, -1) for n in ('q', 'k'))


@pytest.mark.parametrize('layout', ['packed', 'heads', 'fused'])
@pytest.mark.parametrize('alpha', [0.5, 0.25])
def test_layouts_agree_with_the_per_head_reference(layout, alpha):
  x = _inputs()
  wq, wk = _weights()
  wv = np.random.default_rng(3).normal(size=(D, H * DH)).astype(np.float32)
  s = _max_logits(x, wq, wk)
  params = jax.tree.map(jnp.asarray, _to_layout(layout, wq, wk, wv))
  rng = np.random.default_rng(4)
  grads = jax.tree.map(
    lambda p: rng.normal(size=p.shape).astype(np.float32), params
  )
  spec = (
    fo.QKLayout(logits=0, query='qkv', num_heads=H, layout='fused')
    if layout == 'fused'
    else fo.QKLayout(logits=0, query='q', key='k', num_heads=H, layout=layout)
  )
  tx = optax.chain(optax.sgd(0.05), fo.qk_clip(TAU, layers=[spec], alpha=alpha))
  updates, _ = tx.update(grads, tx.init(params), params, max_logits={0: s})
  new = optax.apply_updates(params, updates)
  stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  ref_q, ref_k = _reference_clip(*_from_layout(layout, stepped), s, TAU, alpha)
  new_q, new_k = _from_layout(layout, new)
  np.testing.assert_allclose(new_q, ref_q, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(new_k, ref_k, rtol=1e-6, atol=1e-7)
  value = new['qkv'][..., 2 * H * DH :] if layout == 'fused' else new['v']
  stepped_value = (
    stepped['qkv'][..., 2 * H * DH :] if layout == 'fused' else stepped['v']
  )
  np.testing.assert_array_equal(value, stepped_value)  # values untouched


@pytest.mark.parametrize('alpha', [0.0, 1.0])
def test_alpha_puts_all_the_scaling_on_one_side(alpha):
  x = _inputs()
  wq, wk = _weights()
  s = _max_logits(x, wq, wk)
  params = {'q': jnp.asarray(wq), 'k': jnp.asarray(wk)}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = optax.chain(optax.sgd(0.1), fo.qk_clip(TAU, layers=LAYER, alpha=alpha))
  new = optax.apply_updates(params, _step(tx, params, grads, s))
  fixed, scaled = ('q', 'k') if alpha == 0.0 else ('k', 'q')
  np.testing.assert_array_equal(new[fixed], params[fixed])
  gamma = np.where(s > TAU, TAU / s, 1.0)
  np.testing.assert_allclose(
    new[scaled], params[scaled] * np.repeat(gamma, DH), rtol=1e-6
  )
  np.testing.assert_allclose(
    _max_logits(x, new['q'], new['k'])[list(HOT)], TAU, rtol=2e-6
  )


def test_shared_keys_stay_and_the_query_takes_the_whole_factor():
  """Grouped-query attention, as K2 treats MLA's shared rotary key."""
  x = _inputs()
  wq, wk = _weights(kv_heads=2)
  s = _max_logits(x, wq, wk)
  assert np.all(s[list(HOT)] > TAU) and np.all(np.delete(s, HOT) < TAU)
  params = {'q': jnp.asarray(wq), 'k': jnp.asarray(wk)}
  grads = jax.tree.map(jnp.zeros_like, params)
  layer = fo.QKLayout(
    logits='attn', query='q', key='k', num_heads=H, num_kv_heads=2
  )
  tx = optax.chain(optax.sgd(0.1), fo.qk_clip(TAU, layers=layer))
  new = optax.apply_updates(params, _step(tx, params, grads, s))
  np.testing.assert_array_equal(new['k'], params['k'])
  gamma = np.where(s > TAU, TAU / s, 1.0)
  np.testing.assert_allclose(new['q'], wq * np.repeat(gamma, DH), rtol=1e-6)
  after = _max_logits(x, new['q'], new['k'])
  np.testing.assert_allclose(after[list(HOT)], TAU, rtol=2e-6)
  cold = [h for h in range(H) if h not in HOT]
  np.testing.assert_array_equal(after[cold], s[cold])


def test_biases_matched_with_the_kernels_scale_the_logits_exactly():
  x = _inputs()
  wq, wk = _weights()
  rng = np.random.default_rng(5)
  bq, bk = (rng.normal(size=H * DH).astype(np.float32) for _ in range(2))
  s = _max_logits(x, wq, wk, bq, bk)
  params = {
    'q': {'kernel': jnp.asarray(wq), 'bias': jnp.asarray(bq)},
    'k': {'kernel': jnp.asarray(wk), 'bias': jnp.asarray(bk)},
  }
  layer = fo.QKLayout(
    logits='attn', query='q/(kernel|bias)', key='k/.*', num_heads=H
  )
  tx = optax.chain(optax.sgd(0.1), fo.qk_clip(TAU, layers=layer))
  grads = jax.tree.map(jnp.zeros_like, params)
  new = optax.apply_updates(params, _step(tx, params, grads, s))
  after = _max_logits(
    x,
    new['q']['kernel'],
    new['k']['kernel'],
    new['q']['bias'],
    new['k']['bias'],
  )
  np.testing.assert_allclose(after, np.minimum(s, TAU), rtol=2e-6)


def test_non_finite_max_logits_leave_their_heads_untouched():
  wq, wk = _weights()
  params = {'q': jnp.asarray(wq), 'k': jnp.asarray(wk)}
  grads = _grads(wq.shape, wk.shape)
  s = np.array([np.nan, np.inf, 4 * TAU, -np.inf], np.float32)
  tx = optax.chain(optax.sgd(0.1), fo.qk_clip(TAU, layers=LAYER))
  new = optax.apply_updates(params, _step(tx, params, grads, s))
  plain = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  for name in ('q', 'k'):
    assert np.all(np.isfinite(new[name]))
    np.testing.assert_array_equal(
      _columns(new[name], [0, 1, 3]), _columns(plain[name], [0, 1, 3])
    )
    np.testing.assert_allclose(
      _columns(new[name], [2]), 0.5 * _columns(plain[name], [2]), rtol=1e-6
    )


def test_bfloat16_params_keep_their_dtype_and_untouched_heads():
  wq, wk = _weights()
  params = {
    'q': jnp.asarray(wq, jnp.bfloat16),
    'k': jnp.asarray(wk, jnp.bfloat16),
  }
  grads = jax.tree.map(jnp.ones_like, params)
  s = jnp.array([4 * TAU, 1.0, 1.0, 1.0], jnp.bfloat16)
  tx = optax.chain(optax.sgd(0.1), fo.qk_clip(TAU, layers=LAYER))
  updates = _step(tx, params, grads, s)
  plain = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params))[0]
  for name in ('q', 'k'):
    assert updates[name].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
      _columns(updates[name].astype(np.float32), [1, 2, 3]),
      _columns(plain[name].astype(np.float32), [1, 2, 3]),
    )
    new = optax.apply_updates(params, updates)[name].astype(np.float32)
    expected = 0.5 * (params[name] + plain[name]).astype(np.float32)
    np.testing.assert_allclose(
      _columns(new, [0]), _columns(expected, [0]), rtol=1e-2, atol=1e-3
    )


def test_jit_schedules_and_inject_hyperparams():
  wq, wk = _weights()
  params = {'q': jnp.asarray(wq), 'k': jnp.asarray(wk)}
  grads = jax.tree.map(jnp.zeros_like, params)
  s = jnp.array([4 * TAU, 1.0, 1.0, 1.0])
  # τ is scheduled: 2τ at step 0 (S = 4τ gives γ = 1/2), τ afterwards.
  clip = fo.qk_clip(lambda n: jnp.where(n == 0, 2 * TAU, TAU), layers=LAYER)
  injected = fo.inject_hyperparams(fo.qk_clip)(threshold=2 * TAU, layers=LAYER)
  for tx in (clip, injected):
    state = tx.init(params)
    update = jax.jit(tx.update)
    updates, state = update(grads, state, params, max_logits={'attn': s})
    np.testing.assert_allclose(
      _columns(updates['q'], [0]),
      (np.sqrt(0.5) - 1) * _columns(wq, [0]),
      rtol=1e-6,
    )
  updates, _ = jax.jit(clip.update)(
    grads, state, params, max_logits={'attn': s}
  )
  np.testing.assert_allclose(
    _columns(updates['q'], [0]), -0.5 * _columns(wq, [0]), rtol=1e-6
  )


def test_nnx_optimizer_passes_max_logits():
  class Attention(nnx.Module):
    def __init__(self, rngs):
      self.q = nnx.Linear(D, H * DH, use_bias=False, rngs=rngs)
      self.k = nnx.Linear(D, H * DH, use_bias=False, rngs=rngs)

  model = Attention(nnx.Rngs(0))
  model.q.kernel[...] = _weights()[0]
  model.k.kernel[...] = _weights()[1]
  x = _inputs()
  s = _max_logits(x, model.q.kernel[...], model.k.kernel[...])
  layer = fo.QKLayout(
    logits='attn', query='q/kernel', key='k/kernel', num_heads=H
  )
  optimizer = nnx.Optimizer(
    model,
    optax.chain(optax.sgd(0.0), fo.qk_clip(TAU, layers=layer)),
    wrt=nnx.Param,
  )
  grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  nnx.jit(lambda m, o, g, s: o.update(m, g, max_logits={'attn': s}))(
    model, optimizer, grads, jnp.asarray(s)
  )
  after = _max_logits(x, model.q.kernel[...], model.k.kernel[...])
  np.testing.assert_allclose(after, np.minimum(s, TAU), rtol=2e-6)


def _update(layer, params, max_logits=None, pass_params=True):
  tx = fo.qk_clip(TAU, layers=layer)
  extra = {} if max_logits is None else {'max_logits': max_logits}
  return tx.update(
    params, tx.init(params), params if pass_params else None, **extra
  )


P = {'q': jnp.ones((D, H * DH)), 'k': jnp.ones((D, H * DH))}
S = {'attn': jnp.full(H, 2 * TAU)}


@pytest.mark.parametrize(
  'build, error, message',
  [
    (lambda: fo.qk_clip(0.0, layers=LAYER), ValueError, 'threshold'),
    (lambda: fo.qk_clip(-1.0, layers=LAYER), ValueError, 'threshold'),
    (lambda: fo.qk_clip(TAU, layers=LAYER, alpha=1.5), ValueError, 'alpha'),
    (lambda: fo.qk_clip(TAU, layers=[]), TypeError, 'layers'),
    (lambda: fo.qk_clip(TAU, layers=['q']), TypeError, 'QKLayout'),
    (
      lambda: fo.QKLayout(logits='a', query='q', key='k', num_heads=0),
      ValueError,
      'QKLayout.num_heads',
    ),
    (
      lambda: fo.QKLayout(
        logits='a', query='q', key='k', num_heads=4, num_kv_heads=3
      ),
      ValueError,
      'num_kv_heads=3 must divide num_heads=4',
    ),
    (
      lambda: fo.QKLayout(logits='a', query='q', num_heads=4),
      ValueError,
      'QKLayout.key is required',
    ),
    (
      lambda: fo.QKLayout(
        logits='a', query='qkv', key='k', num_heads=4, layout='fused'
      ),
      ValueError,
      "layout='fused'",
    ),
    (
      lambda: fo.QKLayout(
        logits='a', query='q', key='k', num_heads=4, layout='rows'
      ),
      ValueError,
      'QKLayout.layout',
    ),
    (
      lambda: fo.QKLayout(logits='a', query='q(', key='k', num_heads=4),
      ValueError,
      'QKLayout.query',
    ),
    (
      lambda: fo.QKLayout(logits=None, query='q', key='k', num_heads=4),
      TypeError,
      'QKLayout.logits',
    ),
    (lambda: _update(LAYER, P), ValueError, 'qk_clip needs max_logits='),
    (lambda: _update(LAYER, P, S, False), ValueError, 'needs params'),
    (lambda: _update(LAYER, P, [1.0]), TypeError, 'max_logits must be'),
    (lambda: _update(LAYER, P, {'x': S['attn']}), ValueError, "entry 'attn'"),
    (
      lambda: _update(LAYER, P, {'attn': jnp.ones(3)}),
      ValueError,
      'shape (num_heads,) = (4,)',
    ),
    (
      lambda: _update(
        fo.QKLayout(logits='attn', query='query', key='k', num_heads=H), P, S
      ),
      ValueError,
      "pattern 'query' of layer 'attn' matches no parameter",
    ),
    (
      lambda: _update(
        fo.QKLayout(logits='attn', query='q|k', key='k', num_heads=H), P, S
      ),
      ValueError,
      "parameter 'k' is matched twice",
    ),
    (
      lambda: _update(
        fo.QKLayout(logits='attn', query='q', key='k', num_heads=3),
        P,
        {'attn': jnp.ones(3)},
      ),
      ValueError,
      'divisible by the 3 heads',
    ),
    (
      lambda: _update(
        fo.QKLayout(
          logits='attn', query='q', key='k', num_heads=H, layout='heads'
        ),
        P,
        S,
      ),
      ValueError,
      'must end in axes (heads, head_dim) with heads=4',
    ),
  ],
)
def test_errors_name_the_argument(build, error, message):
  with pytest.raises(error, match=None) as info:
    build()
  assert message in str(info.value), str(info.value)
