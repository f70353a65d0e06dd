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
from PIL import Image

from lens_pipeline.draw import canvas, colormap, display
from lens_pipeline.draw.builtins.plotting import evenly_spaced, title_for, token_labels
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
    shown = [esc(display.token_inline(token)) for token in tokens]  # the same in every row
    for row in rows:
        colors = row.colors()
        parts.append(f"<section><h2>{esc(row.name)}</h2><p class=\"desc\">{esc(row.title)}; "
                     f"{row.vmin:.4g} <span class=\"scale\" style=\"background: {_gradient(row)}\"></span> {row.vmax:.4g}</p>")
        spans, label_name = [], VALUE_KINDS[row.kind].label_name
        for i, (token, value, color) in enumerate(zip(tokens, row.values, colors)):
            hover = f"#{i} {token!r} = {value:.4g}" + (f"; {label_name} {row.labels[i]!r}" if row.labels else "")
            spans.append(f"<span class=\"t\" style=\"background:{color};color:{colormap.text_color(color)}\" "
                         f"title=\"{esc(hover)}\">{shown[i]}</span>")
        parts.append("<div class=\"tokens\">" + "".join(spans) + "</div></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


TOKENS_PER_LINE = 40  # long prompts wrap onto several panels, like lines of text
CELL_W, ROW_H = 19, 16


def token_values_canvas(cache: Cache, rows: list[TokenValues]) -> tuple[canvas.Canvas, list[list[canvas.Grid]]]:
    """The same rows as stacked one-row heatmaps over the tokens, each on its own scale, wrapped every
    TOKENS_PER_LINE tokens; returns the picture and per panel the grid of each row."""
    n, line = cache.n_tokens, canvas.line_height()
    labels = token_labels(cache.tokens, 12)
    name_w = 12 + min(150, max(canvas.text_width(row.name) for row in rows))
    width = min(canvas.MAX_WIDTH, max(520, name_w + min(n, TOKENS_PER_LINE) * CELL_W + 12))
    label_h = min(90, max(canvas.text_width(label) for label in labels)) + 6
    pages = [range(start, min(start + TOKENS_PER_LINE, n)) for start in range(0, n, TOKENS_PER_LINE)]
    key_h = len(rows) * (line + 2) + 6
    missing = left_out(cache)
    panel_h = line + 4 + len(rows) * ROW_H + label_h + 10
    picture = canvas.Canvas(width, 8 + canvas.line_height(canvas.TITLE_PX) + (line + 2) * (1 + len(missing)) + key_h
                            + len(pages) * panel_h)
    picture.text(6, 4, canvas.fit_text(title_for(cache, "token values"), width - 12, canvas.TITLE_PX), canvas.TITLE_PX)
    y = 8 + canvas.line_height(canvas.TITLE_PX)
    picture.text(6, y, "Each row colours every token by one value, on that row's own scale:", color=canvas.MUTED)
    y += line + 2
    for row in rows:  # the key: each row's colour scale and meaning
        bar = np.linspace(0, colormap.N_COLORS - 1, 60).astype(np.uint8)[None, :]
        picture.heatmap(10 + canvas.text_width(canvas.number(row.vmin)) + 4, y + 3, bar, row.cmap, 1, line - 6)
        picture.grids.pop()
        x = picture.text(6, y, canvas.number(row.vmin)) + 74 + 6
        x += picture.text(x, y, canvas.number(row.vmax)) + 10
        picture.text(x, y, canvas.fit_text(f"{row.name}: {row.title}", width - x - 6), color=canvas.MUTED)
        y += line + 2
    for text in missing:
        picture.text(6, y, canvas.fit_text(f"Left out: {text}", width - 12), color=canvas.MUTED)
        y += line + 2
    panels = []
    for page in pages:
        picture.text(name_w, y, f"tokens {page.start}–{page.stop - 1} of 0–{n - 1}", color=canvas.MUTED)
        top, grids = y + line + 4, []
        for r, row in enumerate(rows):
            index = colormap.to_index(row.values[page.start : page.stop][None, :], row.vmin, row.vmax)
            masked = ~np.isfinite(row.values[page.start : page.stop])[None, :]
            grid = picture.heatmap(name_w, top + r * ROW_H, index, row.cmap, CELL_W, ROW_H - 2, masked)
            picture.text(name_w - 4, grid.y + grid.height / 2, canvas.fit_text(row.name, name_w - 12), anchor="rm")
            grids.append(grid)
        picture.x_labels(grids[-1], [labels[i] for i in page], vertical=True)
        panels.append(grids)
        y = top + len(rows) * ROW_H + label_h + 10
    return picture, panels


def token_values_figure(cache: Cache, rows: list[TokenValues]) -> Image.Image:
    return token_values_canvas(cache, rows)[0].finish()


@register_figure(scope="prompt", formats=("html", "png"))
def token_values(cache: Cache, layers: list[int] | None = None, neurons_per_layer: int = 3) -> dict[str, Any]:
    """Tokens coloured by top-1 probability, residual norm and stored neurons (HTML with hover values + PNG)."""
    rows = token_rows(cache, layers, neurons_per_layer)
    return {"html": token_values_html(cache, rows), "png": token_values_figure(cache, rows)}


def neuron_heatmap_canvas(cache: Cache, layers: list[int] | None = None) -> tuple[canvas.Canvas, dict[int, canvas.Grid]]:
    acts, ids = cache.neuron_acts, cache.neuron_ids
    chosen = chosen_layers(cache, layers, default_count=4)
    n_neurons, n, line = ids.shape[1], cache.n_tokens, canvas.line_height()
    cell_w = max(1, min(24, 700 // n))
    cell_h = max(5, min(16, 220 // n_neurons))
    labels = token_labels(cache.tokens, 12)
    label_h = min(90, max(canvas.text_width(label) for label in labels)) + 6
    left = 16 + canvas.text_width("00000") + line
    width = max(560, left + n * cell_w + 110)
    step = max(1, -(-line // cell_w))
    note = ("Rows = the layer's stored neurons (highest variance over the prompt), columns = tokens; colour = activation "
            "on a diverging scale centred on 0, symmetric per layer." + (f" Every {step} tokens labelled." if step > 1 else ""))
    note_lines = canvas.wrapped_lines(note, width - 12)
    block = line + 4 + n_neurons * cell_h + 8
    height = 10 + canvas.line_height(canvas.TITLE_PX) + note_lines * line + len(chosen) * block + label_h + 4
    picture = canvas.Canvas(width, height)
    title = title_for(cache, "MLP neurons (highest variance over the prompt)")
    picture.text(6, 4, canvas.fit_text(title, width - 12, canvas.TITLE_PX), canvas.TITLE_PX)
    y = picture.wrap(6, 6 + canvas.line_height(canvas.TITLE_PX), note, width - 12) + 4
    grids = {}
    for layer in chosen:
        limit = float(np.abs(acts[layer]).max()) or 1.0
        picture.text(left, y, f"layer {layer}: neuron id × token")
        grid = picture.heatmap(left, y + line + 4, colormap.to_index(acts[layer], -limit, limit), VALUE_KINDS["neuron"].cmap,
                               cell_w, cell_h)
        picture.frame(grid)
        picture.y_labels(grid, [str(i) for i in ids[layer]])
        ticks = [(0.0, canvas.number(-limit)), (0.5, "0"), (1.0, canvas.number(limit))]
        picture.colorbar(grid.x + grid.width + 10, grid.y, grid.height, VALUE_KINDS["neuron"].cmap, ticks, "activation")
        grids[layer] = grid
        y += block
    picture.x_labels(grids[chosen[-1]], labels, vertical=True)
    return picture, grids


@register_figure(scope="prompt", formats="png", needs=("neuron_acts",))
def neuron_heatmap(cache: Cache, layers: list[int] | None = None) -> Image.Image:
    """Stored MLP neurons x tokens for a few layers (diverging colours centred on 0, colour bar per layer)."""
    return neuron_heatmap_canvas(cache, layers)[0].finish()
