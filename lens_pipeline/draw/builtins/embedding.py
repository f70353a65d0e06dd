"""Embedding projections: the prompt's tokens in the model's input-embedding PCA, and each token's
residual stream across layers as a trajectory on the model's shared residual basis. Static (PNG +
JSON of every plotted point) and interactive 3-D (Plotly, lens_pipeline.draw.interactive).

Everything placed comes from the model card (lens_pipeline/capture/model_card.py) and the cache:
- a token's point is its row of the card's `vocab_coords`, (E[id] - mean) @ components.T, the same
  basis for every prompt of the model; the grey background is the card's fixed vocabulary sample;
- nearest neighbours are the cache's `embed_neighbors` (`--embedding-views`): cosine similarity in
  the full d_model embedding space, computed at capture time, so they can sit apart in 2-D;
- trajectories are the cache's `resid_proj` (`--embedding-views`): the residual stream before layer 0
  and after each layer, scaled to unit RMS and projected on the card's residual basis (PCA of a
  fixed reference text's residuals, drawn in grey), so prompts of one model share axes.

Opt-in (default=False): name them with --figures, on caches made with --embedding-views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lens_pipeline.capture import model_card
from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins.plotting import evenly_spaced, new_figure, title_for, token_label
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache

TEXT_PT = 7.5  # about 10 px at the stage's 100 dpi
BACKGROUND = "#c8c8c8"


def token_points(cache: Cache, card: model_card.ModelCard, skip_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(positions [n], their tokens' embedding coordinates [n, 3])."""
    start = 1 if skip_first and cache.n_tokens > 1 else 0
    positions = np.arange(start, cache.n_tokens)
    return positions, card.embedding_coords(cache.token_ids[positions])


def neighbor_table(cache: Cache, card: model_card.ModelCard, positions: np.ndarray, neighbors: int,
                   max_tokens: int) -> list[dict[str, Any]]:
    """Per distinct token (first occurrence, at most `max_tokens`, evenly spread): its nearest tokens."""
    if not cache.has("embed_neighbors"):
        return []
    ids, sims, strs = cache.array("embed_neighbors"), cache.array("embed_neighbor_sims"), cache.array("embed_neighbor_strs")
    first: dict[int, int] = {}
    for position in positions:
        first.setdefault(int(cache.token_ids[position]), int(position))
    chosen = list(first.values())
    chosen = [chosen[i] for i in evenly_spaced(len(chosen), max_tokens)]
    table = []
    for position in chosen:
        k = min(neighbors, ids.shape[1])
        coords = card.embedding_coords(ids[position, :k])
        table.append({"position": position, "token_id": int(cache.token_ids[position]), "token": cache.tokens[position],
                      "neighbors": [{"token_id": int(ids[position, j]), "token": str(strs[position, j]),
                                     "cosine": round(float(sims[position, j]), 4),
                                     "x": float(coords[j, 0]), "y": float(coords[j, 1]), "z": float(coords[j, 2])}
                                    for j in range(k)]})
    return table


def _axis_label(card: model_card.ModelCard, axis: int, what: str) -> str:
    ratio = card.arrays["embed_explained" if what == "embedding" else "resid_explained"][axis]
    return f"PC{axis + 1} of the {what} basis ({ratio:.1%} of its variance)"


@register_figure(scope="prompt", formats=("png", "json"), default=False)
def embedding_tokens(cache: Cache, neighbors: int = 3, max_labelled: int = 30, skip_first: bool = False) -> dict[str, Any]:
    """The prompt's tokens in the model's input-embedding PCA, over a vocabulary sample, nearest neighbours labelled."""
    card = model_card.card_for(cache)
    positions, coords = token_points(cache, card, skip_first)
    sample = card.embedding_coords(card.arrays["vocab_sample_ids"])
    table = neighbor_table(cache, card, positions, neighbors, max_labelled)
    figure = new_figure(9.0, 7.5)
    axes = figure.add_subplot()
    axes.scatter(sample[:, 0], sample[:, 1], s=4, color=BACKGROUND, linewidths=0, zorder=1)
    for entry in table:
        origin = card.embedding_coords([entry["token_id"]])[0]
        for neighbor in entry["neighbors"]:
            axes.plot([origin[0], neighbor["x"]], [origin[1], neighbor["y"]], color="#999999", lw=0.5, zorder=2)
            axes.scatter([neighbor["x"]], [neighbor["y"]], s=16, facecolors="white", edgecolors="#555555", lw=0.7, zorder=3)
            axes.annotate(token_label(neighbor["token"], 14), (neighbor["x"], neighbor["y"]), xytext=(2, -7),
                          textcoords="offset points", fontsize=TEXT_PT, color="#555555", zorder=4)
    points = axes.scatter(coords[:, 0], coords[:, 1], c=positions, cmap=colormap.ATTENTION_CMAP, s=30,
                          edgecolors="black", linewidths=0.4, zorder=5)
    labelled = {entry["position"] for entry in table} or set(positions[evenly_spaced(len(positions), max_labelled)].tolist())
    for position, (x, y, _) in zip(positions, coords):
        if int(position) in labelled:
            axes.annotate(token_label(cache.tokens[position], 14), (x, y), xytext=(3, 3), textcoords="offset points",
                          fontsize=TEXT_PT + 0.5, fontweight="bold", zorder=6)
    axes.set_xlabel(_axis_label(card, 0, "embedding"))
    axes.set_ylabel(_axis_label(card, 1, "embedding"))
    figure.colorbar(points, ax=axes, label="position in the prompt")
    note = (f"grey: {len(sample):,} sampled vocabulary tokens · filled: this prompt's tokens (colour = position) · "
            + (f"hollow: each token's {neighbors} nearest tokens by cosine similarity in the full "
               f"{card.architecture['d_model']}-d embedding space (they may sit apart in 2-D)" if table else
               "nearest neighbours: not stored (run the activations stage with --embedding-views)"))
    axes.set_title(title_for(cache, "tokens in the input-embedding PCA") + "\n" + note, fontsize=8, wrap=True)
    data = {
        "basis": card.info["embedding_pca"],
        "skipped_positions": list(range(int(positions[0]) if len(positions) else 0)),
        "points": [{"position": int(p), "token_id": int(cache.token_ids[p]), "token": cache.tokens[p],
                    "x": float(x), "y": float(y), "z": float(z)} for p, (x, y, z) in zip(positions, coords)],
        "neighbors": table,
    }
    return {"png": figure, "json": data}


def trajectory_positions(cache: Cache, skip_first: bool, max_tokens: int) -> np.ndarray:
    start = 1 if skip_first and cache.n_tokens > 1 else 0
    positions = np.arange(start, cache.n_tokens)
    return positions[evenly_spaced(len(positions), max_tokens)]


@register_figure(scope="prompt", formats=("png", "json"), needs=("resid_proj",), default=False)
def residual_trajectories(cache: Cache, max_tokens: int = 24, skip_first: bool = True) -> dict[str, Any]:
    """Each token's residual stream across layers, as a path on the model's shared residual basis (PC1, PC2)."""
    card = model_card.card_for(cache)
    projected = cache.array("resid_proj").astype(np.float64)  # [L+1, T, 3]
    if projected.shape[0] != card.arrays["resid_reference"].shape[0]:
        raise ValueError(f"the cache has {projected.shape[0]} residual rows, the model card "
                         f"{card.arrays['resid_reference'].shape[0]}")
    positions = trajectory_positions(cache, skip_first, max_tokens)
    if not len(positions):
        raise SkipFigure("no token left to draw (the prompt is its first token only)")
    reference = card.arrays["resid_reference"]
    figure = new_figure(9.0, 7.5)
    axes = figure.add_subplot()
    axes.scatter(reference[..., 0].ravel(), reference[..., 1].ravel(), s=3, color=BACKGROUND, linewidths=0, zorder=1)
    cmap = colormap.lut(colormap.ATTENTION_CMAP) / 255.0
    for rank, position in enumerate(positions):
        path = projected[:, position]
        color = cmap[int(round(255 * rank / max(len(positions) - 1, 1)))]
        axes.plot(path[:, 0], path[:, 1], color=color, lw=1.0, alpha=0.9, zorder=2)
        axes.scatter(path[:1, 0], path[:1, 1], s=22, facecolors="white", edgecolors=[color], lw=1.0, zorder=3)
        axes.scatter(path[-1:, 0], path[-1:, 1], s=22, marker="s", color=[color], zorder=3)
        axes.annotate(token_label(cache.tokens[position], 14), (path[-1, 0], path[-1, 1]), xytext=(3, 3),
                      textcoords="offset points", fontsize=TEXT_PT, color="#222222", zorder=4)
    axes.set_xlabel(_axis_label(card, 0, "residual"))
    axes.set_ylabel(_axis_label(card, 1, "residual"))
    shown = f"{len(positions)} of {cache.n_tokens} tokens" + (" (first token left out)" if skip_first else "")
    note = (f"each line: one token's residual stream, ○ before layer 0 → ■ after layer {cache.n_layers - 1} ({shown}; "
            "colour = order in the prompt) · unit-RMS residuals on the model's shared basis (PCA of a fixed reference "
            "text's residuals, grey), the same axes for every prompt of this model")
    axes.set_title(title_for(cache, "residual stream trajectories") + "\n" + note, fontsize=8, wrap=True)
    data = {
        "basis": {k: v for k, v in card.info["residual_basis"].items() if k != "reference_text"},
        "rows": ["before layer 0"] + [f"after layer {layer}" for layer in range(cache.n_layers)],
        "trajectories": [{"position": int(p), "token": cache.tokens[p],
                          "points": np.round(projected[:, p], 6).tolist()} for p in positions],
    }
    return {"png": figure, "json": data}


# --------------------------------------------------------------------------- interactive 3-D


def _hover_token(token: str) -> str:
    import html

    return html.escape(display.token_label(token))


@register_figure(scope="prompt", formats=("html",), view="interactive", default=False)
def embedding_tokens_3d(cache: Cache, neighbors: int = 3, max_labelled: int = 30, skip_first: bool = False) -> Any:
    """The prompt's tokens in the input-embedding PCA, in 3-D (rotate, zoom, hover), with the vocabulary sample and neighbours."""
    import plotly.graph_objects as go

    card = model_card.card_for(cache)
    positions, coords = token_points(cache, card, skip_first)
    ids = card.arrays["vocab_sample_ids"]
    sample = card.embedding_coords(ids)
    table = neighbor_table(cache, card, positions, neighbors, max_labelled)
    traces = [go.Scatter3d(x=sample[:, 0], y=sample[:, 1], z=sample[:, 2], mode="markers", name="vocabulary sample",
                           marker={"size": 1.5, "color": BACKGROUND},
                           text=[_hover_token(t) for t in card.arrays["vocab_sample_strs"]],
                           hovertemplate="%{text}<extra>vocabulary</extra>")]
    if table:
        xs, ys, zs, labels = [], [], [], []
        for entry in table:
            origin = card.embedding_coords([entry["token_id"]])[0]
            for neighbor in entry["neighbors"]:
                xs += [origin[0], neighbor["x"], None]
                ys += [origin[1], neighbor["y"], None]
                zs += [origin[2], neighbor["z"], None]
                labels += [None, f"{_hover_token(neighbor['token'])} (cosine {neighbor['cosine']:.3f} to "
                           f"{_hover_token(entry['token'])})", None]
        traces.append(go.Scatter3d(x=xs, y=ys, z=zs, mode="lines+markers", name="nearest neighbours",
                                   line={"color": "#999999", "width": 2}, marker={"size": 3, "color": "white",
                                                                                  "line": {"color": "#555555"}},
                                   text=labels, hovertemplate="%{text}<extra></extra>"))
    traces.append(go.Scatter3d(
        x=coords[:, 0], y=coords[:, 1], z=coords[:, 2], mode="markers+text", name="this prompt's tokens",
        text=[_hover_token(cache.tokens[p]) for p in positions], customdata=positions,
        marker={"size": 4, "color": positions, "colorscale": "Viridis", "colorbar": {"title": {"text": "position"}}},
        hovertemplate="position %{customdata}: %{text}<br>(%{x:.4f}, %{y:.4f}, %{z:.4f})<extra></extra>"))
    figure = go.Figure(traces)
    figure.update_layout(title={"text": _hover_token(title_for(cache, "tokens in the input-embedding PCA"))},
                         scene={f"{axis}axis": {"title": {"text": _axis_label(card, i, "embedding")}}
                                for i, axis in enumerate("xyz")}, margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return figure


@register_figure(scope="prompt", formats=("html",), view="interactive", needs=("resid_proj",), default=False)
def residual_trajectories_3d(cache: Cache, max_tokens: int = 48, skip_first: bool = True) -> Any:
    """Each token's residual stream across layers on the model's shared residual basis, in 3-D (rotate, zoom, hover)."""
    import plotly.graph_objects as go

    card = model_card.card_for(cache)
    projected = cache.array("resid_proj").astype(np.float64)
    positions = trajectory_positions(cache, skip_first, max_tokens)
    if not len(positions):
        raise SkipFigure("no token left to draw (the prompt is its first token only)")
    reference = card.arrays["resid_reference"].reshape(-1, 3)
    traces = [go.Scatter3d(x=reference[:, 0], y=reference[:, 1], z=reference[:, 2], mode="markers",
                           name="reference text", marker={"size": 1.5, "color": BACKGROUND}, hoverinfo="skip")]
    layers = ["before layer 0"] + [f"after layer {layer}" for layer in range(cache.n_layers)]
    for rank, position in enumerate(positions):
        path = projected[:, position]
        token = _hover_token(cache.tokens[position])
        traces.append(go.Scatter3d(
            x=path[:, 0], y=path[:, 1], z=path[:, 2], mode="lines+markers", name=f"{position}: {token}",
            text=layers, line={"width": 3, "color": [rank] * len(path), "colorscale": "Viridis", "cmin": 0,
                               "cmax": max(len(positions) - 1, 1)},
            marker={"size": 2}, hovertemplate=f"{position}: {token}<br>%{{text}}<br>(%{{x:.4f}}, %{{y:.4f}}, %{{z:.4f}})"
                                              "<extra></extra>"))
    figure = go.Figure(traces)
    figure.update_layout(title={"text": _hover_token(title_for(cache, "residual stream trajectories"))},
                         scene={f"{axis}axis": {"title": {"text": _axis_label(card, i, "residual")}}
                                for i, axis in enumerate("xyz")}, margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return figure
