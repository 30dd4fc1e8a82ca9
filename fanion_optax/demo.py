"""Main demo: a character-level transformer trained with each optimizer.

    python -m fanion_optax.demo                 # ~3 minutes on 2 CPU cores
    python -m fanion_optax.demo --steps 2000 --d-model 128 --out runs/

Trains the same small Flax NNX transformer on the same bytes, seeds and step
budget with AdamW, Muon, F-Muon, S-Muon and Fanion-k, then prints a table
(final train and held-out loss, time per step) and writes `loss_curves.png`
and `results.json` to `--out`. The corpus needs no download: by default it is
the source of Python's own standard library, read from the running
interpreter; `--corpus FILE` trains on any text file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fanion_optax as fo

STDLIB_MODULES = (
  'argparse',
  'textwrap',
  'difflib',
  'string',
  'functools',
  'dataclasses',
  'json/decoder',
  'csv',
  'fractions',
  'statistics',
  'heapq',
  'bisect',
  'shlex',
  'calendar',
)
VOCAB = 256  # bytes
OPTIMIZERS = ('adamw', 'muon', 'f_muon', 's_muon', 'fanion')


def load_corpus(
  path: str | None = None, max_bytes: int = 1_000_000
) -> np.ndarray:
  """Bytes of `path`, or of a fixed list of standard-library modules."""
  if path is not None:
    with open(path, 'rb') as f:
      data = f.read(max_bytes)
  else:
    root = os.path.dirname(os.__file__)
    parts = []
    for name in STDLIB_MODULES:
      file = os.path.join(root, name + '.py')
      if os.path.exists(file):
        with open(file, 'rb') as f:
          parts.append(f.read())
    data = b'\n'.join(parts)[:max_bytes]
  if len(data) < 10_000:
    raise ValueError(f'corpus too small: {len(data)} bytes (need 10,000).')
  return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


class Block(nnx.Module):
  """Pre-norm transformer block: causal self-attention and an MLP."""

  def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=heads,
      in_features=d_model,
      qkv_features=d_model,
      use_bias=False,
      decode=False,
      rngs=rngs,
    )
    self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
    self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn(self.norm1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  """A small GPT over bytes."""

  def __init__(
    self, *, d_model: int, layers: int, heads: int, context: int, rngs: nnx.Rngs
  ):
    self.embed = nnx.Embed(VOCAB, d_model, rngs=rngs)
    self.pos = nnx.Param(
      0.02 * jax.random.normal(rngs.params(), (context, d_model))
    )
    self.blocks = nnx.List(
      [Block(d_model, heads, rngs=rngs) for _ in range(layers)]
    )
    self.norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.head = nnx.Linear(d_model, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    t = tokens.shape[-1]
    x = self.embed(tokens) + self.pos[...][:t]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.norm(x))


# Embeddings, the positional table and the output head follow AdamW, as in
# Jordan's Muon and the Fanions paper; attention kernels are (in, heads, dh)
# or (heads, dh, out) and are read as matrices through dimension numbers.
EXCLUDE = (r'^embed/', r'^pos', r'^head/')


def dimension_numbers(params: Any) -> Any:
  """Dense kernels `(in, out)`; attention `(in, h, dh)` and `(h, dh, out)`."""

  def spec(path, x):
    name = fo.partition.path_name(path)
    if x.ndim == 2:
      return fo.DimensionNumbers(0, 1)
    if x.ndim == 3 and '/out/' in name:
      return fo.DimensionNumbers((0, 1), 2)
    if x.ndim == 3:
      return fo.DimensionNumbers(0, (1, 2))
    return None

  return jax.tree_util.tree_map_with_path(spec, params)


def make_optimizer(
  name: str, steps: int, lr: float | None = None
) -> optax.GradientTransformation:
  """The demo's optimizers, with learning rates tuned for this model size."""
  common: dict[str, Any] = dict(
    weight_decay=0.01,
    exclude=EXCLUDE,
    dimension_numbers=dimension_numbers,
    fallback=fo.adamw_fallback(
      optax.cosine_decay_schedule(3e-3, steps), b2=0.999
    ),
  )
  schedule = lambda peak: optax.cosine_decay_schedule(peak, steps)
  if name == 'adamw':
    return optax.adamw(schedule(lr or 3e-3), weight_decay=0.01)
  if name == 'muon':
    return fo.muon(schedule(lr or 0.02), **common)
  if name == 'f_muon':
    return fo.f_muon(schedule(lr or 0.02), **common)
  if name == 's_muon':
    return fo.s_muon(schedule(lr or 0.02), sign_scale=1e-3, **common)
  if name == 'fanion':
    return fo.fanion(schedule(lr or 0.02), 8, **common)
  if name == 'neon':
    return fo.neon(schedule(lr or 0.02), **common)
  raise ValueError(f'unknown optimizer {name!r}; choose from {OPTIMIZERS}.')


def batches(data: np.ndarray, batch: int, context: int, seed: int):
  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(data) - context - 1, size=batch)
    idx = starts[:, None] + np.arange(context + 1)
    chunk = data[idx]
    yield jnp.asarray(chunk[:, :-1]), jnp.asarray(chunk[:, 1:])


def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_step(model, x, y):
  return loss_fn(model, x, y)


def train(
  name: str,
  args: argparse.Namespace,
  train_data: np.ndarray,
  val_data: np.ndarray,
  progress,
) -> dict[str, Any]:
  """Trains one model; returns its loss curves and timings."""
  # One transformation object for both runs: nnx.jit keys its cache on it.
  tx = make_optimizer(name, args.steps)

  def fresh():
    model = CharTransformer(
      d_model=args.d_model,
      layers=args.layers,
      heads=args.heads,
      context=args.context,
      rngs=nnx.Rngs(args.seed),
    )
    return (
      model,
      nnx.Optimizer(model, tx, wrt=nnx.Param),
      batches(train_data, args.batch, args.context, args.seed),
    )

  val_batches = list(
    zip(
      range(args.eval_batches),
      batches(val_data, args.batch, args.context, 1234),
    )
  )
  # Compile both steps on a throw-away copy so timings exclude compilation.
  model, optimizer, data = fresh()
  x, y = next(data)
  train_step(model, optimizer, x, y).block_until_ready()
  eval_step(model, x, y).block_until_ready()
  model, optimizer, data = fresh()
  curve, val_curve, seconds = [], [], 0.0
  for step in range(1, args.steps + 1):
    x, y = next(data)
    start = time.perf_counter()
    loss = float(train_step(model, optimizer, x, y))
    seconds += time.perf_counter() - start
    if not math.isfinite(loss):
      raise FloatingPointError(f'{name}: loss became {loss} at step {step}.')
    curve.append(loss)
    if step % args.eval_every == 0 or step == args.steps:
      val = float(
        np.mean([eval_step(model, vx, vy) for _, (vx, vy) in val_batches])
      )
      val_curve.append((step, val))
    progress.update(1)
    progress.set_postfix(opt=name, loss=f'{loss:.3f}', refresh=False)
  tail = max(1, args.steps // 20)
  return {
    'optimizer': name,
    'train_curve': curve,
    'val_curve': val_curve,
    'final_train_loss': float(np.mean(curve[-tail:])),
    'final_val_loss': val_curve[-1][1],
    'ms_per_step': 1000 * seconds / args.steps,
  }


def plot(results: Sequence[dict[str, Any]], path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    curve = np.asarray(r['train_curve'])
    w = max(1, len(curve) // 50)
    smooth = np.convolve(curve, np.ones(w) / w, mode='valid')
    ax1.plot(np.arange(len(smooth)) + w, smooth, label=r['optimizer'])
    steps, vals = zip(*r['val_curve'])
    ax2.plot(steps, vals, marker='o', label=r['optimizer'])
  ax1.set(title='train loss (smoothed)', xlabel='step', ylabel='nats/byte')
  ax2.set(title='held-out loss', xlabel='step', ylabel='nats/byte')
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog='python -m fanion_optax.demo',
    description=cast(str, __doc__).split('\n')[0],
  )
  p.add_argument(
    '--optimizers',
    default=','.join(OPTIMIZERS),
    help=f'comma-separated, from {OPTIMIZERS + ("neon",)}',
  )
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--context', type=int, default=64)
  p.add_argument('--d-model', type=int, default=64)
  p.add_argument('--layers', type=int, default=2)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--eval-every', type=int, default=50)
  p.add_argument('--eval-batches', type=int, default=8)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument(
    '--corpus',
    default=None,
    help='text file to train on (default: Python stdlib source)',
  )
  p.add_argument('--out', default='demo_out', help='output folder')
  p.add_argument('--no-plot', action='store_true')
  args = p.parse_args(argv)
  names = [n.strip() for n in args.optimizers.split(',') if n.strip()]
  for n in names:
    if n not in OPTIMIZERS + ('neon',):
      p.error(f'unknown optimizer {n!r}')
  args.optimizer_names = names
  for flag in (
    'steps',
    'batch',
    'context',
    'd_model',
    'layers',
    'heads',
    'eval_every',
    'eval_batches',
  ):
    if getattr(args, flag) < 1:
      p.error(f'--{flag.replace("_", "-")} must be >= 1')
  if args.d_model % args.heads:
    p.error('--d-model must be divisible by --heads')
  return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  from tqdm.auto import tqdm

  args = parse_args(argv)
  data = load_corpus(args.corpus)
  split = int(0.9 * len(data))
  train_data, val_data = data[:split], data[split:]
  print(
    f'corpus: {len(data):,} bytes ({"stdlib" if args.corpus is None else args.corpus});'
    f' model: d={args.d_model}, layers={args.layers};'
    f' {args.steps} steps x {len(args.optimizer_names)} optimizers;'
    f' jax {jax.__version__} on {jax.devices()[0].platform}'
  )
  results = []
  with tqdm(
    total=args.steps * len(args.optimizer_names),
    unit='step',
    file=sys.stdout,
    mininterval=1.0,
  ) as progress:
    for name in args.optimizer_names:
      results.append(train(name, args, train_data, val_data, progress))
  print(
    f'\n{"optimizer":<10} {"train loss":>10} {"held-out":>10} {"ms/step":>8}'
  )
  for r in results:
    print(
      f'{r["optimizer"]:<10} {r["final_train_loss"]:>10.3f}'
      f' {r["final_val_loss"]:>10.3f} {r["ms_per_step"]:>8.1f}'
    )
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(
      {'args': {k: v for k, v in vars(args).items()}, 'results': results},
      f,
      indent=1,
    )
  if not args.no_plot:
    path = os.path.join(args.out, 'loss_curves.png')
    plot(results, path)
    print(f'wrote {path}')
  return results


if __name__ == '__main__':
  main()
