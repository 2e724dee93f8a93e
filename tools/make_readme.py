"""Write README.md from nbs/index.ipynb without Quarto (nbdev-readme needs it).

Markdown cells are copied; code cells become ```python blocks followed by their saved text output; cells whose
first directive is `#| hide` are left out, and directive lines are dropped. `--check` exits 1 if README.md differs.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _text(x): return "".join(x) if isinstance(x, list) else x

def render(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb["cells"]:
        src = _text(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(src.strip())
            continue
        if cell["cell_type"] != "code": continue
        lines = src.splitlines()
        directives = [l for l in lines if re.match(r"\s*#\s*\|", l)]
        if any(re.match(r"\s*#\s*\|\s*(hide|exporti?|default_exp)\b", d) for d in directives): continue
        code = "\n".join(l for l in lines if l not in directives).strip()
        if code: parts.append(f"```python\n{code}\n```")
        for out in cell.get("outputs", []):
            text = _text(out.get("text", "")) or _text(out.get("data", {}).get("text/plain", ""))
            if text.strip(): parts.append("    " + "\n    ".join(text.rstrip().splitlines()))
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    out = render()
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != out:
            sys.exit("README.md is not the one generated from nbs/index.ipynb: run `python tools/make_readme.py`")
    else:
        readme.write_text(out)
