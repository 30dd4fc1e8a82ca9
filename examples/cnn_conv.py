"""A small CNN whose convolution kernels follow the spectral LMO (Muon).

    python examples/cnn_conv.py             # ~20 s on 2 CPU cores
    python examples/cnn_conv.py --quick     # a few seconds

Data: generated 8×8 grey images of a short bar — horizontal, vertical,
diagonal or anti-diagonal (4 classes) — at a random place, with random length
and contrast, in Gaussian noise. Nothing is downloaded.

A Flax NNX convolution kernel has the layout `(kh, kw, in, out)`. Muon reads
it as one `(kh·kw·in, out)` matrix through
`fo.DimensionNumbers(reduction_axes=(0, 1, 2), output_axes=3)`, given here by
a `dimension_numbers` callable (Dense kernels keep the default `(in, out)`;
biases and the classifier head go to AdamW). The script trains the same
network with Muon and with AdamW, prints test accuracy, then checks the
implicit constraint of Muon with decoupled weight decay λ: every kernel is
driven into the spectral ball `σ₁ ≤ s/λ` (Chen, Li, Liu, arXiv:2506.15054),
which `fo.diagnostics.constraint_report` verifies.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fanion_optax as fo

CLASSES = ('horizontal', 'vertical', 'diagonal', 'anti-diagonal')
SIZE = 8
EXCLUDE = (r'^head/',)  # the classifier goes to AdamW

# flax 0.12.7 renamed `nnx.pure` to `nnx.as_pure`; the oldest flax we
# support (0.12.0) has only the old name.
_as_pure = getattr(nnx, 'as_pure', None) or nnx.pure


def make_images(
  rng: np.random.Generator, n: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
  """`n` noisy 8×8 images of oriented bars and their labels (0..3).

  Args:
    rng: numpy random generator.
    n: number of images.
    noise: standard deviation of the additive Gaussian noise.

  Returns:
    `(images, labels)`: float32 `(n, 8, 8, 1)` and int32 `(n,)`.
  """
  steps = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])  # (row, col) per class
  labels = rng.integers(0, len(CLASSES), size=n)
  length = rng.integers(3, 6, size=n)
  contrast = rng.uniform(0.7, 1.3, size=n)
  images = noise * rng.standard_normal((n, SIZE, SIZE)).astype(np.float32)
  # Pick a start so that the whole bar fits in the image.
  dr, dc = steps[labels, 0], steps[labels, 1]
  end = length - 1
  r0 = rng.integers(0, SIZE - end * dr)
  c_low = np.where(dc < 0, end, 0)
  c0 = rng.integers(c_low, SIZE - np.where(dc > 0, end, 0))
  for i in range(5):
    on = i < length
    rows, cols = r0 + i * dr, c0 + i * dc
    idx = np.nonzero(on)[0]
    images[idx, rows[idx], cols[idx]] += contrast[idx]
  return images[..., None], labels.astype(np.int32)


class CNN(nnx.Module):
  """Two 3×3 convolutions, global max-pool, a linear classifier."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, channels, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(channels, 2 * channels, kernel_size=(3, 3), rngs=rngs)
    self.head = nnx.Linear(2 * channels, len(CLASSES), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.head(x.max(axis=(1, 2)))


def dimension_numbers(params: Any) -> Any:
  """Conv kernels `(kh, kw, in, out)` → `(kh·kw·in, out)`; Dense `(in, out)`.

  Called by the optimizer with the parameter tree; leaves mapped to `None`
  (biases) go to the fallback.
  """

  def spec(x):
    if x.ndim == 4:
      return fo.DimensionNumbers(reduction_axes=(0, 1, 2), output_axes=3)
    if x.ndim == 2:
      return fo.DimensionNumbers(reduction_axes=0, output_axes=1)
    return None

  return jax.tree.map(spec, params)


def make_optimizer(
  name: str, args: argparse.Namespace
) -> optax.GradientTransformation:
  """Muon on the kernels (AdamW for biases and head), or plain AdamW."""
  if name == 'adamw':
    return optax.adamw(args.adam_lr)
  # A constant learning rate ε keeps the constraint picture simple: outside
  # the ball the excess shrinks by (1 − ελ) per step. The fallback is AdamW
  # at the baseline's learning rate with `b2 = 0.999` (the default
  # `fo.adamw_fallback()` is AdamW at 3e-4 with `b2 = 0.95`).
  return fo.muon(
    args.muon_lr,
    weight_decay=args.weight_decay,
    dimension_numbers=dimension_numbers,
    exclude=EXCLUDE,
    fallback=fo.adamw_fallback(args.adam_lr, b2=0.999),
  )


def loss_fn(model, images, labels):
  logits = model(images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, logits


@nnx.jit
def train_step(model, optimizer, images, labels):
  (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
    model, images, labels
  )
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model, images, labels):
  return jnp.mean(jnp.argmax(model(images), -1) == labels)


def pure_params(model: nnx.Module) -> Any:
  """The model's parameters as a plain nested dict of arrays."""
  return _as_pure(nnx.state(model, nnx.Param))


def report_constraint(
  params: Any, args: argparse.Namespace
) -> dict[str, fo.diagnostics.ConstraintEntry]:
  """`constraint_report` for the kernels Muon trains (the optimizer's view)."""
  return fo.diagnostics.constraint_report(
    params,
    fo.lmo.spectral(),
    weight_decay=args.weight_decay,
    learning_rate=args.muon_lr,
    shape_scale='muon',
    dimension_numbers=dimension_numbers,
    exclude=EXCLUDE,
  )


def train(
  name: str, args: argparse.Namespace, data: dict[str, np.ndarray]
) -> dict[str, Any]:
  """Trains a fresh CNN with optimizer `name`."""
  model = CNN(args.channels, rngs=nnx.Rngs(args.seed))
  initial = pure_params(model)
  optimizer = nnx.Optimizer(model, make_optimizer(name, args), wrt=nnx.Param)
  rng = np.random.default_rng(args.seed + 1)
  n = len(data['train_labels'])
  losses = []
  start = time.perf_counter()
  for step in range(1, args.steps + 1):
    idx = rng.integers(0, n, size=args.batch)
    losses.append(
      float(
        train_step(
          model, optimizer, data['train_images'][idx], data['train_labels'][idx]
        )
      )
    )
    if step % max(1, args.steps // 4) == 0 or step == args.steps:
      acc = float(accuracy(model, data['test_images'], data['test_labels']))
      print(
        f'  {name:<6} step {step:>4}  loss {losses[-1]:.3f}'
        f'  test accuracy {acc:.1%}'
      )
  return {
    'optimizer': name,
    'losses': losses,
    'test_accuracy': float(
      accuracy(model, data['test_images'], data['test_labels'])
    ),
    'seconds': time.perf_counter() - start,
    'initial_params': initial,
    'params': pure_params(model),
  }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='few steps (seconds)')
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--train-size', type=int, default=8192)
  p.add_argument('--test-size', type=int, default=2048)
  p.add_argument('--noise', type=float, default=0.4)
  p.add_argument('--channels', type=int, default=16)
  p.add_argument('--muon-lr', type=float, default=0.02)
  p.add_argument('--adam-lr', type=float, default=3e-3)
  p.add_argument(
    '--weight-decay',
    type=float,
    default=1.0,
    help="Muon's decoupled decay λ on the kernels (radius s/λ)",
  )
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.steps is None:
    args.steps = 100 if args.quick else 500
  if args.weight_decay * args.muon_lr > 1:
    p.error('--muon-lr × --weight-decay must be <= 1')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the example; returns per-optimizer results and the reports."""
  args = parse_args(argv)
  rng = np.random.default_rng(args.seed)
  train_images, train_labels = make_images(rng, args.train_size, args.noise)
  test_images, test_labels = make_images(rng, args.test_size, args.noise)
  data = dict(
    train_images=train_images,
    train_labels=train_labels,
    test_images=test_images,
    test_labels=test_labels,
  )
  print(
    f'{len(CLASSES)} classes of 8x8 bars {CLASSES}, noise σ={args.noise};'
    f' {args.train_size} training and {args.test_size} test images;'
    f' chance accuracy {1 / len(CLASSES):.0%}.'
  )
  spec = fo.DimensionNumbers(reduction_axes=(0, 1, 2), output_axes=3)
  for name, kernel in pure_params(CNN(args.channels, rngs=nnx.Rngs(0))).items():
    if 'kernel' in kernel and kernel['kernel'].ndim == 4:
      shape = kernel['kernel'].shape
      print(
        f'  {name}/kernel {shape} is read as a matrix batch of shape'
        f' {spec.matrix_shape(shape)} (batch, fan_in, fan_out)'
      )

  results = {}
  for name in ('muon', 'adamw'):
    print(f'\nTraining with {name}:')
    results[name] = train(name, args, data)

  muon = results['muon']
  before = report_constraint(muon['initial_params'], args)
  after = report_constraint(muon['params'], args)
  lam, eps = args.weight_decay, args.muon_lr
  contraction = (1 - eps * lam) ** args.steps
  print(
    f'\nMuon with decoupled decay λ={lam}, ε={eps}: the kernels are driven'
    f' into the spectral ball σ₁ ≤ s/λ; outside it the excess shrinks by'
    f' (1 − ελ) = {1 - eps * lam:.2f} per step, so after {args.steps}'
    f' steps σ₁ ≤ s/λ + (σ₁⁰ − s/λ)·{contraction:.1e}.'
  )
  print(
    f'{"matrix":<14} {"radius s/λ":>10} {"σ₁ at init":>10}'
    f' {"bound":>8} {"σ₁ trained":>10}  in the ball'
  )
  bounds = {}
  for path, entry in after.items():
    initial = float(before[path].norm.max())
    bounds[path] = entry.radius + max(0.0, initial - entry.radius) * (
      contraction
    )
    print(
      f'{path:<14} {entry.radius:>10.3f} {initial:>10.3f}'
      f' {bounds[path]:>8.3f} {entry.norm.max():>10.3f}  {entry.holds}'
    )
  print(
    f'\n{"optimizer":<10} {"test accuracy":>13} {"final loss":>10}'
    f' {"seconds":>8}'
  )
  for r in results.values():
    tail = max(1, len(r['losses']) // 10)
    print(
      f'{r["optimizer"]:<10} {r["test_accuracy"]:>13.1%}'
      f' {np.mean(r["losses"][-tail:]):>10.3f} {r["seconds"]:>8.1f}'
    )
  return {
    'results': results,
    'constraint_before': before,
    'constraint_after': after,
    'bounds': bounds,
  }


if __name__ == '__main__':
  main()
