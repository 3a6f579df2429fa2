"""Shared pytest fixtures.

Tests that need the staged real data take the ``data_dir`` fixture. It FAILS (never skips) when
``$JAXFACE_DATA`` is unset or missing, so that CI cannot go green without the data.
"""

from __future__ import annotations

import os
from pathlib import Path

# Compile time dominates this suite on a 2-core CPU: XLA's backend optimisations cost far more
# to compile than they save on test-sized inputs (about 5x less CPU time for the suite).
# Benchmarks do not go through this file and keep the default flags. Set
# JAXFACE_TEST_FULL_XLA=1 to test with the default optimisation pipeline.
if not os.environ.get("JAXFACE_TEST_FULL_XLA"):
    _fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _fast).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("JAXFACE_DATA")
    if not root or not Path(root).is_dir():
        pytest.fail(f"JAXFACE_DATA must point at the staged data folder (got {root!r})")
    return Path(root)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
