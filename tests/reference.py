"""Exact NumPy references shared by the tests.

Test matrices (float32, seeded) and float64 NumPy SVD-based answers, written
independently of the code under test. Not a test module: `conftest.py` puts
this directory on `sys.path` so that test modules can `import reference`.
"""

import jax
import jax.numpy as jnp
import numpy as np


def x64():
  """A context with 64-bit types enabled (`jax.enable_x64` on new JAX)."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # older JAX

  return enable_x64()


def to_f64(x):
  """A float64 NumPy copy of `x`, read through float32 (so bfloat16 works)."""
  return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def gaussian(shape, seed=0):
  """Standard normal entries, float32."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def with_spectrum(shape, sigma, seed=0):
  """`U diag(sigma) Vᵀ` in float32, one per matrix of a `(..., m, n)` batch.

  U (m, r) and V (n, r) are orthonormal (QR of Gaussians), drawn per matrix
  in the order U, V, so a 2-D `shape` gives the same matrix for a seed as a
  1-matrix batch.
  """
  rng = np.random.default_rng(seed)
  *batch, m, n = shape
  sigma = np.asarray(sigma, np.float64)
  r = len(sigma)
  out = np.empty((int(np.prod(batch, dtype=int)), m, n), np.float32)
  for i in range(out.shape[0]):
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    out[i] = (u * sigma) @ v.T
  return out.reshape(shape)


def gapped_spectrum(shape):
  """sigma = [10, 9, 8, 1, 0.9, 0.81, ...]: a clear gap after the third."""
  r = min(shape[-2:])
  return np.concatenate([[10.0, 9.0, 8.0], 0.9 ** np.arange(r - 3)])


def svd(x):
  """Thin float64 SVD `(U, sigma, Vᵀ)`, batched over leading axes."""
  return np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)


def singular_values(x):
  """Float64 singular values, descending, batched over leading axes."""
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def np_polar(x):
  """The polar factor `U Vᵀ` in float64."""
  u, _, vh = svd(x)
  return u @ vh


def np_top_k(x, k):
  """`U_k V_kᵀ` of the top-k singular vectors in float64."""
  u, _, vh = svd(x)
  return u[..., :, :k] @ vh[..., :k, :]


# SPEC.md §3.1, copied verbatim so the library's own table is checked.
JORDAN = (3.4445, -4.7750, 2.0315)
POLAR_EXPRESS_TABLE = (
  (8.28721201814563, -23.595886519098837, 17.300387312530933),
  (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
  (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
  (3.3184196573706015, -2.488488024314874, 0.51004894012372),
  (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
  (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
  (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
  (1.875, -1.25, 0.375),
)
SAFETY = 1.01
