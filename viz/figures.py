"""Figures of what a pruning method kept: the kept-token overlay, residual-energy curves, text relevance and the
method comparison grid.

Every function takes data (an image, a ``PruneResult`` / ``Selection``), never a model, and returns a
``matplotlib.figure.Figure``: it draws into ``ax`` when one is given (returning ``ax.figure``), else into a new
``Figure()`` built directly, never through pyplot (a web server would keep pyplot's figures alive). No global
``rcParams`` change and no file I/O: saving is the caller's job. Colour maps are perceptually uniform (viridis,
magma); lines use the Okabe-Ito colour-blind-safe palette. Token boxes come from ``TokenGeometry`` through
``viz._grid``, so the same code draws LLaVA's square grid, LLaVA-NeXT's base view + high-res crops (two panels;
the newline tokens, which have no pixels, are counted in the title) and Qwen2.5-VL's dynamic merged grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from resprune.types import PruneResult, Selection, TokenGeometry

from . import _grid
from ._canvas import (
    FOOTER_IN,
    KEPT_COLOR,
    LINESTYLES,
    LOG_FLOOR,
    NEXT_COLOR,
    OKABE_ITO,
    TITLE_SIZE,
    TOP_BAND_IN,
    TokenCanvas,
    as_numpy,
    budget,
    footer,
    kept_mask,
    layout_size,
    new_axes,
    new_figure,
    newline_note,
    outline_handle,
    panel_counts,
    percent,
    query_words,
    relevance_of,
    resolve,
    selection_of,
    short,
    swatch_handle,
    tokens_of,
)


def _kept_overlay(
    ax: Axes, image: object, sel: Selection, geom: TokenGeometry, *, order_numbers: bool, dim: float, max_side: int
) -> TokenCanvas:
    canvas = TokenCanvas(ax, image, geom, max_side=max_side)
    kept = kept_mask(sel, geom.n_tokens)
    canvas.show_image(kept, dim)
    canvas.outline(sel.keep_idx.cpu().numpy(), KEPT_COLOR)
    panel_counts(canvas, kept)
    if order_numbers:
        for t, i in enumerate(sel.order.cpu().tolist()):
            canvas.number(int(i), str(t + 1))
    return canvas


def _kept_handles(dim: float) -> list:
    """Legend entries of a kept-token overlay: kept = outlined, pruned = dimmed."""
    return [outline_handle(KEPT_COLOR, "kept (outlined)"), swatch_handle(str(0.6 * dim), "pruned (dimmed)")]


# ---------------------------------------------------------------------------------------------------------------
# Kept-token overlay


def plot_kept_tokens(
    image: object,
    result: PruneResult,
    *,
    index: int = 0,
    order_numbers: bool = False,
    answer: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dim: float = 0.3,
    max_side: int = 640,
    explain: bool = True,
) -> Figure:
    """The image with pruned tokens dimmed and kept tokens outlined, aligned with each token's pixel box.

    Multi-view images (LLaVA-NeXT) get one panel per view, side by side; newline tokens are counted in the title.

    Args:
        image: the ORIGINAL image the model saw (PIL image in any mode, or an `(H, W[, C])` array).
        result: the ``PruneResult``.
        index: which image of the result (batch order, then image order).
        order_numbers: write each kept token's pick order (1 = first pick) on it.
        answer: the model's answer with the pruned tokens, shown in the title.
        ax: an Axes to draw into (the figure is then ``ax.figure``).
        figsize: ``(width, height)`` in inches of a new figure (default: 5 in wide, height from the image).
        dim: brightness factor of pruned regions, in ``[0, 1]``.
        max_side: resolution of the drawn rasters (pixels on the longer side of a panel).
        explain: a legend (kept / pruned / the dashed crop box) and a one-line caption under the image.

    Returns:
        The ``Figure``.
    """
    if not 0 <= dim <= 1:
        raise ValueError(f"dim must be in [0, 1], got {dim}")
    sel, geom = resolve(result, index)
    lines = [f"{sel.method}: {budget(sel)}"]
    note = newline_note(sel, geom)
    if note:
        lines.append(note)
    if answer is not None:
        lines.append(f"answer: {short(answer)}")
    own = ax is None
    fig, ax = new_axes(ax, figsize, layout_size(geom, len(lines), footer_in=FOOTER_IN * explain))
    canvas = _kept_overlay(ax, image, sel, geom, order_numbers=order_numbers, dim=dim, max_side=max_side)
    ax.set_title("\n".join(lines), fontsize=TITLE_SIZE)
    if explain:
        text = f"One box per token; outlined: kept by {sel.method}, dimmed: pruned"
        text += "; numbers: pick order" if order_numbers and sel.keep else ""
        footer(fig if own else ax, text + canvas.notes() + ".", _kept_handles(dim) + canvas.crop_handles())
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Residual-energy curves


def _total_energy(tokens: torch.Tensor | None) -> float | None:
    if tokens is None:
        return None
    total = float(tokens.double().pow(2).sum())
    return total if total > 0 else None


def plot_residual_energy(
    result: PruneResult | Selection,
    others: Mapping[str, PruneResult | Selection] | None = None,
    *,
    index: int = 0,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    tokens: torch.Tensor | None = None,
    logy: bool = False,
    explain: bool = True,
) -> Figure:
    """Normalised residual energy of all tokens vs the number kept, and the energy gained at each pick.

    Left: ``Selection.residual`` (1 at t = 0, the share of the tokens' total energy outside the span of the first t
    picks) for the method and every entry of ``others``, one line each, a marker at its K. Right: the energy
    gained at each pick: the decrease of the residual curve (solid, comparable across methods) and, for methods
    that record it, ``Selection.energy``, the pick's own residual energy (dotted; a share of the total energy
    when the token vectors are known, else raw units on a right-hand axis).

    Args:
        result: the ``PruneResult`` (or a ``Selection``) of the chosen method.
        others: more methods, ``name -> PruneResult | Selection``, on the same image.
        index: which image of each ``PruneResult``.
        ax: one Axes (the curves only) or two Axes (curves, gains) to draw into.
        figsize: size of a new figure in inches (default ``(9, 3.6)``).
        tokens: `(N, D)` token vectors to normalise ``energy`` by (default ``result.visual_tokens[index]``).
        logy: logarithmic y axes (values below ``1e-4``, exact zeros included, are drawn at ``1e-4``).
        explain: a one-line caption saying what the curves measure.

    Returns:
        The ``Figure``.
    """
    sel = selection_of(result, index)
    entries: list[tuple[str, Selection]] = [(sel.method, sel)]
    for name, other in (others or {}).items():
        entries.append((str(name), selection_of(other, index)))
    n = sel.n_tokens
    total = _total_energy(tokens_of(result, index, tokens, n))

    if ax is None:
        fig = new_figure(figsize or (9.0, 3.6 + TOP_BAND_IN + FOOTER_IN * explain))
        ax_curve, ax_gain = fig.subplots(1, 2)
    elif isinstance(ax, Axes):
        fig, ax_curve, ax_gain = ax.figure, ax, None
    else:
        axes = list(ax)
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise TypeError(f"ax must be an Axes or a pair of Axes, got {len(axes)} items")
        ax_curve, ax_gain = axes
        fig = ax_curve.figure

    kmax = max(1, max(s.keep for _, s in entries))
    for j, (name, s) in enumerate(entries):
        color, ls = OKABE_ITO[j % len(OKABE_ITO)], LINESTYLES[(j // len(OKABE_ITO)) % len(LINESTYLES)]
        r = as_numpy(s.residual)
        x = np.arange(r.size)
        label = f"{name}: {percent(float(r[-1]))} left at K = {s.keep}"
        if logy:
            r = np.maximum(r, LOG_FLOOR)
        ax_curve.plot(x, r, color=color, ls=ls, lw=1.6, label=label)
        ax_curve.plot([x[-1]], [r[-1]], marker="o", color=color, ms=6, ls="none")
    ax_curve.set_xlim(0, kmax * 1.02)
    if logy:
        ax_curve.set_yscale("log")
        ax_curve.set_ylim(LOG_FLOOR * 0.8, 1.3)
    else:
        ax_curve.set_ylim(0, 1.03)
    ax_curve.set_xlabel(f"tokens kept t (of N = {n})")
    ax_curve.set_ylabel("residual energy (share of total)")
    ax_curve.set_title("Residual energy of all tokens", fontsize=TITLE_SIZE)
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8, frameon=False)

    if ax_gain is not None:
        _plot_gains(ax_gain, entries, total, logy)
    if explain:
        text = (
            "Residual energy: the share of all N tokens' energy ‖v‖² outside the span of the first t kept tokens "
            "(lower: the kept tokens explain more of the image)"
        )
        if ax_gain is not None:
            text += "; right: how much each pick removed"
        footer(fig if ax is None else ax_curve, text + ".")
    return fig


def _plot_gains(ax: Axes, entries: list[tuple[str, Selection]], total: float | None, logy: bool) -> None:
    """Solid: the decrease of the residual curve at each pick (the same quantity for every method). Dotted:
    ``Selection.energy``, the pick's own residual energy, for methods that record it (as a share of the total
    energy when the token vectors are known, else in raw units on a right-hand axis)."""
    raw_ax = None
    for j, (name, s) in enumerate(entries):
        color, ls = OKABE_ITO[j % len(OKABE_ITO)], LINESTYLES[(j // len(OKABE_ITO)) % len(LINESTYLES)]
        if s.keep == 0:
            continue
        x = np.arange(1, s.keep + 1)
        marker = "o" if s.keep <= 40 else None
        drop = -np.diff(as_numpy(s.residual))
        if drop.size == s.keep:
            ax.plot(x, drop, color=color, ls=ls, lw=1.4, marker=marker, ms=3, label=f"{name}: decrease of residual")
        energy = as_numpy(s.energy)
        if energy is None or energy.size != s.keep:
            continue
        if total is not None:
            ax.plot(x, energy / total, color=color, ls=":", lw=1.4, label=f"{name}: energy of pick")
        else:
            raw_ax = raw_ax or ax.twinx()
            raw_ax.plot(x, energy, color=color, ls=":", lw=1.4, label=f"{name}: energy of pick (right axis)")
    ax.set_xlabel("pick t")
    ax.set_ylabel("energy gained (share of total)")
    ax.set_title("Energy gained at each pick", fontsize=TITLE_SIZE)
    ax.grid(alpha=0.3)
    if logy:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if raw_ax is not None:
        raw_ax.set_ylabel("residual energy of pick ‖r‖²")
        if logy:
            raw_ax.set_yscale("log")
        h2, l2 = raw_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no picks (K = 0)", transform=ax.transAxes, ha="center", va="center")


# ---------------------------------------------------------------------------------------------------------------
# Text relevance


def plot_relevance(
    image: object,
    result: PruneResult,
    *,
    index: int = 0,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str = "magma",
    alpha: float = 0.65,
    show_kept: bool = True,
    max_side: int = 640,
    explain: bool = True,
) -> Figure:
    """``Selection.relevance`` of every token as a heat map over the image, with the words that produced it.

    For a text-free method the relevance is computed for display from ``result.query_tokens`` and
    ``result.visual_tokens`` (``resprune.text_relevance`` + ``map_relevance``), and the figure says so; with
    neither, the figure shows the image and a message instead of a heat map.

    Args:
        image: the original image.
        result: the ``PruneResult``.
        index: which image of the result.
        ax: an Axes to draw into.
        figsize: size of a new figure in inches.
        cmap: a perceptually uniform colour map.
        alpha: opacity of the heat map.
        show_kept: outline the kept tokens.
        max_side: raster resolution (pixels on the longer side of a panel).
        explain: a legend and a one-line caption under the image.

    Returns:
        The ``Figure``.
    """
    sel, geom = resolve(result, index)
    rel, source = relevance_of(result, sel, index)
    words = query_words(result, index)
    lines = [f"text relevance ({sel.method})"]
    lines.append("words: " + (short(", ".join(words), 55) if words else "(none)"))
    if source == "computed":
        lines.append(f"{sel.method} does not use text: computed for display")
    note = newline_note(sel, geom)
    if note:
        lines.append(note)
    own = ax is None
    size = layout_size(geom, len(lines), colorbar=rel is not None, footer_in=FOOTER_IN * explain)
    fig, ax = new_axes(ax, figsize, size)
    canvas = TokenCanvas(ax, image, geom, max_side=max_side)
    handles = []
    if rel is None:
        canvas.show_image(None)
        ax.text(
            0.5,
            0.5,
            f"No text relevance:\n{sel.method} is text-free and\nno query words were available",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=10,
            zorder=5,
            bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="0.4"),
        )
    else:
        canvas.show_image(None, 1.0)
        im = canvas.show_values(rel, cmap=cmap, norm=Normalize(0.0, 1.0), alpha=alpha)
        if show_kept and sel.keep:
            canvas.outline(sel.keep_idx.cpu().numpy(), NEXT_COLOR, lw=0.6 * canvas.line_width())
            handles.append(outline_handle(NEXT_COLOR, f"kept by {sel.method}"))
        cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
        cb.set_label("text relevance r (0 = least, 1 = most relevant)", fontsize=9)
    ax.set_title("\n".join(lines), fontsize=TITLE_SIZE)
    if explain:
        if rel is None:
            text = "Text relevance needs the query words' embeddings (result.query_tokens) and the visual tokens"
        else:
            text = "Colour: cosine similarity of each token to the nearest query word (min-max per image)"
        footer(fig if own else ax, text + canvas.notes() + ".", handles + canvas.crop_handles())
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Method comparison grid


def plot_method_grid(
    image: object,
    results: Mapping[str, PruneResult],
    *,
    answers: Mapping[str, str] | None = None,
    recall: Mapping[str, float] | None = None,
    objects_mask: np.ndarray | None = None,
    min_overlap: float = 0.25,
    index: int = 0,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    dim: float = 0.3,
    max_side: int = 480,
    explain: bool = True,
) -> Figure:
    """Kept-token overlays of several methods side by side, each titled with its answer and relevant-token recall.

    Args:
        image: the original image.
        results: ``method name -> PruneResult`` (normally at the same K on the same input).
        answers: ``name -> answer`` with the pruned tokens.
        recall: ``name -> relevant-token recall`` in ``[0, 1]``; computed from ``objects_mask`` when not given.
        objects_mask: `(H, W)` bool mask of the objects the question is about, in the original image's pixels:
            a token is relevant when ``min_overlap`` of its box lies on it (``viz._grid.relevant_tokens``); the
            mask is outlined in every panel.
        min_overlap: share of a token's box on the mask for it to count as relevant.
        index: which image of each result.
        ncols: columns of the grid (default up to 3).
        figsize: figure size in inches.
        dim: brightness factor of pruned regions.
        max_side: raster resolution of each overlay.
        explain: a legend (kept, pruned, the objects' outline) and a one-line caption under the grid.

    Returns:
        The ``Figure``.
    """
    if not results:
        raise ValueError("results is empty: pass at least one method name -> PruneResult")
    names = list(results)
    n = len(names)
    ncols = min(n, 3) if ncols is None else max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    sels = {name: resolve(results[name], index) for name in names}
    recall = dict(recall or {})
    if objects_mask is not None:
        for name, (sel, geom) in sels.items():
            if name not in recall:
                relevant = _grid.relevant_tokens(geom, objects_mask, min_overlap=min_overlap)
                recall[name] = _grid.token_recall(sel, relevant)
    ks = {sel.keep for sel, _ in sels.values()}
    ns = {sel.n_tokens for sel, _ in sels.values()}
    has_answer = answers is not None
    lines = 1 + has_answer + bool(recall)
    if figsize is None:
        w1, h1 = layout_size(next(iter(sels.values()))[1], lines, width=3.0)
        figsize = (w1 * ncols, (h1 - TOP_BAND_IN) * nrows + 0.4 + TOP_BAND_IN + FOOTER_IN * explain)
    fig = new_figure(figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    crop_handles: list = []
    crop_note = ""
    for ax, name in zip(axes, names):
        sel, geom = sels[name]
        canvas = _kept_overlay(ax, image, sel, geom, order_numbers=False, dim=dim, max_side=max_side)
        if objects_mask is not None:
            canvas.contour(objects_mask)
        crop_handles = crop_handles or canvas.crop_handles()
        crop_note = crop_note or canvas.notes()
        title = [name if len(ks) == 1 else f"{name} (K = {sel.keep})"]
        if has_answer:
            title.append(f"answer: {short(answers.get(name, '—'), 28)}")
        if recall:
            r = recall.get(name)
            title.append("recall: n/a" if r is None or not np.isfinite(r) else f"recall: {100 * r:.0f}%")
        ax.set_title("\n".join(title), fontsize=9)
    for ax in axes[n:]:
        ax.set_axis_off()
    # no suptitle: constrained layout would put it in the blank top band; the budget goes into the caption
    budget_note = f" ({ks.pop()} of {ns.pop()})" if len(ks) == 1 and len(ns) == 1 else ""
    if explain:
        handles = _kept_handles(dim)
        if objects_mask is not None:
            handles.append(outline_handle(NEXT_COLOR, "objects the question is about"))
        text = f"Each panel: the tokens one method kept{budget_note} outlined, the pruned ones dimmed"
        text += crop_note
        if recall:
            text += "; recall: the share of the tokens covering the objects asked about that the method kept"
        footer(fig, text + ".", handles + crop_handles)
    return fig
