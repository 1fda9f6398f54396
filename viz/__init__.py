"""viz: figures of what a visual-token pruning method kept, from a ``PruneResult`` and the image (never a model).

Every ``plot_*`` returns a ``matplotlib.figure.Figure`` (drawing into ``ax=`` when given); nothing here imports
pyplot, changes ``rcParams`` or writes files. ``to_image(fig)`` renders one to a PIL image.

Modules: ``_grid`` (token <-> pixel geometry), ``_canvas`` (the drawing machinery), ``figures`` (kept tokens,
relevance, method grid, residual energy), ``greedy`` (step-through and GIF).

>>> import viz
>>> img = viz.to_image(viz.plot_kept_tokens(image, result, answer="red"))  # doctest: +SKIP
>>> fig = viz.plot_residual_energy(result, {"divprune": other})             # doctest: +SKIP
>>> gif = viz.greedy_animation(image, result)                               # doctest: +SKIP
"""

from __future__ import annotations

from resprune.residual import residual_energies

from ._canvas import OKABE_ITO, to_image
from ._grid import relevant_tokens, token_recall
from .figures import plot_kept_tokens, plot_method_grid, plot_relevance, plot_residual_energy
from .greedy import greedy_animation, plot_greedy_step

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
    "to_image",
    "token_recall",
]
