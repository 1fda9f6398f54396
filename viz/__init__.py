"""viz: figures of what a visual-token pruning method kept, from a ``PruneResult`` and the image (never a model).

Every ``plot_*`` returns a ``matplotlib.figure.Figure`` (drawing into ``ax=`` when given); nothing here imports
pyplot, changes ``rcParams`` or writes files.

>>> import viz
>>> fig = viz.plot_kept_tokens(image, result, answer="red")          # doctest: +SKIP
>>> fig = viz.plot_residual_energy(result, {"divprune": other})      # doctest: +SKIP
>>> gif = viz.greedy_animation(image, result)                        # doctest: +SKIP
"""

from __future__ import annotations

from ._energy import residual_energies
from ._grid import relevant_tokens, token_recall
from .figures import (
    OKABE_ITO,
    greedy_animation,
    plot_greedy_step,
    plot_kept_tokens,
    plot_method_grid,
    plot_relevance,
    plot_residual_energy,
)

__all__ = [
    "OKABE_ITO",
    "greedy_animation",
    "plot_greedy_step",
    "plot_kept_tokens",
    "plot_method_grid",
    "plot_relevance",
    "plot_residual_energy",
    "relevant_tokens",
    "residual_energies",
    "token_recall",
]
