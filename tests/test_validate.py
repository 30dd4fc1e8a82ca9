"""`fanion_optax._validate`: argument checks name the argument and value."""

import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fanion_optax import _validate


@pytest.mark.parametrize(
  'value, error, shown',
  [
    (float('inf'), ValueError, 'inf'),
    (-float('inf'), ValueError, '-inf'),
    (float('nan'), ValueError, 'nan'),
    (np.inf, ValueError, 'inf'),
    (jnp.asarray(jnp.nan), ValueError, 'nan'),
    (np.array([0.1, 0.2]), TypeError, 'array([0.1, 0.2])'),
    (jnp.array([0.1, 0.2]), TypeError, '[0.1, 0.2]'),
    (True, TypeError, 'True'),
    (None, TypeError, 'None'),
    ('0.1', TypeError, "'0.1'"),
  ],
  ids=[
    'inf',
    '-inf',
    'nan',
    'np.inf',
    'jnp_nan',
    'np_2_elements',
    'jnp_2_elements',
    'True',
    'None',
    'string',
  ],
)
def test_check_scalar_refuses_with_name_and_value(value, error, shown):
  with pytest.raises(error) as info:
    _validate.check_scalar('learning_rate', value, low=0.0)
  message = str(info.value)
  assert message.startswith('learning_rate must be'), message
  assert shown in message, message


@pytest.mark.parametrize(
  'value',
  [
    jnp.asarray(0.5),
    jnp.asarray(2, jnp.int32),
    np.asarray(0.5),
    3,
    0.25,
    np.float32(0.5),
  ],
  ids=['jnp_0d', 'jnp_0d_int', 'np_0d', 'int', 'float', 'np_float32'],
)
def test_check_scalar_accepts_finite_real_scalars(value):
  assert _validate.check_scalar('learning_rate', value, low=0.0) is None
  assert (
    _validate.check_scalar('learning_rate', value, low=0.0, schedule=False)
    is None
  )


def test_check_scalar_accepts_a_schedule_unless_schedule_false():
  schedule = optax.linear_schedule(0.1, 0.0, 10)
  assert _validate.check_scalar('learning_rate', schedule, low=0.0) is None
  assert _validate.check_scalar('learning_rate', lambda count: 0.1) is None
  with pytest.raises(
    TypeError,
    match=r'^eps must be a finite real number >= 0\.0, got'
    r' the callable',
  ):
    _validate.check_scalar('eps', schedule, low=0.0, schedule=False)


@pytest.mark.parametrize(
  'kwargs, value, message',
  [
    (
      dict(low=0.0, high=1.0, high_inclusive=False),
      1.0,
      'momentum must be a finite real number in [0.0, 1.0), got 1.0.',
    ),
    (
      dict(low=0.0, high=1.0),
      -0.5,
      'momentum must be a finite real number in [0.0, 1.0], got -0.5.',
    ),
    (
      dict(low=0.0, low_inclusive=False),
      0.0,
      'momentum must be a finite real number > 0.0, got 0.0.',
    ),
    (
      dict(high=1.0, high_inclusive=False),
      2,
      'momentum must be a finite real number < 1.0, got 2.',
    ),
  ],
)
def test_check_scalar_range_messages(kwargs, value, message):
  with pytest.raises(ValueError, match=f'^{re.escape(message)}$'):
    _validate.check_scalar('momentum', value, **kwargs)
  # The bounds themselves are accepted where inclusive.
  low = kwargs.get('low')
  if low is not None and kwargs.get('low_inclusive', True):
    _validate.check_scalar('momentum', low, **kwargs)
