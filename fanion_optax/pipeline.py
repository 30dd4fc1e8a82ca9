"""The one Lion-𝒦 pipeline every optimizer of the package is built on.

`lion_k(learning_rate, lmo, b1, b2, **options)` chains

    scale_by_lion_k(lmo, b1, b2)   # ∇𝒦(b1·M + (1 − b1)·g), M ← b2·M + (1 − b2)·g
    scale_by_neuron_norm(neuron_b2)  # NorMuon, only when neuron_b2 is set
    scale_by_shape(shape_scale)    # × s
    add_decayed_weights(λ)         # + λ·X
    scale_by_learning_rate(ε)      # × −ε

on the matrix leaves and routes the others to `fallback`. It is the only
place the shared options are handled; the presets of `fanion_optax.alias`
build an LMO and `(b1, b2)` and return `lion_k(...)`. With `λ > 0` the
matrices are driven into the LMO's norm ball of radius `s/λ` (Chen, Li, Liu,
arXiv:2506.15054); see `fanion_optax.diagnostics.constraint_report`.

References:
  L. Chen, B. Liu, K. Liang, Q. Liu, arXiv:2310.05898 (Lion-𝒦).
  L. Chen, J. Li, Q. Liu, arXiv:2506.15054 (the implicit constraint).
  K. Jordan et al. (2024) (Muon and its AdamW companion).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import TypedDict
from typing import TypeVar
from typing import cast

import jax
import jax.numpy as jnp
import optax

from fanion_optax import _validate
from fanion_optax import distributed
from fanion_optax import lmo as lmo_lib
from fanion_optax import partition
from fanion_optax import transforms

if TYPE_CHECKING:
  pass

ScalarOrSchedule = optax.ScalarOrSchedule
_Factory = TypeVar('_Factory', bound=Callable[..., Any])


def _to_float32(tree: Any) -> Any:
  return jax.tree.map(
    lambda x: jnp.asarray(x).astype(jnp.promote_types(x.dtype, jnp.float32)),
    tree,
  )


def _in_float32(
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """`inner` computed (and its state kept) in at least float32.

  AdamW's second moment of a float16 gradient underflows (`(1e-4)² = 1e-8`
  is below float16's smallest subnormal), and `m / (√0 + eps)` with an `eps`
  that itself rounds to 0 is inf. Half-precision parameters therefore get
  float32 moments; updates are cast back to each parameter's dtype.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return inner.init(_to_float32(params))

  def update_fn(updates, state, params=None, **extra_args):
    out, state = inner.update(
      _to_float32(updates),
      state,
      None if params is None else _to_float32(params),
      **extra_args,
    )
    return jax.tree.map(lambda o, u: o.astype(u.dtype), out, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _mean_over(
  inner: optax.GradientTransformation, axis_name: Any
) -> optax.GradientTransformationExtraArgs:
  """`inner` applied to the updates averaged over `axis_name`.

  Under `distributed.compressed` the devices pass local gradients; the
  fallback's leaves are not compressed, so they are averaged as a
  data-parallel step would.
  """
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    mean = jax.tree.map(lambda u: jax.lax.pmean(u, axis_name), updates)
    return inner.update(mean, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def adamw_fallback(
  learning_rate: ScalarOrSchedule = 3e-4,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: ScalarOrSchedule = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """The default optimizer for non-matrix leaves: AdamW in float32.

  Why these values: the matrix learning rate of an LMO optimizer (Muon's
  0.02) is a step length in the LMO's norm and is two orders of magnitude
  too large for AdamW, so the fallback does not inherit it. 3e-4 with
  `b2 = 0.95` is what Keller Jordan's reference Muon uses for embeddings,
  heads, gains and biases. Moments are kept in float32 so that float16 and
  bfloat16 parameters stay finite. It has its own schedule: pass
  `fallback=adamw_fallback(schedule)` to warm it up or decay it.

  Args:
    learning_rate: AdamW's learning rate (or a schedule).
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to the denominator.
    weight_decay: decoupled decay, multiplied by the learning rate.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  _validate.check_scalar('learning_rate', learning_rate, low=0.0)
  _validate.check_scalar('b1', b1, low=0.0, high=1.0, high_inclusive=False)
  _validate.check_scalar('b2', b2, low=0.0, high=1.0, high_inclusive=False)
  _validate.check_scalar('eps', eps, low=0.0)
  _validate.check_scalar('weight_decay', weight_decay, low=0.0)
  return _in_float32(
    optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  )


def lion_k(
  learning_rate: ScalarOrSchedule,
  lmo: lmo_lib.LMO,
  b1: ScalarOrSchedule = 0.9,
  b2: ScalarOrSchedule = 0.99,
  *,
  weight_decay: ScalarOrSchedule = 0.0,
  weight_decay_mask: Any = None,
  shape_scale: partition.ShapeScale = 'muon',
  dimension_numbers: partition.DimensionNumbersSpec = None,
  exclude: str | Sequence[str] = (),
  fallback: optax.GradientTransformation | None = None,
  mu_dtype: jax.typing.DTypeLike | None = None,
  split: distributed.Split = None,
  neuron_b2: ScalarOrSchedule | None = None,
  neuron_eps: ScalarOrSchedule = 1e-8,
  adaptive: bool = False,
  error_feedback: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Lion-𝒦 with any LMO of `fanion_optax.lmo` as `∇𝒦`: the pipeline.

  `X ← X − ε·(s·lmo(b1·M + (1−b1)·g) + λ·X)`, `M ← b2·M + (1−b2)·g` on the
  matrix leaves; the others go to `fallback`. With `lmo.sign()` and
  `shape_scale=None` it is Lion.

  Args:
    learning_rate: ε ≥ 0, or a schedule.
    lmo: the oracle (`lmo.spectral()`, `lmo.mix(...)`, `lmo.schatten(4)`, …).
    b1: interpolation weight of the direction, in [0, 1].
    b2: momentum decay, in [0, 1).
    weight_decay: decoupled decay λ ≥ 0 for the matrices, multiplied by the
      learning rate (a schedule of the step count is accepted).
    weight_decay_mask: a tree, prefix tree or callable of booleans; `False`
      matrices get no decay.
    shape_scale: `"muon"` (`sqrt(max(1, fan_out/fan_in))`), `"rms"`
      (`0.2·sqrt(max(fan_in, fan_out))`, so AdamW learning rates and decays
      transfer) or `None`.
    dimension_numbers: a `DimensionNumbers`, a tree or prefix tree of them
      (`None` leaves go to the fallback) or a callable `params -> tree`;
      default: 2-D leaves are `(fan_in, fan_out)` matrices. Fused and
      head-packed kernels: `DimensionNumbers(0, 1, output_blocks=3)` makes
      each block of a `(d, 3d)` QKV kernel its own matrix.
    exclude: regexes searched in the parameter paths (`'embed/embedding'`);
      matches go to the fallback (embeddings and output heads;
      `fanion_optax.partition.EMBEDDINGS` is a preset for the usual Flax
      names). With the default `dimension_numbers`, `init` warns about
      embedding-like leaves left on the LMO, with the `exclude=` that fixes
      it.
    fallback: any optax transformation for the non-matrix leaves; default
      `adamw_fallback()` (AdamW at 3e-4, `b2 = 0.95`, float32 moments — its
      docstring says why it does not take `learning_rate`).
    mu_dtype: momentum dtype of the matrices (default: the parameters').
    split: how to share the LMO work between devices:
      `fanion_optax.distributed.over_axis(name)` inside `pmap`/`shard_map`,
      `over_mesh(mesh, axes)` under sharded `jit`, `compressed(name)`
      inside `pmap`/`shard_map` with each device's local gradients (Ky Fan
      LMOs only: thin factors are all-reduced, the fallback's gradients
      averaged), or `None`.
    neuron_b2: NorMuon's second-moment decay β₂ in [0, 1), or a schedule;
      `None` (default) is off. When set, each matrix's direction has every
      neuron (column of the `(fan_in, fan_out)` view) divided by the root
      of its second moment and is rescaled to RMS 0.2, before the shape
      factor, the decay and the learning rate (`scale_by_neuron_norm`;
      Li et al., arXiv:2510.05491). Pair it with `shape_scale=None` and an
      AdamW-like learning rate, as `fanion_optax.normuon` does.
    neuron_eps: ε ≥ 0 added to the root second moment (with `neuron_b2`).
    adaptive: scale each matrix's direction `D = lmo(N)` by `⟨N, D⟩`, the
      dual norm `‖N‖_†` for an exact LMO (optax's `adaptive=True` for Muon;
      see `fanion_optax.scale_by_lion_k`).
    error_feedback: Dion's error feedback for low-rank LMOs (Fanion-k, Neon,
      F-/S-Fanion-k): the part of the momentum outside the subspace the
      step used keeps its full weight, `M ← Π(E) + (I − Π)(E)/b2` (see
      `fanion_optax.scale_by_lion_k` for the mapping onto Dion; Ahn et al.,
      arXiv:2504.05295). Full-rank LMOs and `b2 = 0` raise `ValueError`.

  Returns:
    An `optax.GradientTransformationExtraArgs`. Non-finite gradients give
    non-finite updates; wrap it in `fanion_optax.skip_nonfinite` to skip
    such steps.

  References:
    Chen, Liu, Liang, Liu, arXiv:2310.05898.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import fanion_optax as fo
    >>> tx = fo.lion_k(1e-3, fo.lmo.schatten(4.0), weight_decay=0.1)
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> new_params = optax.apply_updates(params, updates)
  """
  _validate.check_scalar('learning_rate', learning_rate, low=0.0)
  if neuron_b2 is not None:
    _validate.check_scalar(
      'neuron_b2', neuron_b2, low=0.0, high=1.0, high_inclusive=False
    )
  _validate.check_scalar('neuron_eps', neuron_eps, low=0.0)
  if fallback is None:
    fallback = adamw_fallback()
  elif not isinstance(fallback, optax.GradientTransformation):
    raise TypeError(
      'fallback must be an optax.GradientTransformation or'
      f' None, got {fallback!r}.'
    )
  if isinstance(split, distributed.Compressed):
    fallback = _mean_over(fallback, split.axis_name)
  matrices = optax.chain(
    transforms.scale_by_lion_k(
      lmo,
      b1,
      b2,
      mu_dtype=mu_dtype,
      dimension_numbers=dimension_numbers,
      split=split,
      adaptive=adaptive,
      error_feedback=error_feedback,
    ),
    *(
      ()
      if neuron_b2 is None
      else (
        transforms.scale_by_neuron_norm(
          neuron_b2, neuron_eps, dimension_numbers=dimension_numbers
        ),
      )
    ),
    transforms.scale_by_shape(shape_scale, dimension_numbers=dimension_numbers),
    transforms.add_decayed_weights(weight_decay, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
  return partition.route(
    matrices, fallback, dimension_numbers=dimension_numbers, exclude=exclude
  )


class PipelineOptions(TypedDict, total=False):
  """The keyword options of `lion_k` that every preset forwards."""

  weight_decay: ScalarOrSchedule
  weight_decay_mask: Any
  shape_scale: partition.ShapeScale
  dimension_numbers: partition.DimensionNumbersSpec
  exclude: str | Sequence[str]
  fallback: optax.GradientTransformation | None
  mu_dtype: jax.typing.DTypeLike | None
  split: distributed.Split
  neuron_b2: ScalarOrSchedule | None
  neuron_eps: ScalarOrSchedule
  adaptive: bool
  error_feedback: bool


_OPTIONS = tuple(
  p
  for p in inspect.signature(lion_k).parameters.values()
  if p.kind is inspect.Parameter.KEYWORD_ONLY
)
assert tuple(p.name for p in _OPTIONS) == tuple(
  PipelineOptions.__annotations__
), 'PipelineOptions must mirror lion_k'

OPTIONS_DOC = """
    **options: the pipeline options of `fanion_optax.lion_k`, forwarded
      as they are: `weight_decay`, `weight_decay_mask`, `shape_scale`,
      `dimension_numbers`, `exclude`, `fallback`, `mu_dtype`, `split`,
      `neuron_b2`, `neuron_eps`, `adaptive`, `error_feedback`.
"""


def preset(factory: _Factory) -> _Factory:
  """Marks `factory(..., **options)` as a preset over `lion_k`.

  Its signature, as `inspect.signature` (IDEs, `help`, and
  `optax.inject_hyperparams`) sees it, lists `lion_k`'s keyword options in
  place of `**options`, so that numeric options such as `weight_decay` are
  injectable; its docstring's `{options}` line lists them.
  """
  own = inspect.signature(factory)
  params = [
    p
    for p in own.parameters.values()
    if p.kind is not inspect.Parameter.VAR_KEYWORD
  ]
  factory.__signature__ = own.replace(parameters=params + list(_OPTIONS))
  factory.__doc__ = cast(str, factory.__doc__).replace(
    '    {options}\n', OPTIONS_DOC.lstrip('\n')
  )
  return factory


STRUCTURAL_ARGS = (
  'lmo',
  'k',
  'polar_method',
  'polar_steps',
  'top_k_method',
  'subspace_iters',
  'compute_dtype',
  'gram',
  'nesterov',
  'allow_extrapolation',
  'dimension_numbers',
  'weight_decay_mask',
  'exclude',
  'fallback',
  'mu_dtype',
  'split',
  'shape_scale',
  'adaptive',
  'error_feedback',
)
"""Arguments that shape the computation rather than scale it: kept static
by `inject_hyperparams` (traced, an int cannot size an array, and optax would
call a callable such as an LMO or a mask as a schedule)."""


def inject_hyperparams(
  factory: Callable[..., Any],
  static_args: str | Sequence[str] = (),
  hyperparam_dtype: jax.typing.DTypeLike | None = None,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """`optax.inject_hyperparams` with this package's structural args static.

  Numeric hyperparameters (learning rates, decays, momentum, `alpha`,
  `sign_scale`, `b1`, `b2`) become injectable and schedulable; `k`,
  `polar_steps`, `lmo`, `dimension_numbers`, masks and the other
  `STRUCTURAL_ARGS` stay static.

  Args:
    factory: an optimizer of this package (or any optax factory).
    static_args: further argument names to keep static.
    hyperparam_dtype: as in `optax.inject_hyperparams`.

  Returns:
    The wrapped factory.

  Example:
    >>> import fanion_optax as fo
    >>> tx = fo.inject_hyperparams(fo.fanion)(learning_rate=0.5, k=4)
    >>> import jax.numpy as jnp
    >>> state = tx.init({"w": jnp.ones((8, 8))})
    >>> hp = state.hyperparams
    >>> float(hp["learning_rate"]), "weight_decay" in hp, "k" in hp
    (0.5, True, False)
  """
  extra = (static_args,) if isinstance(static_args, str) else tuple(static_args)
  parameters = inspect.signature(factory).parameters
  static = tuple(a for a in STRUCTURAL_ARGS if a in parameters) + extra
  # optax annotates `jnp.dtype | None`; it converts with `jnp.asarray(x,
  # dtype)`, which takes any DTypeLike.
  return optax.inject_hyperparams(
    factory,
    static_args=static,
    hyperparam_dtype=cast('jnp.dtype | None', hyperparam_dtype),
  )
