"""The prompt's tokens coloured by per-token values (top-1 probability, residual norm, stored MLP
neurons), as self-contained HTML with hover values and as a PNG; and a neuron x token heatmap.

The values, their colour ranges and colour maps come from lens_pipeline.draw.token_values, the same
function the viewer's token view uses. Tokens and prompts are untrusted text: every one is
HTML-escaped, and the page has no script and loads nothing (inline CSS only).
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins.plotting import evenly_spaced, label_ticks, new_figure, title_for, token_label, token_labels
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.draw.token_values import VALUE_KINDS, TokenValues, per_token_values, unavailable
from lens_pipeline.store.cache import Cache


def chosen_layers(cache: Cache, layers: Sequence[int] | None, default_count: int) -> list[int]:
    """The layers asked for (checked), or `default_count` spread from first to last."""
    if layers is None:
        return evenly_spaced(cache.n_layers, default_count)
    bad = [layer for layer in layers if not 0 <= layer < cache.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range 0..{cache.n_layers - 1}")
    return list(layers)


def token_rows(cache: Cache, layers: Sequence[int] | None = None, neurons_per_layer: int = 3) -> list[TokenValues]:
    """What `token_values` shows: top-1 probability (with a trained LM head), the final residual
    norm, a few neurons per layer; each on its kind's colour map and full range."""
    rows = []
    if not unavailable(cache, VALUE_KINDS["top1_prob"]):
        rows.append(per_token_values(cache, "top1_prob"))
    rows.append(per_token_values(cache, "resid_norm", cache.n_layers))
    if not unavailable(cache, VALUE_KINDS["neuron"]) and neurons_per_layer > 0:
        ids = cache.neuron_ids
        for layer in chosen_layers(cache, layers, default_count=3):
            for slot in range(min(neurons_per_layer, ids.shape[1])):  # stored by variance, largest first
                rows.append(per_token_values(cache, "neuron", layer, int(ids[layer, slot])))
    return rows


def left_out(cache: Cache) -> list[str]:
    """The values this figure leaves out for `cache`, each with the reason."""
    return [f"{VALUE_KINDS[name].label}: {reason}" for name in ("top1_prob", "neuron")
            if (reason := unavailable(cache, VALUE_KINDS[name]))]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.1em; } h2 { font-size: 0.95em; margin: 1.2em 0 0.3em; }
.prompt { background: #f4f4f4; padding: 0.5em; white-space: pre-wrap; }
.desc { font-size: 0.8em; color: #555; margin: 0 0 0.4em; }
.scale { display: inline-block; width: 8em; height: 0.8em; vertical-align: middle; border: 1px solid #aaa; }
.tokens { line-height: 1.9; font-family: ui-monospace, monospace; }
.t { white-space: pre; padding: 1px 0; border-radius: 2px; }
.t:hover { outline: 2px solid #000; }
"""


def _gradient(row: TokenValues) -> str:
    stops = np.linspace(row.vmin, row.vmax, 5)
    return "linear-gradient(to right, " + ", ".join(colormap.hex_colors(stops, row.cmap, row.vmin, row.vmax)) + ")"


def token_values_html(cache: Cache, rows: list[TokenValues]) -> str:
    """Self-contained page: per row, every token on its colour, exact value on hover (title)."""
    esc = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    tokens = cache.tokens
    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{esc(f'token values · {cache.model} · {cache.prompt_hash}')}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Token values · {esc(cache.model)} · {esc(cache.prompt_hash)}</h1>",
        f"<p class=\"prompt\">{esc(cache.text)}</p>",
        *(f"<p class=\"desc\">Left out: {esc(line)}</p>" for line in left_out(cache)),
    ]
    for row in rows:
        colors = row.colors()
        parts.append(f"<section><h2>{esc(row.name)}</h2><p class=\"desc\">{esc(row.title)}; "
                     f"{row.vmin:.4g} <span class=\"scale\" style=\"background: {_gradient(row)}\"></span> {row.vmax:.4g}</p>")
        spans, label_name = [], VALUE_KINDS[row.kind].label_name
        for i, (token, value, color) in enumerate(zip(tokens, row.values, colors)):
            hover = f"#{i} {token!r} = {value:.4g}" + (f"; {label_name} {row.labels[i]!r}" if row.labels else "")
            spans.append(f"<span class=\"t\" style=\"background:{color};color:{colormap.text_color(color)}\" "
                         f"title=\"{esc(hover)}\">{esc(display.token_inline(token))}</span>")
        parts.append("<div class=\"tokens\">" + "".join(spans) + "</div></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def token_values_figure(cache: Cache, rows: list[TokenValues]) -> Figure:
    """The same rows as stacked one-row heatmaps over the tokens, each on its own scale."""
    n = cache.n_tokens
    figure = new_figure(min(40.0, max(6.0, 2.5 + 0.22 * n)), 1.0 + 0.45 * len(rows) + 1.0)
    axes_list = figure.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    for axes, row in zip(axes_list, rows):
        image = axes.imshow(row.values[None, :], aspect="auto", cmap=row.cmap, vmin=row.vmin, vmax=row.vmax,
                            interpolation="nearest")
        axes.set_yticks([0], [token_label(row.name, 40)], fontsize=8)
        figure.colorbar(image, ax=axes, pad=0.01, aspect=6)
    label_ticks(axes_list[-1], "x", token_labels(cache.tokens))
    axes_list[0].set_title(title_for(cache, "token values"), fontsize=9)
    return figure


@register_figure(scope="prompt", formats=("html", "png"))
def token_values(cache: Cache, layers: list[int] | None = None, neurons_per_layer: int = 3) -> dict[str, Any]:
    """Tokens coloured by top-1 probability, residual norm and stored neurons (HTML with hover values + PNG)."""
    rows = token_rows(cache, layers, neurons_per_layer)
    return {"html": token_values_html(cache, rows), "png": token_values_figure(cache, rows)}


@register_figure(scope="prompt", formats="png", needs=("neuron_acts",))
def neuron_heatmap(cache: Cache, layers: list[int] | None = None) -> Figure:
    """Stored MLP neurons x tokens for a few layers (diverging colours centred on 0)."""
    acts, ids = cache.neuron_acts, cache.neuron_ids
    chosen = chosen_layers(cache, layers, default_count=4)
    n_neurons, n = ids.shape[1], cache.n_tokens
    figure = new_figure(min(40.0, max(6.0, 3.0 + 0.22 * n)), len(chosen) * (1.0 + 0.1 * n_neurons) + 1.5)
    axes_list = figure.subplots(len(chosen), 1, sharex=True, squeeze=False)[:, 0]
    for axes, layer in zip(axes_list, chosen):
        limit = float(np.abs(acts[layer]).max()) or 1.0
        image = axes.imshow(acts[layer], aspect="auto", cmap=VALUE_KINDS["neuron"].cmap, vmin=-limit, vmax=limit,
                            interpolation="nearest")
        axes.set_yticks(range(n_neurons), [str(i) for i in ids[layer]], fontsize=5 if n_neurons > 16 else 7)
        axes.set_ylabel(f"layer {layer}\nneuron", fontsize=8)
        figure.colorbar(image, ax=axes, pad=0.01, label="activation")
    label_ticks(axes_list[-1], "x", token_labels(cache.tokens))
    axes_list[0].set_title(title_for(cache, "MLP neurons (highest variance over the prompt)"), fontsize=9)
    return figure
