"""Numbers that summarise what each head does, per prompt: entropy, max weight, mean distance and
first-token share of its attention, as [layers, heads] arrays.

Every statistic is a mean over query positions; for causal models query 0 is left out (it can
only attend to itself, so it would pull every head towards "sharp, local, on the first token").

Below the figures that draw them (draw/builtins/attention_stats.py, the interactive figures) and
beside the phrasing comparisons that set them side by side (corpus/compare.py).
"""

from __future__ import annotations

import numpy as np

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
    """[..., T, T] attention (rows = queries) -> each statistic with shape [...].

    Element-wise work in float32 (the cached weights' own precision), sums accumulated in float64."""
    patterns = np.asarray(patterns, dtype=np.float32)
    n = patterns.shape[-1]
    rows = slice(1, None) if causal and n > 1 else slice(None)
    a = patterns[..., rows, :]
    queries = np.arange(n)[rows]
    distance = np.abs(queries[:, None] - np.arange(n)[None, :]).astype(np.float32)
    a_log_a = np.zeros_like(a)
    np.log(a, out=a_log_a, where=a > 0)  # 0 log 0 = 0; a causal row's future keys cost nothing
    a_log_a *= a
    return {
        "entropy": (-a_log_a.sum(-1, dtype=np.float64)).mean(-1),
        "max_weight": a.max(-1).astype(np.float64).mean(-1),
        "mean_distance": (a * distance).sum(-1, dtype=np.float64).mean(-1),
        "first_token_share": a[..., 0].astype(np.float64).mean(-1),
    }


def prompt_statistics(cache: Cache) -> dict[str, np.ndarray]:
    """Each statistic as a [layers, heads] array for one cached prompt."""
    per_layer = [head_statistics(cache.layer_patterns(layer), cache.causal) for layer in range(cache.n_layers)]
    return {name: np.stack([stats[name] for stats in per_layer]) for name in STATISTICS}
