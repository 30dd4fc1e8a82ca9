# ---
# jupyter:
#   colab:
#     provenance: []
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # fanion_optax quickstart
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fanion-optax/fanion_optax/blob/main/notebooks/quickstart.ipynb)
#
# `fanion_optax` ships **dual-norm (LMO) optimizers** — Muon, the Ky Fan
# "Fanions", the F-/S- mixtures and the general Lion-𝒦 family — as plain
# `optax.GradientTransformation`s. This notebook shows the update rule, how the
# building blocks chain into optax, the named optimizers, and a small
# Flax NNX training run comparing AdamW, Muon, F-Muon, S-Muon and Fanion-k.
#
# **The idea.** For a norm $\|\cdot\|$ with unit ball $\mathcal B$ the *linear
# minimisation oracle* is
# $$\operatorname{lmo}(G)=\arg\max_{D\in\mathcal B}\langle G, D\rangle,
# \qquad \langle G,\operatorname{lmo}(G)\rangle=\|G\|_\dagger\ \text{(the dual norm)},$$
# and stepping along $-\operatorname{lmo}(\text{momentum})$ is steepest descent in
# that norm. Every optimizer here is an instance of **Lion-𝒦** (Chen, Liu,
# Liang, Liu 2023) with $\nabla\mathcal K=\operatorname{lmo}$, a shape factor $s$ and
# decoupled weight decay $\lambda$:
# $$N_t=\beta_1M_t+(1-\beta_1)g_t,\qquad M_{t+1}=\beta_2M_t+(1-\beta_2)g_t,\qquad
# X_{t+1}=X_t-\varepsilon_t\big(s\,\operatorname{lmo}(N_t)+\lambda X_t\big).$$
#
# | optimizer | $\operatorname{lmo}(G)$, $G=U\Sigma V^\top$ | ball |
# |---|---|---|
# | `fo.muon` | $UV^\top$ | $\sigma_1\le 1$ |
# | `fo.fanion(k)` (`fo.neon` = k=1) | $U_kV_k^\top$ | $\max(\sigma_1,\sum_i\sigma_i/k)\le1$ |
# | `fo.f_muon(α)` | $\alpha UV^\top+(1-\alpha)G/\Vert G\Vert _F$ | spectral ⊕ Frobenius (Minkowski sum) |
# | `fo.s_muon(α, η)` | $\alpha UV^\top+(1-\alpha)\,\eta\,\mathrm{sign}(G)$ | spectral ⊕ $\ell_\infty$ |
# | `fo.lion_k(lr, lmo)` | any LMO of `fo.lmo` | — |
#
# Muon's Nesterov momentum $\mu$ is $\beta_1=\mu^2$, $\beta_2=\mu$
# (Jordan et al. 2024; Kravatskiy et al. 2025 for the Fanions and mixtures).

# %%
# Colab only: install the package (a no-op when run locally, where it is
# installed).
import importlib.util
import os
import subprocess
import sys

PACKAGE = 'fanion_optax @ git+https://github.com/fanion-optax/fanion_optax'
if importlib.util.find_spec('google.colab'):
  subprocess.run(
    [sys.executable, '-m', 'pip', 'install', '-q', PACKAGE], check=True
  )

# On CPU, JAX's SVD and QR call OpenBLAS, whose worker threads fight XLA's own
# thread pool (SVDs get 10-100x slower); one OpenBLAS thread avoids that. It
# must be set before numpy or jax is imported.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

# Small-size switch: FANION_NOTEBOOK_SMALL=1 shrinks every experiment so the
# whole notebook runs in about a minute on 2 CPU cores (the tests use it).
SMALL = os.environ.get('FANION_NOTEBOOK_SMALL', '0') == '1'
print('SMALL =', SMALL)

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import fanion_optax as fo

print(
  'jax',
  jax.__version__,
  '| optax',
  optax.__version__,
  '| fanion_optax',
  fo.__version__,
  '| device:',
  jax.devices()[0].platform,
)

# %%
plt.rcParams.update(
  {'figure.dpi': 80, 'savefig.dpi': 80, 'axes.grid': True, 'grid.alpha': 0.3}
)

# %% [markdown]
# ## 1. One optimizer for the whole parameter tree
#
# The named optimizers route every 2-D leaf (a `(fan_in, fan_out)` Flax kernel)
# through the LMO and every other leaf (biases, scales) to `fallback=`, any
# optax transformation. Its default, `fo.adamw_fallback()`, is AdamW at 3e-4
# with $\beta_2=0.95$ and float32 moments (Keller Jordan's reference: the
# matrix learning rate is far too large for AdamW); pass
# `fo.adamw_fallback(lr, ...)` to change it. `exclude=` sends matching paths
# (embeddings, output heads) to the fallback too.
# `fo.partition.resolve_dimension_numbers` shows the routing.

# %%
key = jax.random.PRNGKey(0)
params = {
  'hidden': {
    'kernel': jax.random.normal(key, (64, 32)) / 8,
    'bias': jnp.zeros(32),
  },
  'head': {'kernel': jax.random.normal(key, (32, 10)) / 6},
}
routing = fo.partition.resolve_dimension_numbers(params, exclude=[r'head'])
for path, spec in jax.tree_util.tree_flatten_with_path(
  routing, is_leaf=lambda x: x is None
)[0]:
  print(
    f'{fo.partition.path_name(path):16s} ->',
    'LMO' if spec is not None else 'fallback (AdamW)',
  )

tx = fo.muon(
  learning_rate=0.02, exclude=[r'head'], fallback=fo.adamw_fallback(3e-3)
)
state = tx.init(params)
grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
updates, state = tx.update(grads, state, params)
sv = jnp.linalg.svd(-updates['hidden']['kernel'] / 0.02, compute_uv=False)
print(
  'singular values of the Muon direction: '
  f'min {sv.min():.3f}  max {sv.max():.3f}'
  '  (U Vᵀ up to the 5-step Polar Express approximation)'
)

# %% [markdown]
# ## 2. Building blocks: chain them yourself
#
# `fo.muon` is exactly this optax chain on matrix leaves — the Lion-𝒦
# direction, the shape factor $s=\sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}$,
# decoupled decay and the learning rate:

# %%
mu, lr, wd = 0.95, 0.02, 0.1
by_hand = optax.chain(
  fo.scale_by_lion_k(fo.lmo.spectral(), b1=mu**2, b2=mu),
  fo.scale_by_shape('muon'),
  fo.add_decayed_weights(wd),
  optax.scale_by_learning_rate(lr),
)
alias = fo.muon(lr, momentum=mu, weight_decay=wd)

w = {'w': jax.random.normal(key, (48, 96)) / 7}
p1, p2, s1, s2 = w, w, by_hand.init(w), alias.init(w)
for step in range(5):
  g = {'w': jax.random.normal(jax.random.PRNGKey(step), (48, 96))}
  u1, s1 = by_hand.update(g, s1, p1)
  u2, s2 = alias.update(g, s2, p2)
  p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
CHAIN_DIFF = float(jnp.abs(p1['w'] - p2['w']).max())
print('max |chain − alias| after 5 steps:', CHAIN_DIFF)

# Lion is Lion-𝒦 with 𝒦 = ‖·‖₁ (lmo = sign) and no shape factor:
lion = fo.lion_k(
  1e-3, fo.lmo.sign(), b1=0.9, b2=0.99, shape_scale=None, weight_decay=0.1
)
ref = optax.lion(1e-3, b1=0.9, b2=0.99, weight_decay=0.1)
p1, p2, s1, s2 = w, w, lion.init(w), ref.init(w)
for step in range(5):
  g = {'w': jax.random.normal(jax.random.PRNGKey(step), (48, 96))}
  u1, s1 = lion.update(g, s1, p1)
  u2, s2 = ref.update(g, s2, p2)
  p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
LION_DIFF = float(jnp.abs(p1['w'] - p2['w']).max())
print('max |fo.lion_k(sign) − optax.lion|:', LION_DIFF)

# %% [markdown]
# They compose with the rest of optax: clipping, schedules, and
# `optax.inject_hyperparams` (integer structure arguments such as `k` go in
# `static_args`).

# %%
tx = optax.chain(
  optax.clip_by_global_norm(1.0),
  optax.inject_hyperparams(fo.fanion, static_args=('k',))(
    learning_rate=optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 100), k=4
  ),
)
state = tx.init(w)
for step in range(3):
  g = {'w': jax.random.normal(jax.random.PRNGKey(step), (48, 96))}
  updates, state = tx.update(g, state, w)
  w_new = optax.apply_updates(w, updates)
print('learning rate now:', float(state[1].hyperparams['learning_rate']))
print('rank of the Fanion-4 update:', int(jnp.linalg.matrix_rank(updates['w'])))

# %% [markdown]
# ## 3. Train a Flax NNX MLP
#
# A synthetic 10-class problem: inputs $x\sim\mathcal N(0, I_{32})$, labels from a
# random teacher network, fresh samples every step (so train loss ≈ test loss).
# The student is an MLP $32\to256\to256\to10$; its output head goes to AdamW
# (as in Jordan's Muon and the Fanions paper), the other kernels follow the LMO.

# %%
D_IN, WIDTH, CLASSES = 32, 256, 10
STEPS = 25 if SMALL else 500
BATCH = 256

teacher_key = jax.random.PRNGKey(42)
t1, t2 = jax.random.split(teacher_key)
W_T1 = jax.random.normal(t1, (D_IN, 64)) * 2 / np.sqrt(D_IN)
W_T2 = jax.random.normal(t2, (64, CLASSES)) * 3 / np.sqrt(64)


def sample(key, n):
  x = jax.random.normal(key, (n, D_IN))
  return x, jnp.argmax(jnp.tanh(x @ W_T1) @ W_T2, axis=-1)


x_test, y_test = sample(jax.random.PRNGKey(123), 4096)
print(
  'class frequencies:',
  np.bincount(np.asarray(y_test), minlength=CLASSES) / 4096,
)


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
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


# %% [markdown]
# The optimizers. Learning rates: AdamW's usual 3e-3; 0.02 for the LMO methods
# (Muon's customary value with the `"muon"` shape scale). The head and biases
# use the baseline's AdamW (3e-3, $\beta_2=0.999$) inside every LMO optimizer,
# passed as `fallback=fo.adamw_fallback(...)`. Cosine decay throughout.


# %%
def schedule(peak):
  return optax.cosine_decay_schedule(peak, STEPS)


common = dict(
  exclude=[r'^head/'], fallback=fo.adamw_fallback(schedule(3e-3), b2=0.999)
)
OPTIMIZERS = {
  'adamw': lambda: optax.adamw(schedule(3e-3), weight_decay=0.0),
  'muon': lambda: fo.muon(schedule(0.02), **common),
  'f_muon': lambda: fo.f_muon(schedule(0.02), alpha=0.5, **common),
  's_muon': lambda: fo.s_muon(
    schedule(0.02), alpha=0.5, sign_scale=1e-3, **common
  ),
  'fanion-8': lambda: fo.fanion(schedule(0.02), k=8, **common),
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
  train_step(
    model, nnx.Optimizer(model, tx, wrt=nnx.Param), keys[0]
  ).block_until_ready()
  model = MLP(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  losses, start = [], time.perf_counter()
  for k in keys:
    losses.append(train_step(model, optimizer, k))
  losses = np.asarray(jax.device_get(losses))
  seconds = time.perf_counter() - start
  test_loss, test_acc = evaluate(model)
  return dict(
    curve=losses,
    test_loss=float(test_loss),
    test_acc=float(test_acc),
    ms_per_step=1000 * seconds / STEPS,
  )


runs = {name: train(name) for name in OPTIMIZERS}
print(f'{"optimizer":10s} {"test loss":>9s} {"test acc":>9s} {"ms/step":>8s}')
for name, r in runs.items():
  print(
    f'{name:10s} {r["test_loss"]:9.4f} {r["test_acc"]:9.3f} '
    f'{r["ms_per_step"]:8.2f}'
  )

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
window = max(1, STEPS // 25)
for name, r in runs.items():
  smooth = np.convolve(r['curve'], np.ones(window) / window, mode='valid')
  ax.plot(np.arange(len(smooth)) + window, smooth, label=name)
ax.set(
  xlabel='step',
  ylabel='train loss (smoothed)',
  yscale='log',
  title=f'MLP on a teacher task, {STEPS} steps, batch {BATCH}',
)
ax.legend()
plt.show()

RESULTS = {
  'chain_vs_alias': CHAIN_DIFF,
  'lion_k_vs_optax_lion': LION_DIFF,
  'runs': {
    name: {k: r[k] for k in ('test_loss', 'test_acc', 'ms_per_step')}
    for name, r in runs.items()
  },
}

# %% [markdown]
# **What to take away.** All LMO methods train this MLP with one untuned
# learning rate. In the committed 500-step run Muon ends with the lowest
# held-out loss (0.749), F-Muon and S-Muon are close (0.761, 0.763), AdamW is at
# 0.799 and Fanion-8 — whose updates have rank 8 — at 0.816; AdamW is faster in
# the first few dozen steps. Timings on a shared CPU are noisy; the polar factor
# of a $256\times256$ matrix costs about a millisecond there, and on GPU/TPU the
# Newton–Schulz matmuls are cheap (`compute_dtype=jnp.bfloat16` halves them
# again). Fanion-$k$'s warm-started subspace iteration costs $O(mnk)$ per matrix.
# The other notebooks go deeper:
# `implicit_constraint.ipynb` (what weight decay does to the weights),
# `least_squares.ipynb` (the Fanions paper's synthetic benchmark) and
# `custom_geometry.ipynb` (build your own LMO).

# %% [markdown]
# ## References
#
# - L. Chen, J. Li, Q. Liu, *Muon Optimizes Under Spectral Norm Constraints*, [arXiv:2506.15054](https://arxiv.org/abs/2506.15054).
# - A. Kravatskiy, I. Kozyrev, N. Kozlov, A. Vinogradov, D. Merkulov, I. Oseledets, *The Ky Fan Norms and Beyond: Dual Norms and Combinations for Matrix Optimization*, [arXiv:2512.09678](https://arxiv.org/abs/2512.09678).
# - L. Chen, B. Liu, K. Liang, Q. Liu, *Lion Secretly Solves Constrained Optimization, As Lyapunov Predicts*, [arXiv:2310.05898](https://arxiv.org/abs/2310.05898).
# - K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
# - N. Amsel, D. Persson, C. Musco, R. Gower, *The Polar Express*, [arXiv:2505.16932](https://arxiv.org/abs/2505.16932).
# - K. Ahn et al., *Dion: Distributed Orthonormalized Updates*, [arXiv:2504.05295](https://arxiv.org/abs/2504.05295).
# - J. Liu et al., *Muon is Scalable for LLM Training*, [arXiv:2502.16982](https://arxiv.org/abs/2502.16982).
# - T. Pethick et al., *Training Deep Learning Models with Norm-Constrained LMOs* (Scion), [arXiv:2502.07529](https://arxiv.org/abs/2502.07529).
