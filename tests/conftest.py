"""Shared pytest setup. Matplotlib must render off-screen (Agg) in tests: set before anything imports it."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
