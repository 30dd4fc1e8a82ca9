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
# # Low-rank Fanions at scale: quality, rank and bytes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fanion-optax/fanion_optax/blob/main/notebooks/low_rank_at_scale.ipynb)
#
# Fanion-$k$ steps along $U_kV_k^\top$, the top-$k$ singular pairs of the
# momentum (the LMO of the Ky Fan-$k$ dual ball; Kravatskiy et al.,
# arXiv:2512.09678). It needs no full SVD: a warm-started block power
# iteration costs $O(mnk)$ per step, and it is **low-rank**, so devices can
# agree on it by exchanging thin $m\times k$ and $n\times k$ blocks instead of
# $m\times n$ gradients (Dion, Ahn et al., arXiv:2504.05295). The price is
# quality: a rank-$k$ step ignores the rest of the spectrum. Dion's **error
# feedback** keeps what the step did not use in the momentum, so it is
# applied later (`error_feedback=True`; with $b_1=b_2$ it is Orth-Dion).
#
# This notebook measures the three sides of that trade:
#
# 1. **quality vs $k$**, with and without error feedback, on a noisy
#    regression (live) and on the char-level transformer benchmark (from
#    the committed results, where the repository is at hand);
# 2. **bytes per step vs $k$** for compressed data parallel
#    (`split=fo.distributed.compressed(axis)`): read from the compiled HLO
#    with `fo.communication.collective_bytes`, against the gradient
#    all-reduce every data-parallel optimizer needs;
# 3. **sharded matrices** (FSDP under `jax.jit`): the power iteration runs
#    on the shards, and no collective moves a whole matrix.

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

# One OpenBLAS thread (it fights XLA's thread pool on CPU), and 8 virtual
# CPU devices for the communication sections: both must be set before jax
# is imported. The devices are only compiled for, never timed.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
if 'xla_force_host_platform_device_count' not in os.environ.get(
  'XLA_FLAGS', ''
):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8'
  )

# Small-size switch: FANION_NOTEBOOK_SMALL=1 shrinks every experiment so the
# whole notebook runs in about a minute on 2 CPU cores (the tests use it).
SMALL = os.environ.get('FANION_NOTEBOOK_SMALL', '0') == '1'
print('SMALL =', SMALL)

# %%
import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fanion_optax as fo

plt.rcParams.update(
  {'figure.dpi': 80, 'savefig.dpi': 80, 'axes.grid': True, 'grid.alpha': 0.3}
)
RESULTS = {}

# %% [markdown]
# ## 1. Quality vs rank, live
#
# A noisy multivariate regression: $Y = XW_\star + \text{noise}$ with
# $W_\star$ of size $m\times n$ and singular values decaying like $0.9^i$,
# fresh minibatches every step, and the held-out loss after a fixed budget.
# Each configuration gets the best of a small learning-rate grid (cosine
# decay, no weight decay); the grid is `vmap`ped, so each configuration
# compiles once. Muon is the full-rank reference.

# %%
M, N = (32, 128) if SMALL else (64, 256)
STEPS = 150 if SMALL else 400
BATCH, NOISE = 64, 0.5
KS = (1, 16) if SMALL else (1, 2, 4, 8, 16, 32)
LRS = jnp.array(
  [0.01, 0.03, 0.1] if SMALL else [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
)

ku, kv, kx = jax.random.split(jax.random.PRNGKey(0), 3)
U_STAR, _ = jnp.linalg.qr(jax.random.normal(ku, (M, M)))
V_STAR, _ = jnp.linalg.qr(jax.random.normal(kv, (N, M)))
W_STAR = (U_STAR * 3.0 * 0.9 ** jnp.arange(M)) @ V_STAR.T
X_TEST = jax.random.normal(kx, (1024, M))


def held_out(w):
  return 0.5 * jnp.mean(jnp.sum((X_TEST @ (w - W_STAR)) ** 2, axis=-1))


def make(lr, k, error_feedback):
  schedule = optax.cosine_decay_schedule(lr, STEPS)
  if k is None:
    return fo.muon(schedule, weight_decay=0.0)
  return fo.fanion(schedule, k, error_feedback=error_feedback, weight_decay=0.0)


def train(lr, k, error_feedback):
  tx = make(lr, k, error_feedback)
  params = {'w': jnp.zeros((M, N))}

  def loss(p, key):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (BATCH, M))
    y = x @ W_STAR + NOISE * jax.random.normal(ke, (BATCH, N))
    return 0.5 * jnp.mean(jnp.sum((x @ p['w'] - y) ** 2, axis=-1))

  def step(carry, key):
    p, state = carry
    grads = jax.grad(loss)(p, key)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), None

  keys = jax.random.split(jax.random.PRNGKey(1), STEPS)
  (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
  return held_out(p['w'])


quality = {}
configs = [('Muon', None, False)] + [
  (f'Fanion-{k}{" EF" if ef else ""}', k, ef)
  for k in KS
  for ef in (False, True)
]
for name, k, ef in configs:
  losses = jax.jit(jax.vmap(functools.partial(train, k=k, error_feedback=ef)))(
    LRS
  )
  best = int(jnp.argmin(losses))
  quality[name] = {
    'k': k,
    'error_feedback': ef,
    'loss': float(losses[best]),
    'lr': float(LRS[best]),
  }
  print(
    f'{name:14s} held-out loss {float(losses[best]):9.4f}  (lr {float(LRS[best]):.3g})'
  )
RESULTS['quality'] = quality

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for ef, style in ((False, 'o-'), (True, 's--')):
  rows = [
    q
    for q in quality.values()
    if q['k'] is not None and q['error_feedback'] == ef
  ]
  ax.plot(
    [q['k'] for q in rows],
    [q['loss'] for q in rows],
    style,
    label='Fanion-k' + (' + error feedback' if ef else ''),
  )
ax.axhline(quality['Muon']['loss'], color='k', lw=1, label='Muon (full rank)')
ax.set_xscale('log', base=2)
ax.set_yscale('log')
ax.set_xlabel('rank k')
ax.set_ylabel('held-out loss')
ax.set_title(f'noisy regression, {M}×{N}, {STEPS} steps')
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 1b. Quality vs rank on the char-level transformer
#
# The `charlm` benchmark trains the demo's 2-layer transformer (d_model 64)
# for 400 steps, 3 seeds, each optimizer at its best learning rate of a
# sweep; every matrix there has $\min(m,n)=64$. Its committed results are
# read from `benchmarks/results/charlm.json` when the repository is at hand
# (a clone, not a pip install). With error feedback the momentum is also the
# share of the used subspace the buffer keeps (Dion's μ), so the benchmark
# also has rows at momentum 0.8, for Muon as well: there error feedback gains
# more, and both sides do better on these short runs.

# %%
charlm_path = (
  pathlib.Path(fo.__file__).resolve().parent.parent
  / 'benchmarks'
  / 'results'
  / 'charlm.json'
)
charlm = (
  json.loads(charlm_path.read_text())['results']
  if charlm_path.exists()
  else None
)
if charlm is None:
  print('benchmarks/results/charlm.json is not here (pip install): skipped.')
else:
  muon = charlm['muon']
  fig, ax = plt.subplots(figsize=(6, 3.5))
  # The rows at the default momentum 0.95: `fanion<k>` and `fanion<k>_ef`.
  for ef, style in ((False, 'o-'), (True, 's--')):
    rows = sorted(
      (int(match[1]), charlm[match[0]])
      for match in map(re.compile(r'fanion(\d+)(_ef)?').fullmatch, charlm)
      if match is not None and bool(match[2]) == ef
    )
    ax.errorbar(
      [k for k, _ in rows],
      [r['test_mean'] for _, r in rows],
      yerr=[r['test_std'] for _, r in rows],
      fmt=style,
      capsize=3,
      label='Fanion-k' + (' + error feedback' if ef else ''),
    )
  ax.axhspan(
    muon['test_mean'] - 2 * muon['test_std'],
    muon['test_mean'] + 2 * muon['test_std'],
    color='k',
    alpha=0.15,
    label='Muon ± 2σ',
  )
  # Momentum 0.8 (the `_m80` rows), where error feedback gains more.
  if {'fanion8_ef_m80', 'muon_m80'} <= charlm.keys():
    row = charlm['fanion8_ef_m80']
    ax.errorbar(
      [8],
      [row['test_mean']],
      yerr=[row['test_std']],
      fmt='D',
      color='C3',
      label='Fanion-8 + error feedback, μ = 0.8',
    )
    ax.axhline(
      charlm['muon_m80']['test_mean'], color='C3', ls=':', label='Muon, μ = 0.8'
    )
  ax.set_xscale('log', base=2)
  ax.set_xlabel('rank k (of 64)')
  ax.set_ylabel('held-out nats/byte')
  ax.set_title('char transformer, 3 seeds, tuned lr')
  ax.legend(fontsize=8)
  plt.show()

# %% [markdown]
# ## 2. Bytes per step: compressed data parallel
#
# With `split=fo.distributed.compressed("data")` every device passes its
# **local** gradient; the power iteration all-reduces $G_iQ$ ($m\times k$)
# and $G_i^\top P$ ($n\times k$), and every device computes the same
# direction, that of the mean gradient. One power step per optimizer step
# (`subspace_iters=1`, Dion's setting) sends the thin factors once,
# $\sum(m+n)k$ floats; the default two warm iterations send them twice. The
# baseline is the gradient all-reduce, $\sum mn$ floats. We compile one step
# for the kernels of one GPT-2 block on 8 devices and read the HLO.

# %%
WIDTH = 128 if SMALL else 768
BYTE_KS = (8,) if SMALL else (4, 16, 64)
SHAPES = {
  'attn_qkv': (WIDTH, 3 * WIDTH),
  'attn_out': (WIDTH, WIDTH),
  'mlp_in': (WIDTH, 4 * WIDTH),
  'mlp_out': (4 * WIDTH, WIDTH),
}
DEVICES = jax.devices('cpu')[:8]
data_mesh = jax.make_mesh(
  (8,), ('data',), axis_types=(AxisType.Auto,), devices=DEVICES
)


def local(shape):
  """The global shape of a per-device block along `P("data")`."""
  return jax.ShapeDtypeStruct((8 * shape[0], shape[1]), jnp.float32)


def is_lion_k(node):
  return isinstance(node, fo.transforms.ScaleByLionKState)


def compressed_step_bytes(k, **options):
  tx = fo.fanion(0.02, k, split=fo.distributed.compressed('data'), **options)
  params = {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in SHAPES.items()}
  state = jax.eval_shape(tx.init, params)
  # The matrices' momentum is per device; subspaces and counts replicated.
  specs = jax.tree.map(
    lambda n: (
      n._replace(
        count=P(),
        mu=jax.tree.map(lambda _: P('data'), n.mu),
        lmo_state=jax.tree.map(lambda _: P(), n.lmo_state),
      )
      if is_lion_k(n)
      else jax.tree.map(lambda _: P(), n)
    ),
    state,
    is_leaf=is_lion_k,
  )
  state = jax.tree.map(
    lambda n: (
      n._replace(mu=jax.tree.map(lambda x: local(x.shape), n.mu))
      if is_lion_k(n)
      else n
    ),
    state,
    is_leaf=is_lion_k,
  )
  update = jax.shard_map(
    tx.update,
    mesh=data_mesh,
    in_specs=(P('data'), specs, P()),
    out_specs=(P(), specs),
  )
  grads = {n: local(s) for n, s in SHAPES.items()}
  compiled = jax.jit(update).lower(grads, state, params).compile()
  # The warm loop runs all of its iterations, a count set at run time.
  iters = options.get('subspace_iters', 2)
  return fo.communication.collective_bytes(compiled, unknown_trip_count=iters)


mean = jax.shard_map(
  lambda g: jax.lax.pmean(g, 'data'),
  mesh=data_mesh,
  in_specs=P('data'),
  out_specs=P(),
)
gradient_bytes = fo.communication.collective_bytes(
  jax.jit(mean).lower({n: local(s) for n, s in SHAPES.items()}).compile()
)
thin = {k: sum((m + n) * k * 4 for m, n in SHAPES.values()) for k in BYTE_KS}
communication = {'gradient_allreduce': gradient_bytes, 'rows': {}}
for k in BYTE_KS:
  for label, options in (
    ('one power step', {'subspace_iters': 1}),
    ('default', {}),
  ):
    moved = compressed_step_bytes(k, **options)
    communication['rows'][f'k={k}, {label}'] = {
      'k': k,
      'bytes': moved,
      'ratio_to_thin_factors': moved / thin[k],
      'ratio_to_gradient': moved / gradient_bytes,
    }
    print(
      f'k={k:3d} {label:15s} {moved:>12,} bytes/step = {moved / thin[k]:.2f}× thin,'
      f' {gradient_bytes / moved:5.1f}× less than the gradient all-reduce'
    )
RESULTS['communication'] = communication

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for label, style in (('one power step', 'o-'), ('default', 's--')):
  rows = [
    r for name, r in communication['rows'].items() if name.endswith(label)
  ]
  ax.plot(
    [r['k'] for r in rows],
    [r['bytes'] / 2**20 for r in rows],
    style,
    label=f'compressed, {label}',
  )
ax.plot(
  BYTE_KS,
  [thin[k] / 2**20 for k in BYTE_KS],
  'k:',
  label='Σ(m+n)·k·4 (thin factors)',
)
ax.axhline(
  gradient_bytes / 2**20, color='tab:red', label='gradient all-reduce Σ m·n·4'
)
ax.set_xscale('log', base=2)
ax.set_yscale('log')
ax.set_xlabel('rank k')
ax.set_ylabel('MiB all-reduced per step')
ax.set_title(f'one GPT-2 block, width {WIDTH}, 8 devices')
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 3. Sharded matrices: the power iteration on the shards
#
# Under `jax.jit` with FSDP (every kernel's first axis sharded over the
# mesh) and `split=None`, a Ky Fan LMO works on the shards: $GQ$ stays
# row-sharded, $G^\top P$ is an all-reduce of an $n\times k$ block, the QR
# gathers the $m\times k$ block. On Explicit mesh axes the library runs the
# LMO with the axes made Auto (`fo.distributed.on_shards`), so XLA can
# partition it. We look for the largest array any collective moves.

# %%
K_SHARDED = BYTE_KS[-1]
fsdp = jax.make_mesh(
  (8,), ('fsdp',), axis_types=(AxisType.Explicit,), devices=DEVICES
)
sharding = NamedSharding(fsdp, P('fsdp', None))
shaped = {
  n: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding)
  for n, s in SHAPES.items()
}
tx = fo.fanion(0.02, K_SHARDED, subspace_iters=1)
with jax.set_mesh(fsdp):
  compiled = (
    jax.jit(tx.update)
    .lower(shaped, jax.eval_shape(tx.init, shaped), shaped)
    .compile()
  )
moved = fo.communication.collective_bytes(
  compiled, fo.communication.COLLECTIVES
)
largest, _ = fo.communication.largest_collective(compiled)
smallest_matrix = min(m * n * 4 for m, n in SHAPES.values())
thin_block = max(max(m, n) for m, n in SHAPES.values()) * K_SHARDED * 4
RESULTS['sharded'] = {
  'k': K_SHARDED,
  'bytes': moved,
  'ratio_to_thin_factors': moved / thin[K_SHARDED],
  'largest_collective': largest,
  'largest_thin_block': thin_block,
  'smallest_matrix': smallest_matrix,
}
print(
  f'FSDP, k={K_SHARDED}: {moved:,} bytes/step over every collective'
  f' ({moved / thin[K_SHARDED]:.2f}× the thin factors); largest array moved'
  f' {largest:,} bytes, the smallest whole matrix {smallest_matrix:,} bytes'
)

# %% [markdown]
# ## What to take away
#
# The numbers above, in one place: the loss each rank reaches (with and
# without error feedback) next to what it sends per step in compressed
# data parallel with one power step. Rank buys quality and costs bytes
# linearly; error feedback changes the quality side only (its momentum
# update needs no communication), and whether it helps depends on the
# problem: check it on yours. The benchmark tables (`benchmarks/README.md`:
# charlm, distributed) have the same trade on a transformer and on GPT-2
# small.

# %%
print(
  f'{"rank":>6} {"loss":>9} {"loss, EF":>9} {"bytes/step, 1 power step":>26}'
)
for k in KS:
  plain, ef = quality[f'Fanion-{k}'], quality[f'Fanion-{k} EF']
  sent = communication['rows'].get(f'k={k}, one power step')
  print(
    f'{k:>6} {plain["loss"]:9.4f} {ef["loss"]:9.4f}'
    f' {"" if sent is None else format(sent["bytes"], ","):>26}'
  )
print(f'{"Muon":>6} {quality["Muon"]["loss"]:9.4f}')
