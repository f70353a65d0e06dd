"""A 2-D PCA map of the prompt's tokens, from whatever per-token features the cache stores.

Caches do not hold full residual vectors unless asked for, so the features are, in order of
preference:
  1. an extra residual-stream hook stored with --hooks (e.g. blocks.15.hook_resid_post, [T, d_model]);
  2. the stored MLP neurons of every layer ([T, layers * neurons]: each layer's highest-variance
     neurons over this prompt, so the picture is biased towards what varies most);
  3. the residual norm after each layer ([T, layers + 1]: only how large each token's state is).
Each feature is standardised (zero mean, unit variance) so no single large neuron decides the
axes; PCA is a numpy eigendecomposition (see `pca_2d`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lens_pipeline.draw.builtins.plotting import new_figure, title_for, token_label
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache


def token_features(cache: Cache) -> tuple[np.ndarray, str]:
    """[T, F] features per token and a sentence saying what they are."""
    resid_hooks = sorted(name for name in cache.names() if name.startswith("hooks/") and "resid" in name)
    for name in reversed(resid_hooks):  # the deepest stored residual stream
        values = cache.array(name).astype(np.float32)
        if values.ndim == 2 and values.shape[0] == cache.n_tokens:
            return values, f"residual stream {name.removeprefix('hooks/')} ({values.shape[1]} dims)"
    if cache.has("neuron_acts"):
        acts = cache.neuron_acts  # [L, N, T]
        return acts.transpose(2, 0, 1).reshape(cache.n_tokens, -1), (
            f"stored MLP neurons, {acts.shape[1]} per layer x {acts.shape[0]} layers (highest variance over the prompt)")
    return cache.resid_norms.T, f"residual norm after each of {cache.n_layers} layers and the embedding"


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise columns, then project on the top two principal axes.

    Returns ([n, 2] coordinates, [2] explained-variance ratios). Solved as a symmetric eigenproblem
    on the smaller of the token x token and feature x feature products: a few hundred tokens
    against ~1,000 features takes milliseconds, where a full SVD can take seconds when OpenBLAS
    threads compete for busy cores. Signs are fixed so each axis's largest loading is positive.
    """
    x = features.astype(np.float64)
    x = x - x.mean(0)
    spread = x.std(0)
    x = x[:, spread > 0] / spread[spread > 0]  # constant features carry no information
    n, f = x.shape
    if n <= f:
        eigenvalues, u = np.linalg.eigh(x @ x.T)  # ascending
        eigenvalues, u = eigenvalues[::-1][:2].clip(0), u[:, ::-1][:, :2]
        loadings = (x.T @ u) / np.sqrt(np.where(eigenvalues > 0, eigenvalues, 1.0))
    else:
        eigenvalues, v = np.linalg.eigh(x.T @ x)
        eigenvalues, loadings = eigenvalues[::-1][:2].clip(0), v[:, ::-1][:, :2]
    loadings = loadings * np.sign(loadings[np.abs(loadings).argmax(0), np.arange(loadings.shape[1])])
    ratio = eigenvalues / max(float((x**2).sum()), 1e-300)
    coords = x @ loadings
    missing = 2 - coords.shape[1]  # a single varying feature has a single axis: the second is flat
    return np.pad(coords, ((0, 0), (0, missing))), np.pad(ratio, (0, missing))


@register_figure(scope="prompt", formats=("png", "json"))
def token_pca(cache: Cache, skip_first: bool = True) -> dict[str, Any]:
    """Tokens on their first two principal components of the stored per-token features (see module doc)."""
    features, described = token_features(cache)
    start = 1 if skip_first and cache.n_tokens > 1 else 0  # position 0 (BOS/[CLS]) is an outlier that would take a whole axis
    features = features[start:]
    if features.shape[0] < 3 or features.std(0).max() == 0:
        raise SkipFigure(f"{features.shape[0]} token(s) with varying features: too few for a 2-D projection")
    coords, ratio = pca_2d(features)
    positions = np.arange(start, cache.n_tokens)
    labels = [token_label(cache.tokens[p], 12) for p in positions]

    figure = new_figure(8.0, 7.0)
    axes = figure.add_subplot()
    axes.plot(coords[:, 0], coords[:, 1], color="#dddddd", linewidth=0.6, zorder=1)  # reading order
    points = axes.scatter(coords[:, 0], coords[:, 1], c=positions, cmap="viridis", s=24, zorder=2)
    for (x, y), label in zip(coords, labels):
        axes.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    axes.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    axes.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
    axes.set_title(title_for(cache, "token PCA") + "\n" + token_label(described, 200), fontsize=9)
    figure.colorbar(points, ax=axes, label="position")
    data = {
        "features": described,
        "skipped_positions": list(range(start)),
        "explained_variance_ratio": [round(float(r), 6) for r in ratio],
        "points": [{"position": int(p), "token": cache.tokens[p], "x": round(float(x), 6), "y": round(float(y), 6)}
                   for p, (x, y) in zip(positions, coords)],
    }
    return {"png": figure, "json": data}
