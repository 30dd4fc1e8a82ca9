"""Flax NNX: a small MLP language model trained with Muon and with AdamW.

    python examples/nnx_train.py            # ~30 s on 2 CPU cores
    python examples/nnx_train.py --quick    # a few seconds

The model reads a window of tokens and predicts the next one. The data come
from a random second-order Markov source (the next token depends on the last
two through a sparse random table), generated on the fly, so the best
achievable loss — the source's conditional entropy — is known and printed.

The optimizer is one `optax.GradientTransformation` for the whole model,
driven by `nnx.Optimizer(model, tx, wrt=nnx.Param)`. Which leaves follow the
spectral LMO (Muon) is decided by their *paths*: 2-D kernels are matrices,
biases and `exclude=` matches (the token embedding and the output head, as in
Jordan's Muon) go to the AdamW fallback. The script prints that routing, as
`fanion_optax.partition.resolve_dimension_numbers` sees it, before training.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import fanion_optax as fo

# Regexes searched in the parameter paths (`'embed/embedding'`,
# `'head/kernel'`): these 2-D leaves go to AdamW instead of the LMO. Anchor
# them at the start of the path, not the end: with Flax 0.12 `nnx.Optimizer`
# calls `tx.init` on an `nnx.State`, whose paths end in `/value`
# (`'embed/embedding/value'`), and `tx.update` on plain arrays
# (`'embed/embedding'`); a pattern must match both.
EXCLUDE = (r'^embed/', r'^head/')

# flax 0.12.7 renamed `nnx.pure` to `nnx.as_pure`; the oldest flax we
# support (0.12.0) has only the old name.
_as_pure = getattr(nnx, 'as_pure', None) or nnx.pure


class MLPLanguageModel(nnx.Module):
  """Embed a window of tokens, concatenate, MLP, project to the vocabulary."""

  def __init__(
    self,
    *,
    vocab: int,
    context: int,
    embed_dim: int,
    hidden: int,
    layers: int,
    rngs: nnx.Rngs,
  ):
    self.embed = nnx.Embed(vocab, embed_dim, rngs=rngs)
    widths = [context * embed_dim] + [hidden] * layers
    self.hidden = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
    )
    self.head = nnx.Linear(hidden, vocab, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens).reshape(tokens.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.gelu(layer(x))
    return self.head(x)


class MarkovSource:
  """A random second-order Markov source over `vocab` tokens.

  `P(next | a, b)` is a Dirichlet(`concentration`) draw per pair `(a, b)`:
  small concentrations give peaked, learnable tables.
  """

  def __init__(self, vocab: int, context: int, concentration: float, seed: int):
    rng = np.random.default_rng(seed)
    self.vocab, self.context = vocab, context
    self.probs = rng.dirichlet(
      np.full(vocab, concentration), size=(vocab, vocab)
    )
    self.cdf = np.cumsum(self.probs, axis=-1)
    self.cdf[..., -1] = 1.0

  def entropy(self) -> float:
    """The best achievable loss (nats/token): the mean conditional entropy."""
    p = self.probs
    return float(-np.sum(p * np.log(np.maximum(p, 1e-30)), axis=-1).mean())

  def sample(
    self, rng: np.random.Generator, batch: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """`batch` windows of uniform tokens and the next token of each."""
    tokens = rng.integers(0, self.vocab, size=(batch, self.context))
    cdf = self.cdf[tokens[:, -2], tokens[:, -1]]
    u = rng.random((batch, 1))
    targets = np.minimum((u > cdf).sum(-1), self.vocab - 1)
    return tokens.astype(np.int32), targets.astype(np.int32)


def routing_table(model: nnx.Module, exclude: Sequence[str]) -> list[str]:
  """One line per parameter: its path, shape and where the optimizer sends it.

  Uses the same resolution as the optimizer: `resolve_dimension_numbers`
  gives a `DimensionNumbers` for each LMO leaf and `None` for each fallback
  leaf.
  """
  # The arrays `nnx.Optimizer.update` hands to `tx.update`.
  params = _as_pure(nnx.state(model, nnx.Param))
  specs = fo.partition.resolve_dimension_numbers(params, exclude=exclude)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  lines = []
  for (path, leaf), spec in zip(leaves, treedef.flatten_up_to(specs)):
    name = fo.partition.path_name(path)
    shape = str(tuple(leaf.shape))
    if spec is not None:
      fan_in, fan_out = spec.fans(leaf.shape)
      s = fo.partition.shape_factor(fan_in, fan_out, 'muon')
      where = f'Muon LMO  (fan_in={fan_in}, fan_out={fan_out}, s={s:.2f})'
    elif leaf.ndim == 2:
      where = 'AdamW     (2-D, but matched by exclude=)'
    else:
      where = f'AdamW     ({leaf.ndim}-D: not a matrix)'
    lines.append(f'  {name:<16} {shape:<11} -> {where}')
  return lines


def make_optimizer(
  name: str, args: argparse.Namespace
) -> optax.GradientTransformation:
  """Muon (AdamW fallback for embed/head/biases) or plain AdamW."""
  if name == 'adamw':
    return optax.adamw(
      optax.cosine_decay_schedule(args.adam_lr, args.steps),
      weight_decay=args.weight_decay,
    )
  # The fallback is the AdamW of the baseline run (its learning rate and
  # schedule, `b2 = 0.999`); the default `fo.adamw_fallback()` would be
  # AdamW at 3e-4 with `b2 = 0.95`.
  return fo.muon(
    optax.cosine_decay_schedule(args.muon_lr, args.steps),
    weight_decay=args.weight_decay,
    exclude=EXCLUDE,
    fallback=fo.adamw_fallback(
      optax.cosine_decay_schedule(args.adam_lr, args.steps),
      b2=0.999,
      weight_decay=args.weight_decay,
    ),
  )


def loss_fn(model: nnx.Module, tokens: jax.Array, targets: jax.Array):
  logits = model(tokens)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@nnx.jit
def train_step(model, optimizer, tokens, targets):
  loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, targets)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_step(model, tokens, targets):
  return loss_fn(model, tokens, targets)


def train(
  name: str,
  args: argparse.Namespace,
  source: MarkovSource,
  held_out: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
  """Trains a fresh model with optimizer `name`; returns its losses."""
  model = MLPLanguageModel(
    vocab=args.vocab,
    context=args.context,
    embed_dim=args.embed_dim,
    hidden=args.hidden,
    layers=args.layers,
    rngs=nnx.Rngs(args.seed),
  )
  optimizer = nnx.Optimizer(model, make_optimizer(name, args), wrt=nnx.Param)
  rng = np.random.default_rng(args.seed + 1)  # same batches for each run
  losses = []
  start = time.perf_counter()
  for step in range(1, args.steps + 1):
    tokens, targets = source.sample(rng, args.batch)
    losses.append(float(train_step(model, optimizer, tokens, targets)))
    if step % max(1, args.steps // 5) == 0 or step == args.steps:
      print(f'  {name:<6} step {step:>4}  train loss {losses[-1]:.3f}')
  seconds = time.perf_counter() - start
  held = float(eval_step(model, *held_out))
  tail = max(1, args.steps // 10)
  return {
    'optimizer': name,
    'losses': losses,
    'held_out_loss': held,
    'final_train_loss': float(np.mean(losses[-tail:])),
    'seconds': seconds,
  }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--quick', action='store_true', help='a small model and few steps (seconds)'
  )
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--vocab', type=int, default=None)
  p.add_argument('--context', type=int, default=4)
  p.add_argument('--embed-dim', type=int, default=32)
  p.add_argument('--hidden', type=int, default=None)
  p.add_argument('--layers', type=int, default=2)
  p.add_argument('--muon-lr', type=float, default=0.05)
  p.add_argument(
    '--adam-lr',
    type=float,
    default=1e-2,
    help="AdamW learning rate (also Muon's AdamW fallback)",
  )
  p.add_argument('--weight-decay', type=float, default=0.01)
  p.add_argument(
    '--concentration',
    type=float,
    default=0.1,
    help='Dirichlet concentration of the source (peakedness)',
  )
  p.add_argument(
    '--optimizers',
    default='muon,adamw',
    help='comma-separated, from muon,adamw',
  )
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.steps is None:
    args.steps = 100 if args.quick else 600
  if args.hidden is None:
    args.hidden = 64 if args.quick else 256
  if args.vocab is None:
    args.vocab = 16 if args.quick else 32
  args.names = [n for n in args.optimizers.split(',') if n]
  for n in args.names:
    if n not in ('muon', 'adamw'):
      p.error(f'unknown optimizer {n!r}')
  if args.context < 2:
    p.error('--context must be >= 2 (the source is second order)')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the example; returns `{'entropy', 'results': {name: ...}}`."""
  args = parse_args(argv)
  source = MarkovSource(args.vocab, args.context, args.concentration, args.seed)
  held_out = source.sample(np.random.default_rng(12345), 4096)
  entropy = source.entropy()
  print(
    f'Next-token prediction on a random 2nd-order Markov source:'
    f' vocab {args.vocab}, context {args.context}, {args.steps} steps of'
    f' {args.batch}.'
  )
  print(
    f'Uniform guessing: {np.log(args.vocab):.3f} nats; best possible'
    f' (source entropy): {entropy:.3f} nats.'
  )
  model = MLPLanguageModel(
    vocab=args.vocab,
    context=args.context,
    embed_dim=args.embed_dim,
    hidden=args.hidden,
    layers=args.layers,
    rngs=nnx.Rngs(args.seed),
  )
  print(f'\nWhere fo.muon(..., exclude={list(EXCLUDE)}) sends each parameter:')
  print('\n'.join(routing_table(model, EXCLUDE)))
  results = {}
  for name in args.names:
    print(f'\nTraining with {name}:')
    results[name] = train(name, args, source, held_out)
  print(
    f'\n{"optimizer":<10} {"train loss":>10} {"held-out":>9}'
    f' {"gap to best":>11} {"seconds":>8}'
  )
  for r in results.values():
    print(
      f'{r["optimizer"]:<10} {r["final_train_loss"]:>10.3f}'
      f' {r["held_out_loss"]:>9.3f}'
      f' {r["held_out_loss"] - entropy:>11.3f} {r["seconds"]:>8.1f}'
    )
  return {
    'entropy': entropy,
    'uniform': float(np.log(args.vocab)),
    'results': results,
  }


if __name__ == '__main__':
  main()
