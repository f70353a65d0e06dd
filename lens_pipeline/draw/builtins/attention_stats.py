"""Numbers that summarise what each head does, per prompt and across a model's prompts.

Every statistic is a mean over query positions; for causal models query 0 is left out (it can
only attend to itself, so it would pull every head towards "sharp, local, on the first token").
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from lens_pipeline.draw.builtins.plotting import new_figure, title_for, token_label
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache

STATISTICS: dict[str, str] = {  # name -> panel title
    "entropy": "entropy (nats)",
    "max_weight": "max weight",
    "mean_distance": "mean distance (tokens)",
    "first_token_share": "first-token share",
}
DEFINITIONS: dict[str, str] = {  # written into the JSON, so the numbers explain themselves
    "entropy": "-sum_k a*ln(a) over keys, in nats (0 = all weight on one key)",
    "max_weight": "the largest weight in the query's row",
    "mean_distance": "sum_k a*|query - key|, in tokens",
    "first_token_share": "weight on position 0 (BOS for causal models, [CLS] for BERT)",
    "averaging": "mean over query positions; causal models leave out query 0, which can only attend to itself",
}


def head_statistics(patterns: np.ndarray, causal: bool) -> dict[str, np.ndarray]:
    """[..., T, T] attention (rows = queries) -> each statistic with shape [...]."""
    patterns = np.asarray(patterns, dtype=np.float64)
    n = patterns.shape[-1]
    rows = slice(1, None) if causal and n > 1 else slice(None)
    a = patterns[..., rows, :]
    queries = np.arange(n)[rows]
    distance = np.abs(queries[:, None] - np.arange(n)[None, :])
    a_log_a = a * np.log(np.where(a > 0, a, 1.0))  # 0 log 0 = 0
    return {
        "entropy": (-a_log_a.sum(-1)).mean(-1),
        "max_weight": a.max(-1).mean(-1),
        "mean_distance": (a * distance).sum(-1).mean(-1),
        "first_token_share": a[..., 0].mean(-1),
    }


def prompt_statistics(cache: Cache) -> dict[str, np.ndarray]:
    """Each statistic as a [layers, heads] array for one cached prompt."""
    per_layer = [head_statistics(cache.layer_patterns(layer), cache.causal) for layer in range(cache.n_layers)]
    return {name: np.stack([stats[name] for stats in per_layer]) for name in STATISTICS}


def statistics_figure(stats: dict[str, np.ndarray], title: str) -> Figure:
    """A 2 x 2 panel of [layer x head] heatmaps, one per statistic."""
    n_layers, n_heads = stats["entropy"].shape
    height = min(16.0, 2.0 + 0.22 * n_layers) * 2
    figure = new_figure(max(7.0, 1.6 + 0.45 * n_heads * 2), height)
    figure.suptitle(title, fontsize=10)
    for position, (name, label) in enumerate(STATISTICS.items(), start=1):
        axes = figure.add_subplot(2, 2, position)
        vmax = 1.0 if name in ("max_weight", "first_token_share") else None
        image = axes.imshow(stats[name], aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=vmax,
                            interpolation="nearest")
        axes.set_title(label, fontsize=9)
        axes.set_xlabel("head")
        axes.set_ylabel("layer")
        axes.set_xticks(range(n_heads))
        figure.colorbar(image, ax=axes)
    return figure


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
