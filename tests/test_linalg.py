"""`_checks.per_matrix_on_cpu`: same results as the batched LAPACK call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fanion_optax import _checks


def test_per_matrix_svd_matches_numpy_over_leading_axes():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  s = _checks.svd(x, compute_uv=False)
  np.testing.assert_allclose(
      s, np.linalg.svd(np.asarray(x, np.float64), compute_uv=False),
      rtol=1e-5, atol=1e-5)
  u, s, vh = _checks.svd(x, full_matrices=False)
  assert u.shape == (2, 3, 5, 4) and vh.shape == (2, 3, 4, 4)
  np.testing.assert_allclose((u * s[..., None, :]) @ vh, x, atol=1e-5)


def test_per_matrix_qr_matches_single_matrix_calls():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 3))
  q, r = _checks.qr(x)
  for i in range(4):
    q_i, r_i = jnp.linalg.qr(x[i])
    np.testing.assert_allclose(q[i], q_i, atol=1e-6)
    np.testing.assert_allclose(r[i], r_i, atol=1e-6)


@pytest.mark.parametrize('batch, calls, shape', [
    ((3,), 3, (4, 2)), ((2, 2), 4, (4, 2)), ((1,), 1, (1, 4, 2)),
    ((), 1, (4, 2))])
def test_per_matrix_calls_lapack_once_per_matrix_on_cpu(batch, calls, shape):
  assert jax.default_backend() == 'cpu'
  jaxpr = jax.make_jaxpr(_checks.qr)(jnp.ones((*batch, 4, 2)))
  # jnp.linalg.qr is a jitted function named "qr" around the LAPACK call.
  qrs = [e for e in jaxpr.eqns if e.params.get('name') == 'qr']
  assert len(qrs) == calls
  assert {e.invars[0].aval.shape for e in qrs} == {shape}
