"""`need` (tests/conftest.py): a missing optional library skips the test, or fails it with ADAM_LIT_REQUIRE_ORACLES=1."""
import numpy as np
import pytest
from conftest import need

ABSENT = "adam_lit_no_such_library"      # installed nowhere


def test_need_skips_without_the_switch(monkeypatch):
    monkeypatch.delenv("ADAM_LIT_REQUIRE_ORACLES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"the row: {ABSENT} not installed"): need(ABSENT, "the row")
    monkeypatch.setenv("ADAM_LIT_REQUIRE_ORACLES", "0")
    with pytest.raises(pytest.skip.Exception): need(ABSENT)


def test_need_fails_with_the_switch(monkeypatch):
    monkeypatch.setenv("ADAM_LIT_REQUIRE_ORACLES", "1")
    with pytest.raises(pytest.fail.Exception, match=f"ADAM_LIT_REQUIRE_ORACLES=1, but {ABSENT} not installed"): need(ABSENT)


def test_need_returns_the_module(monkeypatch):
    monkeypatch.setenv("ADAM_LIT_REQUIRE_ORACLES", "1")
    assert need("numpy") is np
    assert need("numpy.linalg") is np.linalg


def test_need_of_a_library_made_absent(monkeypatch):
    "PyTorch made absent (an import of it fails, as where it is not installed): skipped, or failed with the switch."
    import importlib
    real_import = importlib.import_module
    def no_torch(name, *a, **k):
        if name.split(".")[0] == "torch": raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *a, **k)
    monkeypatch.setattr(importlib, "import_module", no_torch)
    monkeypatch.delenv("ADAM_LIT_REQUIRE_ORACLES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="torch not installed"): need("torch")
    monkeypatch.setenv("ADAM_LIT_REQUIRE_ORACLES", "1")
    with pytest.raises(pytest.fail.Exception, match="ADAM_LIT_REQUIRE_ORACLES=1, but torch not installed"): need("torch")
