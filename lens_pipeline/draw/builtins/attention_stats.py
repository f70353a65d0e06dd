"""Numbers that summarise what each head does, per prompt and across a model's prompts, drawn as
[layer x head] heatmaps with their JSON. The statistics themselves: corpus/head_statistics.py.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from lens_pipeline.corpus.head_statistics import DEFINITIONS, STATISTICS, head_statistics, prompt_statistics  # noqa: F401
from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins.plotting import title_for, token_label
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache


def statistics_canvas(stats: dict[str, np.ndarray], title: str) -> tuple[canvas.Canvas, dict[str, canvas.Grid]]:
    """A 2 x 2 panel of [layer x head] heatmaps, one per statistic (layer 0 at the bottom), each with its
    colour bar; returns the picture and where each statistic's cells lie."""
    n_layers, n_heads = stats["entropy"].shape
    cell_w, cell_h = max(12, min(24, 320 // n_heads)), max(6, min(16, 420 // n_layers))
    line = canvas.line_height()
    label_w = 12 + canvas.text_width(str(n_layers - 1)) + line
    panel_w = label_w + n_heads * cell_w + 90
    panel_h = line + 4 + n_layers * cell_h + line + 16
    note = "Rows = layers (0 at the bottom), columns = heads. " + DEFINITIONS["averaging"] + "."
    width = max(2 * panel_w + 12, 520)
    note_lines = canvas.wrapped_lines(note, width - 12)
    picture = canvas.Canvas(width, 10 + canvas.line_height(canvas.TITLE_PX) + note_lines * line + 2 * panel_h + 6)
    picture.text(6, 4, canvas.fit_text(title, width - 12, canvas.TITLE_PX), canvas.TITLE_PX)
    y0 = picture.wrap(6, 6 + canvas.line_height(canvas.TITLE_PX), note, width - 12) + 6
    grids = {}
    for slot, (name, label) in enumerate(STATISTICS.items()):
        values = stats[name][::-1]  # layer 0 at the bottom
        vmax = 1.0 if name in ("max_weight", "first_token_share") else max(float(np.nanmax(values)), 1e-9)
        x, y = 6 + (slot % 2) * panel_w, y0 + (slot // 2) * panel_h
        picture.text(x + label_w, y, label)
        grid = picture.heatmap(x + label_w, y + line + 4, colormap.to_index(values, 0.0, vmax), "viridis", cell_w, cell_h)
        picture.frame(grid)
        picture.y_labels(grid, [str(layer) for layer in range(n_layers - 1, -1, -1)])
        picture.x_labels(grid, [str(head) for head in range(n_heads)], vertical=cell_w < 16)
        picture.text(x + 2, grid.y + grid.height / 2, "layer", color=canvas.MUTED, anchor="lm", vertical=True)
        picture.text(grid.x + grid.width / 2, grid.y + grid.height + line + 2, "head", color=canvas.MUTED, anchor="mt")
        ticks = [(t / vmax, canvas.number(t)) for t in canvas.nice_ticks(0.0, vmax, 4)]
        picture.colorbar(grid.x + grid.width + 10, grid.y, grid.height, "viridis", ticks)
        grids[name] = grid
    return picture, grids


def statistics_figure(stats: dict[str, np.ndarray], title: str) -> Image.Image:
    return statistics_canvas(stats, title)[0].finish()


def _as_lists(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: np.round(values, 6).tolist() for name, values in stats.items()}


@register_figure(scope="prompt", formats=("json", "png"))
def attention_stats(cache: Cache) -> dict[str, Any]:
    """Per head: attention entropy, max weight, mean distance and first-token share (JSON + heatmaps)."""
    stats = prompt_statistics(cache)
    data = {
        "model": cache.model,
        "prompt_hash": cache.prompt_hash,
        "n_tokens": cache.n_tokens,
        "causal": cache.causal,
        "definitions": DEFINITIONS,
        "shape": ["layer", "head"],
        **_as_lists(stats),
    }
    return {"json": data, "png": statistics_figure(stats, title_for(cache, "attention statistics"))}


@register_figure(scope="model", formats=("json", "png"))
def attention_stats_across_prompts(caches: Sequence[Cache]) -> dict[str, Any]:
    """Each head's attention statistics averaged over all of a model's prompts (JSON + heatmaps)."""
    if not caches:
        raise ValueError("no caches given")
    models = sorted({c.model for c in caches})
    if len(models) > 1:
        raise ValueError(f"caches from {len(models)} models ({', '.join(models)}); compare one model at a time")
    per_prompt = [prompt_statistics(cache) for cache in caches]
    stacked = {name: np.stack([p[name] for p in per_prompt]) for name in STATISTICS}  # [P, L, H]
    mean = {name: values.mean(0) for name, values in stacked.items()}
    data = {
        "model": models[0],
        "n_prompts": len(caches),
        "prompts": [{"prompt_hash": c.prompt_hash, "n_tokens": c.n_tokens, "text": c.text[:120]} for c in caches],
        "definitions": DEFINITIONS,
        "shape": ["layer", "head"],
        "mean": _as_lists(mean),
        "std": _as_lists({name: values.std(0) for name, values in stacked.items()}),
        "per_prompt": {name: np.round(values, 6).tolist() for name, values in stacked.items()},  # [prompt][layer][head]
    }
    title = token_label(f"attention statistics · {models[0]} · mean over {len(caches)} prompts", max_chars=200)
    return {"json": data, "png": statistics_figure(mean, title)}
