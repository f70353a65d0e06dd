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

from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins.plotting import title_for, token_label
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


PLOT_W, PLOT_H = 620, 480
READING_ORDER = (205, 205, 205)


def to_pixels(coords: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """[n, 2] data -> [n, 2] pixel positions inside box (left, top, width, height), y upwards, with 5% margins;
    also the data range (x0, x1, y0, y1) the box shows."""
    low, high = coords.min(0), coords.max(0)
    span = np.where(high > low, high - low, 1.0)
    low, high = low - 0.05 * span, high + 0.05 * span
    left, top, width, height = box
    x = left + (coords[:, 0] - low[0]) / (high[0] - low[0]) * (width - 1)
    y = top + height - 1 - (coords[:, 1] - low[1]) / (high[1] - low[1]) * (height - 1)
    return np.stack([x, y], 1), (float(low[0]), float(high[0]), float(low[1]), float(high[1]))


def scatter_canvas(coords: np.ndarray, positions: np.ndarray, labels: list[str], ratio: np.ndarray, title: str,
                   described: str) -> canvas.Canvas:
    """Tokens as points coloured by position, joined in reading order, each labelled with its token."""
    line = canvas.line_height()
    left, top = 16 + line + canvas.text_width("-0.000"), 10 + canvas.line_height(canvas.TITLE_PX) + 2 * line + 8
    picture = canvas.Canvas(left + PLOT_W + 100, top + PLOT_H + 2 * line + 12)
    picture.text(6, 4, canvas.fit_text(title, picture.image.width - 12, canvas.TITLE_PX), canvas.TITLE_PX)
    picture.wrap(6, 6 + canvas.line_height(canvas.TITLE_PX), f"Features: {described}. Grey line = reading order; "
                 "colour = token position (colour bar).", picture.image.width - 12)
    points, (x0, x1, y0, y1) = to_pixels(coords, (left, top, PLOT_W, PLOT_H))
    picture.draw.rectangle((left - 1, top - 1, left + PLOT_W, top + PLOT_H), outline=canvas.FRAME)
    for value in canvas.nice_ticks(x0, x1):
        x = left + (value - x0) / (x1 - x0) * (PLOT_W - 1)
        picture.draw.line((x, top + PLOT_H, x, top + PLOT_H + 3), fill=canvas.TEXT)
        picture.text(x, top + PLOT_H + 4, canvas.number(value), anchor="mt")
    for value in canvas.nice_ticks(y0, y1):
        y = top + PLOT_H - 1 - (value - y0) / (y1 - y0) * (PLOT_H - 1)
        picture.draw.line((left - 4, y, left - 1, y), fill=canvas.TEXT)
        picture.text(left - 6, y, canvas.number(value), anchor="rm")
    picture.text(left + PLOT_W / 2, top + PLOT_H + line + 6, f"PC1 ({ratio[0]:.0%} of variance)", anchor="mt")
    picture.text(4, top + PLOT_H / 2, f"PC2 ({ratio[1]:.0%} of variance)", anchor="lm", vertical=True)
    picture.draw.line([tuple(p) for p in points], fill=READING_ORDER, width=1)
    picture.inks.add(READING_ORDER)
    span = max(int(positions.max() - positions.min()), 1)
    table = colormap.lut("viridis")
    for (x, y), position in zip(points, positions):
        color = tuple(int(c) for c in table[min(255, (int(position) - int(positions.min())) * 256 // (span + 1))])
        picture.draw.ellipse((x - 3.5, y - 3.5, x + 3.5, y + 3.5), fill=color)
    for (x, y), label in zip(points, labels):
        picture.text(x + 5, y - 3, label, anchor="lb")
    ticks = [(0.0, str(int(positions.min()))), (1.0, str(int(positions.max())))]
    picture.colorbar(left + PLOT_W + 14, top, PLOT_H, "viridis", ticks, "token position")
    return picture


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

    picture = scatter_canvas(coords, positions, labels, ratio, title_for(cache, "token PCA"), described)
    data = {
        "features": described,
        "skipped_positions": list(range(start)),
        "explained_variance_ratio": [round(float(r), 6) for r in ratio],
        "points": [{"position": int(p), "token": cache.tokens[p], "x": round(float(x), 6), "y": round(float(y), 6)}
                   for p, (x, y) in zip(positions, coords)],
    }
    return {"png": picture.finish(), "json": data}
