"""Shared pytest setup. Matplotlib must render off-screen (Agg) in tests: set before anything imports it."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# No test talks to the Hugging Face Hub (network tests use loopback only): the app's model list and the loaders see
# an offline server; tests that probe a stand-in hub on 127.0.0.1 lift this themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llava():
    """A random-weight LLaVA with a 64 px / 8 px vision tower (64 visual tokens), weights scaled so that
    positions and masks matter (a wrong one changes the logits): ``resprune.testing.tiny_model("llava")``."""
    from resprune.testing import tiny_model

    return tiny_model("llava")
