#!/usr/bin/env bash
# Builds the documentation with every warning an error, then runs the
# doctests of the pages (the `{doctest}`/`{testcode}` blocks of the Markdown
# pages and the `>>>` examples of the docstrings).
#
#   pip install -e ".[docs]"      # once (Python >= 3.11)
#   bash docs/build.sh            # html + doctest
#   bash docs/build.sh html       # only the html
#   bash docs/build.sh linkcheck  # external links (needs the network)
#
# Each builder starts from a fresh environment (-E): an incremental Sphinx
# build does not repeat the warnings of pages it does not re-read, so a
# second run could pass where a fresh one (CI) fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
builders=("$@")
if [ ${#builders[@]} -eq 0 ]; then
  builders=(html doctest)
fi
for builder in "${builders[@]}"; do
  start=$SECONDS
  "$PYTHON" -m sphinx -E -W --keep-going -b "$builder" docs \
    "docs/_build/$builder"
  echo "docs: $builder built in $((SECONDS - start)) s:" \
    "$(pwd)/docs/_build/$builder"
done
if [ -f docs/_build/html/index.html ]; then
  echo "docs: open file://$(pwd)/docs/_build/html/index.html"
fi
