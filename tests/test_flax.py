"""Every optimizer of the package drives Flax NNX and Linen training loops.

A small model with an embedding (sent to the AdamW fallback by
`exclude=['embed']`), a 3x3 convolution (read as a `(kh·kw·in, out)` matrix
through a `dimension_numbers` callable) and two dense layers trains a few
steps under `nnx.jit` / `jax.jit`, and the loss goes down. For Muon with an
exact polar factor, the first step's weight changes are checked against
their closed forms (all singular values `lr·s`), which shows that each leaf
went where it should.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from tiers import tiered

import fanion_optax as fo
from fanion_optax import catalogue
from fanion_optax.partition import DimensionNumbers as DN

VOCAB, DIM, HIDDEN, OUT = 16, 8, 16, 4
STEPS = 8

# flax 0.12.7 renamed `nnx.pure` to `nnx.as_pure`; the oldest flax we
# support (0.12.0) has only the old name.
_as_pure = getattr(nnx, 'as_pure', None) or nnx.pure


def _dimension_numbers(params):
  """Conv kernels `(kh, kw, in, out)` and dense kernels are matrices."""

  def spec(x):
    if x.ndim == 4:
      return DN((0, 1, 2), 3)
    if x.ndim == 2:
      return DN()
    return None

  return jax.tree.map(spec, params)


ROUTING = dict(dimension_numbers=_dimension_numbers, exclude=['embed'])


def _train(lr):
  """ROUTING, with the embedding and biases trained by AdamW at `lr`.

  The default fallback (AdamW at 3e-4) barely moves them in `STEPS` steps;
  the closed-form tests below exercise it.
  """
  return dict(ROUTING, fallback=fo.adamw_fallback(lr, b2=0.999))


# Every optimizer of the catalogue (its solver variants aside) at its
# reference step size, with the routing above.
OPTIMIZERS = {
  name: functools.partial(
    catalogue.OPTIMIZERS[name],
    weight_decay=0.01,
    **_train(catalogue.OPTIMIZERS[name].learning_rate),
  )
  for name in catalogue.PRESETS
}


def _data():
  key_tokens, key_targets = jax.random.split(jax.random.PRNGKey(0))
  # Only the first half of the vocabulary occurs, so some embedding rows get
  # no gradient.
  tokens = jax.random.randint(key_tokens, (16, 4, 4), 0, VOCAB // 2)
  targets = jax.random.normal(key_targets, (16, OUT))
  return tokens, targets


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
    self.conv = nnx.Conv(DIM, DIM, kernel_size=(3, 3), rngs=rngs)
    self.hidden = nnx.Linear(DIM, HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, OUT, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = nnx.relu(self.conv(x)).mean(axis=(1, 2))
    return self.out(nnx.relu(self.hidden(x)))


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, DIM, name='embed')(tokens)
    x = nn.relu(nn.Conv(DIM, (3, 3), name='conv')(x)).mean(axis=(1, 2))
    x = nn.relu(nn.Dense(HIDDEN, name='hidden')(x))
    return nn.Dense(OUT, name='out')(x)


def _nnx_loss(model, tokens, targets):
  return jnp.mean((model(tokens) - targets) ** 2)


@nnx.jit
def _nnx_step(model, optimizer, tokens, targets):
  loss, grads = nnx.value_and_grad(_nnx_loss)(model, tokens, targets)
  optimizer.update(model, grads)
  return loss


# Fanion (stateful LMO state inside NNX variables) is the fast case; Muon
# and the others run in the slow tier.
@pytest.mark.parametrize('name', tiered(OPTIMIZERS, fast={'fanion'}))
def test_nnx_optimizer_trains(name):
  tokens, targets = _data()
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)
  initial = float(_nnx_loss(model, tokens, targets))
  losses = [
    float(_nnx_step(model, optimizer, tokens, targets)) for _ in range(STEPS)
  ]
  final = float(_nnx_loss(model, tokens, targets))
  assert losses[0] == pytest.approx(initial, rel=1e-5)
  assert np.all(np.isfinite(losses)) and final < 0.9 * initial, losses
  leaves = jax.tree.leaves(
    nnx.state(optimizer), is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )
  assert not any(isinstance(x, optax.MaskedNode) for x in leaves)


def _kernel_singular_values(delta, shape):
  return np.linalg.svd(
    np.asarray(delta, np.float64).reshape(shape), compute_uv=False
  )


FALLBACK_LR = 3e-4  # the default fallback's: AdamW at 3e-4, not Muon's lr


def _check_first_muon_step(before, after, lr):
  """Matrices moved by −lr·s·U Vᵀ; embeddings and biases by the default
  AdamW fallback (≈ ±FALLBACK_LR)."""
  delta = jax.tree.map(
    lambda a, b: np.asarray(a) - np.asarray(b), after, before
  )
  for name, shape, fan_in, fan_out in [
    ('conv', (3 * 3 * DIM, DIM), 3 * 3 * DIM, DIM),
    ('hidden', (DIM, HIDDEN), DIM, HIDDEN),
    ('out', (HIDDEN, OUT), HIDDEN, OUT),
  ]:
    sv = _kernel_singular_values(delta[name]['kernel'], shape)
    s = math.sqrt(max(1.0, fan_out / fan_in))
    np.testing.assert_allclose(sv, lr * s, rtol=1e-4, err_msg=name)
    # AdamW's first step is −lr·g/(|g| + eps): entries ±lr (or 0).
    bias = np.abs(delta[name]['bias'])
    assert np.any(bias > 0)
    np.testing.assert_allclose(bias[bias > 0], FALLBACK_LR, rtol=1e-3)
  emb = np.abs(delta['embed']['embedding'])
  assert np.any(emb > 0) and np.any(emb == 0)  # unseen tokens do not move
  np.testing.assert_allclose(emb[emb > 0], FALLBACK_LR, rtol=1e-3)


def test_nnx_routing_first_step_closed_form():
  lr = 0.02
  tokens, targets = _data()
  model = NnxNet(nnx.Rngs(1))
  optimizer = nnx.Optimizer(
    model, fo.muon(lr, polar_method='svd', **ROUTING), wrt=nnx.Param
  )
  to_dict = lambda: jax.tree.map(
    np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))
  )
  before = to_dict()
  _nnx_step(model, optimizer, tokens, targets)
  _check_first_muon_step(before, to_dict(), lr)


@jax.jit
def _linen_step(state, tokens, targets):
  def loss_fn(params):
    return jnp.mean((state.apply_fn({'params': params}, tokens) - targets) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


def _linen_state(tx, seed=0):
  tokens, _ = _data()
  model = LinenNet()
  params = model.init(jax.random.PRNGKey(seed), tokens)['params']
  return train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=tx
  )


@pytest.mark.parametrize('name', tiered(OPTIMIZERS, fast={'muon', 'fanion'}))
def test_linen_train_state_trains(name):
  tokens, targets = _data()
  state = _linen_state(OPTIMIZERS[name]())
  losses = []
  for _ in range(STEPS):
    state, loss = _linen_step(state, tokens, targets)
    losses.append(float(loss))
  _, final = _linen_step(state, tokens, targets)
  assert np.all(np.isfinite(losses)) and float(final) < 0.9 * losses[0], losses
  assert int(state.step) == STEPS


def test_linen_routing_first_step_closed_form():
  lr = 0.02
  tokens, targets = _data()
  state = _linen_state(fo.muon(lr, polar_method='svd', **ROUTING), seed=1)
  before = jax.tree.map(np.asarray, state.params)
  state, _ = _linen_step(state, tokens, targets)
  _check_first_muon_step(before, jax.tree.map(np.asarray, state.params), lr)


def test_exclude_anchored_at_end_under_nnx_optimizer():
  """NNX passes Variables at init and arrays at update: same names."""
  model = nnx.Sequential(
    nnx.Embed(10, 6, rngs=nnx.Rngs(0)), nnx.Linear(6, 6, rngs=nnx.Rngs(1))
  )
  state = nnx.state(model, nnx.Param)
  names_init = [
    fo.partition.path_name(p)
    for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
  ]
  names_update = [
    fo.partition.path_name(p)
    for p, _ in jax.tree_util.tree_flatten_with_path(_as_pure(state))[0]
  ]
  assert names_init == names_update
  assert 'layers/0/embedding' in names_init
  tx = fo.muon(0.02, exclude=[r'embedding$'], fallback=fo.adamw_fallback(0.02))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = np.asarray(model.layers[0].embedding[...])
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  optimizer.update(model, grads)
  after = np.asarray(model.layers[0].embedding[...])
  # AdamW's first step moves every entry by lr (bias-corrected sign).
  np.testing.assert_allclose(before - after, 0.02, rtol=1e-4)
