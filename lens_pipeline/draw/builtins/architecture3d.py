"""The 3-D architecture view: one prompt's model as a Plotly scene (rotate, zoom, hover) of
layers x heads x the stored MLP neurons, laid out by the model's real shape and coloured by a
chosen per-prompt quantity. Clicking a head opens its head view in the viewer
(lens_pipeline.draw.interactive links); from file:// or a notebook the page names the head.

Layout (scene units): layer l is the plane z = l. Its attention heads sit on the row y = 0, spread
over x in [0, 1] in head order; its stored neurons on the row y = 1 at x = neuron index / MLP width
(the model's `d_mlp`, from its model card, lens_pipeline/capture/model_card.py; without a card the
largest stored index + 1, said so on the figure), so the sample's place in the MLP is visible. A
line at x = -0.15 is the residual stream from the embeddings (below layer 0) to the unembedding
(above the last layer).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from lens_pipeline.capture import model_card
from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins.attention_stats import prompt_statistics
from lens_pipeline.draw.builtins.interactive import colorscale
from lens_pipeline.draw.builtins.plotting import title_for
from lens_pipeline.draw.interactive import Interactive, Link
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import role_text, roles_beside

# The `color` choices and what each shows: (colour bar title, colour map, what a hover calls it).
COLORS: dict[str, tuple[str, str, str]] = {
    "entropy": ("attention entropy (nats)", colormap.ATTENTION_CMAP, "entropy"),
    "first_token": ("attention to the first token", colormap.ATTENTION_CMAP, "first-token share"),
    "neurons": ("neuron activation, largest |value| over tokens", colormap.SIGNED_CMAP, "activation"),
}
NEUTRAL = "rgba(105,105,120,0.55)"  # the part not coloured by the chosen quantity
RESIDUAL_X = -0.15


def head_points(cache: Cache, color: str) -> tuple[Any, list[Link]]:
    """The heads as one marker trace (customdata: index of the head's link) and the links."""
    import plotly.graph_objects as go

    stats = prompt_statistics(cache)
    n_layers, n_heads = cache.n_layers, cache.n_heads
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    layer, head = layer.ravel(), head.ravel()
    entropy, first = stats["entropy"].ravel(), stats["first_token_share"].ravel()
    links = [Link(f"L{int(l_)} H{int(h)}", {"view": "head", "model": cache.model, "prompt": cache.prompt_hash,
                                            "layer": int(l_), "head": int(h)}) for l_, h in zip(layer, head)]
    roles = roles_beside(cache.path)  # each head's role where the model's head roles give it one
    named = [f"L{int(l_)} H{int(h)}" + (f" · {text}" if (text := role_text(roles, int(l_), int(h))) else "")
             for l_, h in zip(layer, head)]
    marker: dict[str, Any] = {"size": 7, "symbol": "square", "line": {"width": 0}}
    if color in ("entropy", "first_token"):
        values = entropy if color == "entropy" else first
        title, cmap, _ = COLORS[color]
        marker.update(color=values.astype(np.float32), colorscale=colorscale(cmap), showscale=True,
                      cmin=0.0, cmax=1.0 if color == "first_token" else float(max(values.max(), 1e-6)),
                      colorbar={"title": {"text": title}, "x": 1.0})
    else:
        marker.update(color=NEUTRAL)
    x = head / max(n_heads - 1, 1)
    trace = go.Scatter3d(
        x=x, y=np.zeros_like(x), z=layer, mode="markers", name="attention heads", marker=marker,
        customdata=np.arange(len(links)),
        hovertext=[f"{name} · click to open the head<br>entropy {e:.7g} nats<br>first-token share {f:.7g}"
                   for name, e, f in zip(named, entropy, first)],
        hoverinfo="text")
    return trace, links


def mlp_width(cache: Cache) -> tuple[int, bool]:
    """(the MLP width, whether it is the model's) for placing the stored neurons: the model card's
    d_mlp; without a card (or a d_mlp in it), the largest stored neuron index + 1."""
    try:
        stated = model_card.card_for(cache).architecture.get("d_mlp")
    except (model_card.CardMissing, OSError, KeyError, ValueError):
        stated = None
    if stated:
        return int(stated), True
    return int(cache.neuron_ids.max()) + 1, False


def neuron_points(cache: Cache, color: str, per_layer: int) -> tuple[Any, str]:
    """The stored neurons (up to `per_layer` per layer, the first stored: highest variance) as one
    marker trace; and a note on the MLP width used."""
    import plotly.graph_objects as go

    ids, acts = cache.neuron_ids[:, :per_layer], cache.neuron_acts[:, :per_layer]  # [L, N], [L, N, T]
    width, stated = mlp_width(cache)
    peak_at = np.abs(acts).argmax(-1)  # [L, N]
    peak = np.take_along_axis(acts, peak_at[..., None], -1)[..., 0]
    layer = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    tokens = [html.escape(display.token_label(token)) for token in cache.tokens]
    marker: dict[str, Any] = {"size": 3.5, "line": {"width": 0}}
    if color == "neurons":
        title, cmap, _ = COLORS["neurons"]
        limit = float(np.abs(peak).max()) or 1.0
        marker.update(color=peak.ravel().astype(np.float32), colorscale=colorscale(cmap), cmin=-limit, cmax=limit,
                      showscale=True, colorbar={"title": {"text": title}, "x": 1.0})
    else:
        marker.update(color=NEUTRAL)
    hover = [f"L{int(l_)} neuron {int(n)}<br>activation {float(v):.7g} at {int(t)}: {tokens[int(t)]}"
             for l_, n, v, t in zip(layer, ids.ravel(), peak.ravel(), peak_at.ravel())]
    trace = go.Scatter3d(x=ids.ravel() / width, y=np.ones(layer.shape), z=layer, mode="markers",
                         name="MLP neurons (stored sample)", marker=marker, customdata=np.full(layer.shape, -1),
                         hovertext=hover, hoverinfo="text")
    note = f"MLP width {width}" if stated else f"MLP width ≥ {width} (largest stored neuron index + 1)"
    return trace, note


@register_figure(scope="prompt", formats=("html",), view="interactive", default=False)
def architecture_3d(cache: Cache, color: str = "entropy", neurons_per_layer: int = 32) -> Interactive:
    """The model in 3-D: layers x heads x stored neurons, coloured by entropy, first-token share or neurons."""
    import plotly.graph_objects as go

    if color not in COLORS:
        raise ValueError(f"color must be one of {list(COLORS)}, not {color!r}")
    heads, links = head_points(cache, color)
    traces, notes = [heads], [f"{cache.n_layers} layers × {cache.n_heads} heads (d_model {cache.meta.get('d_model', '?')})"]
    if cache.has("neuron_acts"):
        neurons, note = neuron_points(cache, color, neurons_per_layer)
        traces.append(neurons)
        notes.append(note)
    elif color == "neurons":
        raise SkipFigure("color='neurons' needs the cache array neuron_acts (--neurons); this cache has none")
    top = cache.n_layers
    traces.append(go.Scatter3d(x=[RESIDUAL_X, RESIDUAL_X], y=[0.5, 0.5], z=[-1, top], mode="lines+text",
                               text=["embeddings", "unembedding" if cache.meta.get("lm_head", True) else "output"],
                               name="residual stream", line={"color": "#555", "width": 4}, hoverinfo="name",
                               customdata=[-1, -1]))
    figure = go.Figure(traces)
    figure.update_layout(
        title=title_for(cache, f"architecture in 3-D, coloured by {COLORS[color][2]}") + "<br><sub>"
        + html.escape(" · ".join(notes)) + " · click a head to open it</sub>",
        autosize=True, margin={"l": 0, "r": 0, "t": 70, "b": 0}, legend={"x": 0, "y": 1},
        scene={"xaxis": {"title": {"text": "head (attention) / neuron index ÷ MLP width"}, "range": [-0.25, 1.05]},
               "yaxis": {"title": {"text": "attention · MLP"}, "tickvals": [0, 1], "ticktext": ["attention", "MLP"],
                         "range": [-0.3, 1.3]},
               "zaxis": {"title": {"text": "layer"}, "range": [-1.2, top + 0.2]},
               "aspectmode": "manual", "aspectratio": {"x": 1.2, "y": 0.6, "z": 1.6},
               "camera": {"eye": {"x": 1.9, "y": -1.9, "z": 0.8}}})
    return Interactive(figure, links, title=f"architecture_3d · {cache.model} · {cache.prompt_hash}")
