"""Sphinx configuration of the fanion_optax documentation.

Build (every warning is an error), or run `bash docs/build.sh`:

    python -m sphinx -E -W --keep-going -b html docs docs/_build/html
    python -m sphinx -E -W --keep-going -b doctest docs docs/_build/doctest

Generated at build time (git-ignored, never edit): `docs/_generated/`
(benchmark pages from `benchmarks/results/*.json`) and `docs/notebooks/`
(copies of `notebooks/*.ipynb` and `notebooks/README.md`, rendered with their
committed outputs, never executed).
"""

from __future__ import annotations

import doctest
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, os.path.join(DOCS, '_ext'))
sys.path.insert(0, ROOT)

import fanion_optax  # noqa: E402

# -- Project -----------------------------------------------------------------

project = 'fanion_optax'
author = 'fanion_optax developers'
copyright = '2026, fanion_optax developers'  # noqa: A001
release = fanion_optax.__version__
version = '.'.join(release.split('.')[:2])

# -- Extensions --------------------------------------------------------------

extensions = [
  'sphinx.ext.autodoc',
  'sphinx.ext.autosummary',
  'sphinx.ext.napoleon',
  'sphinx.ext.mathjax',
  'sphinx.ext.doctest',
  'sphinx.ext.viewcode',
  'myst_nb',  # also registers myst_parser for the .md pages
  'sphinx_copybutton',
  # docs/_ext/
  'fanion_docstrings',  # Markdown-flavoured docstrings, `name` links
  'fanion_notebooks',  # copies notebooks/ into docs/notebooks/
  'fanion_benchmarks',  # benchmark pages from benchmarks/results/*.json
]

source_suffix = {
  '.rst': 'restructuredtext',
  '.md': 'myst-nb',
  '.ipynb': 'myst-nb',
}
root_doc = 'index'
exclude_patterns = [
  '_build',
  'Thumbs.db',
  '.DS_Store',
  '**.ipynb_checkpoints',
  # Included into benchmarks.md, not a page of its own.
  '_generated/benchmarks_summary.md',
]
templates_path: list[str] = []
# Single backticks in the docstrings (reStructuredText's default role): code,
# linked when the text names a documented object (docs/_ext/fanion_docstrings).
default_role = 'fo-auto'

# -- Warnings: every one is an error (-W), cross-references included ---------

nitpicky = True
# Types of the dependencies and of the standard library in signatures are
# shown as text: there is no intersphinx (the build must work offline, and
# the inventories would come from the network). Builtins resolve by
# themselves; every other unresolved reference is an error.
nitpick_ignore_regex = [
  ('py:.*', r'(jax|jaxlib|optax|numpy|np|jnp|chex|flax)\..*'),
  ('py:.*', r'(collections\.abc|typing)\..*'),
]

# -- autodoc / autosummary / napoleon ----------------------------------------

autodoc_default_options = {
  'member-order': 'bysource',
}
autodoc_typehints = 'signature'
autodoc_typehints_format = 'short'
autodoc_class_signature = 'mixed'
# Type aliases are shown by name (linked where the alias is documented here)
# instead of expanded into long unions: autodoc_type_aliases where autodoc
# evaluates the annotations (the keys are the spellings used in the
# package's annotations), and fanion_signature_names (docs/_ext/
# fanion_docstrings.py) where it shows them as written (the presets, whose
# **options annotation uses typing.Unpack and cannot be evaluated).
_ALIASES = {
  'fanion_optax.distributed.Split': ('Split', 'distributed.Split'),
  'fanion_optax.lmo.Shape': ('Shape',),
  'fanion_optax.lmo.State': ('State',),
  'fanion_optax.lmo.TopKMethod': ('TopKMethod', 'lmo_lib.TopKMethod'),
  'fanion_optax.partition.DimensionNumbersSpec': (
    'DimensionNumbersSpec',
    'partition.DimensionNumbersSpec',
  ),
  'fanion_optax.partition.ShapeScale': ('ShapeScale', 'partition.ShapeScale'),
  'fanion_optax.polar.CoefficientRows': ('CoefficientRows',),
  'fanion_optax.polar.PolarMethod': ('PolarMethod', 'polar_lib.PolarMethod'),
  'fanion_optax.polar.Gram': ('Gram', 'polar_lib.Gram'),
  'jax.typing.ArrayLike': ('jax.typing.ArrayLike',),
  'jax.typing.DTypeLike': ('jax.typing.DTypeLike',),
  'optax.GradientTransformationExtraArgs': ('Optimizer',),
  'optax.ScalarOrSchedule': ('ScalarOrSchedule', 'optax.ScalarOrSchedule'),
}
autodoc_type_aliases = {
  spelling: full
  for full, spellings in _ALIASES.items()
  for spelling in spellings
}
fanion_signature_names = autodoc_type_aliases
autosummary_generate = False
python_use_unqualified_type_names = True
add_module_names = False
toc_object_entries_show_parents = 'hide'

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # Attributes: as a field list (no duplicate entries)
napoleon_attr_annotations = False  # their prose says it; no long type lines
napoleon_use_rtype = False

# -- MyST / myst-nb ----------------------------------------------------------

myst_enable_extensions = [
  'amsmath',
  'dollarmath',
  'colon_fence',
  'deflist',
]
myst_heading_anchors = 3
myst_dmath_double_inline = True
nb_execution_mode = 'off'  # the committed outputs are shown as they are
nb_output_stderr = 'show'
nb_merge_streams = True

# -- Doctest -----------------------------------------------------------------

# The `{doctest}` / `{testcode}` blocks of the Markdown pages, and the `>>>`
# examples of the docstrings (also run by pytest --doctest-modules), with
# pytest's option flags.
doctest_default_flags = (
  doctest.ELLIPSIS
  | doctest.NORMALIZE_WHITESPACE
  | doctest.DONT_ACCEPT_TRUE_FOR_1
)
doctest_global_setup = """
import os
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
"""

# -- HTML --------------------------------------------------------------------

html_theme = 'sphinx_book_theme'
html_title = f'fanion_optax {release}'
html_static_path = ['_static']
html_css_files = ['custom.css']
html_theme_options = {
  'repository_url': 'https://github.com/fanion-optax/fanion_optax',
  'repository_branch': 'main',
  'path_to_docs': 'docs',
  'use_repository_button': True,
  'use_source_button': False,
  'use_edit_page_button': False,
  'use_download_button': True,
  'show_toc_level': 2,
  'home_page_in_toc': True,
}
copybutton_prompt_text = r'>>> |\.\.\. |\$ '
copybutton_prompt_is_regexp = True

# -- Link check (needs the network: run in GitHub Actions, not offline) ------

linkcheck_timeout = 30
linkcheck_retries = 2
linkcheck_anchors_ignore_for_url = [
  # GitHub renders README anchors with JavaScript.
  r'https://github\.com/.*',
]
linkcheck_ignore = [
  # The notebooks' "Open in Colab" links: Colab answers every such URL
  # with its (JavaScript) app page, so checking them proves nothing.
  r'https://colab\.research\.google\.com/github/.*',
]
