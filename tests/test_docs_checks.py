"""The pure-Python parts of the docs build and its checker (tools/docs.py, tools/check_docs.py); the browser checks
themselves are tested on a planted site in nbs/14_site.ipynb (where Chromium is installed)."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod


docs, check = load("docs"), load("check_docs")


def page(body: str):
    "The parsed main column of a page of the real template with `body` in it."
    html = docs.TEMPLATE.replace("$body$", body).replace("$title$", "Title")
    return check.parse(html)


def out(s): return f'<pre class="output"><code>{s}</code></pre>'
def code(s): return f'<div class="sourceCode"><pre class="sourceCode python"><code>{s}</code></pre></div>'


@pytest.mark.parametrize("body, what", [
    (out("optimizer.py:478: RuntimeWarning: invalid value"), "a warning in an output"),
    (out("UserWarning: Gradients do not exist"), "a warning in an output"),
    (out("Warning: Maximum number of iterations"), "a warning in an output"),
    (out("written to /root/run.npz"), "an absolute path"),
    (out("lib/python3.11/site-packages/numpy"), "an absolute path"),
    (out("plot: tmppk5zdlpt/demo.png"), "a temporary path"),
    (out("&lt;ipython-input-8-653bd6738285&gt;:18"), "<ipython-input-...>"),
    (out("{0.9: np.float64(0.8912)}"), "a NumPy scalar repr"),
    ("<p>as Keras computes it (SPEC §5.3)</p>", "'SPEC'"),
    (code("x = 1  # SPEC 5.3"), "'SPEC'"),
    ("<p>the bench (issue 8) compares</p>", "an issue number"),
    ("<p>fixed in #12 last week</p>", "an issue number"),
    (code("test_eq(1, 1)\nfor i in range(2): test_close(i, i)\nassert True"), "visible test-only code cell"),
    ("<h2>AdamW</h2><p>text</p><h3>AdamW</h3>", "duplicated heading 'AdamW'"),
    ("<p>*The Keras example: one step on var**2/2 from\n10.0.*</p>", "literal asterisks"),
    ("<p>a **bold** claim</p>", "literal asterisks"),
])
def test_each_defect_is_named(body, what):
    found = check.text_problems("p.html", page(body))
    assert len(found) == 1 and found[0].startswith("p.html: ") and what in found[0], found


@pytest.mark.parametrize("body", [
    code("x = np.float32(0.1)\ntest_eq(x, x)"),                 # code may build NumPy scalars, and test after use
    out("9.9 np.float64 is the type"), "<p>RuntimeWarning is what NumPy emits</p>",   # prose may name a warning
    code("# colour #ff0000\nx = tmp_path"), "<p>see section 3, step #</p>",
    code("def Adam(\n    lr=0.1, # comment\n):"),               # a show_doc signature is not a cell
    "<h2>Adam</h2><h3>Adam.step</h3>",
    "<p>a * b * c, x*y*z, and 2 ** 3</p>",
])
def test_clean_pages_pass(body):
    assert check.text_problems("p.html", page(body)) == []


def test_navigation_text_is_not_checked():
    # the sidebar, the table of contents and previous/next links are navigation, not the page's text
    html = docs.TEMPLATE.replace("$sidebar$", "<ul><li>issue 8</li></ul>").replace("$body$", "<p>ok</p>")
    assert check.text_problems("p.html", check.parse(html)) == []


def test_show_doc_heading_equal_to_the_previous_one_is_dropped():
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["## AdamW\n", "Adam with decoupled weight decay."]},
        {"cell_type": "code", "source": ["#| echo: false\n", "#| output: asis\n", "show_doc(AdamW)"],
         "outputs": [{"output_type": "display_data", "data": {"text/markdown": ["---\n\n### AdamW\n\n```python\nclass AdamW(\n):\n```"]}}]},
        {"cell_type": "code", "source": ["#| echo: false\n", "#| output: asis\n", "show_doc(AdamW.build)"],
         "outputs": [{"output_type": "display_data", "data": {"text/markdown": ["---\n\n### AdamW.build\n\n```python\ndef build(\n):\n```"]}}]},
    ]}
    md = docs.notebook_md(nb, "p", Path("."), "")
    assert re.findall(r"(?m)^#+ .*$", md) == ["## AdamW", "### AdamW.build"]
    assert md.count("::: {.doc-block}") == 2


def test_numbers_in_tables_do_not_break():
    html = docs.nbsp_numbers("<p>1 000</p><table><tr><td>10 × 1 000 000</td><th>2 500</th><td>1 2</td></tr></table>")
    assert "<p>1 000</p>" in html and "10 × 1\u00a0000\u00a0000" in html and "2\u00a0500" in html and "1 2" in html


def test_sections_order_and_unknown_pages(tmp_path, capsys):
    for n in ("index", "04_adam", "20_adam_gently", "24_quickstart", "99_new"):
        (tmp_path / f"{n}.ipynb").write_text(json.dumps({"cells": []}))
    sm = docs.site_map(tmp_path)
    assert sm == [("Get started", ["index.ipynb", "24_quickstart.ipynb"]), ("Explanations", ["20_adam_gently.ipynb"]),
                  ("API reference", ["04_adam.ipynb"]), ("More", ["99_new.ipynb"])]
    assert "99_new.ipynb" in capsys.readouterr().err
    yml = docs.sidebar_yml(tmp_path)
    assert "- section: Get started" in yml and "          - 24_quickstart.ipynb" in yml


def test_every_page_is_in_a_section():
    # each notebook of the site has its place in SECTIONS (a new page must be given one)
    stems = {docs.page_stem(f.name) for f in (ROOT / "nbs").glob("*.ipynb")}
    placed = {s for _, pages in docs.SECTIONS for s in pages}
    assert stems <= placed, stems - placed


def test_test_only():
    assert check.test_only("test_eq(a, 1)\nassert b")
    assert check.test_only("for k in ks:\n    test_fail(lambda: f(k))")
    assert not check.test_only("x = f()\ntest_eq(x, 1)")
    assert not check.test_only("")
    assert not check.test_only("def f(\n")


def test_formula_pandoc_could_not_render():
    bad = '<p>step <span class="math inline">$\\sqrt{\\vphantom{V}v}$</span></p>'
    good = '<p>step <span class="math inline"><math display="inline"><msqrt><mi>v</mi></msqrt></math></span></p>'
    found = check.math_problems("p.html", bad)
    assert len(found) == 1 and "could not render" in found[0] and "vphantom" in found[0], found
    assert check.math_problems("p.html", good) == []


def test_math_accents_are_mathml_cores():
    "Pandoc's combining hat and tilde become `^` and `~` (drawn apart, stretched by a math font); other accents stay."
    hat = '<mover><mi>v</mi><mo accent="true">\u0302</mo></mover>'
    tilde = '<mover><mi>v</mi><mo accent="true">\u0303</mo></mover>'
    bar = '<mover><mi>v</mi><mo accent="true">\u203e</mo></mover>'
    got = docs.math_accents(hat + tilde + bar)
    assert got == hat.replace("\u0302", "^") + tilde.replace("\u0303", "~") + bar


def test_signature_return_comment_lines_are_comments():
    "A Returns description of several lines: its later lines commented in the signature block, the rest untouched."
    md = ("### f\n\n```python\ndef f(\n    a:int, # the a\n): # the first line\nthe second line\n    and a third\n```\n\n"
          "Text after.\n\n```python\nnot touched\n```\n")
    got = docs.signature_comments(md)
    assert "# the second line\n#     and a third\n```" in got and "    a:int, # the a\n" in got
    assert got.endswith("```python\nnot touched\n```\n")
    one = "```python\ndef g(): # one line\nmore\n```"
    assert docs.signature_comments(one) == "```python\ndef g(): # one line\n# more\n```"
    plain = "```python\ndef h(x):\n    return x\n```"
    assert docs.signature_comments(plain) == plain


def test_repository_paths_in_prose_are_links():
    "A repository file named in a code span becomes a link to its source; a missing path, a linked one, text elsewhere stay."
    md = ("checked by `tests/test_docs_checks.py`; see [`tests/conftest.py`](x) and `tests/no_such_file.py`, "
          "`adam_lit/rules.py`.")
    got = docs.repo_links(md, "https://github.com/o/r", "main", ROOT)
    assert "[`tests/test_docs_checks.py`](https://github.com/o/r/blob/main/tests/test_docs_checks.py)" in got
    assert "[`tests/conftest.py`](x)" in got and "`tests/no_such_file.py`" in got and "[`tests/no_such" not in got
    assert "`adam_lit/rules.py`" in got and docs.repo_links(md, "") == md


def test_math_font_css(tmp_path, monkeypatch):
    "The math font's CSS names the copied file (or is empty, with a note, where no math font is installed)."
    css = docs.math_font(tmp_path)
    if css:
        assert 'url("fonts/latinmodern-math.otf")' in css and "font-size: 115%" in css
        assert (tmp_path / "fonts" / "latinmodern-math.otf").stat().st_size > 100_000
    monkeypatch.setattr(docs, "MATH_FONTS", ("no-such-font.otf",))
    assert docs.math_font(tmp_path) == ""


def test_each_page_links_its_notebook():
    "The line under the title: the notebook the page is made from, where its code and hidden tests are."
    html = docs.notebook_html("_proc/04_adam.ipynb", "https://github.com/o/r", "main")
    assert 'href="https://github.com/o/r/blob/main/nbs/04_adam.ipynb"' in html and "hidden here" in html
    assert docs.notebook_html("04_adam.ipynb", "") == ""
    assert "$notebook$" in docs.TEMPLATE


def test_figure_alt_text_from_the_cell(tmp_path):
    "`#| fig-alt:` (Quarto's option) is the figure's alt text, its case kept; other options are still read lowercased."
    opts, code = docs.cell_options("#| echo: False\n#| fig-alt: Loss against Step, [two] lines\nplot()")
    assert opts == {"echo": "false", "fig-alt": "Loss against Step, [two] lines"} and code == "plot()"
    png = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}}
    md = docs.outputs_md([png], False, "p", tmp_path, [0], opts["fig-alt"])
    assert md.startswith("[![Loss against Step, two lines](figures/p_fig1.png)]")


def test_saved_source_links_point_at_their_definitions():
    """A `show_doc` output saved in a notebook links its module at a line number: after an edit above it that line must
    still be the definition's (`def`, `class` or a decorator), else the notebook needs `nbdev-test --save`."""
    found, wrong = 0, []
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for o in cell.get("outputs", []):
                for data in o.get("data", {}).values():
                    text = "".join(data) if isinstance(data, list) else str(data)
                    for m in re.finditer(r'#+ ([\w.]+)\s+<p class="source-links">.*?adam_lit/(\w+\.py)#L(\d+)', text, re.S):
                        found += 1
                        name, mod, line = m.group(1).split(".")[-1], m.group(2), int(m.group(3))
                        lines = (ROOT / "adam_lit" / mod).read_text().splitlines()
                        at = lines[line - 1] if line <= len(lines) else ""
                        if not re.match(rf"\s*(@|def {name}\b|class {name}\b)", at):
                            wrong.append(f"{nb.name}: {m.group(1)} -> {mod} line {line}: {at.strip()[:60]!r}")
    assert found >= 10                      # (the optimizer, Optax and Keras pages show their API with source links)
    assert not wrong, "stale source links (run nbdev-test --save on these notebooks):\n" + "\n".join(sorted(set(wrong)))
