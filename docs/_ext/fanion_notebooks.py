"""The notebooks of `notebooks/` as pages, with their committed outputs.

Sphinx reads sources only under `docs/`, so at `builder-inited` this copies
every `notebooks/*.ipynb` to `docs/notebooks/` (git-ignored) and
`notebooks/README.md` to `docs/notebooks/index.md`, followed by a hidden
toctree over the copies in the order the README links them. myst-nb renders
them with `nb_execution_mode = "off"`: nothing is executed, the outputs
shown are the committed ones. Any `.ipynb` added to `notebooks/` is picked
up; their jupytext sources (`.py` beside them) are not copied. Files are
written only when their bytes change, and copies whose notebook is gone are
removed.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from sphinx.application import Sphinx

TOCTREE = """

```{{toctree}}
:hidden:

{entries}
```
"""


def write_if_changed(path: str, data: bytes) -> None:
  if os.path.exists(path):
    with open(path, 'rb') as f:
      if f.read() == data:
        return
  with open(path, 'wb') as f:
    f.write(data)


def copy_notebooks(app: Sphinx) -> None:
  docs = app.srcdir
  source = os.path.join(os.path.dirname(os.path.abspath(docs)), 'notebooks')
  target = os.path.join(docs, 'notebooks')
  os.makedirs(target, exist_ok=True)
  wanted = {}
  for path in sorted(glob.glob(os.path.join(source, '*.ipynb'))):
    with open(path, 'rb') as f:
      wanted[os.path.basename(path)] = f.read()
  readme = os.path.join(source, 'README.md')
  if os.path.exists(readme):
    with open(readme, 'rb') as f:
      text = f.read().decode('utf-8')
  else:
    text = '# Notebooks\n'
  # The README's order (that of its links), then any other notebook.
  names = [n[:-6] for n in wanted]
  linked = [n for n in re.findall(r'\]\(([\w-]+)\.ipynb\)', text) if n in names]
  order = list(dict.fromkeys(linked + names))
  wanted['index.md'] = (
    text.rstrip('\n') + TOCTREE.format(entries='\n'.join(order))
  ).encode('utf-8')
  for name, data in wanted.items():
    write_if_changed(os.path.join(target, name), data)
  for name in os.listdir(target):
    if name not in wanted and (name.endswith('.ipynb') or name.endswith('.md')):
      os.remove(os.path.join(target, name))


def setup(app: Sphinx) -> dict[str, Any]:
  app.connect('builder-inited', copy_notebooks)
  return {
    'parallel_read_safe': True,
    'parallel_write_safe': True,
    'version': '1',
  }
