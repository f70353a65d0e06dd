"""Token PCA over a model's whole prompt set, on its shared neuron basis: the same two axes for every prompt.

Features per token: the activations of every basis neuron ([tokens, stored neurons]), each
standardised with its corpus mean and standard deviation; every token but each prompt's first (BOS)
counts. The axes are the top two eigenvectors of the corpus correlation matrix (accumulated one
cache at a time, so the whole corpus never sits in memory as one matrix); every token of every
prompt is then projected onto them. Recomputed in full on each call (not incremental: a new prompt
moves the axes).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lens_pipeline.store.cache import Cache

SKIP_FIRST = 1  # as the dashboards: BOS activations would dominate the axes


def _features(cache: Cache, valid: np.ndarray) -> np.ndarray:
    acts = cache.neuron_acts[..., SKIP_FIRST:]  # [L, N, T']
    return acts.reshape(-1, acts.shape[-1])[valid].T.astype(np.float64)  # [T', F]


def corpus_pca(caches: Sequence[Cache]) -> dict[str, Any]:
    """Axes, explained-variance ratios and each prompt's token coordinates (caches must share one basis)."""
    ids = caches[0].neuron_ids
    if any(not np.array_equal(c.neuron_ids, ids) for c in caches):
        raise ValueError("the caches do not share one neuron basis (activations --neuron-basis)")
    valid = ids.ravel() >= 0
    count, total, outer = 0, np.zeros(valid.sum()), np.zeros((valid.sum(), valid.sum()))
    for cache in caches:  # two passes over the caches: sums, then projections
        x = _features(cache, valid)
        count, total, outer = count + len(x), total + x.sum(0), outer + x.T @ x
    if count < 3:
        raise ValueError("too few tokens for a PCA")
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    corr = cov / np.outer(std, std)
    values, vectors = np.linalg.eigh(corr)
    order = np.argsort(values)[::-1][:2]
    axes = vectors[:, order] * np.sign(vectors[np.abs(vectors[:, order]).argmax(0), order])  # a fixed sign per axis
    prompts = []
    for cache in caches:
        coords = ((_features(cache, valid) - mean) / std) @ axes
        prompts.append({"prompt_hash": cache.prompt_hash, "text": cache.text, "tokens": cache.tokens[SKIP_FIRST:],
                        "first_position": SKIP_FIRST, "coords": np.round(coords, 5).tolist()})
    features = [f"L{layer}N{n}" for layer, row in enumerate(ids) for n in row if n >= 0]
    return {"model": caches[0].model, "n_tokens": count, "explained": (values[order] / values.sum()).tolist(),
            "features": features, "axes": np.round(axes.T, 6).tolist(), "prompts": prompts,
            "how": "PCA of the corpus correlation matrix of the shared-basis neuron activations, tokens after the first"}


def write_pca(save_path: Any, model: str) -> dict[str, Any]:
    """corpus/<model>/pca.json from the current caches holding the model's shared basis."""
    import json
    from pathlib import Path

    from lens_pipeline.corpus.neurons import atomic_write, basis_rows, corpus_dir
    from lens_pipeline.store.cache import load

    rows, _, _ = basis_rows(Path(save_path), model)
    result = corpus_pca([load(Path(save_path) / row["path"]) for row in rows])
    out = corpus_dir(Path(save_path), model)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "pca.json", lambda handle: handle.write(json.dumps(result).encode()))
    return result
