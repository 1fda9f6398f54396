"""viz: figures of what a visual-token pruning method kept, from a ``PruneResult`` and the image (never a model).

Every ``plot_*`` returns a ``matplotlib.figure.Figure`` (drawing into ``ax=`` when given); nothing here imports
pyplot, changes ``rcParams`` or writes files. ``to_image(fig)`` renders one to a PIL image.

Modules: ``_grid`` (token <-> pixel geometry), ``_canvas`` (the drawing machinery), ``figures`` (kept tokens,
relevance, method grid, residual energy), ``greedy`` (step-through and GIF), ``probe`` (``token_at``: the token
under a clicked pixel and its facts).

Every figure explains itself: a legend and a one-line caption under the plot (``explain=False`` leaves them out),
and a blank band at the top of each new figure, so that an app's image label (gradio draws it over the top-left
corner) covers no title.

>>> import viz
>>> img = viz.to_image(viz.plot_kept_tokens(image, result, answer="red"))  # doctest: +SKIP
>>> fig = viz.plot_residual_energy(result, {"divprune": other})             # doctest: +SKIP
>>> gif = viz.greedy_animation(image, result)                               # doctest: +SKIP
>>> viz.token_at(result, 40, 25)   # the token under pixel (x=40, y=25) of the ORIGINAL image  # doctest: +SKIP
{'index': 14, 'view': 'base view', 'row': 1, 'col': 2, 'box': (...), 'kept': True, 'pick': 3, ...}
>>> viz.token_at(result, 260, 180, figure=img)   # ... or of the rendered figure ``img``  # doctest: +SKIP
"""

from __future__ import annotations

from resprune.residual import residual_energies

from ._canvas import OKABE_ITO, to_image
from ._grid import relevant_tokens, token_recall
from .figures import plot_kept_tokens, plot_method_grid, plot_relevance, plot_residual_energy
from .greedy import greedy_animation, plot_greedy_step
from .probe import token_at

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
    "token_at",
    "token_recall",
]
