"""Shared pytest setup. Matplotlib must render off-screen (Agg) in tests: set before anything imports it."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llava():
    """A random-weight LLaVA with a 64 px / 8 px vision tower (64 visual tokens), weights scaled so that
    positions and masks matter (a wrong one changes the logits): ``resprune.testing.tiny_model("llava")``."""
    from resprune.testing import tiny_model

    return tiny_model("llava")
