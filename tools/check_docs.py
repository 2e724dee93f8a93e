"""Open every page of the built docs site in headless Chromium and check what a reader would see.

Fails on: a page without content; raw TeX ($$, \\(, \\[) left unrendered outside code; an image that does not load
(the page's own script counts them after `load`); an internal link to a page or an anchor that does not exist.
Saves screenshots of two pages in <site>/screenshots/. Usage: python tools/check_docs.py [_docs]
"""
from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--hide-scrollbars"]
SCREENSHOTS = ("index.html", "adam.html")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p: return p
    sys.exit("headless Chromium is needed (Debian: apt-get install chromium)")


class Page(html.parser.HTMLParser):
    "What the check needs from a rendered DOM: text outside code, ids, links, images, the body's data attributes."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.ids, self.links, self.imgs, self.body, self._skip = [], set(), [], [], {}, 0
        self.main_text = 0; self._main = 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "a" and "name" in a: self.ids.add(a["name"])
        if tag in ("pre", "code", "script", "style", "math"): self._skip += 1
        if tag == "main": self._main += 1
        if tag == "a" and a.get("href"): self.links.append(a["href"])
        if tag == "img": self.imgs.append(a.get("src", ""))
        if tag == "body": self.body = a
    def handle_endtag(self, tag):
        if tag in ("pre", "code", "script", "style", "math"): self._skip = max(0, self._skip - 1)
        if tag == "main": self._main = max(0, self._main - 1)
    def handle_data(self, data):
        if self._main: self.main_text += len(data.strip())
        if not self._skip: self.text.append(data)


def dump_dom(browser: str, url: str, profile: str) -> str:
    r = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                        "--run-all-compositor-stages-before-draw", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or "<html" not in r.stdout:
        raise RuntimeError(f"chromium could not open {url}: {r.stderr[-500:]}")
    return r.stdout


def check(site: Path) -> list:
    browser, problems, doms = chromium(), [], {}
    pages = sorted(site.glob("*.html"))
    if not pages: return [f"no pages in {site}"]
    with tempfile.TemporaryDirectory() as profile:
        for p in pages:
            dom = dump_dom(browser, p.resolve().as_uri(), profile)
            pg = Page(); pg.feed(dom); doms[p.name] = pg
        for p in pages:
            pg, name = doms[p.name], p.name
            if pg.main_text < 200: problems.append(f"{name}: almost no content ({pg.main_text} characters)")
            text = " ".join(pg.text)
            for raw in ("$$", "\\(", "\\[", "\\begin{", "\\frac"):
                if raw in text:
                    i = text.index(raw)
                    problems.append(f"{name}: unrendered math {raw!r} near {text[max(0, i - 60):i + 60]!r}")
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
                    tp = doms.get(Path(target).name)
                    if tp is not None and unquote(u.fragment) not in tp.ids:
                        problems.append(f"{name}: broken link {href} (no anchor #{u.fragment} in {target})")
        shots = site / "screenshots"; shots.mkdir(exist_ok=True)
        for name in SCREENSHOTS:
            if (site / name).exists():
                out = shots / name.replace(".html", ".png")
                subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                                "--window-size=1280,2200", f"--screenshot={out}", (site / name).resolve().as_uri()],
                               capture_output=True, timeout=120)
                if not out.exists() or out.stat().st_size < 10_000: problems.append(f"no screenshot of {name}")
                else: print(f"screenshot: {out}")
    print(f"checked {len(pages)} pages in headless Chromium: {len(problems)} problems")
    return problems


if __name__ == "__main__":
    site = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "_docs")
    found = check(site)
    for f in found: print("  " + f)
    sys.exit(1 if found else 0)
