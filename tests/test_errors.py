"""Every invalid argument of the public API and the exact error it raises.

`CASES` is the table of docs/errors.md (`test_docs_table_is_current` keeps
the two equal; `python tests/test_errors.py` prints the table). Each case
is a call, the exception type, the exact message, and the parts the
message must name: the argument, the value received and the accepted
range. `None` in those columns marks a message that lacks the part (listed
as a gap in the docs). A message ending in ` ...` continues with text from
JAX or `re` that varies between versions (or with a memory address); only
its start is compared.
"""

import os
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fanion_optax as fo
from fanion_optax import diagnostics
from fanion_optax import distributed
from fanion_optax import lmo
from fanion_optax import partition

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, 'docs',
                    'errors.md')


class Case(NamedTuple):
  api: str
  call: str
  exception: type
  message: str
  arg: str | None
  value: str | None
  accepted: str | None


def _namespace() -> dict[str, Any]:
  return dict(
      fo=fo, lmo=lmo, partition=partition, diagnostics=diagnostics,
      distributed=distributed, jax=jax, jnp=jnp, optax=optax,
      DN=fo.DimensionNumbers, G=jnp.ones((4, 3)),
      P={'w': jnp.ones((3, 4)), 'b': jnp.ones(4)},
      MESH=jax.sharding.Mesh(np.array(jax.devices()[:1]), ('d',)))


NAMESPACE_DOC = """\
In the calls: `fo` is `fanion_optax`, `lmo`, `partition`, `diagnostics` and
`distributed` its modules, `DN` is `fo.DimensionNumbers`,
`G = jnp.ones((4, 3))`, `P = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}` and
`MESH` a one-device `jax.sharding.Mesh` with axis `'d'`."""

CASES = [
    Case('polar', 'fo.polar_factor(jnp.ones(3))',
         ValueError, 'g must be a matrix or a batch of matrices (ndim >= 2), got shape (3,).',
         'g', '(3,)', 'ndim >= 2'),
    Case('polar', 'fo.polar_factor(jnp.ones((2, 2), jnp.int32))',
         TypeError, 'g must have a floating dtype, got int32.',
         'g', 'int32', 'floating dtype'),
    Case('polar', 'fo.polar_factor(None)',
         TypeError, 'g must be an array of shape (..., m, n), got None.',
         'g', 'None', 'array of shape (..., m, n)'),
    Case('polar', "fo.polar_factor(G, polar_method='qr')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'qr'.",
         'polar_method', "'qr'", "one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows"),
    Case('polar', 'fo.polar_factor(G, polar_method=5)',
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 5.",
         'polar_method', '5', "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('polar', 'fo.polar_factor(G, polar_method=[(1.0, 2.0)])',
         ValueError, 'polar_method given as coefficient rows must be a non-empty sequence of (a, b, c) triples, got [(1.0, 2.0)].',
         'polar_method', '[(1.0, 2.0)]', 'non-empty sequence of (a, b, c) triples'),
    Case('polar', 'fo.polar_factor(G, polar_method=[])',
         ValueError, 'polar_method given as coefficient rows must be a non-empty sequence of (a, b, c) triples, got [].',
         'polar_method', '[]', 'non-empty sequence of (a, b, c) triples'),
    Case('polar', "fo.polar_factor(G, polar_method=[(float('nan'), 0.0, 0.0)])",
         ValueError, 'polar_method given as coefficient rows must hold finite numbers, got [(nan, 0.0, 0.0)].',
         'polar_method', '[(nan, 0.0, 0.0)]', 'finite numbers'),
    Case('polar', 'fo.polar_factor(G, polar_steps=0)',
         ValueError, 'polar_steps must be an int >= 1, got 0.',
         'polar_steps', '0', 'int >= 1'),
    Case('polar', 'fo.polar_factor(G, polar_steps=2.5)',
         TypeError, 'polar_steps must be an int >= 1, got 2.5.',
         'polar_steps', '2.5', 'int >= 1'),
    Case('polar', 'fo.polar_factor(G, polar_steps=True)',
         TypeError, 'polar_steps must be an int >= 1, got True.',
         'polar_steps', 'True', 'int >= 1'),
    Case('polar', 'fo.polar_factor(G, polar_steps=9)',
         ValueError, 'polar_steps must be in [1, 8] for polar_method="polar_express", got 9.',
         'polar_steps', '9', '[1, 8]'),
    Case('polar', 'fo.polar_factor(G, polar_method=[(1.5, -0.5, 0.0)], polar_steps=2)',
         ValueError, 'polar_steps must be in [1, 1] for the 1 coefficient rows given, got 2.',
         'polar_steps', '2', '[1, 1]'),
    Case('polar', 'fo.polar_factor(G, compute_dtype=jnp.int32)',
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'compute_dtype', 'int32', 'floating dtype'),
    Case('polar', "fo.polar_factor(G, compute_dtype='foo')",
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got \'foo\'.',
         'compute_dtype', "'foo'", 'floating dtype'),
    Case('polar', 'fo.polar_factor(G, eps=-1.0)',
         ValueError, 'eps must be a finite real number >= 0.0, got -1.0.',
         'eps', '-1.0', 'a finite real number >= 0.0'),
    Case('polar', 'jax.jit(lambda s: fo.polar_factor(G, polar_steps=s))(3)',
         TypeError, "polar_steps must be a static int, got a traced value. With optax.inject_hyperparams, pass static_args=('polar_steps',), or use fanion_optax.inject_hyperparams, which does.",
         'polar_steps', None, 'static int'),
    Case('polar', "fo.coefficient_schedule('x')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'x'.",
         'polar_method', "'x'", "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('polar', 'fo.lmo_gap(jnp.ones(3), G)',
         ValueError, 'g must be a matrix or a batch of matrices (ndim >= 2), got shape (3,).',
         'g', '(3,)', 'ndim >= 2'),
    Case('polar', 'fo.lmo_gap(G, jnp.ones(3))',
         ValueError, 'o must be a matrix or a batch of matrices (ndim >= 2), got shape (3,).',
         'o', '(3,)', 'ndim >= 2'),
    Case('top_k_polar', 'fo.top_k_polar(G, 0)',
         ValueError, 'k must be an int >= 1, got 0.',
         'k', '0', 'int >= 1'),
    Case('top_k_polar', 'fo.top_k_polar(G, 1.0)',
         TypeError, 'k must be an int >= 1, got 1.0.',
         'k', '1.0', 'int >= 1'),
    Case('top_k_polar', "fo.top_k_polar(G, 1, top_k_method='qr')",
         ValueError, "top_k_method must be one of ('subspace', 'svd'), got 'qr'.",
         'top_k_method', "'qr'", "one of ('subspace', 'svd')"),
    Case('top_k_polar', 'fo.top_k_polar(G, 1, subspace_iters=-1)',
         ValueError, 'subspace_iters must be an int >= 0, got -1.',
         'subspace_iters', '-1', 'int >= 0'),
    Case('top_k_polar', 'fo.top_k_polar(G, 1, state=jnp.ones((3, 2)))',
         ValueError, 'state must have shape (3, 1) for g of shape (4, 3) and k=1, got (3, 2).',
         'state', '(3, 2)', 'shape (3, 1)'),
    Case('top_k_polar', 'fo.top_k_polar(jnp.ones(3), 1)',
         ValueError, 'g must be a matrix or a batch of matrices (ndim >= 2), got shape (3,).',
         'g', '(3,)', 'ndim >= 2'),
    Case('top_k_polar', 'fo.top_k_polar(G, 1, compute_dtype=jnp.int32)',
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'compute_dtype', 'int32', 'floating dtype'),
    Case('lmo', "lmo.spectral(polar_method='x')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'x'.",
         'polar_method', "'x'", "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('lmo', 'lmo.spectral(polar_steps=0)',
         ValueError, 'polar_steps must be an int >= 1, got 0.',
         'polar_steps', '0', 'int >= 1'),
    Case('lmo', 'lmo.spectral(polar_steps=9)',
         ValueError, 'polar_steps must be in [1, 8] for polar_method="polar_express", got 9.',
         'polar_steps', '9', '[1, 8]'),
    Case('lmo', 'lmo.spectral(eps=float("nan"))',
         ValueError, 'eps must be a finite real number >= 0.0, got nan.',
         'eps', 'nan', 'a finite real number >= 0.0'),
    Case('lmo', "lmo.spectral(eps=float('inf'))",
         ValueError, 'eps must be a finite real number >= 0.0, got inf.',
         'eps', 'inf', 'a finite real number >= 0.0'),
    Case('lmo', 'lmo.spectral(compute_dtype=jnp.int32)',
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'compute_dtype', 'int32', 'floating dtype'),
    Case('lmo', 'lmo.ky_fan(0)',
         ValueError, 'k must be an int >= 1, got 0.',
         'k', '0', 'int >= 1'),
    Case('lmo', 'lmo.ky_fan(2.5)',
         TypeError, 'k must be an int >= 1, got 2.5.',
         'k', '2.5', 'int >= 1'),
    Case('lmo', "lmo.ky_fan(2, top_k_method='x')",
         ValueError, "top_k_method must be one of ('subspace', 'svd'), got 'x'.",
         'top_k_method', "'x'", "one of ('subspace', 'svd')"),
    Case('lmo', 'lmo.ky_fan(2, subspace_iters=-1)',
         ValueError, 'subspace_iters must be an int >= 0, got -1.',
         'subspace_iters', '-1', 'int >= 0'),
    Case('lmo', "lmo.ky_fan(2, polar_method='x')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'x'.",
         'polar_method', "'x'", "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('lmo', 'lmo.ky_fan(2, polar_steps=0)',
         ValueError, 'polar_steps must be an int >= 1, got 0.',
         'polar_steps', '0', 'int >= 1'),
    Case('lmo', 'lmo.ky_fan(2, compute_dtype=jnp.int32)',
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'compute_dtype', 'int32', 'floating dtype'),
    Case('lmo', 'lmo.ky_fan(2).init((3,))',
         ValueError, 'shape must have at least 2 axes, got (3,).',
         'shape', '(3,)', 'at least 2 axes'),
    Case('lmo', 'lmo.ky_fan(2).update(jnp.ones((5, 4)), jnp.ones((4, 3)))',
         ValueError, 'state must have shape (4, 2) for g of shape (5, 4) and k=2, got (4, 3).',
         'state', '(4, 3)', 'shape (4, 2)'),
    Case('lmo', 'lmo.sign(0.0)',
         ValueError, 'scale must be a finite real number > 0.0, got 0.0.',
         'scale', '0.0', 'a finite real number > 0.0'),
    Case('lmo', 'lmo.sign(-1.0)',
         ValueError, 'scale must be a finite real number > 0.0, got -1.0.',
         'scale', '-1.0', 'a finite real number > 0.0'),
    Case('lmo', "lmo.sign(float('nan'))",
         ValueError, 'scale must be a finite real number > 0.0, got nan.',
         'scale', 'nan', 'a finite real number > 0.0'),
    Case('lmo', "lmo.sign('a')",
         TypeError, "scale must be a finite real number > 0.0, got 'a'.",
         'scale', "'a'", 'a finite real number > 0.0'),
    Case('lmo', "lmo.sign(float('inf'))",
         ValueError, 'scale must be a finite real number > 0.0, got inf.',
         'scale', 'inf', 'a finite real number > 0.0'),
    Case('lmo', 'lmo.mix()',
         ValueError, 'terms must hold at least one (weight, lmo) pair, got ().',
         'terms', '()', 'at least one (weight, lmo) pair'),
    Case('lmo', 'lmo.mix((0.5,))',
         TypeError, 'terms[0] must be a (weight, LMO) pair, got (0.5,).',
         'terms[0]', '(0.5,)', '(weight, LMO) pair'),
    Case('lmo', "lmo.mix((0.5, 'spectral'))",
         TypeError, "terms[0] must be a (weight, LMO) pair, got (0.5, 'spectral').",
         'terms[0]', "(0.5, 'spectral')", '(weight, LMO) pair'),
    Case('lmo', 'lmo.mix((-0.1, lmo.spectral()))',
         ValueError, 'terms[0] weight must be a finite real number >= 0.0, got -0.1.',
         'terms[0] weight', '-0.1', 'a finite real number >= 0.0'),
    Case('lmo', "lmo.mix((float('inf'), lmo.spectral()))",
         ValueError, 'terms[0] weight must be a finite real number >= 0.0, got inf.',
         'terms[0] weight', 'inf', 'a finite real number >= 0.0'),
    Case('lmo', 'lmo.mix((0.5, lmo.spectral())).norm(G)',
         NotImplementedError, 'Mixture has no closed-form ball norm: the norm whose ball is a Minkowski sum of balls is an infimal convolution. Use the norms of its terms (or dual_norm) instead.',
         'Mixture', None, None),
    Case('lmo', 'lmo.spectral_fn(3)',
         TypeError, 'h_prime must be callable, got 3.',
         'h_prime', '3', 'callable'),
    Case('lmo', 'lmo.spectral_fn(jnp.ones_like, h=3)',
         TypeError, 'h must be callable or None, got 3.',
         'h', '3', 'callable or None'),
    Case('lmo', 'lmo.spectral_fn(jnp.ones_like).dual_norm(G)',
         NotImplementedError, 'spectral_fn: pass h= to spectral_fn to evaluate 𝒦(g).',
         'h=', None, None),
    Case('lmo', 'lmo.spectral_fn(jnp.ones_like).norm(G)',
         NotImplementedError, 'SpectralFunction has no closed-form ball norm: the norm whose ball is a Minkowski sum of balls is an infimal convolution. Use the norms of its terms (or dual_norm) instead.',
         'SpectralFunction', None, None),
    Case('lmo', 'lmo.schatten(0.5)',
         ValueError, 'p must be a finite real number >= 1.0, got 0.5.',
         'p', '0.5', 'a finite real number >= 1.0'),
    Case('lmo', "lmo.schatten(float('inf'))",
         ValueError, 'p must be a finite real number >= 1.0, got inf.',
         'p', 'inf', 'a finite real number >= 1.0'),
    Case('lmo', 'lmo.huber_nuclear(0.0)',
         ValueError, 'delta must be a finite real number > 0.0, got 0.0.',
         'delta', '0.0', 'a finite real number > 0.0'),
    Case('lmo', "lmo.huber_nuclear(float('inf'))",
         ValueError, 'delta must be a finite real number > 0.0, got inf.',
         'delta', 'inf', 'a finite real number > 0.0'),
    Case('lmo', 'lmo.frobenius()(jnp.ones(3))',
         ValueError, 'g must be a matrix or a batch of matrices (ndim >= 2), got shape (3,).',
         'g', '(3,)', 'ndim >= 2'),
    Case('lmo', 'lmo.spectral().norm(jnp.ones(3))',
         ValueError, 'x must be a matrix or a batch of matrices (ndim >= 2), got shape (3,).',
         'x', '(3,)', 'ndim >= 2'),
    Case('lmo', 'lmo.spectral()(jnp.ones((2, 2), jnp.int32))',
         TypeError, 'g must have a floating dtype, got int32.',
         'g', 'int32', 'floating dtype'),
    Case('optimizers', 'fo.muon(-1.0)',
         ValueError, 'learning_rate must be a finite real number >= 0.0, got -1.0.',
         'learning_rate', '-1.0', 'a finite real number >= 0.0'),
    Case('optimizers', "fo.muon('a')",
         TypeError, "learning_rate must be a finite real number >= 0.0 or a schedule, got 'a'.",
         'learning_rate', "'a'", 'a finite real number >= 0.0 or a schedule'),
    Case('optimizers', "fo.muon(float('inf'))",
         ValueError, 'learning_rate must be a finite real number >= 0.0, got inf.',
         'learning_rate', 'inf', 'a finite real number >= 0.0'),
    Case('optimizers', 'fo.muon(jnp.array([0.1, -0.1]))',
         TypeError, 'learning_rate must be a scalar (a finite real number >= 0.0), got an array of shape (2,): Array([ 0.1, -0.1], dtype=float32).',
         'learning_rate', 'Array([ 0.1, -0.1], dtype=float32)', 'a scalar (a finite real number >= 0.0)'),
    Case('optimizers', 'fo.muon(jnp.array([0.1, 0.2]))',
         TypeError, 'learning_rate must be a scalar (a finite real number >= 0.0), got an array of shape (2,): Array([0.1, 0.2], dtype=float32).',
         'learning_rate', 'Array([0.1, 0.2], dtype=float32)', 'a scalar (a finite real number >= 0.0)'),
    Case('optimizers', 'fo.muon(0.1, momentum=1.0)',
         ValueError, 'momentum must be a finite real number in [0.0, 1.0), got 1.0.',
         'momentum', '1.0', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', 'fo.muon(0.1, momentum=-0.5)',
         ValueError, 'momentum must be a finite real number in [0.0, 1.0), got -0.5.',
         'momentum', '-0.5', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', 'fo.muon(0.02, momentum=jnp.array([0.9, 0.9]))',
         TypeError, 'momentum must be a scalar (a finite real number in [0.0, 1.0)), got an array of shape (2,): Array([0.9, 0.9], dtype=float32).',
         'momentum', 'Array([0.9, 0.9], dtype=float32)', 'a scalar (a finite real number in [0.0, 1.0))'),
    Case('optimizers', 'fo.muon(0.1, nesterov=1)',
         TypeError, 'nesterov must be a bool, got 1.',
         'nesterov', '1', 'bool'),
    Case('optimizers', 'fo.muon(0.1, weight_decay=-0.1)',
         ValueError, 'weight_decay must be a finite real number >= 0.0, got -0.1.',
         'weight_decay', '-0.1', 'a finite real number >= 0.0'),
    Case('optimizers', "fo.muon(0.02, weight_decay=float('inf'))",
         ValueError, 'weight_decay must be a finite real number >= 0.0, got inf.',
         'weight_decay', 'inf', 'a finite real number >= 0.0'),
    Case('optimizers', "fo.muon(0.1, shape_scale='foo')",
         ValueError, "shape_scale must be one of ('muon', 'rms', None), got 'foo'.",
         'shape_scale', "'foo'", "one of ('muon', 'rms', None)"),
    Case('optimizers', 'fo.muon(0.1, exclude=[3])',
         TypeError, 'exclude must hold regex strings, got 3.',
         'exclude', '3', 'regex strings'),
    Case('optimizers', "fo.muon(0.1, exclude=['('])",
         ValueError, "exclude holds an invalid regex '(': missing ), unterminated subpattern at position 0",
         'exclude', "'('", 'invalid regex'),
    Case('optimizers', "fo.muon(0.1, exclude='(').init(P)",
         ValueError, "exclude holds an invalid regex '(': missing ), unterminated subpattern at position 0",
         'exclude', "'('", 'invalid regex'),
    Case('optimizers', "fo.muon(0.1, fallback='adam')",
         TypeError, "fallback must be an optax.GradientTransformation or None, got 'adam'.",
         'fallback', "'adam'", 'optax.GradientTransformation or None'),
    Case('optimizers', 'fo.muon(0.1, fallback=fo.adamw_fallback)',
         TypeError, 'fallback must be an optax.GradientTransformation or None, got <function adamw_fallback ...',
         'fallback', '<function adamw_fallback', 'optax.GradientTransformation or None'),
    Case('optimizers', 'fo.adamw_fallback(-1.0)',
         ValueError, 'learning_rate must be a finite real number >= 0.0, got -1.0.',
         'learning_rate', '-1.0', 'a finite real number >= 0.0'),
    Case('optimizers', "fo.adamw_fallback('a')",
         TypeError, "learning_rate must be a finite real number >= 0.0 or a schedule, got 'a'.",
         'learning_rate', "'a'", 'a finite real number >= 0.0 or a schedule'),
    Case('optimizers', 'fo.adamw_fallback(b1=2.0)',
         ValueError, 'b1 must be a finite real number in [0.0, 1.0), got 2.0.',
         'b1', '2.0', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', 'fo.adamw_fallback(b2=-1.0)',
         ValueError, 'b2 must be a finite real number in [0.0, 1.0), got -1.0.',
         'b2', '-1.0', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', 'fo.adamw_fallback(b2=1.0)',
         ValueError, 'b2 must be a finite real number in [0.0, 1.0), got 1.0.',
         'b2', '1.0', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', 'fo.adamw_fallback(eps=-1.0)',
         ValueError, 'eps must be a finite real number >= 0.0, got -1.0.',
         'eps', '-1.0', 'a finite real number >= 0.0'),
    Case('optimizers', "fo.adamw_fallback(weight_decay=float('nan'))",
         ValueError, 'weight_decay must be a finite real number >= 0.0, got nan.',
         'weight_decay', 'nan', 'a finite real number >= 0.0'),
    Case('optimizers', "fo.muon(0.1, mu_dtype='foo')",
         TypeError, 'mu_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got \'foo\'.',
         'mu_dtype', "'foo'", 'floating dtype'),
    Case('optimizers', 'fo.muon(0.1, mu_dtype=jnp.int32)',
         TypeError, 'mu_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'mu_dtype', 'int32', 'floating dtype'),
    Case('optimizers', 'fo.lion_k(0.1, lmo.sign(), b2=1.0)',
         ValueError, 'b2 must be a finite real number in [0.0, 1.0), got 1.0.',
         'b2', '1.0', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', "fo.muon(0.1, weight_decay_mask='x')",
         TypeError, "weight_decay_mask must be a tree of bools (or a callable returning one), got a leaf 'x'.",
         'weight_decay_mask', "'x'", 'tree of bools'),
    Case('optimizers', 'fo.f_muon(0.1, 1.5, allow_extrapolation=1)',
         TypeError, 'allow_extrapolation must be a bool, got 1.',
         'allow_extrapolation', '1', 'bool'),
    Case('optimizers', "fo.muon(0.1, split='batch')",
         TypeError, "split must be None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes), got 'batch'.",
         'split', "'batch'", 'None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes)'),
    Case('optimizers', "fo.muon(0.1, split=distributed.over_mesh(MESH, 'z'))",
         ValueError, "axes holds 'z', which is not an axis of the mesh ('d',).",
         'axes', "'z'", "('d',)"),
    Case('optimizers', "fo.muon(0.1, polar_method='x')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'x'.",
         'polar_method', "'x'", "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('optimizers', 'fo.muon(0.1, polar_method=[(1.0, 2.0)])',
         ValueError, 'polar_method given as coefficient rows must be a non-empty sequence of (a, b, c) triples, got [(1.0, 2.0)].',
         'polar_method', '[(1.0, 2.0)]', '(a, b, c) triples'),
    Case('optimizers', 'fo.muon(0.1, polar_steps=9)',
         ValueError, 'polar_steps must be in [1, 8] for polar_method="polar_express", got 9.',
         'polar_steps', '9', '[1, 8]'),
    Case('optimizers', 'fo.muon(0.1, polar_steps=2.5)',
         TypeError, 'polar_steps must be an int >= 1, got 2.5.',
         'polar_steps', '2.5', 'int >= 1'),
    Case('optimizers', 'fo.muon(0.1, polar_method=[(1.5, -0.5, 0.0)], polar_steps=2)',
         ValueError, 'polar_steps must be in [1, 1] for the 1 coefficient rows given, got 2.',
         'polar_steps', '2', '[1, 1]'),
    Case('optimizers', 'fo.muon(0.1, compute_dtype=jnp.int32)',
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'compute_dtype', 'int32', 'floating dtype'),
    Case('optimizers', 'fo.muon(0.1, dimension_numbers=DN(0, 5)).init(P)',
         ValueError, "dimension_numbers.output_axes=(5,) does not fit an array with 1 axes: axes must be in [-1, 1). (parameter 'b' of shape (4,))",
         'dimension_numbers.output_axes', '(5,)', 'axes must be in'),
    Case('optimizers', "fo.muon(0.1, dimension_numbers={'a': DN()}).init(P)",
         ValueError, 'dimension_numbers must be a DimensionNumbers, a tree or prefix tree of them matching the parameters, or a callable: pytree structure error ...',
         'dimension_numbers', None, 'tree or prefix tree'),
    Case('optimizers', 'fo.muon(0.1, dimension_numbers=lambda p: 3).init(P)',
         TypeError, "dimension_numbers for 'b' must be DimensionNumbers or None, got 3.",
         'dimension_numbers', '3', 'DimensionNumbers or None'),
    Case('optimizers', "fo.muon(0.02).init({'w': jnp.ones((3, 4), jnp.int32)})",
         TypeError, "init: parameter 'w' has dtype int32, but only floating parameters can be optimized (an integer one would be silently frozen). Keep it out of the optimized tree.",
         "'w'", 'int32', 'only floating parameters'),
    Case('optimizers', 'fo.fanion(0.1, 0)',
         ValueError, 'k must be an int >= 1, got 0.',
         'k', '0', 'int >= 1'),
    Case('optimizers', "fo.fanion(0.1, 2, top_k_method='x')",
         ValueError, "top_k_method must be one of ('subspace', 'svd'), got 'x'.",
         'top_k_method', "'x'", "one of ('subspace', 'svd')"),
    Case('optimizers', 'fo.fanion(0.1, 2, subspace_iters=-1)',
         ValueError, 'subspace_iters must be an int >= 0, got -1.',
         'subspace_iters', '-1', 'int >= 0'),
    Case('optimizers', "fo.fanion(0.1, 2, polar_method='x')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'x'.",
         'polar_method', "'x'", "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('optimizers', 'fo.fanion(0.1, 2, polar_steps=0)',
         ValueError, 'polar_steps must be an int >= 1, got 0.',
         'polar_steps', '0', 'int >= 1'),
    Case('optimizers', 'jax.jit(lambda k: fo.fanion(0.1, k))(2)',
         TypeError, "k must be a static int, got a traced value. With optax.inject_hyperparams, pass static_args=('k',), or use fanion_optax.inject_hyperparams, which does.",
         'k', None, 'static int'),
    Case('optimizers', "fo.neon(0.1, top_k_method='x')",
         ValueError, "top_k_method must be one of ('subspace', 'svd'), got 'x'.",
         'top_k_method', "'x'", "one of ('subspace', 'svd')"),
    Case('optimizers', 'fo.neon(0.1, compute_dtype=jnp.int32)',
         TypeError, 'compute_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got int32.',
         'compute_dtype', 'int32', 'floating dtype'),
    Case('optimizers', 'fo.f_muon(0.1, 1.5)',
         ValueError, 'alpha must be a finite real number in [0.0, 1.0], got 1.5.',
         'alpha', '1.5', 'a finite real number in [0.0, 1.0]'),
    Case('optimizers', "fo.f_muon(0.1, float('nan'))",
         ValueError, 'alpha must be a finite real number in [0.0, 1.0], got nan.',
         'alpha', 'nan', 'a finite real number in [0.0, 1.0]'),
    Case('optimizers', 'fo.s_muon(0.1, sign_scale=0.0)',
         ValueError, 'sign_scale must be a finite real number > 0.0, got 0.0.',
         'sign_scale', '0.0', 'a finite real number > 0.0'),
    Case('optimizers', 'fo.s_muon(0.1, 0.5, -1.0)',
         ValueError, 'sign_scale must be a finite real number > 0.0, got -1.0.',
         'sign_scale', '-1.0', 'a finite real number > 0.0'),
    Case('optimizers', "fo.s_muon(0.02, sign_scale=float('inf'))",
         ValueError, 'sign_scale must be a finite real number > 0.0, got inf.',
         'sign_scale', 'inf', 'a finite real number > 0.0'),
    Case('optimizers', 'fo.f_fanion(0.1, 2, -0.5)',
         ValueError, 'alpha must be a finite real number in [0.0, 1.0], got -0.5.',
         'alpha', '-0.5', 'a finite real number in [0.0, 1.0]'),
    Case('optimizers', "fo.f_fanion(0.1, 2, polar_method='x')",
         ValueError, "polar_method must be one of ('newton_schulz', 'polar_express', 'svd') or a sequence of (a, b, c) rows, got 'x'.",
         'polar_method', "'x'", "one of ('newton_schulz', 'polar_express', 'svd')"),
    Case('optimizers', 'fo.s_fanion(0.1, 0)',
         ValueError, 'k must be an int >= 1, got 0.',
         'k', '0', 'int >= 1'),
    Case('optimizers', 'fo.s_fanion(0.1, 2, sign_scale=0.0)',
         ValueError, 'sign_scale must be a finite real number > 0.0, got 0.0.',
         'sign_scale', '0.0', 'a finite real number > 0.0'),
    Case('optimizers', "fo.lion_k(0.1, 'spectral')",
         TypeError, "lmo must be a fanion_optax.lmo.LMO, got 'spectral'.",
         'lmo', "'spectral'", 'fanion_optax.lmo.LMO'),
    Case('optimizers', 'fo.lion_k(0.1, lmo.sign(), b1=1.5)',
         ValueError, 'b1 must be a finite real number in [0.0, 1.0], got 1.5.',
         'b1', '1.5', 'a finite real number in [0.0, 1.0]'),
    Case('optimizers', 'fo.lion_k(0.1, lmo.sign(), b2=-0.1)',
         ValueError, 'b2 must be a finite real number in [0.0, 1.0), got -0.1.',
         'b2', '-0.1', 'a finite real number in [0.0, 1.0)'),
    Case('optimizers', 'fo.inject_hyperparams(fo.fanion)(learning_rate=-1.0, k=2).init(P)',
         ValueError, 'learning_rate must be a finite real number >= 0.0, got Array(-1., dtype=float32).',
         'learning_rate', 'Array(-1., dtype=float32)', 'a finite real number >= 0.0'),
    Case('optimizers', 'fo.inject_hyperparams(fo.muon)(learning_rate=0.1, momentum=1.0).init(P)',
         ValueError, 'momentum must be a finite real number in [0.0, 1.0), got Array(1., dtype=float32).',
         'momentum', 'Array(1., dtype=float32)', 'a finite real number in [0.0, 1.0)'),
    Case('transforms', "fo.scale_by_lion_k('x')",
         TypeError, "lmo must be a fanion_optax.lmo.LMO, got 'x'.",
         'lmo', "'x'", 'fanion_optax.lmo.LMO'),
    Case('transforms', 'fo.scale_by_lion_k(lmo.sign(), b1=2.0)',
         ValueError, 'b1 must be a finite real number in [0.0, 1.0], got 2.0.',
         'b1', '2.0', 'a finite real number in [0.0, 1.0]'),
    Case('transforms', 'fo.scale_by_lion_k(lmo.sign(), b2=-1.0)',
         ValueError, 'b2 must be a finite real number in [0.0, 1.0), got -1.0.',
         'b2', '-1.0', 'a finite real number in [0.0, 1.0)'),
    Case('transforms', "fo.scale_by_lion_k(lmo.sign(), mu_dtype='foo')",
         TypeError, 'mu_dtype must be a floating dtype such as jnp.float32 or "bfloat16", got \'foo\'.',
         'mu_dtype', "'foo'", 'floating dtype'),
    Case('transforms', "fo.add_decayed_weights(0.1, weight_decay_mask={'w': 1})",
         TypeError, 'weight_decay_mask must be a tree of bools (or a callable returning one), got a leaf 1.',
         'weight_decay_mask', '1', 'tree of bools'),
    Case('transforms', "fo.scale_by_lion_k(lmo.sign(), split='d')",
         TypeError, "split must be None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes), got 'd'.",
         'split', "'d'", 'None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes)'),
    Case('transforms', 'fo.scale_by_lion_k(lmo.sign()).init(P)',
         ValueError, "scale_by_lion_k: parameter 'b' of shape (4,) has no dimension numbers. Pass dimension_numbers=, or use an alias such as fanion_optax.muon that routes non-matrix leaves to a fallback optimizer.",
         'b', '(4,)', 'dimension numbers'),
    Case('transforms', "fo.scale_by_lmo('x')",
         TypeError, "lmo must be a fanion_optax.lmo.LMO, got 'x'.",
         'lmo', "'x'", 'fanion_optax.lmo.LMO'),
    Case('transforms', 'fo.scale_by_lmo(lmo.sign()).init(P)',
         ValueError, "scale_by_lmo: parameter 'b' of shape (4,) has no dimension numbers. Pass dimension_numbers=, or use an alias such as fanion_optax.muon that routes non-matrix leaves to a fallback optimizer.",
         'b', '(4,)', 'dimension numbers'),
    Case('transforms', 'fo.scale_by_lmo(lmo.sign(), split=True)',
         TypeError, 'split must be None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes), got True.',
         'split', 'True', 'None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes)'),
    Case('transforms', "fo.scale_by_shape('foo')",
         ValueError, "shape_scale must be one of ('muon', 'rms', None), got 'foo'.",
         'shape_scale', "'foo'", "one of ('muon', 'rms', None)"),
    Case('transforms', 'fo.add_decayed_weights(-1.0)',
         ValueError, 'weight_decay must be a finite real number >= 0.0, got -1.0.',
         'weight_decay', '-1.0', 'a finite real number >= 0.0'),
    Case('transforms', 'fo.add_decayed_weights(0.1).update(P, fo.add_decayed_weights(0.1).init(P))',
         ValueError, 'add_decayed_weights needs params in update().',
         'params', None, None),
    Case('transforms', "fo.skip_nonfinite('x')",
         TypeError, "inner must be an optax.GradientTransformation, got 'x'.",
         'inner', "'x'", 'optax.GradientTransformation'),
    Case('transforms', 'fo.skip_nonfinite(True)',
         TypeError, 'inner must be an optax.GradientTransformation, got True.',
         'inner', 'True', 'optax.GradientTransformation'),
    Case('partition', 'DN(0, 0).axes(2)',
         ValueError, 'dimension_numbers reduction_axes=0 and output_axes=0 overlap.',
         'output_axes', '0', 'overlap'),
    Case('partition', 'DN((), 1).axes(2)',
         ValueError, 'dimension_numbers.reduction_axes must not be empty.',
         'dimension_numbers.reduction_axes', None, 'not be empty'),
    Case('partition', 'DN(0, 2).axes(2)',
         ValueError, 'dimension_numbers.output_axes=(2,) does not fit an array with 2 axes: axes must be in [-2, 2).',
         'dimension_numbers.output_axes', '(2,)', 'axes must be in'),
    Case('partition', 'DN((0, 0), 1).axes(3)',
         ValueError, 'dimension_numbers.reduction_axes=(0, 0) repeats an axis.',
         'dimension_numbers.reduction_axes', '(0, 0)', 'repeats an axis'),
    Case('partition', 'DN(0.5, 1).axes(2)',
         TypeError, 'dimension_numbers.reduction_axes must be an int or a sequence of ints, got 0.5.',
         'dimension_numbers.reduction_axes', '0.5', 'an int or a sequence of ints'),
    Case('partition', 'DN(0, 2).matrix_shape((3, 4))',
         ValueError, 'dimension_numbers.output_axes=(2,) does not fit an array with 2 axes: axes must be in [-2, 2).',
         'dimension_numbers.output_axes', '(2,)', 'axes must be in'),
    Case('partition', "partition.resolve_dimension_numbers(P, {'w': 'x', 'b': None})",
         TypeError, "dimension_numbers for 'w' must be DimensionNumbers or None, got 'x'.",
         'dimension_numbers', "'x'", 'DimensionNumbers or None'),
    Case('partition', "partition.resolve_dimension_numbers(P, {'a': DN()})",
         ValueError, 'dimension_numbers must be a DimensionNumbers, a tree or prefix tree of them matching the parameters, or a callable: pytree structure error ...',
         'dimension_numbers', None, 'tree or prefix tree'),
    Case('partition', 'partition.resolve_dimension_numbers(P, DN(0, 5))',
         ValueError, "dimension_numbers.output_axes=(5,) does not fit an array with 1 axes: axes must be in [-1, 1). (parameter 'b' of shape (4,))",
         'dimension_numbers.output_axes', '(5,)', 'axes must be in'),
    Case('partition', 'partition.resolve_dimension_numbers(P, exclude=[1])',
         TypeError, 'exclude must hold regex strings, got 1.',
         'exclude', '1', 'regex strings'),
    Case('partition', "partition.resolve_dimension_numbers(P, exclude=['('])",
         ValueError, "exclude holds an invalid regex '(': missing ), unterminated subpattern at position 0",
         'exclude', "'('", 'invalid regex'),
    Case('partition', "partition.shape_factor(2, 3, 'x')",
         ValueError, "shape_scale must be one of ('muon', 'rms', None), got 'x'.",
         'shape_scale', "'x'", "one of ('muon', 'rms', None)"),
    Case('partition', "partition.route(optax.sgd(0.1), optax.sgd(0.1), exclude=['('])",
         ValueError, "exclude holds an invalid regex '(': missing ), unterminated subpattern at position 0",
         'exclude', "'('", 'invalid regex'),
    Case('diagnostics', "diagnostics.constraint_report(P, 'x', weight_decay=0.1)",
         TypeError, "lmo must be a fanion_optax.lmo.LMO, got 'x'.",
         'lmo', "'x'", 'fanion_optax.lmo.LMO'),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.spectral(), weight_decay=-1.0)',
         ValueError, 'weight_decay must be a finite real number >= 0.0, got -1.0.',
         'weight_decay', '-1.0', 'a finite real number >= 0.0'),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.spectral(), weight_decay=None)',
         TypeError, 'weight_decay must be a finite real number >= 0.0 or a schedule, got None.',
         'weight_decay', 'None', 'a finite real number >= 0.0'),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.spectral(), weight_decay=0.1, rtol=-1.0)',
         ValueError, 'rtol must be a finite real number >= 0.0, got -1.0.',
         'rtol', '-1.0', 'a finite real number >= 0.0'),
    Case('diagnostics', "diagnostics.constraint_report(P, lmo.spectral(), weight_decay=0.1, shape_scale='x')",
         ValueError, "shape_scale must be one of ('muon', 'rms', None), got 'x'.",
         'shape_scale', "'x'", "one of ('muon', 'rms', None)"),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.spectral(), weight_decay=0.1, learning_rate=-1.0)',
         ValueError, 'learning_rate must be a finite real number >= 0.0, got -1.0.',
         'learning_rate', '-1.0', 'a finite real number >= 0.0'),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.spectral(), weight_decay=1.0, learning_rate=2.0)',
         ValueError, 'learning_rate * weight_decay must be <= 1 for the constraint to hold, got 2.0 * 1.0.',
         'learning_rate * weight_decay', '2.0 * 1.0', '<= 1'),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.mix((0.5, lmo.spectral())), weight_decay=0.1)',
         NotImplementedError, 'Mixture has no closed-form ball norm: the norm whose ball is a Minkowski sum of balls is an infimal convolution. Use the norms of its terms (or dual_norm) instead.',
         'Mixture', None, None),
    Case('diagnostics', 'diagnostics.constraint_report(P, lmo.spectral(), weight_decay=0.1, dimension_numbers=DN(0, 5))',
         ValueError, "dimension_numbers.output_axes=(5,) does not fit an array with 1 axes: axes must be in [-1, 1). (parameter 'b' of shape (4,))",
         'dimension_numbers.output_axes', '(5,)', 'axes must be in'),
    Case('distributed', 'distributed.over_axis(None)',
         TypeError, 'axis_name must be a hashable axis name (or a tuple of them), got None.',
         'axis_name', 'None', 'hashable axis name'),
    Case('distributed', "distributed.over_axis(['i'])",
         TypeError, "axis_name must be a hashable axis name (or a tuple of them), got ['i'].",
         'axis_name', "['i']", 'hashable axis name'),
    Case('distributed', 'distributed.over_axis(())',
         TypeError, 'axis_name must be a hashable axis name (or a tuple of them), got ().',
         'axis_name', '()', 'hashable axis name'),
    Case('distributed', "distributed.over_mesh('not a mesh')",
         TypeError, "mesh must be a jax.sharding.Mesh, got 'not a mesh'.",
         'mesh', "'not a mesh'", 'jax.sharding.Mesh'),
    Case('distributed', "distributed.over_mesh(MESH, ('d', 'z'))",
         ValueError, "axes holds 'z', which is not an axis of the mesh ('d',).",
         'axes', "'z'", "('d',)"),
    Case('distributed', 'distributed.over_mesh(MESH, ())',
         TypeError, 'axes must be a mesh axis name, a non-empty tuple of them, or None, got ().',
         'axes', '()', 'a mesh axis name, a non-empty tuple of them, or None'),
    Case('distributed', 'distributed.over_mesh(MESH, 3)',
         TypeError, 'axes must be a mesh axis name, a non-empty tuple of them, or None, got 3.',
         'axes', '3', 'a mesh axis name, a non-empty tuple of them, or None'),
    Case('distributed', "distributed.check_split('i')",
         TypeError, "split must be None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes), got 'i'.",
         'split', "'i'", 'None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes)'),
    Case('distributed', "distributed.apply_lmo(lmo.sign(), [jnp.ones((1, 2, 2))], [None], split='i')",
         TypeError, "split must be None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes), got 'i'.",
         'split', "'i'", 'None, fanion_optax.distributed.over_axis(name) or fanion_optax.distributed.over_mesh(mesh, axes)'),
]


def _matches(message: str, documented: str) -> bool:
  if documented.endswith(' ...'):
    return message.startswith(documented[:-4])
  return message == documented


def _id(case):
  return case.call


@pytest.mark.parametrize('case', CASES, ids=_id)
def test_invalid_argument_raises_documented_error(case):
  with pytest.raises(Exception) as info:  # noqa: B017 (type checked below)
    eval(case.call, _namespace())  # noqa: S307 (the table's own calls)
  assert type(info.value) is case.exception, info.value
  message = str(info.value)
  assert _matches(message, case.message), message
  for part in (case.arg, case.value, case.accepted):
    if part is not None:
      assert part in message


def test_cases_cover_every_public_entry_point():
  calls = ' '.join(c.call for c in CASES)
  names = ['fo.polar_factor(', 'fo.top_k_polar(', 'fo.coefficient_schedule(',
           'fo.lmo_gap(', 'fo.scale_by_lion_k(', 'fo.scale_by_lmo(',
           'fo.scale_by_shape(', 'fo.add_decayed_weights(',
           'fo.skip_nonfinite(', 'fo.inject_hyperparams(',
           'fo.adamw_fallback(', 'DN(',
           'partition.resolve_dimension_numbers(', 'partition.route(',
           'partition.shape_factor(', 'diagnostics.constraint_report(',
           'distributed.over_axis(', 'distributed.over_mesh(',
           'distributed.check_split(', 'distributed.apply_lmo(']
  names += [f'lmo.{n}(' for n in ('spectral', 'ky_fan', 'frobenius', 'sign',
                                  'mix', 'spectral_fn', 'schatten',
                                  'huber_nuclear')]
  names += [f'fo.{n}(' for n in ('muon', 'fanion', 'neon', 'f_muon',
                                 's_muon', 'f_fanion', 's_fanion', 'lion_k')]
  missing = [n for n in names if n not in calls]
  assert not missing
  # Messages are shown as code spans in the docs.
  assert not any('`' in c.message for c in CASES)
  assert len({c.call for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------
# The documentation table.

SECTIONS = {
    'polar': 'Polar factor: `polar_factor`, `coefficient_schedule`,'
             ' `lmo_gap`',
    'top_k_polar': 'Top-k: `top_k_polar`',
    'lmo': 'LMO constructors and methods (`fanion_optax.lmo`)',
    'optimizers': 'Optimizers (`muon`, `fanion`, `neon`, `f_muon`, `s_muon`,'
                  ' `f_fanion`, `s_fanion`, `lion_k`, `adamw_fallback`,'
                  ' `inject_hyperparams`)',
    'transforms': 'Transformations (`scale_by_*`, `add_decayed_weights`,'
                  ' `skip_nonfinite`)',
    'partition': 'Dimension numbers and routing (`fanion_optax.partition`)',
    'diagnostics': 'Diagnostics: `constraint_report`',
    'distributed': 'Work-split values (`fanion_optax.distributed`:'
                   ' `over_axis`, `over_mesh`, `check_split`, `apply_lmo`)',
}


def _cell(text):
  return text.replace('|', '\\|').replace('\n', ' ')


def _exception_name(exc):
  return exc.__name__ if exc.__module__ == 'builtins' else (
      f'{exc.__module__}.{exc.__name__}')


def _gaps(case):
  gaps = [label for part, label in ((case.arg, 'argument'),
                                    (case.value, 'value'),
                                    (case.accepted, 'range'))
          if part is None]
  return ', '.join(f'no {g}' for g in gaps) or '—'


def markdown() -> str:
  lines = []
  for api, title in SECTIONS.items():
    lines += ['', f'## {title}', '',
              '| call | exception | message | gaps |',
              '|---|---|---|---|']
    for case in CASES:
      if case.api == api:
        lines.append(
            f'| `{_cell(case.call)}` | `{_exception_name(case.exception)}` |'
            f' `{_cell(case.message)}` | {_gaps(case)} |')
  return '\n'.join(lines[1:]) + '\n'


def test_docs_table_is_current():
  with open(DOCS, encoding='utf-8') as f:
    text = f.read()
  assert NAMESPACE_DOC in text
  assert markdown() in text, (
      'docs/errors.md is out of date: regenerate the table with'
      ' `python tests/test_errors.py`')


if __name__ == '__main__':
  print(markdown(), end='')
