"""Shared by the tests: `need(name)`, pytest's `importorskip` for the optional libraries (the oracles: Keras, JAX,
Optax, PyTorch, ml_dtypes, mpi4py), except that with `ADAM_LIT_REQUIRE_ORACLES=1` (CI sets it) a missing one fails
the test instead of skipping it. The switch itself is `adam_lit._optional.required` (nbs/15_hardening.ipynb)."""
import contextlib
import importlib

import numpy as np
import pytest

from adam_lit._optional import REQUIRE_ORACLES, required


def need(name: str, reason: str = ""):
    "The module `name`, imported; if it is not installed: skip (at module level too), or fail where the switch is set."
    try:
        return importlib.import_module(name)
    except ImportError as e:
        why = f"{reason + ': ' if reason else ''}{name} not installed ({type(e).__name__}: {e})"
        if required(): pytest.fail(f"{REQUIRE_ORACLES}=1, but {why}", pytrace=False)
        pytest.skip(why, allow_module_level=True)


def keras_jax():
    "Keras with its JAX backend (the jitted Keras oracle), or a skip (a failure where the switch is set) saying why."
    keras = need("keras", "the jitted Keras oracle")
    if keras.backend.backend() != "jax":
        pytest.skip(f"the jitted Keras oracle needs Keras's JAX backend (KERAS_BACKEND={keras.backend.backend()!r})")
    return keras


@contextlib.contextmanager
def jax_modes(x64: bool, floatx: str):
    "JAX's 64-bit switch and Keras's floatx (on its JAX backend) set for a test; the previous settings restored after."
    keras, jax = keras_jax(), need("jax")
    prev_x64, prev_floatx = jax.config.read("jax_enable_x64"), keras.config.floatx()
    jax.config.update("jax_enable_x64", x64)
    keras.config.set_floatx(floatx)
    try:
        yield
    finally:
        keras.config.set_floatx(prev_floatx)
        jax.config.update("jax_enable_x64", prev_x64)


@pytest.fixture
def float32_mode():
    "Keras floatx float32 with JAX 32-bit (Keras's defaults); the previous settings restored afterwards."
    with jax_modes(False, "float32"):
        yield np.float32


@pytest.fixture
def float64_mode():
    "Keras floatx float64 with JAX 64-bit enabled (SPEC Decision 2); the previous settings restored afterwards."
    with jax_modes(True, "float64"):
        yield np.float64
