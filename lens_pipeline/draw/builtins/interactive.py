"""Interactive (Plotly) versions of the attention, neuron and head-statistics figures: the same
numbers the static built-ins draw, exact on hover, offline (lens_pipeline.draw.interactive writes
them as pages that load the save path's one copy of Plotly).

Opt-in (default=False): a page per head is larger and slower to write than a PNG; draw them with
`--figures 'interactive_*'`. Axis labels are "position: token", so repeated tokens stay apart (Plotly
merges equal category names) and a hover names both the position and the token.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins.attention_stats import DEFINITIONS, STATISTICS, prompt_statistics
from lens_pipeline.draw.builtins.plotting import title_for
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache

HOVER_NUMBER = ":.7~g"  # float32 carries ~7 significant digits: a hover shows the cached value
CELL_PX = 14  # pixels per token in a heatmap, within the bounds below
SIDE_PX = (360, 900)


def colorscale(name: str, stops: int = 17) -> list[list[Any]]:
    """A matplotlib colour map (colormap.lut, the static figures' table) as a Plotly colorscale."""
    table = colormap.lut(name)
    picks = np.linspace(0, len(table) - 1, stops).round().astype(int)
    return [[float(i / (stops - 1)), "rgb({},{},{})".format(*table[p])] for i, p in enumerate(picks)]


def position_labels(tokens: list[str]) -> list[str]:
    """'position: token' per token, HTML-escaped (Plotly reads tags and entities in labels)."""
    return [f"{i}: {html.escape(display.token_label(token))}" for i, token in enumerate(tokens)]


def side_px(n: int) -> int:
    return int(np.clip(CELL_PX * n + 160, *SIDE_PX))


def masked(cache: Cache, pattern: np.ndarray) -> np.ndarray:
    """A causal model's future keys as NaN: impossible, not merely unattended (drawn as gaps)."""
    if not cache.causal:
        return pattern
    out = np.array(pattern, dtype=np.float32)
    out[np.triu_indices(len(out), k=1)] = np.nan
    return out


def attention_trace(cache: Cache, pattern: np.ndarray, labels: list[str], coloraxis: str | None = None) -> Any:
    import plotly.graph_objects as go

    return go.Heatmap(
        z=masked(cache, pattern), x=labels, y=labels, hoverongaps=False, coloraxis=coloraxis,
        zmin=0.0, zmax=1.0, colorscale=None if coloraxis else colorscale(colormap.ATTENTION_CMAP),
        colorbar=None if coloraxis else {"title": {"text": "weight"}},
        hovertemplate=f"query %{{y}}<br>key %{{x}}<br>weight %{{z{HOVER_NUMBER}}}<extra></extra>",
    )


def _token_axes(figure: Any, **where: Any) -> None:
    figure.update_xaxes(title_text="key (attended to)", tickangle=-60, **where)
    figure.update_yaxes(title_text="query (attending)", autorange="reversed", **where)


@register_figure(scope="head", formats=("html",), view="interactive", default=False)
def interactive_attention(cache: Cache, layer: int, head: int) -> Any:
    """One head's attention as an interactive heatmap: hover shows query, key and the cached weight."""
    import plotly.graph_objects as go

    labels = position_labels(cache.tokens)
    figure = go.Figure(attention_trace(cache, cache.pattern(layer, head), labels))
    _token_axes(figure)
    side = side_px(cache.n_tokens)
    figure.update_layout(title=title_for(cache, f"attention L{layer} H{head}"), width=side + 120, height=side,
                         plot_bgcolor=colormap.MASKED_COLOR)
    return figure


@register_figure(scope="layer", formats=("html",), view="interactive", default=False)
def interactive_layer(cache: Cache, layer: int, columns: int = 3) -> Any:
    """Every head of a layer as interactive heatmaps on one 0..1 scale (hover: query, key, weight)."""
    from plotly.subplots import make_subplots

    n_heads, labels = cache.n_heads, position_labels(cache.tokens)
    columns = max(1, min(columns, n_heads))
    rows = -(-n_heads // columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[f"H{h}" for h in range(n_heads)],
                           horizontal_spacing=0.04, vertical_spacing=0.06)
    patterns = cache.layer_patterns(layer)
    for head in range(n_heads):
        row, col = divmod(head, columns)
        figure.add_trace(attention_trace(cache, patterns[head], labels, coloraxis="coloraxis"), row=row + 1, col=col + 1)
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(showticklabels=cache.n_tokens <= 24)
    figure.update_yaxes(showticklabels=cache.n_tokens <= 24)
    side = int(np.clip(18 * cache.n_tokens + 60, 220, 420))
    figure.update_layout(
        title=title_for(cache, f"attention, every head of layer {layer}"), width=columns * side + 160,
        height=rows * side + 100, plot_bgcolor=colormap.MASKED_COLOR,
        coloraxis={"colorscale": colorscale(colormap.ATTENTION_CMAP), "cmin": 0.0, "cmax": 1.0,
                   "colorbar": {"title": {"text": "weight"}}})
    return figure


@register_figure(scope="prompt", formats=("html",), view="interactive", needs=("neuron_acts",), default=False)
def interactive_neurons(cache: Cache, clip_percentile: float = 99.0) -> Any:
    """The stored MLP neurons of every layer x tokens (hover: layer, neuron, token, activation)."""
    import plotly.graph_objects as go

    acts, ids = cache.neuron_acts, cache.neuron_ids  # [L, N, T], [L, N]
    n_layers, n_neurons = ids.shape
    rows = [f"L{layer} n{int(ids[layer, i])}" for layer in range(n_layers) for i in range(n_neurons)]
    values = acts.reshape(n_layers * n_neurons, -1)
    # A few huge activations (often on the first token) would leave every other cell white: the colours
    # stop at a percentile of |activation| (said on the colour bar); hovers show the exact value.
    limit = float(np.nanpercentile(np.abs(values), clip_percentile)) or float(np.nanmax(np.abs(values))) or 1.0
    clipped = f" (colours clipped at ±{limit:.3g}: {clip_percentile:g}th percentile of |activation|)" \
        if limit < float(np.nanmax(np.abs(values))) else ""
    figure = go.Figure(go.Heatmap(
        z=values, x=position_labels(cache.tokens), y=rows, zmid=0.0, zmin=-limit, zmax=limit,
        colorscale=colorscale(colormap.SIGNED_CMAP), colorbar={"title": {"text": "activation", "side": "right"}},
        hovertemplate=f"neuron %{{y}}<br>token %{{x}}<br>activation %{{z{HOVER_NUMBER}}}<extra></extra>"))
    figure.update_xaxes(title_text="token", tickangle=-60)
    figure.update_yaxes(title_text="layer and neuron (highest variance over the prompt)", autorange="reversed",
                        showticklabels=len(rows) <= 80)
    figure.update_layout(title=title_for(cache, "MLP neurons") + html.escape(clipped), width=side_px(cache.n_tokens) + 200,
                         height=int(np.clip(6 * len(rows) + 200, 420, 1400)))
    return figure


@register_figure(scope="prompt", formats=("html",), view="interactive", default=False)
def interactive_layer_stats(cache: Cache) -> Any:
    """Per layer and head: attention entropy, max weight, mean distance, first-token share (hover: values)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stats = prompt_statistics(cache)
    figure = make_subplots(rows=2, cols=2, subplot_titles=list(STATISTICS.values()), horizontal_spacing=0.12,
                           vertical_spacing=0.1)
    for position, (name, label) in enumerate(STATISTICS.items()):
        row, col = divmod(position, 2)
        unit_range = {"zmin": 0.0, "zmax": 1.0} if name in ("max_weight", "first_token_share") else {}
        figure.add_trace(go.Heatmap(
            z=stats[name].astype(np.float32), colorscale=colorscale(colormap.ATTENTION_CMAP), **unit_range,
            colorbar={"x": 0.45 + 0.55 * col, "y": 0.78 - 0.56 * row, "len": 0.42},
            hovertemplate=f"layer %{{y}} head %{{x}}<br>{label} %{{z{HOVER_NUMBER}}}<extra></extra>"),
            row=row + 1, col=col + 1)
    figure.update_xaxes(title_text="head", dtick=1)
    figure.update_yaxes(title_text="layer")
    height = int(np.clip(2 * (14 * cache.n_layers + 120), 520, 1100))
    figure.update_layout(title=title_for(cache, "attention statistics per head"), width=1000, height=height,
                         annotations=list(figure.layout.annotations) + [
                             {"text": html.escape(DEFINITIONS["averaging"]), "showarrow": False, "xref": "paper",
                              "yref": "paper", "x": 0, "y": -0.08, "xanchor": "left", "font": {"size": 11}}])
    return figure
