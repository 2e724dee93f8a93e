"""Open every page of the built docs site in headless Chromium and check what a reader would see.

The site is served from 127.0.0.1 (no network beyond this machine) so that Pagefind's search runs as on a web server.
Each page is opened twice, at 1280 and at 760 px wide, with a small script that measures the layout in the browser.
Fails on:
- a page without content; raw TeX ($$, \\(, \\[) left unrendered outside code; an image that does not load; an
  internal link to a page or an anchor that does not exist; a script or stylesheet that fails to load;
- leaked output: a warning in an output (`Warning:`, `RuntimeWarning`, ...), an absolute path of the build machine
  (`/work/`, `/home/`, `/root/`, `/tmp/`, `site-packages`), a temporary name (`tmpab12cd34`), `<ipython-input-`,
  a NumPy scalar repr (`np.float64(0.5)`) in an output or in prose;
- references a reader cannot follow: "SPEC" as a word, an issue number ("issue 8", "#8" in prose);
- literal asterisks in prose (`*emphasis*` that did not render);
- a Markdown escape or TeX shown as typed, in prose or inline code (`\\*`, `\\_`, `\\beta`, `\\sqrt`, ...): escaping that
  reached a code span (show_doc escapes the asterisks of a docstring's first line) or TeX written in backticks;
- a docstring's numpydoc section read as Markdown: a heading "Parameters", "Returns", "Raises", ... inside a show_doc
  block (dashes under a word make a setext <h2>), or "Parameters ----------" left as text;
- layout: a box whose content is cut (overflow hidden, content wider), a signature, table, code block or image
  wider than the text column or under the table of contents (at 1280 and 760 px), a text column under 600 px at
  760 px;
- a visible test-only code cell (every statement a `test_*(...)` call, an `assert`, or a loop of them);
- the same heading twice in a row ("AdamW" then "AdamW");
- search: the search box of index.html finds nothing for "epsilon hat" (when the site has a Pagefind index).
Saves screenshots of a few pages at both widths in <site>/screenshots/. Usage: python tools/check_docs.py [_docs]
"""
from __future__ import annotations

import ast
import functools
import html.parser
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--hide-scrollbars"]
SCREENSHOTS = ("index.html", "quickstart.html", "adam.html", "rules.html", "lazyadam.html", "adam_gently.html")
WIDTHS = (1280, 760)
SEARCH = "epsilon hat"
MIN_TEXT_WIDTH = 600          # px of the text column at 760 px

# numpydoc's section names: in a show_doc block they must not be headings (tools/docs.py makes them labels)
DOC_SECTIONS = ("Parameters", "Other Parameters", "Keyword Arguments", "Returns", "Yields", "Receives", "Raises",
                "Warns", "Attributes", "Methods", "See Also", "Notes", "Examples", "References", "Warnings")

# What a reader must not see. (what, pattern, where): "output" = text of output blocks (a <pre> that is not
# highlighted source code), "prose" = text outside code and outputs, "inline code" = code spans in the text (not
# in a <pre>), "all" = outputs, prose and the code blocks.
TEXT_CHECKS = [
    ("a warning in an output", r"\b(?:Runtime|Deprecation|PendingDeprecation|User|Future|Resource|Syntax)Warning\b|"
                               r"\bWarning:", ("output",)),
    ("an absolute path of the build machine", r"(?<![\w.~])/(?:work|home|root|tmp)/|site-packages", ("all",)),
    ("a temporary path", r"\btmp[a-z0-9_]{6,}", ("all",)),
    ("an <ipython-input-...> reference", r"<ipython-input-", ("all",)),
    ("a NumPy scalar repr", r"\bnp\.(?:float|int|uint|complex)\d+\(|\bnp\.(?:bool_|str_|longdouble)\(", ("output", "prose")),
    ("a 'SPEC' reference", r"\bSPEC\b", ("all",)),
    ("an issue number", r"\b[Ii]ssues? #?\d+\b", ("all",)),
    ("an issue number", r"(?<![\w&#/])#\d+\b", ("prose",)),
    ("literal asterisks (emphasis that did not render)", r"(?<![\w*\\])\*{1,2}[^\s*][\s\S]{0,150}?[^\s*\\]\*{1,2}(?![\w*])",
     ("prose",)),
    ("a Markdown escape or TeX shown as typed", r"\\[*_`#]|\\(?:alpha|beta|gamma|delta|epsilon|eta|theta|lambda|mu|"
                                              r"sigma|hat|sqrt|frac|cdot|odot|times|leftarrow|sum|prod|mathbf|mathrm|"
                                              r"text|left|right)(?![A-Za-z])", ("prose", "inline code")),
    ("a numpydoc section left as text", r"\b(?:%s)\s*-{3,}" % "|".join(DOC_SECTIONS), ("prose",)),
]

# Injected (into the served copy only) at the start of <head>: records failed scripts, stylesheets and errors, then
# measures the layout after `load`; the result is left on <html data-check> for --dump-dom.
CHECK_JS = r"""<script>
(function () {
  var errors = window.__checkErrors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t.tagName === "IMG") return;                       // images have their own check
    if (t && t !== window && (t.src || t.href)) errors.push("failed to load " + (t.src || t.href).split("/").pop());
    else errors.push("script error: " + (e.message || "?"));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("script error: " + (e.reason && e.reason.message || e.reason)); });
  function label(el) {
    var t = (el.innerText || el.getAttribute("alt") || el.getAttribute("src") || "").trim().replace(/\s+/g, " ").slice(0, 60);
    var c = el.getAttribute("class"); return el.tagName.toLowerCase() + (c ? "." + c.split(" ")[0] : "") + " '" + t + "'";
  }
  function layout() {
    var out = [], main = document.getElementById("body") || document.querySelector("main");
    if (!main) return {problems: ["no main column"], width: 0};
    var ms = getComputedStyle(main), mr = main.getBoundingClientRect();
    var right = mr.right - parseFloat(ms.paddingRight) + 1, toc = document.getElementById("toc"), tr = null;
    if (toc && toc.getClientRects().length) tr = toc.getBoundingClientRect();
    var all = main.querySelectorAll("*"), seen = [];
    for (var i = 0; i < all.length; i++) {
      var el = all[i], s = getComputedStyle(el);
      if ((s.overflowX === "hidden" || s.overflowX === "clip") && el.scrollWidth > el.clientWidth + 1 && s.textOverflow !== "ellipsis")
        out.push("cut off (overflow hidden, " + el.scrollWidth + " px of content in " + el.clientWidth + " px): " + label(el));
    }
    var boxes = main.querySelectorAll("pre, table, .doc-block, div.sourceCode, img, math[display=block], figure");
    for (var j = 0; j < boxes.length; j++) {
      var b = boxes[j], r = b.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (seen.some(function (p) { return p.contains(b); })) continue;
      if (r.right > right) { out.push("wider than the text column by " + Math.round(r.right - right) + " px: " + label(b)); seen.push(b); }
      else if (tr && r.left < tr.right && r.right > tr.left && r.top < tr.bottom && r.bottom > tr.top) {
        out.push("under the table of contents: " + label(b)); seen.push(b);
      }
    }
    return {problems: out, width: Math.round(main.clientWidth - parseFloat(ms.paddingLeft) - parseFloat(ms.paddingRight))};
  }
  function report(extra) {
    var l = layout(); l.errors = errors; for (var k in extra) l[k] = extra[k];
    document.documentElement.setAttribute("data-check", JSON.stringify(l));
  }
  window.addEventListener("load", function () {
    setTimeout(function () { report({}); }, 50);
  });
})();
</script>"""


class DevTools:
    "Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4): no extra library, no port."
    def __init__(self, browser: str, profile: str, width: int = 1280, height: int = 900):
        import os
        r1, self._w = os.pipe(); self._r, w2 = os.pipe()
        def fds():
            a, b = os.dup(r1), os.dup(w2); os.dup2(a, 3); os.dup2(b, 4)
        self.proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=fds, pass_fds=(3, 4),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r1); os.close(w2)
        self._id, self._buf, self.session = 0, b"", None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method, **params):
        import os
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."): msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 16)
                if not chunk: raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply: raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, js: str):
        r = self.call("Runtime.evaluate", expression=js, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r: raise RuntimeError(f"script failed: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def open(self, url: str):
        self.call("Page.enable"); self.call("Page.navigate", url=url)
        self.evaluate("new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', () => r()))")

    def close(self):
        import os
        try: self.call("Browser.close")
        except Exception: pass
        try: self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired: self.proc.kill()
        os.close(self._w); os.close(self._r)


# typed into the search box of a page in real time (Pagefind loads its index with fetch and WebAssembly)
SEARCH_JS = """(async () => {
  const ui = window.pagefindUI, input = document.querySelector('#search input');
  if (!ui || !input) return {n: -1, why: 'no search box'};
  input.focus(); input.value = QUERY; input.dispatchEvent(new Event('input', {bubbles: true}));
  if (ui.triggerSearch) ui.triggerSearch(QUERY);
  for (let i = 0; i < 300; i++) {
    await new Promise(r => setTimeout(r, 50));
    const res = document.querySelectorAll('#search .pagefind-ui__result'),
          links = document.querySelectorAll('#search .pagefind-ui__result-link');
    if (res.length && links.length) return {n: res.length, first: links[0].innerText.trim(), errors: window.__checkErrors || []};
  }
  const m = document.querySelector('#search .pagefind-ui__message');
  return {n: 0, why: m ? m.innerText : 'no message', errors: window.__checkErrors || []};
})()"""



UNCONVERTED = re.compile(r'<span class="math (inline|display)">(\$[^<]{0,80})')

def math_problems(name: str, html: str) -> list:
    "TeX that pandoc could not turn into MathML (it leaves the span with the TeX in it, e.g. for \\vphantom)."
    found = UNCONVERTED.findall(html)
    return [f"{name}: {len(found)} formula(s) pandoc could not render, e.g. {found[0][1]!r}"] if found else []


def search_check(browser: str, base: str, profile: str, shot: Path | None) -> tuple:
    "Types SEARCH into index.html's search box; (results found, first result title, problems)."
    dt = DevTools(browser, profile)
    try:
        dt.open(base + "index.html?check")
        r = dt.evaluate(SEARCH_JS.replace("QUERY", json.dumps(SEARCH))) or {}
        if shot is not None and r.get("n", 0) > 0:
            import base64
            shot.write_bytes(base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"]))
    finally: dt.close()
    problems = [f"index.html: search for {SEARCH!r}: {e}" for e in r.get("errors", [])]
    if r.get("n", 0) <= 0: problems.append(f"index.html: the search box finds nothing for {SEARCH!r} ({r.get('why')})")
    return r.get("n", 0), r.get("first", ""), problems


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p: return p
    sys.exit("headless Chromium is needed (Debian: apt-get install chromium)")


class Handler(http.server.SimpleHTTPRequestHandler):
    "Serves the site; HTML pages asked for with ?check get the measuring script."
    def log_message(self, *a): pass
    def do_GET(self):
        u = urlparse(self.path)
        if "check" in parse_qs(u.query, keep_blank_values=True) and u.path.endswith(".html"):
            f = Path(self.directory) / unquote(u.path).lstrip("/")
            if f.is_file():
                body = f.read_text().replace("<head>", "<head>\n" + CHECK_JS, 1).encode()
                self.send_response(200); self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
                return
        super().do_GET()


class Page(html.parser.HTMLParser):
    """What the checks need from a rendered DOM: prose, outputs and code of the main column (navigation left out),
    its inline code, its headings (and those inside a show_doc block), ids, links, images, and the data the in-page
    scripts left on <html> and <body>."""
    SKIP = ("script", "style", "math")
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.prose, self.outputs, self.code, self.headings, self.inline_code = [], [], [], [], []
        self.doc_headings, self._blocks = [], []           # headings in a .doc-block; open <div>/<section>: is it one
        self.ids, self.links, self.imgs, self.body, self.root = set(), [], [], {}, {}
        self.main_text, self._main, self._nav, self._skip, self._pre, self._code, self._h = 0, 0, 0, 0, None, 0, None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "a" and "name" in a: self.ids.add(a["name"])
        if tag == "a" and a.get("href"): self.links.append(a["href"])
        if tag == "img": self.imgs.append(a.get("src", ""))
        if tag == "body": self.body = a
        if tag == "html": self.root = a
        if tag == "main": self._main += 1
        if tag == "nav": self._nav += 1
        if tag in self.SKIP: self._skip += 1
        if tag == "pre" and self._pre is None:
            self._pre = ["sourceCode" in (a.get("class") or "").split(), []]
        if tag == "code":
            self._code += 1
            if self._code == 1 and self._pre is None: self.inline_code.append("")
        if tag in ("div", "section"): self._blocks.append("doc-block" in (a.get("class") or "").split())
        if re.fullmatch(r"h[1-6]", tag) and self._main and not self._nav: self._h = []
    def handle_endtag(self, tag):
        if tag == "main": self._main = max(0, self._main - 1)
        if tag == "nav": self._nav = max(0, self._nav - 1)
        if tag in self.SKIP: self._skip = max(0, self._skip - 1)
        if tag == "code": self._code = max(0, self._code - 1)
        if tag in ("div", "section") and self._blocks: self._blocks.pop()
        if tag == "pre" and self._pre is not None:
            is_src, parts = self._pre; self._pre = None
            if self._main and not self._nav: (self.code if is_src else self.outputs).append("".join(parts))
        if re.fullmatch(r"h[1-6]", tag) and self._h is not None:
            self.headings.append(" ".join("".join(self._h).split())); self._h = None
            if any(self._blocks): self.doc_headings.append(self.headings[-1])
    def handle_data(self, data):
        if not self._main or self._nav: return
        self.main_text += len(data.strip())
        if self._h is not None: self._h.append(data)
        if self._skip: return
        if self._pre is not None: self._pre[1].append(data)
        elif not self._code: self.prose.append(data)
        else:
            self.prose.append(" ")
            if self.inline_code: self.inline_code[-1] += data


def _is_test(node) -> bool:
    "A statement that only tests: `test_*(...)`, `assert`, or a loop whose body only tests."
    if isinstance(node, ast.Assert): return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return name.startswith("test_")
    if isinstance(node, (ast.For, ast.While)): return not node.orelse and all(_is_test(n) for n in node.body)
    return False


def test_only(code: str) -> bool:
    "Whether a visible code cell only tests (what belongs in a hidden cell)."
    try: body = ast.parse(code).body
    except SyntaxError: return False
    return bool(body) and all(_is_test(n) for n in body)


def text_problems(name: str, pg: Page) -> list:
    "The leaked-output, reference, test-cell and heading checks of one page."
    found = []
    where = {"output": "\n".join(pg.outputs), "prose": " ".join(pg.prose), "code": "\n".join(pg.code)}
    where["all"] = "\n".join(where.values())
    where["inline code"] = "\n".join(pg.inline_code)
    for what, pattern, scopes in TEXT_CHECKS:
        for scope in scopes:
            hits = [m for m in re.finditer(pattern, where[scope])]
            if hits:
                t, m = where[scope], hits[0]
                near = " ".join(t[max(0, m.start() - 50):m.end() + 50].split())
                found.append(f"{name}: {what}, {len(hits)}x, e.g. near {near!r}")
                break
    tests = [c for c in pg.code if test_only(c)]
    if tests:
        first = tests[0].strip().splitlines()[0][:80]
        found.append(f"{name}: {len(tests)} visible test-only code cells (hide them with #| hide), e.g. {first!r}")
    sections = [h for h in pg.doc_headings if h.strip(" :") in DOC_SECTIONS]
    if sections:
        found.append(f"{name}: {len(sections)} docstring sections shown as headings in show_doc blocks (numpydoc "
                     f"'{sections[0]}' over dashes read as a Markdown heading; tools/docs.py's numpy_sections)")
    for a, b in zip(pg.headings, pg.headings[1:]):
        if a and a.lower() == b.lower(): found.append(f"{name}: duplicated heading {a!r} twice in a row")
    return found


def dump_dom(browser: str, url: str, profile: str, width: int, budget: int = 5000) -> str:
    r = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget}",
                        f"--window-size={width},1000", "--run-all-compositor-stages-before-draw", "--dump-dom", url],
                       capture_output=True, text=True, timeout=180)
    if r.returncode != 0 or "<html" not in r.stdout:
        raise RuntimeError(f"chromium could not open {url}: {r.stderr[-500:]}")
    return r.stdout


def parse(dom: str) -> Page:
    pg = Page(); pg.feed(dom); return pg


def check(site: Path, screenshots=SCREENSHOTS) -> list:
    site = Path(site)
    browser, problems, doms = chromium(), [], {}
    pages = sorted(site.glob("*.html"))
    if not pages: return [f"no pages in {site}"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profiles = [tempfile.mkdtemp(prefix="check_docs_") for _ in range(3)]
    lock, free = threading.Lock(), list(profiles)
    def opened(name, width, query="check"):
        with lock: prof = free.pop()
        try: return parse(dump_dom(browser, f"{base}{name}?{query}", prof, width))
        finally:
            with lock: free.append(prof)
    try:
        with ThreadPoolExecutor(len(profiles)) as ex:
            jobs = {(p.name, w): ex.submit(opened, p.name, w) for p in pages for w in WIDTHS}
            for (name, w), job in jobs.items(): doms[name, w] = job.result()
        for p in pages:
            name = p.name
            pg = doms[name, WIDTHS[0]]
            if pg.main_text < 200: problems.append(f"{name}: almost no content ({pg.main_text} characters)")
            prose = " ".join(pg.prose)
            for raw in ("$$", "\\(", "\\[", "\\begin{", "\\frac"):
                if raw in prose:
                    i = prose.index(raw)
                    problems.append(f"{name}: unrendered math {raw!r} near {prose[max(0, i - 60):i + 60]!r}")
            problems += math_problems(name, p.read_text(encoding="utf-8"))
            if "data-broken-images" not in pg.body:
                problems.append(f"{name}: the page's image check did not run")
            elif pg.body["data-broken-images"] != "0":
                problems.append(f"{name}: {pg.body['data-broken-images']} of {pg.body.get('data-images')} images did not load")
            for src in pg.imgs:
                u = urlparse(src)
                if not u.scheme and not (p.parent / unquote(u.path)).exists():
                    problems.append(f"{name}: missing image {src}")
            for href in pg.links:
                u = urlparse(href)
                if u.scheme or href.startswith("//") or href.startswith("mailto:"): continue
                target = p.name if not u.path else unquote(u.path)
                if not (p.parent / target).exists():
                    problems.append(f"{name}: broken link {href} (no {target})"); continue
                if u.fragment and target.endswith(".html"):
                    tp = doms.get((Path(target).name, WIDTHS[0]))
                    if tp is not None and unquote(u.fragment) not in tp.ids:
                        problems.append(f"{name}: broken link {href} (no anchor #{u.fragment} in {target})")
            problems += text_problems(name, pg)
            for w in WIDTHS:
                data = doms[name, w].root.get("data-check")
                if data is None: problems.append(f"{name}: the layout check did not run at {w} px"); continue
                data = json.loads(data)
                problems += [f"{name} at {w} px: {d}" for d in dict.fromkeys(data["problems"])]
                if w == WIDTHS[0]: problems += [f"{name}: {e}" for e in dict.fromkeys(data["errors"])]
                if w <= 760 and data["width"] < MIN_TEXT_WIDTH:
                    problems.append(f"{name} at {w} px: the text column is only {data['width']} px wide")
        shots = site / "screenshots"; shots.mkdir(exist_ok=True)
        if (site / "pagefind" / "pagefind-ui.js").exists() and (site / "index.html").exists():
            n, first, found = search_check(browser, base, profiles[0], shots / "search-1280.png")
            problems += found
            if n > 0: print(f"search: {n} results for {SEARCH!r} in the search box of index.html, first {first!r}")
        for name in screenshots:
            if not (site / name).exists(): continue
            for w in WIDTHS:
                out = shots / name.replace(".html", f"-{w}.png")
                subprocess.run([browser, *FLAGS, f"--user-data-dir={profiles[0]}", "--virtual-time-budget=5000",
                                f"--window-size={w},1800", f"--screenshot={out}", base + name],
                               capture_output=True, timeout=180)
                if not out.exists() or out.stat().st_size < 10_000: problems.append(f"no screenshot of {name} at {w} px")
                else: print(f"screenshot: {out}")
    finally:
        server.shutdown(); server.server_close()
        for prof in profiles: shutil.rmtree(prof, ignore_errors=True)
    print(f"checked {len(pages)} pages in headless Chromium at {' and '.join(map(str, WIDTHS))} px: {len(problems)} problems")
    return problems


if __name__ == "__main__":
    site = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "_docs")
    found = check(site)
    for f in found: print("  " + f)
    sys.exit(1 if found else 0)
