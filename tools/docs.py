"""Build the docs site offline: nbdev's processed notebooks -> Markdown -> pandoc -> static HTML in _docs/.

Quarto (what `nbdev-docs` uses) cannot be installed on our build machines. This script runs nbdev's own notebook
processing (`nbdev-proc-nbs`: front matter, hidden cells, show_doc signatures, links), then converts each processed
notebook to Markdown (cells as they are, saved outputs as text blocks, rendered Markdown, HTML and PNG images) and
renders it with pandoc: math as MathML (no script, no network), syntax highlighting, a table of contents, and the
sidebar of nbdev's sidebar.yml. Usage: python tools/docs.py [--out _docs] (tools/docs.sh wraps it).
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def process_notebooks() -> Path:
    "Run nbdev's notebook processing (what nbdev-docs does before Quarto); returns the _proc folder."
    import os
    from nbdev.config import get_config
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import proc_nbs
    import nbdev.doclinks
    os.chdir(ROOT)
    cfg = get_config()
    # what `nbdev-proc-nbs` does, without its attempt to download Quarto: nbdev.yml, the sidebar, the link index, then
    # the processing (doc_procs in pyproject.toml installs adam_lit._site's rule in every worker)
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
    proc_nbs(path=str(cfg.nbs_path), force=True)
    return ROOT / "_proc"


def front_matter(nb: dict) -> dict:
    "The YAML front matter of a processed notebook (its first raw cell), as a dict."
    import yaml
    for c in nb["cells"]:
        if c["cell_type"] == "raw":
            text = "".join(c["source"]).strip()
            if text.startswith("---"):
                return yaml.safe_load(text.strip("-\n")) or {}
    return {}


def fence(text: str, info: str = "") -> str:
    "A fenced code block longer than any backtick run in `text`."
    n = max([3] + [len(m) + 1 for m in re.findall(r"`{3,}", text)])
    return f"{'`' * n}{info}\n{text.rstrip()}\n{'`' * n}\n"


def cell_options(src: str):
    "Quarto cell options left by nbdev (`#| echo: false`, ...) and the code without them."
    opts, lines = {}, []
    for line in src.splitlines():
        m = re.match(r"^#\|\s*([\w-]+)\s*:\s*(.*)$", line)
        if m and not lines: opts[m.group(1)] = m.group(2).strip().lower()
        else: lines.append(line)
    return opts, "\n".join(lines).strip("\n")


def outputs_md(outputs, asis: bool, page: str, files: Path, counter: list) -> str:
    "Markdown for a code cell's saved outputs."
    out = []
    for o in outputs:
        kind = o.get("output_type")
        if kind == "stream":
            text = ANSI.sub("", "".join(o.get("text", "")))
            if text.strip(): out.append(fence(text, "{.output}" if False else ""))
        elif kind in ("execute_result", "display_data"):
            data = o.get("data", {})
            if "image/png" in data:
                counter[0] += 1
                name = f"{page}_fig{counter[0]}.png"
                (files / name).write_bytes(base64.b64decode("".join(data["image/png"])))
                out.append(f"![](figures/{name})\n")
            elif "text/markdown" in data:
                md = "".join(data["text/markdown"])
                out.append(md + "\n" if asis or True else fence(md))
            elif "text/html" in data:
                out.append(fence("".join(data["text/html"]), "{=html}"))
            elif "text/plain" in data:
                text = ANSI.sub("", "".join(data["text/plain"]))
                if text.strip(): out.append(fence(text))
        elif kind == "error":
            out.append(fence(ANSI.sub("", "\n".join(o.get("traceback", [])))))
    return "\n".join(out)


def notebook_md(nb: dict, page: str, files: Path, doc_host: str) -> str:
    "The page of a processed notebook as pandoc Markdown (without its front matter)."
    parts, counter = [], [0]
    for c in nb["cells"]:
        src = "".join(c.get("source", []))
        if c["cell_type"] == "raw": continue
        if c["cell_type"] == "markdown":
            if src.strip().startswith("<!-- WARNING"): continue
            parts.append(src)
            continue
        opts, code = cell_options(src)
        if opts.get("include") == "false": continue
        if code and opts.get("echo") != "false": parts.append(fence(code, "python"))
        if opts.get("output") != "false":
            parts.append(outputs_md(c.get("outputs", []), opts.get("output") == "asis", page, files, counter))
    text = "\n\n".join(p for p in parts if p.strip())
    if doc_host: text = text.replace(doc_host.rstrip("/") + "/", "")      # links into this site stay in it
    return text


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$pagetitle$ – adam_lit</title>
<link rel="stylesheet" href="site.css">
<link rel="stylesheet" href="styles.css">
<style>
$highlighting-css$
</style>
</head>
<body>
<nav id="sidebar">
<a class="brand" href="index.html">adam_lit</a>
$sidebar$
</nav>
<main id="content">
<header>
<h1 class="title">$title$</h1>
$if(description)$<p class="description">$description$</p>$endif$
</header>
$if(toc)$<nav id="toc"><h2>On this page</h2>
$table-of-contents$
</nav>$endif$
$body$
</main>
<script>
// the browser check reads this: images that did not load
window.addEventListener("load", function () {
  var bad = Array.prototype.filter.call(document.images, function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-broken-images", String(bad.length));
  document.body.setAttribute("data-images", String(document.images.length));
});
</script>
</body>
</html>
"""

SITE_CSS = """
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.55; color: #1d2125; display: flex; }
#sidebar { position: sticky; top: 0; align-self: flex-start; height: 100vh; overflow-y: auto; width: 15rem; flex: none;
           padding: 1.2rem 1rem; background: #f6f8fa; border-right: 1px solid #dde1e5; box-sizing: border-box; }
#sidebar .brand { display: block; font-weight: 700; font-size: 1.25rem; margin-bottom: 1rem; color: #2c3e50; text-decoration: none; }
#sidebar ul { list-style: none; padding: 0; margin: 0; }
#sidebar li a { display: block; padding: 0.2rem 0.4rem; border-radius: 4px; color: #2c3e50; text-decoration: none; font-size: 0.95rem; }
#sidebar li a:hover { background: #e4e9ee; }
#sidebar li a.active { background: #2780e3; color: white; }
#content { max-width: 62rem; padding: 1.5rem 2.5rem 4rem; box-sizing: border-box; min-width: 0; flex: 1; }
h1.title { margin-bottom: 0.3rem; }
p.description { font-size: 1.1rem; color: #555; margin-top: 0; }
#toc { float: right; width: 14rem; margin: 0 0 1rem 1.5rem; padding: 0.6rem 0.8rem; font-size: 0.85rem; border-left: 3px solid #2780e3; background: #fafbfc; }
#toc h2 { font-size: 0.95rem; margin: 0 0 0.3rem; }
#toc ul { padding-left: 1rem; margin: 0; }
pre { background: #f6f8fa; padding: 0.7rem 0.9rem; overflow-x: auto; border-radius: 6px; font-size: 0.85rem; line-height: 1.4; }
code { font-family: "SFMono-Regular", Consolas, "Liberation Mono", Menlo, monospace; }
p code, li code, td code { background: #f1f3f5; padding: 0.05rem 0.25rem; border-radius: 3px; font-size: 0.9em; }
pre.sourceCode.python { border-left: 3px solid #2780e3; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #dde1e5; padding: 0.3rem 0.6rem; }
th { background: #f1f3f5; }
td:first-child { white-space: nowrap; }
img { max-width: 100%; height: auto; }
math[display="block"] { overflow-x: auto; margin: 0.8rem 0; }
a { color: #2780e3; }
hr { border: none; border-top: 1px solid #dde1e5; margin: 1.5rem 0; }
"""


def sidebar_pages(proc: Path):
    "(notebook, page file, title) for each page of nbdev's sidebar.yml, in its order."
    import yaml
    side = yaml.safe_load((proc / "sidebar.yml").read_text())
    entries = side["website"]["sidebar"]["contents"]
    pages = []
    for e in entries:
        if isinstance(e, str) and e.endswith(".ipynb") and (proc / e).exists():
            nb = json.loads((proc / e).read_text())
            fm = front_matter(nb)
            out = fm.get("output-file") or (Path(e).stem.split("_", 1)[-1] + ".html")
            if Path(e).stem == "index": out = "index.html"
            pages.append((e, out, fm.get("title") or Path(e).stem, fm, nb))
    return pages


def build(out: Path, proc: Path | None = None):
    proc = proc or process_notebooks()
    from nbdev.config import get_config
    doc_host = (get_config().get("doc_host", "") or "") + (get_config().get("doc_baseurl", "") or "")
    if out.exists(): shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    shutil.copytree(ROOT / "nbs" / "images", out / "images")
    shutil.copy(ROOT / "nbs" / "styles.css", out / "styles.css")
    (out / "site.css").write_text(SITE_CSS)
    pages = sidebar_pages(proc)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "template.html").write_text(TEMPLATE)
        for nbname, page, title, fm, nb in pages:
            stem = Path(page).stem
            active = lambda p: ' class="active"' if p == page else ""
            items = "\n".join(f'<li><a href="{p}"{active(p)}>{html.escape(str(t))}</a></li>' for _, p, t, _, _ in pages)
            md = notebook_md(nb, stem, out / "figures", doc_host)
            meta = {"title": str(title), "pagetitle": str(title)}
            if fm.get("description"): meta["description"] = str(fm["description"])
            src = tmp / f"{stem}.md"
            src.write_text("---\n" + json.dumps(meta) + "\n---\n\n" + md)
            cmd = ["pandoc", str(src), "-f", "markdown+tex_math_dollars+raw_html-implicit_figures", "-t", "html5",
                   "--standalone", "--mathml", "--template", str(tmp / "template.html"), "--toc", "--toc-depth=3",
                   "--highlight-style=pygments", "-V", f"sidebar=<ul>{items}</ul>",
                   "--metadata", "lang=en", "-o", str(out / page)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"pandoc failed on {nbname}:\n{r.stderr}")
            if r.stderr.strip(): print(f"{nbname}: {r.stderr.strip()}", file=sys.stderr)
            print(f"{nbname:28} -> {out / page}")
    return pages


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="output folder (default _docs)")
    ap.add_argument("--no-proc", action="store_true", help="reuse _proc/ from a previous nbdev-proc-nbs run")
    a = ap.parse_args()
    build(Path(a.out), ROOT / "_proc" if a.no_proc else None)
