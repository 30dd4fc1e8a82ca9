"""Writes the example notebooks from their cell sources (and optionally runs them).

    python notebooks/build_notebooks.py              # write the .ipynb files, no outputs
    python notebooks/build_notebooks.py --execute    # write, run top to bottom, save outputs
    python notebooks/build_notebooks.py --execute least_squares   # just one

The cell sources live below, one function per notebook, so the notebooks are
reproducible and reviewable as plain Python.
`--execute` runs them with nbclient in this folder; set FANION_NOTEBOOK_SMALL=1
for the quick small-size run the tests use (the committed notebooks are run
without it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell
from nbformat.v4 import new_markdown_cell
from nbformat.v4 import new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = 'fanion-optax/fanion_optax'
NAMES = ('quickstart', 'implicit_constraint', 'least_squares',
         'custom_geometry')


def badge(name: str) -> str:
  url = (f'https://colab.research.google.com/github/{REPO}/blob/main/'
         f'notebooks/{name}.ipynb')
  return ('[![Open In Colab](https://colab.research.google.com/assets/'
          f'colab-badge.svg)]({url})')


SETUP = '''\
# Colab only: install the package (a no-op when run locally, where it is installed).
import importlib.util
import os

if importlib.util.find_spec("google.colab"):
  %pip install -q "fanion_optax @ git+https://github.com/fanion-optax/fanion_optax"

# On CPU, JAX's SVD and QR call OpenBLAS, whose worker threads fight XLA's own
# thread pool (SVDs get 10-100x slower); one OpenBLAS thread avoids that. It
# must be set before numpy or jax is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Small-size switch: FANION_NOTEBOOK_SMALL=1 shrinks every experiment so the
# whole notebook runs in about a minute on 2 CPU cores (the tests use it).
SMALL = os.environ.get("FANION_NOTEBOOK_SMALL", "0") == "1"
print("SMALL =", SMALL)'''

PLOT_SETUP = '''\
import matplotlib.pyplot as plt

plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "axes.grid": True,
                     "grid.alpha": 0.3})'''

REFERENCES = '''\
## References

- L. Chen, J. Li, Q. Liu, *Muon Optimizes Under Spectral Norm Constraints*, [arXiv:2506.15054](https://arxiv.org/abs/2506.15054).
- A. Kravatskiy, I. Kozyrev, N. Kozlov, A. Vinogradov, D. Merkulov, I. Oseledets, *The Ky Fan Norms and Beyond: Dual Norms and Combinations for Matrix Optimization*, [arXiv:2512.09678](https://arxiv.org/abs/2512.09678).
- L. Chen, B. Liu, K. Liang, Q. Liu, *Lion Secretly Solves Constrained Optimization, As Lyapunov Predicts*, [arXiv:2310.05898](https://arxiv.org/abs/2310.05898).
- K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
- N. Amsel, D. Persson, C. Musco, R. Gower, *The Polar Express*, [arXiv:2505.16932](https://arxiv.org/abs/2505.16932).
- K. Ahn et al., *Dion: Distributed Orthonormalized Updates*, [arXiv:2504.05295](https://arxiv.org/abs/2504.05295).
- J. Liu et al., *Muon is Scalable for LLM Training*, [arXiv:2502.16982](https://arxiv.org/abs/2502.16982).
- T. Pethick et al., *Training Deep Learning Models with Norm-Constrained LMOs* (Scion), [arXiv:2502.07529](https://arxiv.org/abs/2502.07529).'''


def _table_safe(line: str) -> str:
  """Inside $...$ on a table row, writes norm bars as \\Vert / \\vert.

  GitHub's markdown splits table cells at every `|`, even inside maths.
  """
  if not line.startswith('|'):
    return line
  parts = line.split('$')
  for i in range(1, len(parts), 2):
    parts[i] = parts[i].replace('\\|', '\\Vert ').replace('|', '\\vert ')
  return '$'.join(parts)


def md(text: str):
  lines = text.strip('\n').split('\n')
  return new_markdown_cell('\n'.join(_table_safe(x) for x in lines))


def code(text: str):
  return new_code_cell(text.strip('\n'))


# --------------------------------------------------------------------------
# 1. quickstart
# --------------------------------------------------------------------------


def quickstart():
  return [
      md(f'''
# fanion_optax quickstart

{badge('quickstart')}

`fanion_optax` ships **dual-norm (LMO) optimizers** — Muon, the Ky Fan
"Fanions", the F-/S- mixtures and the general Lion-𝒦 family — as plain
`optax.GradientTransformation`s. This notebook shows the update rule, how the
building blocks chain into optax, the named optimizers, and a small
Flax NNX training run comparing AdamW, Muon, F-Muon, S-Muon and Fanion-k.

**The idea.** For a norm $\\|\\cdot\\|$ with unit ball $\\mathcal B$ the *linear
minimisation oracle* is
$$\\operatorname{{lmo}}(G)=\\arg\\max_{{D\\in\\mathcal B}}\\langle G, D\\rangle,
\\qquad \\langle G,\\operatorname{{lmo}}(G)\\rangle=\\|G\\|_\\dagger\\ \\text{{(the dual norm)}},$$
and stepping along $-\\operatorname{{lmo}}(\\text{{momentum}})$ is steepest descent in
that norm. Every optimizer here is an instance of **Lion-𝒦** (Chen, Liu,
Liang, Liu 2023) with $\\nabla\\mathcal K=\\operatorname{{lmo}}$, a shape factor $s$ and
decoupled weight decay $\\lambda$:
$$N_t=\\beta_1M_t+(1-\\beta_1)g_t,\\qquad M_{{t+1}}=\\beta_2M_t+(1-\\beta_2)g_t,\\qquad
X_{{t+1}}=X_t-\\varepsilon_t\\big(s\\,\\operatorname{{lmo}}(N_t)+\\lambda X_t\\big).$$

| optimizer | $\\operatorname{{lmo}}(G)$, $G=U\\Sigma V^\\top$ | ball |
|---|---|---|
| `fo.muon` | $UV^\\top$ | $\\sigma_1\\le 1$ |
| `fo.fanion(k)` (`fo.neon` = k=1) | $U_kV_k^\\top$ | $\\max(\\sigma_1,\\sum_i\\sigma_i/k)\\le1$ |
| `fo.f_muon(α)` | $\\alpha UV^\\top+(1-\\alpha)G/\\|G\\|_F$ | spectral ⊕ Frobenius (Minkowski sum) |
| `fo.s_muon(α, η)` | $\\alpha UV^\\top+(1-\\alpha)\\,\\eta\\,\\mathrm{{sign}}(G)$ | spectral ⊕ $\\ell_\\infty$ |
| `fo.lion_k(lr, lmo)` | any LMO of `fo.lmo` | — |

Muon's Nesterov momentum $\\mu$ is $\\beta_1=\\mu^2$, $\\beta_2=\\mu$
(Jordan et al. 2024; Kravatskiy et al. 2025 for the Fanions and mixtures).
'''),
      code(SETUP),
      code('''
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fanion_optax as fo

print("jax", jax.__version__, "| optax", optax.__version__, "| fanion_optax",
      fo.__version__, "| device:", jax.devices()[0].platform)'''),
      code(PLOT_SETUP),
      md('''
## 1. One optimizer for the whole parameter tree

The named optimizers route every 2-D leaf (a `(fan_in, fan_out)` Flax kernel)
through the LMO and every other leaf (biases, scales) to `fallback=`, any
optax transformation. Its default, `fo.adamw_fallback()`, is AdamW at 3e-4
with $\\beta_2=0.95$ and float32 moments (Keller Jordan's reference: the
matrix learning rate is far too large for AdamW); pass
`fo.adamw_fallback(lr, ...)` to change it. `exclude=` sends matching paths
(embeddings, output heads) to the fallback too.
`fo.partition.resolve_dimension_numbers` shows the routing.
'''),
      code('''
key = jax.random.PRNGKey(0)
params = {"hidden": {"kernel": jax.random.normal(key, (64, 32)) / 8,
                     "bias": jnp.zeros(32)},
          "head": {"kernel": jax.random.normal(key, (32, 10)) / 6}}
routing = fo.partition.resolve_dimension_numbers(params, exclude=[r"head"])
for path, spec in jax.tree_util.tree_flatten_with_path(
    routing, is_leaf=lambda x: x is None)[0]:
  print(f"{fo.partition.path_name(path):16s} ->",
        "LMO" if spec is not None else "fallback (AdamW)")

tx = fo.muon(learning_rate=0.02, exclude=[r"head"], fallback=fo.adamw_fallback(3e-3))
state = tx.init(params)
grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
updates, state = tx.update(grads, state, params)
sv = jnp.linalg.svd(-updates["hidden"]["kernel"] / 0.02, compute_uv=False)
print(f"singular values of the Muon direction: min {sv.min():.3f}  max {sv.max():.3f}"
      "  (U Vᵀ up to the 5-step Polar Express approximation)")'''),
      md('''
## 2. Building blocks: chain them yourself

`fo.muon` is exactly this optax chain on matrix leaves — the Lion-𝒦
direction, the shape factor $s=\\sqrt{\\max(1, \\text{fan\\_out}/\\text{fan\\_in})}$,
decoupled decay and the learning rate:
'''),
      code('''
mu, lr, wd = 0.95, 0.02, 0.1
by_hand = optax.chain(
    fo.scale_by_lion_k(fo.lmo.spectral(), b1=mu**2, b2=mu),
    fo.scale_by_shape("muon"),
    fo.add_decayed_weights(wd),
    optax.scale_by_learning_rate(lr),
)
alias = fo.muon(lr, momentum=mu, weight_decay=wd)

w = {"w": jax.random.normal(key, (48, 96)) / 7}
p1, p2, s1, s2 = w, w, by_hand.init(w), alias.init(w)
for step in range(5):
  g = {"w": jax.random.normal(jax.random.PRNGKey(step), (48, 96))}
  u1, s1 = by_hand.update(g, s1, p1)
  u2, s2 = alias.update(g, s2, p2)
  p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
CHAIN_DIFF = float(jnp.abs(p1["w"] - p2["w"]).max())
print("max |chain − alias| after 5 steps:", CHAIN_DIFF)

# Lion is Lion-𝒦 with 𝒦 = ‖·‖₁ (lmo = sign) and no shape factor:
lion = fo.lion_k(1e-3, fo.lmo.sign(), b1=0.9, b2=0.99, shape_scale=None,
                 weight_decay=0.1)
ref = optax.lion(1e-3, b1=0.9, b2=0.99, weight_decay=0.1)
p1, p2, s1, s2 = w, w, lion.init(w), ref.init(w)
for step in range(5):
  g = {"w": jax.random.normal(jax.random.PRNGKey(step), (48, 96))}
  u1, s1 = lion.update(g, s1, p1)
  u2, s2 = ref.update(g, s2, p2)
  p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
LION_DIFF = float(jnp.abs(p1["w"] - p2["w"]).max())
print("max |fo.lion_k(sign) − optax.lion|:", LION_DIFF)'''),
      md('''
They compose with the rest of optax: clipping, schedules, and
`optax.inject_hyperparams` (integer structure arguments such as `k` go in
`static_args`).
'''),
      code('''
tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.inject_hyperparams(fo.fanion, static_args=("k",))(
        learning_rate=optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 100),
        k=4),
)
state = tx.init(w)
for step in range(3):
  g = {"w": jax.random.normal(jax.random.PRNGKey(step), (48, 96))}
  updates, state = tx.update(g, state, w)
  w_new = optax.apply_updates(w, updates)
print("learning rate now:", float(state[1].hyperparams["learning_rate"]))
print("rank of the Fanion-4 update:", int(jnp.linalg.matrix_rank(updates["w"])))'''),
      md('''
## 3. Train a Flax NNX MLP

A synthetic 10-class problem: inputs $x\\sim\\mathcal N(0, I_{32})$, labels from a
random teacher network, fresh samples every step (so train loss ≈ test loss).
The student is an MLP $32\\to256\\to256\\to10$; its output head goes to AdamW
(as in Jordan's Muon and the Fanions paper), the other kernels follow the LMO.
'''),
      code('''
D_IN, WIDTH, CLASSES = 32, 256, 10
STEPS = 40 if SMALL else 500
BATCH = 256

teacher_key = jax.random.PRNGKey(42)
t1, t2 = jax.random.split(teacher_key)
W_T1 = jax.random.normal(t1, (D_IN, 64)) * 2 / np.sqrt(D_IN)
W_T2 = jax.random.normal(t2, (64, CLASSES)) * 3 / np.sqrt(64)


def sample(key, n):
  x = jax.random.normal(key, (n, D_IN))
  return x, jnp.argmax(jnp.tanh(x @ W_T1) @ W_T2, axis=-1)


x_test, y_test = sample(jax.random.PRNGKey(123), 4096)
print("class frequencies:", np.bincount(np.asarray(y_test), minlength=CLASSES) / 4096)


class MLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.layer1 = nnx.Linear(D_IN, WIDTH, rngs=rngs)
    self.layer2 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.head = nnx.Linear(WIDTH, CLASSES, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.gelu(self.layer1(x))
    x = jax.nn.gelu(self.layer2(x))
    return self.head(x)


def loss_fn(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()'''),
      md('''
The optimizers. Learning rates: AdamW's usual 3e-3; 0.02 for the LMO methods
(Muon's customary value with the `"muon"` shape scale). The head and biases
use the baseline's AdamW (3e-3, $\\beta_2=0.999$) inside every LMO optimizer,
passed as `fallback=fo.adamw_fallback(...)`. Cosine decay throughout.
'''),
      code('''
def schedule(peak):
  return optax.cosine_decay_schedule(peak, STEPS)


common = dict(exclude=[r"^head/"], fallback=fo.adamw_fallback(schedule(3e-3), b2=0.999))
OPTIMIZERS = {
    "adamw": lambda: optax.adamw(schedule(3e-3), weight_decay=0.0),
    "muon": lambda: fo.muon(schedule(0.02), **common),
    "f_muon": lambda: fo.f_muon(schedule(0.02), alpha=0.5, **common),
    "s_muon": lambda: fo.s_muon(schedule(0.02), alpha=0.5, sign_scale=1e-3, **common),
    "fanion-8": lambda: fo.fanion(schedule(0.02), k=8, **common),
}


@nnx.jit
def train_step(model, optimizer, key):
  x, y = sample(key, BATCH)
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def evaluate(model):
  logits = model(x_test)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y_test)


def train(name):
  tx = OPTIMIZERS[name]()
  keys = jax.random.split(jax.random.PRNGKey(1), STEPS)
  # Compile on a throw-away copy (same tx object, so the cache is hit below).
  model = MLP(rngs=nnx.Rngs(0))
  train_step(model, nnx.Optimizer(model, tx, wrt=nnx.Param), keys[0]).block_until_ready()
  model = MLP(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  losses, start = [], time.perf_counter()
  for k in keys:
    losses.append(train_step(model, optimizer, k))
  losses = np.asarray(jax.device_get(losses))
  seconds = time.perf_counter() - start
  test_loss, test_acc = evaluate(model)
  return dict(curve=losses, test_loss=float(test_loss), test_acc=float(test_acc),
              ms_per_step=1000 * seconds / STEPS)


runs = {name: train(name) for name in OPTIMIZERS}
print(f"{'optimizer':10s} {'test loss':>9s} {'test acc':>9s} {'ms/step':>8s}")
for name, r in runs.items():
  print(f"{name:10s} {r['test_loss']:9.4f} {r['test_acc']:9.3f} {r['ms_per_step']:8.2f}")'''),
      code('''
fig, ax = plt.subplots(figsize=(7, 3.8))
window = max(1, STEPS // 25)
for name, r in runs.items():
  smooth = np.convolve(r["curve"], np.ones(window) / window, mode="valid")
  ax.plot(np.arange(len(smooth)) + window, smooth, label=name)
ax.set(xlabel="step", ylabel="train loss (smoothed)", yscale="log",
       title=f"MLP on a teacher task, {STEPS} steps, batch {BATCH}")
ax.legend()
plt.show()

RESULTS = {"chain_vs_alias": CHAIN_DIFF, "lion_k_vs_optax_lion": LION_DIFF,
           "runs": {name: {k: r[k] for k in ("test_loss", "test_acc", "ms_per_step")}
                    for name, r in runs.items()}}'''),
      md('''
**What to take away.** All LMO methods train this MLP with one untuned
learning rate. In the committed 500-step run Muon ends with the lowest
held-out loss (0.749), F-Muon and S-Muon are close (0.761, 0.763), AdamW is at
0.799 and Fanion-8 — whose updates have rank 8 — at 0.816; AdamW is faster in
the first few dozen steps. Timings on a shared CPU are noisy; the polar factor
of a $256\\times256$ matrix costs about a millisecond there, and on GPU/TPU the
Newton–Schulz matmuls are cheap (`compute_dtype=jnp.bfloat16` halves them
again). Fanion-$k$'s warm-started subspace iteration costs $O(mnk)$ per matrix.
The other notebooks go deeper:
`implicit_constraint.ipynb` (what weight decay does to the weights),
`least_squares.ipynb` (the Fanions paper's synthetic benchmark) and
`custom_geometry.ipynb` (build your own LMO).
'''),
      md(REFERENCES),
  ]

# --------------------------------------------------------------------------
# 2. implicit_constraint
# --------------------------------------------------------------------------


def implicit_constraint():
  return [
      md(f"""
# Weight decay is a norm constraint: Muon, Fanion-k and F-Muon

{badge('implicit_constraint')}

The seed result of this package (L. Chen, J. Li, Q. Liu, *Muon Optimizes Under
Spectral Norm Constraints*, arXiv:2506.15054; in general form Chen, Liu,
Liang, Liu, arXiv:2310.05898): with decoupled weight decay, an LMO optimizer
does not merely *regularise* the weights — it **confines them to the ball of
its own norm, of radius $s/\\lambda$**.

**Why.** Write the step as $X_{{t+1}}=(1-\\varepsilon\\lambda)X_t-\\varepsilon s\\,D_t$ with
$D_t=\\operatorname{{lmo}}(N_t)$. Every LMO output lies in the unit ball,
$\\|D_t\\|\\le1$, so by the triangle inequality (for $\\varepsilon\\lambda\\le1$)
$$\\|X_{{t+1}}\\|\\le(1-\\varepsilon\\lambda)\\|X_t\\|+\\varepsilon s
\\quad\\Longleftrightarrow\\quad
\\|X_{{t+1}}\\|-\\tfrac{{s}}{{\\lambda}}\\le(1-\\varepsilon\\lambda)\\Big(\\|X_t\\|-\\tfrac{{s}}{{\\lambda}}\\Big).$$
So the ball $\\{{\\|X\\|\\le s/\\lambda\\}}$ is invariant, and outside it the excess
shrinks at least geometrically, by $1-\\varepsilon\\lambda$ per step. Which norm?
The one whose ball the LMO maximises over:

| optimizer | ball norm $\\|X\\|$ | constraint |
|---|---|---|
| Muon | $\\sigma_1(X)$ | $\\sigma_1\\le s/\\lambda$ |
| Fanion-$k$ | $\\max(\\sigma_1, \\sum_i\\sigma_i/k)$ | also a *nuclear-norm* budget $\\sum_i\\sigma_i\\le ks/\\lambda$ |
| F-Muon ($\\alpha$) | gauge of $\\alpha\\,\\mathcal B_{{\\sigma_1}}+(1-\\alpha)\\,\\mathcal B_F$ | see below |
| Lion / signSGD | $\\max_{{ij}}|X_{{ij}}|/\\eta$ | $\\max|X_{{ij}}|\\le\\eta s/\\lambda$ |

Chen, Li & Liu show more: Muon with decay converges to a KKT point of
$\\min f(X)$ s.t. $\\sigma_1(X)\\le s/\\lambda$ (Lion-𝒦 minimises
$f(X)+\\mathcal K^*(\\lambda X/s)$, and for $\\mathcal K=\\|\\cdot\\|_\\dagger$ the
conjugate $\\mathcal K^*$ is the indicator of the unit ball).

**Experiment.** A deep linear network $x\\mapsto xW_1W_2W_3$ ($64\\times64$
matrices) fits a target map whose singular values go up to 16, while each layer
is allowed $\\sigma_1\\le s/\\lambda=2$ — so the constraint must bind. The layers
start *outside* the ball (orthogonal, all singular values 3), so we also see
the geometric contraction. `fo.diagnostics.constraint_report` gives the norms
and the verdict.
"""),
      code(SETUP),
      code("""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fanion_optax as fo
"""),
      code(PLOT_SETUP),
      code("""
D, DEPTH, K = 64, 3, 8
LAMBDA, LR = 0.5, 0.04            # radius s/λ = 2 (s = 1 for square layers)
STEPS = 150 if SMALL else 800
EVERY = 5                         # record the spectra every EVERY steps
INIT = 3.0                        # every singular value of W_i(0) is 3
RADIUS = 1.0 / LAMBDA
print(f"radius s/λ = {RADIUS},  contraction 1 − ελ = {1 - LR * LAMBDA}")

ku, kv = jax.random.split(jax.random.PRNGKey(0))
U, _ = jnp.linalg.qr(jax.random.normal(ku, (D, D)))
V, _ = jnp.linalg.qr(jax.random.normal(kv, (D, D)))
TARGET = (U * jnp.linspace(16.0, 0.5, D)) @ V.T


class DeepLinear(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    init = nnx.initializers.orthogonal(scale=INIT)
    self.layers = nnx.List([nnx.Linear(D, D, use_bias=False, kernel_init=init, rngs=rngs)
                            for _ in range(DEPTH)])

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


def loss_fn(model, x):
  return jnp.mean((model(x) - x @ TARGET) ** 2)
"""),
      md("""
**The F-Muon ball.** The mixture's ball is the Minkowski sum
$\\alpha\\mathcal B_{\\sigma_1}+(1-\\alpha)\\mathcal B_F$; its norm is an infimal
convolution with no closed form, so `fo.lmo.mix(...).norm` is not defined.
Both balls are unitarily invariant, so the sum is too, and its gauge depends
only on the singular values: $X\\in t(\\alpha\\mathcal B_{\\sigma_1}+(1-\\alpha)\\mathcal B_F)$
iff $\\sigma=\\alpha a+(1-\\alpha)b$ with $\\|a\\|_\\infty\\le t$, $\\|b\\|_2\\le t$, i.e. iff
$$\\big\\|(\\sigma-\\alpha t)_+\\big\\|_2\\le(1-\\alpha)\\,t .$$
The left side decreases and the right side increases in $t$, so the gauge is a
1-D root, found by bisection. Since $\\|b\\|_2\\ge\\|b\\|_\\infty$, it bounds $\\sigma_1$
from above: the F-Muon constraint implies Muon's.
"""),
      code("""
def ky_fan_ball(sv, k=K):
  return np.maximum(sv[..., 0], sv.sum(-1) / k)


def mixture_gauge(sv, alpha=0.5, iters=60):
  # The gauge of α·B_σ1 + (1−α)·B_F at singular values sv (..., r), by bisection.
  lo, hi = np.zeros(sv.shape[:-1]), sv[..., 0] / alpha
  for _ in range(iters):
    t = (lo + hi) / 2
    inside = np.linalg.norm(np.maximum(sv - alpha * t[..., None], 0), axis=-1) <= (1 - alpha) * t
    lo, hi = np.where(inside, lo, t), np.where(inside, t, hi)
  return hi


RUNS = {  # name: (optimizer, ball norm on singular values, the LMO for constraint_report)
    "muon, λ=0": (fo.muon(LR, polar_method="svd"), lambda sv: sv[..., 0], fo.lmo.spectral()),
    "muon": (fo.muon(LR, weight_decay=LAMBDA, polar_method="svd"), lambda sv: sv[..., 0],
             fo.lmo.spectral()),
    "muon, Polar Express": (fo.muon(LR, weight_decay=LAMBDA), lambda sv: sv[..., 0],
                            fo.lmo.spectral()),
    f"fanion-{K}": (fo.fanion(LR, k=K, weight_decay=LAMBDA), ky_fan_ball, fo.lmo.ky_fan(K)),
    "f_muon": (fo.f_muon(LR, weight_decay=LAMBDA, polar_method="svd"), mixture_gauge,
               fo.lmo.spectral()),
}
"""),
      md("""
Four runs use an exact LMO (`polar_method="svd"`; Fanion's top-$k$ pairs come from a
Rayleigh–Ritz SVD, exact on its subspace). One uses Muon's default 5-step
**Polar Express** iteration: its output's singular values are not exactly 1
but spread up to about 1.12 (the approximation equioscillates around 1), so
$\\|D_t\\|$ can reach about 1.12 and the argument above only guarantees the
radius $1.12\\,s/\\lambda$.
"""),
      code("""
@nnx.jit
def train_step(model, optimizer, key):
  x = jax.random.normal(key, (256, D))
  loss, grads = nnx.value_and_grad(loss_fn)(model, x)
  optimizer.update(model, grads)
  return loss


def kernels(model):
  return np.stack([np.asarray(layer.kernel[...]) for layer in model.layers])


history = {}
for name, (tx, ball, _) in RUNS.items():
  model = DeepLinear(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  keys = jax.random.split(jax.random.PRNGKey(1), STEPS)
  steps, spectra, losses = [0], [np.linalg.svd(kernels(model), compute_uv=False)], []
  for t, key in enumerate(keys, start=1):
    losses.append(float(train_step(model, optimizer, key)))
    if t % EVERY == 0 or t == STEPS:
      steps.append(t)
      spectra.append(np.linalg.svd(kernels(model), compute_uv=False))
  spectra = np.asarray(spectra)                 # (records, layers, D)
  history[name] = dict(steps=np.asarray(steps), spectra=spectra,
                       ratio=ball(spectra) / RADIUS, loss=np.asarray(losses),
                       params=nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  print(f"{name:20s} final loss {np.mean(losses[-10:]):8.3f}   "
        f"final ball norm / radius per layer: {np.round(history[name]['ratio'][-1], 3)}")
"""),
      md("""
`fo.diagnostics.constraint_report` checks the final weights of each run
against $\\|X\\|\\le s/\\lambda$ (its `rtol` is $10^{-3}$); for F-Muon it can
only check the implied $\\sigma_1\\le s/\\lambda$ (we computed the exact
gauge above).
"""),
      code("""
for name, (_, _, lmo) in RUNS.items():
  decay = 0.0 if "λ=0" in name else LAMBDA
  report = fo.diagnostics.constraint_report(
      history[name]["params"], lmo, weight_decay=decay, learning_rate=LR)
  for path, entry in report.items():
    print(f"{name:20s} {path:16s} norm {entry.norm[0]:7.3f}  radius {entry.radius:5.2f}"
          f"  holds={entry.holds}  contraction={entry.contraction}")
"""),
      md("""
### Norm / radius over training

Solid: ball norm divided by the radius $s/\\lambda$, per layer. Dashed black: the
guaranteed envelope $1+(r_0-1)(1-\\varepsilon\\lambda)^t$ (with $r_0$ the initial
ratio). Without decay (grey, first panel) Muon's spectral norm grows well past
2 — the product $W_1W_2W_3$ needs $\\sigma_1\\approx16$ — while with decay it is
pinned at the radius.
"""),
      code("""
envelope = lambda r0, t: 1 + (r0 - 1) * (1 - LR * LAMBDA) ** t
names = [n for n in RUNS if n != "muon, λ=0"]
fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.2), sharey=True)
for ax, name in zip(axes, names):
  h = history[name]
  for layer in range(DEPTH):
    ax.plot(h["steps"], h["ratio"][:, layer], label=f"W{layer + 1}")
  r0 = h["ratio"][0].max()
  ax.plot(h["steps"], envelope(r0, h["steps"]), "k--", lw=1, label="envelope")
  if name == "muon":
    free = history["muon, λ=0"]
    ax.plot(free["steps"], free["ratio"].max(1), color="grey", ls=":", label="λ = 0")
  ax.axhline(1.0, color="r", lw=1)
  ax.set(title=name, xlabel="step", yscale="log")
  ax.legend(fontsize=7)
axes[0].set_ylabel("ball norm / (s/λ)")
fig.tight_layout()
plt.show()
"""),
      code("""
fig, ax = plt.subplots(figsize=(6, 3.2))
for name, h in history.items():
  ax.plot(np.arange(1, STEPS + 1), h["loss"], label=name, lw=1)
ax.set(xlabel="step", ylabel="train loss", yscale="log",
       title="the constraint costs loss: W1 W2 W3 cannot reach σ = 16")
ax.legend(fontsize=8)
plt.show()
"""),
      md("""
### Singular values before and after

Layer $W_2$ starts with every singular value at 3 (red line: the radius
$s/\\lambda=2$). Muon's constraint is on $\\sigma_1$ only, so the directions the
target needs pile up *at* the radius. Fanion-8's ball is far smaller — a
nuclear-norm budget $\\sum_i\\sigma_i\\le k\\,s/\\lambda=16$ — and its iterates
become **low rank**. F-Muon sits in between: only a few singular values may
exceed $\\alpha\\,s/\\lambda=1$.
"""),
      code("""
fig, axes = plt.subplots(1, len(history), figsize=(2.9 * len(history), 2.8), sharey=True)
bins = np.linspace(0, max(h["spectra"][:, 1].max() for h in history.values()) * 1.05, 50)
for ax, (name, h) in zip(axes, history.items()):
  ax.hist(h["spectra"][0, 1], bins=bins, alpha=0.5, label="start")
  ax.hist(h["spectra"][-1, 1], bins=bins, alpha=0.7, label=f"step {STEPS}")
  ax.axvline(RADIUS, color="r", lw=1)
  ax.set(title=name, xlabel="σ of W2")
axes[0].set_ylabel("count")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
      code("""
RESULTS = {}
for name, h in history.items():
  if name == "muon, λ=0":  # no decay, no ball: report the loss and rank only
    RESULTS[name] = {"final_loss": float(np.mean(h["loss"][-10:])),
                     "final_sigma1": float(h["spectra"][-1, :, 0].max()),
                     "rank_W2": int((h["spectra"][-1, 1] > 1e-3 * RADIUS).sum())}
    continue
  inside = np.flatnonzero((h["ratio"] <= 1 + 1e-3).all(axis=1))
  RESULTS[name] = {
      "final_loss": float(np.mean(h["loss"][-10:])),
      "final_ratio": float(h["ratio"][-1].max()),
      "first_step_inside": int(h["steps"][inside[0]]) if inside.size else None,
      "max_ratio_after_entry": float(h["ratio"][inside[0]:].max()) if inside.size else None,
      "max_ratio_over_envelope": float((h["ratio"] / envelope(h["ratio"][0], h["steps"][:, None])).max()),
      "rank_W2": int((h["spectra"][-1, 1] > 1e-3 * RADIUS).sum()),
  }
for name, r in RESULTS.items():
  print(f"{name:20s}", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
"""),
      md("""
**Reading the numbers** (the committed run: 800 steps). With an exact LMO the
ratio never exceeds the envelope (`max_ratio_over_envelope` = 1.0) and, once
inside the ball, stays there (`max_ratio_after_entry` ≤ 1.001, the tolerance
used to call a matrix "inside"); Muon and F-Muon are pinned at the radius
(ratio 0.999), Fanion-8 enters last (around step 435: it started 12× outside
its much smaller ball). The Polar Express run settles about 6% *above* the
radius — the overshoot of $\\sigma_1(D_t)$ above 1. `constraint_report`
still says `holds=True`, because its default tolerance for an approximate LMO
is widened by that overshoot (`fo.singular_value_bound("polar_express", 5)`
≈ 1.12); pass `rtol=1e-3` to check the exact radius, and use `polar_steps=8`
or `polar_method="svd"` where the exact radius matters. Fanion-8's $W_2$ ends with
rank exactly 8: the implicit nuclear-norm budget is a strong low-rank prior,
and it costs loss here (as does F-Muon's smaller ball).
"""),
      md(REFERENCES),
  ]

# --------------------------------------------------------------------------
# 3. least_squares
# --------------------------------------------------------------------------


def least_squares():
  return [
      md(f"""
# The Fanions paper's synthetic least-squares benchmark

{badge('least_squares')}

Kravatskiy et al. (*The Ky Fan Norms and Beyond*, arXiv:2512.09678) compare
dual-norm optimizers on a convex quadratic in a matrix variable:
$$F(X)=\\tfrac12\\langle X,\\,MXN\\rangle,\\qquad \\nabla F(X)=MXN,$$
$$M=Q_1\\operatorname{{diag}}(\\lambda)Q_1^\\top,\\quad N=Q_2\\operatorname{{diag}}(\\mu)Q_2^\\top,\\quad
\\lambda_i,\\mu_j\\sim\\mathcal U(0,1),\\quad Q_{{1,2}}=\\mathrm{{qr}}(\\text{{Gaussian}}),\\quad X_0=0.1\\cdot\\text{{randn}}.$$
In the eigenbases, $F=\\tfrac12\\sum_{{ij}}\\lambda_i\\mu_j Y_{{ij}}^2$ with $Y=Q_1^\\top XQ_2$: a
quadratic with condition number in the thousands and minimum $F^\\star=0$ at
$X=0$. The metric is the number of iterations to reach $F<10^{{-3}}$ with a
**constant** learning rate, tuned per method over a grid (float32, full
gradients).

Why constant-step LMO methods stall: every step has a fixed length in its norm
($\\|\\varepsilon\\,\\mathrm{{lmo}}\\|=\\varepsilon$), so near the minimum the iterates
oscillate at a level set by $\\varepsilon$; the target is reached only if that
floor is below $10^{{-3}}$. The largest learning rate whose floor clears the
target is the fastest, and the winner is the geometry that gets there in the
fewest steps. The paper finds that **F-Muon and S-Muon** ($\\alpha=0.5$,
$\\eta=0.01$) beat Muon, and that **low-rank Fanions are slow** (a rank-$k$ step
moves only $k$ singular directions).

Methods (all Lion-𝒦 with Nesterov momentum $\\mu$: $\\beta_1=\\mu^2$, $\\beta_2=\\mu$;
no shape factor, no weight decay):

| method | direction | call |
|---|---|---|
| Muon | $UV^\\top$ | `fo.muon(lr, momentum=μ, shape_scale=None)` |
| F-Muon | $\\tfrac12UV^\\top+\\tfrac12G/\\|G\\|_F$ | `fo.f_muon(lr, alpha=0.5, ...)` |
| S-Muon | $\\tfrac12UV^\\top+\\tfrac12\\cdot0.01\\,\\mathrm{{sign}}(G)$ | `fo.s_muon(lr, alpha=0.5, sign_scale=0.01, ...)` |
| NSGD | $G/\\|G\\|_F$ | `fo.lion_k(lr, fo.lmo.frobenius(), μ², μ, ...)` |
| signSGD | $\\mathrm{{sign}}(G)$ | `fo.lion_k(lr, fo.lmo.sign(), μ², μ, ...)` |
| Fanion-$k$ | $U_kV_k^\\top$ | `fo.fanion(lr, k, ...)` (Neon: $k=1$) |
"""),
      code(SETUP),
      code("""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import fanion_optax as fo
"""),
      code(PLOT_SETUP),
      md("""
## Sizes

The paper's size is $500\\times500$ with up to 5000 iterations. Every iteration
of a spectral method costs a polar factor (five $n^3$ Newton–Schulz steps) plus
the gradient, and the grid search runs hundreds of configurations, which takes
hours on a laptop CPU. This notebook therefore defaults to a **moderate size,
$n=128$** (the committed outputs; a few minutes on 2 CPU cores).
`FANION_NOTEBOOK_FULL=1` runs the paper's set-up (500×500, 5000 iterations,
the full momentum grid {0.1, …, 0.9, 0.95}) — use a GPU for it;
`FANION_NOTEBOOK_SMALL=1` runs a $48\\times48$ toy in seconds (for tests).
Because the floor argument above makes the best learning rate depend on $n$,
iteration counts are not comparable across sizes; the *ranking* is what to
compare with the paper.
"""),
      code("""
FULL = os.environ.get("FANION_NOTEBOOK_FULL", "0") == "1"
SQRT2 = np.sqrt(2.0)
if SMALL:
  N, T = 48, 2000
  LR_GRID = 0.01 * SQRT2 ** np.arange(6)            # 0.01 ... 0.057
  MOMENTA = (0.5, 0.9)
elif FULL:
  N, T = 500, 5000
  LR_GRID = 0.00125 * SQRT2 ** np.arange(11)        # 0.00125 ... 0.04
  MOMENTA = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
else:
  N, T = 128, 5000
  LR_GRID = 0.0025 * SQRT2 ** np.arange(9)          # 0.0025 ... 0.04
  MOMENTA = (0.1, 0.5, 0.9, 0.95)
TARGET = 1e-3
FANION_KS = (1, N // 16, N // 4)
METHODS = ["Muon", "F-Muon", "S-Muon", "NSGD", "signSGD"] + [f"Fanion-{k}" for k in FANION_KS]
# Steps of equal learning rate have different lengths: ‖UVᵀ‖_F = √n, ‖G/‖G‖_F‖_F = 1,
# ‖sign(G)‖_F = n. NSGD's and signSGD's grids are shifted to the same Frobenius length.
LR_SCALE = {"NSGD": np.sqrt(N), "signSGD": 1 / np.sqrt(N)}
print(f"n = {N}, T = {T}, {len(LR_GRID)} learning rates x {len(MOMENTA)} momenta, methods: {METHODS}")
"""),
      code("""
def make_problem(n, seed=0):
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(seed), 5)
  q1, _ = jnp.linalg.qr(jax.random.normal(k1, (n, n)))
  q2, _ = jnp.linalg.qr(jax.random.normal(k2, (n, n)))
  lam, mu = jax.random.uniform(k3, (n,)), jax.random.uniform(k4, (n,))
  return (q1 * lam) @ q1.T, (q2 * mu) @ q2.T, 0.1 * jax.random.normal(k5, (n, n))


M, NMAT, X0 = make_problem(N)


def objective(x):
  return 0.5 * jnp.sum(x * (M @ x @ NMAT))


print(f"F(X0) = {float(objective(X0)):.2f}")


def make_optimizer(name, lr, momentum):
  common = dict(momentum=momentum, shape_scale=None)
  lion = dict(b1=momentum * momentum, b2=momentum, shape_scale=None)
  if name == "Muon":
    return fo.muon(lr, **common)
  if name == "F-Muon":
    return fo.f_muon(lr, alpha=0.5, **common)
  if name == "S-Muon":
    return fo.s_muon(lr, alpha=0.5, sign_scale=0.01, **common)
  if name == "NSGD":
    return fo.lion_k(lr, fo.lmo.frobenius(), **lion)
  if name == "signSGD":
    return fo.lion_k(lr, fo.lmo.sign(), **lion)
  if name.startswith("Fanion-"):
    return fo.fanion(lr, k=int(name.split("-")[1]), **common)
  raise ValueError(name)
"""),
      md("""
One run is a `jax.lax.while_loop` that stops at the target, at divergence, or
at `cap` iterations, and records $F$ after every step. The learning rate and
momentum are traced arguments, so each method compiles once. The parameters are
a one-leaf dict `{"X": X}`.

Tuning: for each method we sweep the grid from the smallest learning rate up;
once some configuration has reached the target in $t^\\star$ iterations, later
runs are capped at $t^\\star$ (they can only tie or win), which keeps the search
cheap without changing its result.
"""),
      code("""
@functools.partial(jax.jit, static_argnames="name")
def run(name, lr, momentum, cap):
  tx = make_optimizer(name, lr, momentum)

  def cond(carry):
    t, _, _, f, _ = carry
    return (t < cap) & (f >= TARGET) & jnp.isfinite(f)

  def body(carry):
    t, x, state, _, history = carry
    updates, state = tx.update({"X": M @ x @ NMAT}, state, {"X": x})
    x = x + updates["X"]
    f = objective(x)
    return t + 1, x, state, f, history.at[t].set(f)

  carry = (jnp.int32(0), X0, tx.init({"X": X0}), objective(X0), jnp.full(T, jnp.nan))
  t, _, _, f, history = jax.lax.while_loop(cond, body, carry)
  return t, f, history


def tune(name):
  best, start, runs = None, time.perf_counter(), 0
  for lr in LR_GRID * LR_SCALE.get(name, 1.0):
    for momentum in MOMENTA:
      cap = best["iters"] if best and best["reached"] else T
      t, f, history = run(name, float(lr), float(momentum), cap)
      t, f, runs = int(t), float(f), runs + 1
      reached = f < TARGET
      if (best is None or (reached and (not best["reached"] or t < best["iters"]))
          or (not reached and not best["reached"] and f < best["final_F"])):
        best = dict(lr=float(lr), momentum=momentum, iters=t, reached=reached,
                    final_F=f, history=np.asarray(history[:t]))
  best["seconds"], best["runs"] = time.perf_counter() - start, runs
  lrs = LR_GRID * LR_SCALE.get(name, 1.0)
  best["lr_at_edge"] = bool(np.isclose(best["lr"], lrs[0]) or np.isclose(best["lr"], lrs[-1]))
  return best


results = {}
for name in METHODS:
  results[name] = r = tune(name)
  print(f"{name:11s} {'iters' if r['reached'] else 'not reached, final F'} "
        f"{r['iters'] if r['reached'] else round(r['final_F'], 5)}  "
        f"(lr {r['lr']:.4g}, momentum {r['momentum']}; {r['runs']} runs in {r['seconds']:.1f} s)")
"""),
      md("## Iterations to reach $F<10^{-3}$"),
      code("""
order = sorted(METHODS, key=lambda n: (not results[n]["reached"], results[n]["iters"]))
print(f"n = {N}, target F < {TARGET}, T = {T}\\n")
print(f"{'method':11s} {'iterations':>10s} {'lr':>10s} {'momentum':>9s}")
for name in order:
  r = results[name]
  iters = f"{r['iters']}" if r["reached"] else f"> {T}"
  edge = "*" if r["lr_at_edge"] else " "
  print(f"{name:11s} {iters:>10s} {r['lr']:9.4g}{edge} {r['momentum']:9}")
print("\\n* best learning rate at the edge of the grid")
"""),
      code("""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
for name in order:
  h = results[name]["history"]
  ax1.plot(np.arange(1, len(h) + 1), h, label=name, lw=1.2)
ax1.axhline(TARGET, color="k", ls="--", lw=1)
ax1.set(xscale="log", yscale="log", xlabel="iteration", ylabel="F(X)",
        title=f"best configuration per method, n = {N}")
ax1.legend(fontsize=8, ncol=2)

ks = list(FANION_KS) + [N]
its = [results[f"Fanion-{k}"]["iters"] for k in FANION_KS] + [results["Muon"]["iters"]]
reached = [results[f"Fanion-{k}"]["reached"] for k in FANION_KS] + [results["Muon"]["reached"]]
ax2.plot(ks, its, "-", color="C0")
for k, it, ok in zip(ks, its, reached):
  ax2.plot(k, it, "o", color="C0", mfc="C0" if ok else "white")
  ax2.annotate(f"{it}" if ok else f">{T}", (k, it), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax2.set(xscale="log", yscale="log", xlabel="k  (k = n is Muon)", ylabel="iterations to target",
        title="Fanion-k")
fig.tight_layout()
plt.show()

RESULTS = {name: {"iters": r["iters"] if r["reached"] else None, "lr": r["lr"],
                  "momentum": r["momentum"]} for name, r in results.items()}
"""),
      md("""
**Results at $n=128$** (the committed run; everything is seeded): F-Muon is
fastest (230 iterations), then S-Muon (233) and NSGD (234), all ahead of Muon
(268); Fanion-32 needs 462, signSGD 531, Fanion-8 1734, and Neon (Fanion-1)
does not reach the target in 5000 iterations (best final $F\\approx0.02$). This matches the paper's
two qualitative findings — the F-/S- mixtures beat Muon, and small-$k$ Fanions
are slow, converging to Muon's count as $k\\to n$ — and adds that plain
normalised SGD is competitive on this problem (it is a quadratic, where the
Frobenius geometry is natural).

Two caveats. The counts depend on the grid: the fastest learning rate is the
largest one below the stalling threshold, so a finer grid shifts every count
by up to a grid step ($\\sqrt2$ here); an asterisk marks a best learning rate at
the edge of its grid. And the Fanions use the library's default warm-started
subspace iteration (two block power steps per iteration), not an exact SVD.
"""),
      md(REFERENCES),
  ]

# --------------------------------------------------------------------------
# 4. custom_geometry
# --------------------------------------------------------------------------


def custom_geometry():
  return [
      md(f"""
# Build your own geometry: mixtures, spectral functions, per-layer norms

{badge('custom_geometry')}

An optimizer in `fanion_optax` is *a norm*: pick its unit ball $\\mathcal B$, and
Lion-𝒦 steps along $-\\operatorname{{lmo}}(N_t)$ with
$\\operatorname{{lmo}}(G)=\\arg\\max_{{D\\in\\mathcal B}}\\langle G,D\\rangle$ (Chen, Liu, Liang, Liu,
arXiv:2310.05898). Everything an optimizer needs from the norm is the
`fo.lmo.LMO` interface:

| method | meaning |
|---|---|
| `lmo(g)` | the direction, for a matrix or a batch `(..., m, n)` |
| `lmo.dual_norm(g)` | $\\|g\\|_\\dagger=\\langle g,\\operatorname{{lmo}}(g)\\rangle$ |
| `lmo.norm(x)` | the ball's norm (where it has a closed form) — used by `fo.diagnostics` |
| `lmo.init(shape)`, `lmo.update(g, state)` | warm-started state (Ky Fan subspace), `None` if stateless |

This notebook builds new geometries four ways:
1. **mixtures** (Minkowski sums of balls, Kravatskiy et al., arXiv:2512.09678):
   $\\operatorname{{lmo}}=\\sum_i\\alpha_i\\operatorname{{lmo}}_i$, $\\|\\cdot\\|_\\dagger=\\sum_i\\alpha_i\\|\\cdot\\|_{{\\dagger i}}$;
2. **spectral functions** $\\mathcal K(X)=\\sum_ih(\\sigma_i)$ with
   $\\nabla\\mathcal K(X)=U\\operatorname{{diag}}(h'(\\sigma))V^\\top$ — Schatten-$p$, a
   Huber-smoothed nuclear norm, or your own $h'$;
3. **a new LMO class** (a row-norm ball);
4. **a different norm per layer**, as in Scion (Pethick et al., arXiv:2502.07529).
"""),
      code(SETUP),
      code("""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fanion_optax as fo
"""),
      code(PLOT_SETUP),
      md("""
## 1. The identity $\\langle g,\\operatorname{lmo}(g)\\rangle=\\|g\\|_\\dagger$, checked

A test matrix $g$ ($48\\times80$) with singular values $\\sigma_i=1/i$. For an exact
LMO the inner product equals the dual norm and the direction lies on the unit
sphere of the ball's norm. The default Polar Express and the warm-startable
subspace iteration are approximations: the gap is what they lose
(`fo.lmo_gap` measures it for the polar factor).
"""),
      code("""
m, n = 48, 80
ku, kv = jax.random.split(jax.random.PRNGKey(0))
U, _ = jnp.linalg.qr(jax.random.normal(ku, (m, m)))
V, _ = jnp.linalg.qr(jax.random.normal(kv, (n, m)))
SIGMA = 1.0 / jnp.arange(1, m + 1)
g = (U * SIGMA) @ V.T

three_term = fo.lmo.mix((0.5, fo.lmo.ky_fan(8, top_k_method="svd")), (0.3, fo.lmo.frobenius()),
                        (0.2, fo.lmo.sign(1e-2)))
CATALOGUE = {
    "spectral (svd)": fo.lmo.spectral(polar_method="svd"),
    "spectral (Polar Express, 5)": fo.lmo.spectral(),
    "spectral (Newton–Schulz, 5)": fo.lmo.spectral(polar_method="newton_schulz"),
    "ky_fan(8) (svd)": fo.lmo.ky_fan(8, top_k_method="svd"),
    "ky_fan(8) (subspace, cold)": fo.lmo.ky_fan(8),
    "frobenius": fo.lmo.frobenius(),
    "sign(0.01)": fo.lmo.sign(0.01),
    "F-Muon mix (svd)": fo.lmo.mix((0.5, fo.lmo.spectral(polar_method="svd")), (0.5, fo.lmo.frobenius())),
    "S-Muon mix (svd)": fo.lmo.mix((0.5, fo.lmo.spectral(polar_method="svd")), (0.5, fo.lmo.sign(0.01))),
    "3-term mix": three_term,
    "schatten(3)": fo.lmo.schatten(3.0),
}

print(f"{'LMO':28s} {'<g, lmo(g)>':>12s} {'dual_norm(g)':>12s} {'rel. gap':>9s} {'norm(lmo(g))':>13s}")
CHECKS = {}
for name, lmo in CATALOGUE.items():
  d = lmo(g)
  inner, dual = float(jnp.sum(g * d)), float(lmo.dual_norm(g))
  try:
    ball = f"{float(lmo.norm(d)):13.4f}"
  except NotImplementedError:
    ball = f"{'(mixture)':>13s}"
  CHECKS[name] = (dual - inner) / dual
  print(f"{name:28s} {inner:12.5f} {dual:12.5f} {CHECKS[name]:9.1e} {ball}")

print()
for name in ("spectral (svd)", "spectral (Polar Express, 5)", "spectral (Newton–Schulz, 5)"):
  print(f"fo.lmo_gap for {name:28s} {float(fo.lmo_gap(g, CATALOGUE[name](g))):.4f}")
"""),
      md("""
Exact oracles agree to float32 rounding (the cold-started subspace iteration
too, on this well-separated spectrum; inside an optimizer it is warm-started
from the previous step). The two polar approximations are not in the unit
ball: their largest singular value is about 1.12–1.13, so Polar Express even
*exceeds* the nuclear norm in $\\langle g,D\\rangle$ while Newton–Schulz falls
short of it. `fo.lmo_gap` rescales the direction into the ball first
($1-\\langle G,O\\rangle/(\\|G\\|_*\\sigma_1(O))$) and is the fair comparison: it is
dominated here by the overshoot $\\sigma_1(O)>1$.

Two more properties every LMO has: it is **odd** and **positively homogeneous of
degree 0** (only the direction of $g$ matters):
"""),
      code("""
for name, lmo in CATALOGUE.items():
  d = lmo(g)
  scale = float(jnp.abs(lmo(3.7 * g) - d).max())
  odd = float(jnp.abs(lmo(-g) + d).max())
  print(f"{name:28s} |lmo(3.7 g) − lmo(g)| = {scale:.1e}   |lmo(−g) + lmo(g)| = {odd:.1e}")
"""),
      md("""
## 2. Spectral functions, and a custom $h'$

`fo.lmo.spectral_fn(h_prime, h=...)` builds $\\nabla\\mathcal K$ for
$\\mathcal K(X)=\\sum_ih(\\sigma_i)$ from an SVD. Lion-𝒦 with such a $\\mathcal K$
minimises $f(X)+\\mathcal K^*(\\lambda X)/\\lambda$ (Chen, Liu, Liang, Liu). Two
built-ins: `schatten(p)` ($h'\\propto\\sigma^{p-1}$; $p=1$ is Muon, $p=2$ is
normalised SGD, $p\\to\\infty$ tends to Neon) and `huber_nuclear(δ)`
($h'(\\sigma)=\\min(\\sigma/\\delta,1)$, which damps singular values below $\\delta$).

A custom one — a **soft Muon**: $h'(\\sigma)=\\tanh(\\sigma/(\\delta\\sigma_1))$.
Directions with $\\sigma\\gg\\delta\\sigma_1$ get weight ≈ 1, as in Muon, but
noise directions with tiny singular values are not blown up to unit length.
`h_prime` receives the whole descending vector of singular values, so it may
normalise by $\\sigma_1$, which makes the direction scale-invariant like an LMO.
Without `h=` there is no $\\mathcal K$ to report, so `dual_norm` is unavailable.
For a 1-homogeneous $\\mathcal K$ (a norm), Euler's identity gives
$\\langle g,\\nabla\\mathcal K(g)\\rangle=\\mathcal K(g)$; for Huber it does not
($\\langle g,\\nabla\\mathcal K(g)\\rangle=\\sum_i\\sigma_ih'(\\sigma_i)\\ne\\sum_ih(\\sigma_i)$).
"""),
      code("""
def soft_muon(delta=0.1):
  return fo.lmo.spectral_fn(lambda s: jnp.tanh(s / (delta * s[..., :1])),
                            name=f"soft_muon(delta={delta})")


huber = fo.lmo.huber_nuclear(0.05)
sv = jnp.linalg.svd(g, compute_uv=False)
print("huber:  <g, ∇K(g)> =", float(jnp.sum(g * huber(g))), "  Σ σ h'(σ) =",
      float(jnp.sum(sv * jnp.minimum(sv / 0.05, 1))), "  K(g) =", float(huber.dual_norm(g)))
d = soft_muon()(g)
print("soft muon: |soft_muon(3.7 g) − soft_muon(g)| =", float(jnp.abs(soft_muon()(3.7 * g) - d).max()))
"""),
      md("""
## 3. Singular values of the directions

Left: the singular values of each direction for our $g$ ($\\sigma_i=1/i$, grey).
Every unitarily invariant geometry is a reweighting of $g$'s singular values:
Muon flattens them all to 1, Fanion-$k$ keeps the top $k$, NSGD keeps the shape
of $g$, F-Muon adds the two, Schatten-3 sharpens, Huber and soft Muon flatten
the large ones and damp the small. Sign is not unitarily invariant; its
direction's spectrum is whatever $\\operatorname{sign}(g)$'s is.

Right: approximate polar factors as scalar maps. The iteration divides $G$ by
$\\|G\\|_F$ (so every singular value starts in $(0,1]$) and then applies the same
odd polynomial to each singular value, step after step; `fo.coefficient_schedule`
returns the coefficients. Over three decades of input, Jordan's Newton–Schulz
quintic lands in about $[0.7,1.2]$ (lower for the very smallest inputs), 5 steps
of Polar Express stay within about $[0.84,1.12]$, and 8 steps are flat at 1.
"""),
      code("""
SHOWN = {
    "spectral (Muon)": fo.lmo.spectral(polar_method="svd"),
    "ky_fan(8) (Fanion-8)": fo.lmo.ky_fan(8, top_k_method="svd"),
    "frobenius (NSGD)": fo.lmo.frobenius(),
    "F-Muon mix": CATALOGUE["F-Muon mix (svd)"],
    "3-term mix": three_term,
    "schatten(3)": fo.lmo.schatten(3.0),
    "huber_nuclear(0.05)": huber,
    "soft_muon(0.1)": soft_muon(),
    "sign(0.01)": fo.lmo.sign(0.01),
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
idx = np.arange(1, m + 1)
ax1.plot(idx, SIGMA / SIGMA[0], color="grey", lw=3, alpha=0.4, label="g (σ/σ₁)")
for name, lmo in SHOWN.items():
  ax1.plot(idx, jnp.linalg.svd(lmo(g), compute_uv=False), label=name, lw=1.2)
ax1.set(xlabel="index i", ylabel="σᵢ(direction)", yscale="log", ylim=(1e-3, 3),
        title="singular values of lmo(g)")
ax1.legend(fontsize=7, ncol=2)

def scalar_map(x, polar_method, polar_steps):
  # What the odd-polynomial iteration does to one singular value x = σ/‖G‖_F.
  rows, safety = fo.coefficient_schedule(polar_method, polar_steps)
  y = x / safety
  for a, b, c in rows:
    y = a * y + b * y**3 + c * y**5
  return y


x = np.logspace(-3, 0, 400)
for label, method, steps in [("Newton–Schulz, 5", "newton_schulz", 5),
                             ("Polar Express, 5", "polar_express", 5),
                             ("Polar Express, 8", "polar_express", 8)]:
  ax2.plot(x, scalar_map(x, method, steps), label=label)
ax2.axhline(1.0, color="k", lw=0.8)
ax2.set(xscale="log", xlabel="input singular value σ/‖G‖_F", ylabel="output singular value",
        title="polar-factor approximations")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
      md("""
## 4. A new LMO class: the row-norm ball

Subclass `fo.lmo.LMO` and implement `__call__` and `dual_norm` (and `norm`
if the ball's norm has a closed form). Here: the ball
$\\max_i\\|X_{i,:}\\|_2\\le1$. With Flax's `(fan_in, fan_out)` kernels and
$y=xX$, this is the $\\ell_1\\to\\ell_2$ operator norm — the geometry Scion uses
for layers fed one-hot or sparse inputs. Its LMO normalises every row:
$\\operatorname{lmo}(G)_{i,:}=G_{i,:}/\\|G_{i,:}\\|_2$, and the dual norm is
$\\sum_i\\|G_{i,:}\\|_2$.
"""),
      code("""
@dataclasses.dataclass(frozen=True, eq=False)
class RowNorm(fo.lmo.LMO):
  eps: float = 1e-12

  def __call__(self, g):
    g = jnp.asarray(g)
    rows = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return jnp.where(rows > 0, g / (rows + self.eps), 0.0).astype(g.dtype)

  def dual_norm(self, g):
    return jnp.sum(jnp.linalg.norm(g, axis=-1), axis=-1)

  def norm(self, x):
    return jnp.max(jnp.linalg.norm(x, axis=-1), axis=-1)


row = RowNorm()
d = row(g)
print("<g, lmo(g)> =", float(jnp.sum(g * d)), "  dual_norm =", float(row.dual_norm(g)),
      "  norm(lmo(g)) =", float(row.norm(d)))
CHECKS["row_norm (custom class)"] = float((row.dual_norm(g) - jnp.sum(g * d)) / row.dual_norm(g))
"""),
      md("""
## 5. A different norm per layer (Scion-style), and new optimizers in training

Pethick et al. (Scion) choose the norm per layer from the layer's role. With
`optax.partition` (formerly `multi_transform`) each group gets its own
transformation — any of `fo.lion_k(lr, lmo)`, the named aliases, or a chain of
building blocks:

| layer | geometry | transformation |
|---|---|---|
| input `layer1` $(32\\times256)$ | row norm (custom class) | `fo.lion_k(lr, RowNorm())` |
| hidden `layer2` $(256\\times256)$ | spectral | `fo.muon(lr)` |
| output `head` $(256\\times10)$ | $\\ell_\\infty$ (Lion-like, $0.05\\cdot$lr per entry) | chain of `fo.scale_by_lion_k(fo.lmo.sign(0.05))` + learning rate |
| biases | — | `optax.adamw` |

(The input layer's shape factor is Muon's $\\sqrt{\\text{fan\\_out}/\\text{fan\\_in}}$: for a wide
matrix $UV^\\top$ has orthonormal rows, so the row-norm step then has the same row
lengths as Muon's.)

We train it against Muon (head on AdamW, as in the quickstart), a **three-term
mixture** for every matrix, **Schatten-4** and the **soft Muon** defined above,
on the quickstart's teacher task.
"""),
      code("""
D_IN, WIDTH, CLASSES, BATCH = 32, 256, 10, 256
STEPS = 25 if SMALL else 400
t1, t2 = jax.random.split(jax.random.PRNGKey(42))
W_T1 = jax.random.normal(t1, (D_IN, 64)) * 2 / np.sqrt(D_IN)
W_T2 = jax.random.normal(t2, (64, CLASSES)) * 3 / np.sqrt(64)


def sample(key, size):
  x = jax.random.normal(key, (size, D_IN))
  return x, jnp.argmax(jnp.tanh(x @ W_T1) @ W_T2, axis=-1)


x_test, y_test = sample(jax.random.PRNGKey(123), 4096)


class MLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.layer1 = nnx.Linear(D_IN, WIDTH, rngs=rngs)
    self.layer2 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.head = nnx.Linear(WIDTH, CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.gelu(self.layer2(jax.nn.gelu(self.layer1(x)))))


def loss_fn(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
"""),
      code("""
LR, ADAM_LR = 0.02, 3e-3
lr = optax.cosine_decay_schedule(LR, STEPS)
adam_lr = optax.cosine_decay_schedule(ADAM_LR, STEPS)
mom = dict(b1=0.95**2, b2=0.95)  # Muon's Nesterov momentum 0.95 in Lion-𝒦 form


def layer_label(path, leaf):
  name = fo.partition.path_name(path)
  if leaf.ndim != 2:
    return "bias"
  return name.split("/")[0]          # "layer1", "layer2" or "head"


def scion_style():
  return optax.partition(
      {"layer1": fo.lion_k(lr, RowNorm(), **mom),
       "layer2": fo.muon(lr),
       "head": optax.chain(fo.scale_by_lion_k(fo.lmo.sign(0.05), **mom),
                           optax.scale_by_learning_rate(lr)),
       "bias": optax.adamw(adam_lr, weight_decay=0.0)},
      lambda params: jax.tree_util.tree_map_with_path(layer_label, params))


common = dict(exclude=[r"^head/"], fallback=fo.adamw_fallback(adam_lr, b2=0.999))
OPTIMIZERS = {
    "muon": lambda: fo.muon(lr, **common),
    "scion-style per layer": scion_style,
    "3-term mix": lambda: fo.lion_k(lr, three_term, **mom, **common),
    "schatten(4)": lambda: fo.lion_k(lr, fo.lmo.schatten(4.0), **mom, **common),
    "soft_muon(0.1)": lambda: fo.lion_k(lr, soft_muon(0.1), **mom, **common),
}


@nnx.jit
def train_step(model, optimizer, key):
  x, y = sample(key, BATCH)
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def evaluate(model):
  logits = model(x_test)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean(),
          jnp.mean(jnp.argmax(logits, -1) == y_test))


runs = {}
for name, make in OPTIMIZERS.items():
  model = MLP(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
  start = time.perf_counter()
  curve = [train_step(model, optimizer, k) for k in jax.random.split(jax.random.PRNGKey(1), STEPS)]
  curve = np.asarray(jax.device_get(curve))
  test_loss, test_acc = evaluate(model)
  runs[name] = dict(curve=curve, test_loss=float(test_loss), test_acc=float(test_acc),
                    seconds=time.perf_counter() - start)
  print(f"{name:22s} test loss {float(test_loss):.4f}  acc {float(test_acc):.3f}  "
        f"({runs[name]['seconds']:.1f} s incl. compilation)")
"""),
      code("""
fig, ax = plt.subplots(figsize=(7, 3.8))
window = max(1, STEPS // 25)
for name, r in runs.items():
  smooth = np.convolve(r["curve"], np.ones(window) / window, mode="valid")
  ax.plot(np.arange(len(smooth)) + window, smooth, label=name)
ax.set(xlabel="step", ylabel="train loss (smoothed)", yscale="log",
       title="custom geometries on the quickstart MLP task")
ax.legend(fontsize=8)
plt.show()

RESULTS = {"checks": CHECKS,
           "runs": {name: {"test_loss": r["test_loss"], "test_acc": r["test_acc"]}
                    for name, r in runs.items()}}
"""),
      md("""
**Notes.** In the committed 400-step run, Muon (held-out loss 0.771), the
Scion-style per-layer optimizer (0.776) and soft Muon (0.780) are close; the
three-term mixture (0.833) and Schatten-4 (0.874), whose directions put less
weight on the small singular values, are slower at this learning rate. None of
the new geometries was tuned (Scion tunes one radius per layer group), so read
this as "they train", not as a ranking. The SVD-based oracles (`schatten`,
`huber_nuclear`, `spectral_fn`) cost a full SVD per matrix per step — fine for
exploring, slow at scale (the polar factor and the Ky Fan subspace iteration
use only matmuls and small factorizations). `fo.diagnostics.constraint_report(params, lmo, ...)`
works with any LMO that defines `norm`, including the `RowNorm` class above.
"""),
      md(REFERENCES),
  ]


NOTEBOOKS = {'quickstart': quickstart,
             'implicit_constraint': implicit_constraint,
             'least_squares': least_squares,
             'custom_geometry': custom_geometry}


def build(name: str):
  nb = new_notebook(cells=NOTEBOOKS[name]())
  nb.metadata['kernelspec'] = {'display_name': 'Python 3', 'language': 'python',
                               'name': 'python3'}
  nb.metadata['language_info'] = {'name': 'python'}
  nb.metadata['colab'] = {'provenance': []}
  return nb


def execute(nb, timeout: int = 3600):
  import nbclient
  client = nbclient.NotebookClient(
      nb, kernel_name='python3', timeout=timeout, record_timing=False,
      resources={'metadata': {'path': HERE}})
  client.execute()
  return nb


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('names', nargs='*', default=list(NOTEBOOKS))
  parser.add_argument('--execute', action='store_true',
                      help='run each notebook and save it with outputs')
  args = parser.parse_args(argv)
  for name in args.names:
    nb = build(name)
    if args.execute:
      start = time.time()
      execute(nb)
      print(f'{name}: executed in {time.time() - start:.0f} s', flush=True)
    path = os.path.join(HERE, f'{name}.ipynb')
    nbformat.write(nb, path)
    print(f'wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)', flush=True)


if __name__ == '__main__':
  sys.exit(main())
