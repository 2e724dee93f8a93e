"""The module layers of adam_lit: nothing low imports anything high, so the import graph has no cycle.

Every `import` of an adam_lit module is read from the source with `ast`, including imports inside functions, and
checked against the order below (a module may import only modules of a strictly lower layer)."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "adam_lit"

LAYERS = [                          # lowest first
    {"_optional", "_site", "backend", "_loopk"},
    {"rules"},
    {"schedules"},
    {"kernels", "cuda"},
    {"_fastpath"},
    {"optimizer"},
    {"adam"},
    {"lazyadam"},
    {"checkpoint"},
    {"distributed"},
    {"torch", "optax", "keras"},       # the front ends
    {"interop", "driver", "bench"},
    {"__main__"},
]
LEVEL = {m: k for k, layer in enumerate(LAYERS) for m in layer}
# `from adam_lit import __version__` reads a constant of the package, not a module
CONSTANTS = {"__version__"}


def imports_of(path: pathlib.Path) -> set:
    "The adam_lit modules `path` imports anywhere (top level or inside functions)."
    name = path.stem
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "adam_lit": out.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1: mod = "adam_lit" + ("." + mod if mod else "")
            parts = mod.split(".")
            if parts[0] != "adam_lit": continue
            if len(parts) > 1: out.add(parts[1])
            else:
                for a in node.names:
                    if a.name in CONSTANTS: continue
                    out.add(a.name if (PKG / f"{a.name}.py").exists() else "__init__")
    out.discard(name)
    return out


def modules():
    return sorted(p for p in PKG.glob("*.py") if p.stem not in ("__init__", "_modidx"))


def test_every_module_has_a_layer():
    missing = [p.stem for p in modules() if p.stem not in LEVEL]
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.stem)
def test_imports_only_lower_layers(path):
    bad = [m for m in sorted(imports_of(path)) if m == "__init__" or LEVEL.get(m, -1) >= LEVEL[path.stem]]
    assert not bad, f"adam_lit.{path.stem} (layer {LEVEL[path.stem]}) imports {bad}, which are not in a lower layer"


def test_the_optimizer_knows_neither_distributed_nor_checkpoint():
    assert imports_of(PKG / "optimizer.py").isdisjoint({"distributed", "checkpoint"})
    assert "distributed" not in imports_of(PKG / "checkpoint.py")
