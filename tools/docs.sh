#!/usr/bin/env bash
# Build the docs site offline into _docs/ (nbdev's processed notebooks -> pandoc, no Quarto; Pagefind's search
# index), then open every page in headless Chromium and check it (tools/check_docs.py). Installs Debian's pandoc,
# chromium and fonts-lmodern (the math font the site carries) when missing and apt-get is usable; uses .venv (made with the dev extra when missing).
# ADAM_LIT_DOCS_STRICT_IMPORTS=1 also fails on cells that mix imports and other code (see tools/docs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v pandoc >/dev/null || need+=(pandoc)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
[ -n "$(find /usr/share/texmf/fonts /usr/share/fonts -name latinmodern-math.otf 2>/dev/null | head -1)" ] || need+=(fonts-lmodern)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing ${need[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tools/docs.sh needs: ${need[*]} (Debian: apt-get install ${need[*]})" >&2; exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  ${PYTHON:-python3} -m venv .venv
  .venv/bin/python -m pip install -q -e ".[dev]"
fi
if ! .venv/bin/python -c "import pagefind" 2>/dev/null; then
  echo "== installing pagefind[bin] (PyPI; the site's static search)"
  .venv/bin/python -m pip install -q "pagefind[bin]"
fi
echo "== building _docs/ (nbdev-proc-nbs, then pandoc, then pagefind)"
.venv/bin/python tools/docs.py --out _docs
echo "== checking every page in headless Chromium"
.venv/bin/python tools/check_docs.py _docs
