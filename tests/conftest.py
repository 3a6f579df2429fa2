"""Shared pytest fixtures.

Tests that need the staged real data take the ``data_dir`` fixture. It FAILS (never skips) when
``$JAXFACE_DATA`` is unset or missing, so that CI cannot go green without the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("JAXFACE_DATA")
    if not root or not Path(root).is_dir():
        pytest.fail(f"JAXFACE_DATA must point at the staged data folder (got {root!r})")
    return Path(root)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
