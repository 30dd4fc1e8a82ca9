"""A small GPT in Flax NNX trained with Muon, per-head splits and QK-clip.

    python examples/gpt.py                   # a few minutes on 2 CPU cores
    python examples/gpt.py --resume          # continue from the last checkpoint
    python examples/gpt.py --quick           # a tiny model, 30 steps (~30 s)

A byte-level GPT (token embedding, rotary positions, pre-norm blocks of
causal self-attention with a fused QKV kernel and a GELU MLP, output head)
learns to continue the source of Python's standard library (the corpus of
`python -m fanion_optax.demo`, read from the running interpreter: nothing is
downloaded). The optimizer is one transformation for the whole model:

- `fo.muon` on the matrices, with a warmup-cosine schedule. The fused QKV
  kernel `(d, 3d)` is cut into one `(d, head_dim)` block per head of the
  queries, keys and values (`DimensionNumbers(output_blocks=3·heads)`), so
  each head is orthogonalised on its own, as if stored separately. The
  embedding and the output head go to the AdamW fallback.
- `fo.qk_clip` after it (Kimi K2's MuonClip, arXiv:2507.20534): the
  attention layers report the largest pre-softmax logit of each head in the
  batch, and every head above `--qk-clip` gets its query and key columns of
  the fused kernel rescaled so that logit would have been the threshold.

Every `--save-every` steps (and at the end) the model, the optimizer state
and the loss history go to an orbax checkpoint in `--out/ckpt`; `--resume`
continues from the newest one (the batch of step t depends only on t, so a
resumed run sees the batches an uninterrupted one would). A tqdm bar shows
progress, and `--out/gpt_loss.png` plots the training loss and the largest
attention logit of each layer against the threshold.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

import fanion_optax as fo
from fanion_optax import demo

VOCAB = 256  # bytes
# flax 0.12.7 renamed `nnx.pure` to `nnx.as_pure`; 0.12.0 has the old name.
_as_pure = getattr(nnx, 'as_pure', None) or nnx.pure
# The embedding and the output head follow AdamW, as in Jordan's Muon:
# `EMBEDDINGS` matches `embed/embedding` and `head/kernel`.
EXCLUDE = fo.partition.EMBEDDINGS
# Arguments a resumed run must share with the checkpointed one.
CONFIG_KEYS = (
  'steps',
  'batch',
  'context',
  'd_model',
  'layers',
  'heads',
  'lr',
  'adam_lr',
  'warmup',
  'weight_decay',
  'qk_clip',
  'seed',
)


def rotary(x: jax.Array) -> jax.Array:
  """Rotary position embedding of `(batch, time, heads, head_dim)` vectors.

  A rotation per position: the logits stay bilinear in the query and key
  kernels, which QK-clip relies on.
  """
  half = x.shape[-1] // 2
  freqs = 10_000.0 ** (-jnp.arange(half) / half)
  angles = jnp.arange(x.shape[1])[:, None] * freqs
  cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal attention with a fused `[q | k | v]` kernel."""

  def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The output and each head's largest pre-softmax logit, `(heads,)`."""
    b, t, d = x.shape
    head_dim = d // self.heads
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, head_dim)
    q, k, v = rotary(qkv[:, :, 0]), rotary(qkv[:, :, 1]), qkv[:, :, 2]
    logits = jnp.einsum('bihd,bjhd->bhij', q, k) / jnp.sqrt(head_dim)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
    max_logits = jnp.max(logits, axis=(0, 2, 3))
    y = jnp.einsum('bhij,bjhd->bihd', jax.nn.softmax(logits, axis=-1), v)
    return self.out(y.reshape(b, t, d)), max_logits


class Block(nnx.Module):
  """Pre-norm transformer block: attention, then a 4x GELU MLP."""

  def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.RMSNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, heads, rngs=rngs)
    self.norm2 = nnx.RMSNorm(d_model, rngs=rngs)
    self.up = nnx.Linear(d_model, 4 * d_model, use_bias=False, rngs=rngs)
    self.down = nnx.Linear(4 * d_model, d_model, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y, max_logits = self.attn(self.norm1(x))
    x = x + y
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x)))), max_logits


class GPT(nnx.Module):
  """Byte-level GPT; returns next-byte logits and `{layer: max logits}`."""

  def __init__(self, *, d_model: int, layers: int, heads: int, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, d_model, rngs=rngs)
    self.blocks = nnx.List(
      [Block(d_model, heads, rngs=rngs) for _ in range(layers)]
    )
    self.norm = nnx.RMSNorm(d_model, rngs=rngs)
    self.head = nnx.Linear(d_model, VOCAB, use_bias=False, rngs=rngs)

  def __call__(self, tokens: jax.Array):
    x = self.embed(tokens)
    max_logits = {}
    for i, block in enumerate(self.blocks):
      x, max_logits[layer_key(i)] = block(x)
    return self.head(self.norm(x)), max_logits


def layer_key(i: int) -> str:
  """The key of block `i` in the model's `max_logits` (and `QKLayout`)."""
  return f'blocks/{i}'


def dimension_numbers(heads: int):
  """Per-head blocks for fused QKV kernels; other 2-D leaves: one matrix."""

  def spec(path, x):
    if x.ndim != 2:
      return None  # RMSNorm scales -> AdamW
    if re.search(r'attn/qkv/kernel', fo.partition.path_name(path)):
      # [q | k | v], each `heads` blocks of head_dim columns.
      return fo.DimensionNumbers(0, 1, output_blocks=3 * heads)
    return fo.DimensionNumbers(0, 1)

  return lambda params: jax.tree_util.tree_map_with_path(spec, params)


def routing_table(model: GPT, heads: int) -> list[str]:
  """Where the optimizer sends each leaf (block 0 shown for all blocks)."""
  params = _as_pure(nnx.state(model, nnx.Param))
  specs = fo.partition.resolve_dimension_numbers(
    params, dimension_numbers(heads), EXCLUDE
  )
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  lines = []
  for (path, leaf), spec in zip(leaves, treedef.flatten_up_to(specs)):
    name = fo.partition.path_name(path)
    if name.startswith('blocks/') and not name.startswith('blocks/0/'):
      continue
    if spec is None:
      where = 'AdamW'
    else:
      stacks = spec.stack_shapes(leaf.shape)
      where = 'Muon, ' + ' + '.join(f'{n} x ({m}, {k})' for n, m, k in stacks)
    lines.append(f'  {name:<24} {str(tuple(leaf.shape)):<10} -> {where}')
  return lines


def make_optimizer(args: argparse.Namespace) -> optax.GradientTransformation:
  """Muon (per-head QKV blocks, AdamW fallback), then QK-clip."""

  def schedule(peak):
    return optax.warmup_cosine_decay_schedule(
      0.0, peak, args.warmup, args.steps, end_value=0.1 * peak
    )

  muon = fo.muon(
    schedule(args.lr),
    weight_decay=args.weight_decay,
    exclude=EXCLUDE,
    dimension_numbers=dimension_numbers(args.heads),
    fallback=fo.adamw_fallback(schedule(args.adam_lr), b2=0.95),
  )
  clip = fo.qk_clip(
    args.qk_clip,
    layers=[
      fo.QKLayout(
        logits=layer_key(i),
        query=f'blocks/{i}/attn/qkv/kernel',
        num_heads=args.heads,
        layout='fused',
      )
      for i in range(args.layers)
    ],
  )
  return optax.chain(muon, clip)


def build(args: argparse.Namespace, tx: optax.GradientTransformation):
  model = GPT(
    d_model=args.d_model,
    layers=args.layers,
    heads=args.heads,
    rngs=nnx.Rngs(args.seed),
  )
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def corpus() -> tuple[np.ndarray, np.ndarray]:
  """The demo's bytes, split 90% train, 10% held out."""
  data = demo.load_corpus()
  split = int(0.9 * len(data))
  return data[:split], data[split:]


def batch_at(
  data: np.ndarray, step: int, args: argparse.Namespace, stream: int = 0
):
  """The batch of `step`: a function of the seed, `stream` and `step` alone."""
  rng = np.random.default_rng((stream, args.seed, step))
  starts = rng.integers(0, len(data) - args.context - 1, size=args.batch)
  chunk = data[starts[:, None] + np.arange(args.context + 1)]
  return jnp.asarray(chunk[:, :-1]), jnp.asarray(chunk[:, 1:])


def loss_fn(model: GPT, x: jax.Array, y: jax.Array):
  logits, max_logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, max_logits


@nnx.jit
def train_step(model, optimizer, x, y):
  (loss, max_logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
    model, x, y
  )
  optimizer.update(model, grads, max_logits=max_logits)
  return loss, max_logits


@nnx.jit
def eval_step(model, x, y):
  return loss_fn(model, x, y)[0]


def checkpoint_manager(directory: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=2, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(
    os.path.abspath(directory),
    options=options,
    item_names=('state', 'history'),
  )


def restore(manager, args, tx):
  """`(model, optimizer, history)` from the newest checkpoint."""
  step = manager.latest_step()
  abstract_model, abstract_optimizer = nnx.eval_shape(lambda: build(args, tx))
  target = {
    'model': nnx.state(abstract_model),
    'optimizer': nnx.state(abstract_optimizer),
  }
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()
    ),
  )
  history = restored.history
  changed = {
    k: (history['config'][k], getattr(args, k))
    for k in CONFIG_KEYS
    if history['config'][k] != getattr(args, k)
  }
  if changed:
    raise SystemExit(
      f'--resume: the checkpoint at step {step} was made with other'
      f' settings (saved, now): {changed}.'
    )
  model, optimizer = build(args, tx)
  # Host copies: orbax's arrays are committed to the device, and jit
  # compiles the steps again for committed arguments (same values).
  state = jax.device_get(restored.state)
  nnx.update(model, state['model'])
  nnx.update(optimizer, state['optimizer'])
  return model, optimizer, history


def save(manager, step, model, optimizer, history) -> None:
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(
        {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)}
      ),
      history=ocp.args.JsonSave(history),
    ),
  )
  manager.wait_until_finished()


def plot(history: dict[str, Any], threshold: float, path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  losses = np.asarray(history['losses'])
  steps = np.arange(1, len(losses) + 1)
  ax1.plot(steps, losses, lw=0.8, label='train')
  if history['val']:
    ax1.plot(*zip(*history['val']), 'o-', label='held-out')
  ax1.set(title='loss', xlabel='step', ylabel='nats/byte')
  for i, curve in enumerate(np.asarray(history['max_logits']).T):
    ax2.plot(steps, curve, lw=0.8, label=f'block {i}')
  ax2.axhline(threshold, color='k', ls='--', lw=0.8, label='QK-clip τ')
  ax2.set(
    title='largest attention logit (before the step)',
    xlabel='step',
    ylabel='logit',
  )
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--quick', action='store_true', help='a tiny model, 30 steps, no bar'
  )
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--context', type=int, default=None)
  p.add_argument('--d-model', type=int, default=None)
  p.add_argument('--layers', type=int, default=None)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--lr', type=float, default=0.02, help="Muon's peak rate")
  p.add_argument(
    '--adam-lr', type=float, default=3e-3, help='AdamW fallback peak rate'
  )
  p.add_argument('--warmup', type=int, default=None)
  p.add_argument('--weight-decay', type=float, default=0.01)
  p.add_argument(
    '--qk-clip',
    type=float,
    default=30.0,
    help='QK-clip threshold τ on the max logit per head (K2 used 100 at'
    ' scale; this model reaches ~45 without the clip)',
  )
  p.add_argument('--save-every', type=int, default=None)
  p.add_argument(
    '--stop-at',
    type=int,
    default=None,
    help='stop (and checkpoint) after this step, as if interrupted',
  )
  p.add_argument('--resume', action='store_true')
  p.add_argument('--eval-batches', type=int, default=None)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default='gpt_out', help='output folder')
  args = p.parse_args(argv)
  defaults = dict(
    steps=(30, 500),
    batch=(8, 32),
    context=(32, 64),
    d_model=(32, 64),
    layers=(2, 4),
    warmup=(5, 40),
    save_every=(10, 100),
    eval_batches=(2, 8),
  )
  for name, (quick, full) in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, quick if args.quick else full)
  for name in (*defaults, 'heads'):
    if getattr(args, name) < 1:
      p.error(f'--{name.replace("_", "-")} must be >= 1')
  if args.d_model % args.heads or (args.d_model // args.heads) % 2:
    p.error('--d-model must be --heads times an even head size (rotary)')
  if args.stop_at is not None and not 1 <= args.stop_at <= args.steps:
    p.error('--stop-at must be in [1, --steps]')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains (or resumes); returns the history and the steps run."""
  from tqdm.auto import tqdm

  args = parse_args(argv)
  train_data, val_data = corpus()
  tx = make_optimizer(args)
  os.makedirs(args.out, exist_ok=True)
  manager = checkpoint_manager(os.path.join(args.out, 'ckpt'))
  try:
    latest = manager.latest_step()
    if latest is not None and not args.resume:
      raise SystemExit(
        f'{args.out}/ckpt already holds checkpoints (up to step {latest}):'
        ' pass --resume to continue, or choose another --out.'
      )
    if latest is not None:
      model, optimizer, history = restore(manager, args, tx)
      print(f'resumed from step {latest}')
    else:
      model, optimizer = build(args, tx)
      history = {
        'config': {k: getattr(args, k) for k in CONFIG_KEYS},
        'losses': [],
        'max_logits': [],
        'val': [],
        'clipped': 0,
      }
      if args.resume:
        print('no checkpoint to resume from: starting at step 0')
    start = int(optimizer.step[...])
    stop = args.steps if args.stop_at is None else max(start, args.stop_at)
    print(
      f'GPT: d_model {args.d_model}, {args.layers} blocks of {args.heads}'
      f' heads, context {args.context};'
      f' {len(train_data) + len(val_data):,} bytes of stdlib source;'
      f' steps {start + 1}..{stop} of {args.steps};'
      f' jax {jax.__version__} on {jax.devices()[0].platform}'
    )
    if start == 0:
      print('Where the optimizer sends each parameter (blocks 1.. as block 0):')
      print('\n'.join(routing_table(model, args.heads)))
    val_batches = [
      batch_at(val_data, i, args, stream=1) for i in range(args.eval_batches)
    ]

    def evaluate():
      return float(np.mean([eval_step(model, x, y) for x, y in val_batches]))

    with tqdm(
      total=args.steps,
      initial=start,
      unit='step',
      file=sys.stdout,
      mininterval=1.0,
      disable=args.quick,
    ) as progress:
      for step in range(start + 1, stop + 1):
        loss, max_logits = train_step(
          model, optimizer, *batch_at(train_data, step, args)
        )
        loss = float(loss)
        if not np.isfinite(loss):
          raise FloatingPointError(f'loss became {loss} at step {step}.')
        per_layer = [
          float(max_logits[layer_key(i)].max()) for i in range(args.layers)
        ]
        history['losses'].append(loss)
        history['max_logits'].append(per_layer)
        history['clipped'] += sum(
          int((max_logits[layer_key(i)] > args.qk_clip).sum())
          for i in range(args.layers)
        )
        progress.update(1)
        progress.set_postfix(
          loss=f'{loss:.3f}', max_logit=f'{max(per_layer):.1f}', refresh=False
        )
        if step % args.save_every == 0 or step == stop:
          history['val'].append((step, evaluate()))
          save(manager, step, model, optimizer, history)
  finally:
    manager.close()
  tail = history['losses'][-max(1, args.steps // 10) :]
  print(
    f'step {stop}: train loss {np.mean(tail):.3f}, held-out'
    f' {history["val"][-1][1]:.3f} nats/byte (uniform: {np.log(VOCAB):.3f});'
    f' largest logit {np.max(history["max_logits"]):.1f}, QK-clip τ ='
    f' {args.qk_clip:g}: {history["clipped"]} head-steps clipped'
  )
  path = os.path.join(args.out, 'gpt_loss.png')
  plot(history, args.qk_clip, path)
  print(f'wrote {path}; checkpoints in {args.out}/ckpt')
  return {
    'start': start,
    'stop': stop,
    'history': history,
    'plot': path,
    'model': model,
    'args': args,
  }


if __name__ == '__main__':
  main()
