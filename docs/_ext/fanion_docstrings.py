"""Reads the package's Markdown-flavoured Google docstrings as Sphinx wants.

The docstrings of fanion_optax are written to read well in `help()` and on
GitHub: inline code in single backticks, Markdown pipe tables, formulas and
code indented under a paragraph. This extension, used by docs/conf.py,
renders them without editing the package:

* the `fo-auto` role (the `default_role`, so it applies to single backticks
  in docstrings) shows its text as code and links it when it names a
  documented Python object: `lion_k`, `fanion_optax.distributed.over_axis`,
  `fo.muon`, `lmo.spectral()`, `LMO.update`; anything else (`U Vᵀ`,
  `"svd"`, `k=None`) stays plain code, without a nitpicky warning;
* Markdown pipe tables in docstrings become `list-table` directives;
* the first line of a data or attribute docstring is prose, not napoleon's
  `type: description` (its colons are hidden from napoleon);
* `fanion_signature_names` (conf.py) spells out the package's own type
  aliases (`ScalarOrSchedule`) in signatures that autodoc shows as written,
  where it cannot evaluate their annotations;
* `arXiv:NNNN.NNNNN` becomes a link, and each reference of a References
  section its own paragraph;
* an indented block after a paragraph (Markdown's code block; a block quote
  in reStructuredText, whose lines would run together) becomes a literal
  block.
"""

from __future__ import annotations

import pkgutil
import re
from typing import Any

from docutils import nodes
from docutils.utils import unescape
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.nodes import make_refnode

IDENTIFIER = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\(\))?')
TOP_LEVEL = ('function', 'class', 'module', 'data', 'exception')
"""Object types an undotted name may link to (not methods or attributes,
so that `norm` or `k` in prose does not link to some class's member)."""
ALIASES = (
  ('fo.', 'fanion_optax.'),
  ('lmo_lib.', 'fanion_optax.lmo.'),
  ('polar_lib.', 'fanion_optax.polar.'),
)
"""Module aliases of the docstrings and of the package's own annotations
(shown as written where autodoc cannot evaluate them)."""
COLON = '\ue000'
"""Stands for `:` in a data docstring's first line while napoleon runs."""
ARXIV = re.compile(r'(?<![\w/])arXiv:(\d{4}\.\d{4,5})')
REFERENCE_START = re.compile(r'[A-Z]\. [A-Z]')
TABLE_RULE = re.compile(r'^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$')


# -- The `fo-auto` role ------------------------------------------------------


def auto_role(name, rawtext, text, lineno, inliner, options=None, content=None):
  del name, lineno, options, content
  text = unescape(text)
  literal = nodes.literal(rawtext, text, classes=['fo-auto'])
  if not IDENTIFIER.fullmatch(text):
    return [literal], []
  env = inliner.document.settings.env
  target = text[:-2] if text.endswith('()') else text
  node = addnodes.pending_xref(
    rawtext,
    refdomain='py',
    reftype='obj',
    reftarget=target,
    refexplicit=True,
    refwarn=False,
    refdoc=env.docname,
  )
  node['fo_auto'] = True
  node['py:module'] = env.ref_context.get('py:module')
  node['py:class'] = env.ref_context.get('py:class')
  node += literal
  return [node], []


def same_object(
  target: str, documented: str, objects: dict[str, Any]
) -> str | None:
  """`documented` if it names the same Python object as `target`."""
  if documented not in objects:
    return None
  for name in (target, f'fanion_optax.{target}'):
    try:
      if pkgutil.resolve_name(name) is pkgutil.resolve_name(documented):
        return documented
    except (ImportError, AttributeError, ValueError):
      continue
  return None


def resolve_auto(
  app: Sphinx, env: BuildEnvironment, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
  """Links a Python name that the Python domain did not find.

  Tries the current module and class, `fanion_optax.`, the module aliases
  and finally a unique suffix match. An `fo-auto` name that matches nothing
  (or several objects) becomes plain code; other references are left to
  Sphinx (and warn under nitpicky).
  """
  if node.get('refdomain') != 'py':
    return None
  auto = node.get('fo_auto', False)
  target = node['reftarget']
  for short, full in ALIASES:
    if target.startswith(short):
      target = full + target[len(short) :]
  objects = env.get_domain('py').objects
  module, cls = node.get('py:module'), node.get('py:class')
  tries = [target, f'fanion_optax.{target}']
  if module:
    tries[:0] = ([f'{module}.{cls}.{target}'] if cls else []) + [
      f'{module}.{target}'
    ]
  found = next((t for t in tries if t in objects), None)
  if found is None and (auto or '.' in target):
    suffix = '.' + target
    matches = [
      n
      for n, o in objects.items()
      if n.endswith(suffix) and ('.' in target or o.objtype in TOP_LEVEL)
    ]
    found = matches[0] if len(matches) == 1 else None
  if found is None and '.' in target:
    # `polar.singular_value_bound` is documented as the re-export
    # `fanion_optax.singular_value_bound`: the same object, another name.
    found = same_object(
      target, f'fanion_optax.{target.rsplit(".", 1)[1]}', objects
    )
  if found is None:
    private = target.startswith('fanion_optax.') and any(
      part.startswith('_') for part in target.split('.')
    )
    # Private names (a TypeVar such as pipeline._Factory in a signature)
    # are not documented: shown as text, without a nitpicky warning.
    return contnode if auto or private else None
  entry = objects[found]
  return make_refnode(
    app.builder, node['refdoc'], entry.docname, entry.node_id, contnode, found
  )


# -- Docstring rewriting -----------------------------------------------------


def split_row(line: str) -> list[str]:
  """Cells of a Markdown table row; `|` inside backticks is kept."""
  line = line.strip()
  if line.startswith('|'):
    line = line[1:]
  if line.endswith('|') and not line.endswith('\\|'):
    line = line[:-1]
  cells, current, in_code = [], [], False
  i = 0
  while i < len(line):
    char = line[i]
    if char == '\\' and line[i + 1 : i + 2] == '|':
      current.append('|')
      i += 2
      continue
    if char == '`':
      in_code = not in_code
    if char == '|' and not in_code:
      cells.append(''.join(current).strip())
      current = []
    else:
      current.append(char)
    i += 1
  cells.append(''.join(current).strip())
  return cells


def tables_to_rst(lines: list[str]) -> list[str]:
  out, i = [], 0
  while i < len(lines):
    line = lines[i]
    is_table = (
      line.lstrip().startswith('|')
      and i + 1 < len(lines)
      and TABLE_RULE.match(lines[i + 1].strip())
    )
    if not is_table:
      out.append(line)
      i += 1
      continue
    indent = line[: len(line) - len(line.lstrip())]
    rows = [split_row(line)]
    i += 2
    while i < len(lines) and lines[i].lstrip().startswith('|'):
      rows.append(split_row(lines[i]))
      i += 1
    width = len(rows[0])
    if out and out[-1].strip():
      out.append('')
    out += [f'{indent}.. list-table::', f'{indent}   :header-rows: 1', '']
    for row in rows:
      row = (row + [''] * width)[:width]
      for j, text in enumerate(row):
        bullet = '* - ' if j == 0 else '  - '
        out.append(f'{indent}   {bullet}{text}'.rstrip())
    out.append('')
  return out


def indent_of(line: str) -> int:
  return len(line) - len(line.lstrip())


def is_paragraph(line: str) -> bool:
  text = line.strip()
  return bool(text) and not (
    text.startswith(('.. ', ':', '* ', '- ', '+ ', '>>>', '...', '|'))
    or text.endswith('::')
    or re.match(r'\d+[.)] ', text)
  )


def code_blocks_to_rst(lines: list[str]) -> list[str]:
  """Indented blocks under a paragraph become literal blocks (`::`)."""
  out = list(lines)
  for i in range(len(out) - 2, 0, -1):
    before, blank, block = out[i - 1], out[i], out[i + 1]
    if blank.strip() or not is_paragraph(before) or not block.strip():
      continue
    if indent_of(block) < indent_of(before) + 4:
      continue
    # The paragraph must be flush (not a list item's or a field's hanging
    # continuation) and start like prose.
    start = i - 1
    while start > 0 and out[start - 1].strip():
      start -= 1
    paragraph = out[start:i]
    if not is_paragraph(paragraph[0]) or any(
      indent_of(line) != indent_of(before) for line in paragraph
    ):
      continue
    if before.rstrip().endswith(':'):
      out[i - 1] = before.rstrip() + ':'
    else:
      out[i:i] = ['', ' ' * indent_of(before) + '::']
  return out


def link_arxiv(line: str) -> str:
  """`arXiv:2506.15054` in prose becomes a link to the abstract."""
  if line.lstrip().startswith(('>>>', '...')):
    return line

  def link(match):
    if line[: match.start()].count('`') % 2:
      return match.group(0)  # inside inline code
    number = match.group(1)
    return f'`arXiv:{number} <https://arxiv.org/abs/{number}>`__'

  return ARXIV.sub(link, line)


def split_references(lines: list[str]) -> list[str]:
  """One paragraph per reference in napoleon's References rubric.

  A line that starts with an initial (`L. Chen`) after a line that ends a
  sentence starts a new reference; without the blank line inserted here
  consecutive references would run together into one paragraph. The
  initial's period is escaped so that the paragraph is not read as an
  enumerated list item.
  """
  out, inside = [], False
  for line in lines:
    text = line.strip()
    if text.startswith('.. rubric::'):
      inside = text.endswith('References')
    elif inside and text.startswith(('.. ', ':')):
      inside = False
    if inside and REFERENCE_START.match(text):
      if out and out[-1].rstrip().endswith(('.', ')')):
        out.append('')
      if not out or not out[-1].strip():
        # `L. Chen, ...` alone would be an enumerated list item "L.".
        line = line.replace('. ', '\\. ', 1)
    out.append(line)
  return out


def before_napoleon(app, what, name, obj, options, lines):
  del app, name, obj, options
  lines[:] = tables_to_rst(lines)
  # Napoleon reads `type: text` in the first line of a data or attribute
  # docstring as an inline type; here such lines are prose ("Jordan's
  # quintic: fast, ...", "... arXiv:2502.16982"), so hide their colons.
  if what in ('data', 'attribute', 'property') and lines:
    lines[0] = lines[0].replace(':', COLON)


def after_napoleon(app, what, name, obj, options, lines):
  del app, what, name, obj, options
  lines[:] = [
    link_arxiv(line.replace(COLON, ':'))
    for line in split_references(code_blocks_to_rst(lines))
  ]


def rename_types(app, what, name, obj, options, signature, return_annotation):
  """Spells out the `fanion_signature_names` in signatures shown as written."""
  del what, name, obj, options
  names = app.config.fanion_signature_names

  def rename(text):
    if not text:
      return text
    for short, full in names.items():
      if short != full:
        text = re.sub(rf'(?<![\w.]){re.escape(short)}(?![\w.])', full, text)
    # Sphinx prints an alias nested in a union or a generic by its repr.
    text = re.sub(r"TypeAliasForwardRef\('([\w.]+)'\)", r'\1', text)
    # A dataclass field's default_factory shows as `<factory>`, which is not
    # Python: the whole signature would then be printed unparsed.
    text = text.replace('= <factory>', '= dataclasses.field(...)')
    # Defaults that are classes (`dtype=jnp.float32`): their name, not repr.
    return re.sub(r"<class '([\w.]+)'>", r'\1', text)

  return rename(signature), rename(return_annotation)


def setup(app: Sphinx) -> dict[str, Any]:
  app.add_config_value('fanion_signature_names', {}, 'env', dict)
  app.connect('autodoc-process-signature', rename_types)
  app.add_role('fo-auto', auto_role)
  app.connect('missing-reference', resolve_auto, priority=900)
  app.connect('autodoc-process-docstring', before_napoleon, priority=400)
  app.connect('autodoc-process-docstring', after_napoleon, priority=600)
  return {
    'parallel_read_safe': True,
    'parallel_write_safe': True,
    'version': '1',
  }
