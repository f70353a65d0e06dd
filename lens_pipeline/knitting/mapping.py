"""From model internals to colour levels: the selectable `source` mappings.

Every mapping returns a level picture [height, width] (row 0 = bottom = row 1, column 0 = left
edge of the RS) and a JSON-ready record of what was mapped and by which rule. Thresholds mean
something (times uniform attention, a probability, fixed quantiles) and are recorded; they are
never "thirds of the data".

The `cache` is duck-typed: it needs .tokens, .n_layers, .n_heads, and per source
.pattern(layer, head), .layer_patterns(layer), .topk_probs or .resid_norms.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .grid import CODES, AxisScale, SquareBlocks, block_scale, quantise

SOURCES: dict[str, str] = {
    "attention_head": (
        "one head's attention (layer, head): rows = query token (row 1 = first token), "
        "stitches = key token (first token at the left of the RS); colour = attention as a "
        "multiple of uniform attention 1/n, n = number of tokens the query can see, cut at fixed "
        "quantiles of the prompt's visible attention"),
    "attention_layer_mean": (
        "a layer's attention averaged over its heads; rows, stitches and colours as for "
        "attention_head"),
    "top1_prob": (
        "top-1 next-token probability per token as a bar chart: one bar per token (first token "
        "at the left), bar height = probability x rows, bar colour bands at fixed probabilities"),
    "resid_norms": (
        "residual-stream norm per layer and token: rows = layer (row 1 = embeddings), "
        "stitches = token (first at the left); colour by fixed quantiles of all the norms"),
}

# Fixed quantiles for resid_norms, per number of colours: median, then the upper tail.
RESID_QUANTILES: dict[int, tuple[float, ...]] = {
    2: (0.5,), 3: (0.5, 0.9), 4: (0.5, 0.75, 0.9), 5: (0.5, 0.7, 0.85, 0.95),
    6: (0.5, 0.65, 0.8, 0.9, 0.97),
}


# The attention sources' default thresholds: fixed quantiles of the prompt's visible attention, per number
# of colours, so roughly a quarter of the picture is contrast whatever the prompt's length.
ATTENTION_QUANTILES: dict[int, tuple[float, ...]] = {
    2: (0.75,), 3: (0.75, 0.92), 4: (0.7, 0.85, 0.95), 5: (0.65, 0.8, 0.9, 0.96),
    6: (0.6, 0.75, 0.85, 0.92, 0.97),
}


def _is_causal(a: np.ndarray) -> bool:
    return bool(np.allclose(np.triu(a, 1), 0.0, atol=1e-6))


def _block_index(sc: AxisScale) -> list[int | None]:
    """For each cell along an axis (0 = left/bottom), the first data item in its block."""
    out: list[int | None] = []
    for x in range(sc.size):
        b = x - sc.offset
        out.append(None if b < 0 or b >= sc.used else (b // sc.repeat) * sc.pool)
    return out


def _level_rules(codes: Sequence[str], thresholds: Sequence[float], unit: str) -> list[dict[str, str]]:
    t = list(thresholds)
    rules = []
    for i, code in enumerate(codes):
        lo = f"> {t[i - 1]:g}{unit}" if i > 0 else None
        hi = f"<= {t[i]:g}{unit}" if i < len(t) else None
        rules.append({"code": code, "rule": " and ".join(x for x in (lo, hi) if x)})
    return rules


def attention_levels(
    attn: np.ndarray, width: int, height: int, colours: int,
    thresholds: Sequence[float] | str | None = None, causal: bool | None = None, square: SquareBlocks | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Attention [query, key] -> levels. Value = attention x n (n = keys visible to the query:
    i + 1 if causal, T otherwise), so 1.0 is uniform. Thresholds: None or "quantiles" (the default):
    ATTENTION_QUANTILES of the visible values, recorded with their values, so about a quarter of the
    visible picture is contrast; "uniform": 1, 2, 4, ... x uniform; or numbers (x uniform).
    `causal` None: read it off the matrix (nothing above the diagonal)."""
    a = np.asarray(attn, dtype=np.float64)
    t_len = a.shape[0]
    causal = _is_causal(a) if causal is None else bool(causal)
    n_visible = np.arange(1, t_len + 1, dtype=np.float64) if causal else np.full(t_len, float(t_len))
    ratio = a * n_visible[:, None]
    rule = "quantiles" if thresholds is None else thresholds
    if isinstance(rule, str) and rule not in ("quantiles", "uniform"):
        raise ValueError(f"thresholds must be numbers, 'quantiles' or 'uniform', not {rule!r}")
    visible = ratio[np.tril_indices(t_len)] if causal else ratio.ravel()
    qs = list(ATTENTION_QUANTILES[colours]) if rule == "quantiles" else None
    th = ([round(float(x), 4) for x in np.quantile(visible, qs)] if qs is not None else
          [2.0 ** j for j in range(colours - 1)] if rule == "uniform" else
          [float(x) for x in rule])  # type: ignore[union-attr]
    levels, xs, ys = _scaled_levels(ratio, th, colours, width, height, square)
    record = {
        "value": "attention x n (n = tokens the query can see); 1.0 = uniform attention 1/n",
        "causal": causal,
        "thresholds": th,
        "threshold_rule": f"fixed quantiles {qs} of this prompt's visible attention (x uniform)" if qs is not None else
            "multiples of uniform attention: above 1/n, above 2/n, above 4/n, ..." if rule == "uniform" else
            "user thresholds",
        "quantiles": qs,
        "levels": _level_rules(CODES[:colours], th, " x uniform"),
        "rows": "query token; row 1 = first token",
        "stitches": "key token; first token at the left edge of the RS (last stitch of RS rows)",
        "x_scale": xs.as_dict(), "y_scale": ys.as_dict(),
        "row_token": _block_index(ys),
        "stitch_token": _block_index(xs)[::-1],  # stitch 1 (rightmost) first
    }
    return levels, record


def _scaled_levels(
    values: np.ndarray, thresholds: list[float], colours: int, width: int, height: int,
    square: SquareBlocks | None = None,
) -> tuple[np.ndarray, Any, Any]:
    """Block-scale a [rows, cols] value grid to the chart and cut it into colour levels."""
    if len(thresholds) != colours - 1:
        raise ValueError(f"{colours} colours need {colours - 1} thresholds, got {len(thresholds)}")
    scaled, xs, ys = block_scale(values, width, height, square)
    return quantise(scaled, thresholds), xs, ys


def top1_levels(
    probs: np.ndarray, width: int, height: int, colours: int,
    thresholds: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Top-1 probability per token -> bar chart. A bar rises round(p x height) rows (at least 1
    so every token shows); inside it a row is coloured by the probability band it stands for
    (default cut points j / (colours - 1)), so each row holds MC plus one bar colour at most."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    given = thresholds is not None
    cuts = [float(x) for x in thresholds] if given else \
        [j / (colours - 1) for j in range(1, colours - 1)]
    if len(cuts) != colours - 2:
        raise ValueError(f"top1_prob with {colours} colours needs {colours - 2} cut points")
    scaled, xs, _ = block_scale(p[None, :], width, 1)
    col_p = scaled[0]
    levels = np.zeros((height, width), dtype=np.int16)
    row_mid = (np.arange(height) + 0.5) / height  # the probability each row stands for
    band = 1 + (row_mid[:, None] > np.asarray(cuts)[None, :]).sum(axis=1) if cuts else \
        np.ones(height, dtype=int)
    for x, v in enumerate(col_p):
        if np.isnan(v):
            continue
        h = max(1, int(round(v * height)))
        levels[:h, x] = band[:h]
    record = {
        "value": "top-1 next-token probability",
        "thresholds": cuts,
        "threshold_rule": "user cut points" if given else
            "bar colour bands at fixed probabilities j/(colours-1)",
        "bar_height": f"round(p x {height}) rows, at least 1",
        "levels": [{"code": CODES[0], "rule": "background (above the bar)"}] +
            _level_rules(CODES[1:colours], cuts, " probability (row's level)"),
        "rows": f"probability, row k stands for p = (k - 0.5) / {height}",
        "stitches": "token; first token at the left edge of the RS",
        "x_scale": xs.as_dict(),
        "stitch_token": _block_index(xs)[::-1],
    }
    return levels, record


def resid_levels(
    norms: np.ndarray, width: int, height: int, colours: int,
    thresholds: Sequence[float] | str | None = None, square: SquareBlocks | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Residual norms [layer, token] -> levels by fixed quantiles of all norms (recorded with
    their values), or by user thresholds in norm units."""
    v = np.asarray(norms, dtype=np.float64)
    if isinstance(thresholds, str) and thresholds != "quantiles":
        raise ValueError(f"resid_norms takes numbers or 'quantiles', not {thresholds!r}")
    given = thresholds is not None and thresholds != "quantiles"  # quantiles are this source's default
    if given:
        th = [float(x) for x in thresholds]  # type: ignore[union-attr]
        qs: list[float] | None = None
    else:
        qs = list(RESID_QUANTILES[colours])
        th = [float(x) for x in np.quantile(v, qs)]
    levels, xs, ys = _scaled_levels(v, th, colours, width, height, square)
    record = {
        "value": "L2 norm of the residual stream",
        "thresholds": [round(x, 4) for x in th],
        "quantiles": qs,
        "threshold_rule": "user thresholds" if given else
            f"fixed quantiles {qs} of all norms in this prompt",
        "levels": _level_rules(CODES[:colours], [round(x, 2) for x in th], ""),
        "rows": "layer; row 1 = embeddings (before layer 0)",
        "stitches": "token; first token at the left edge of the RS",
        "x_scale": xs.as_dict(), "y_scale": ys.as_dict(),
        "row_layer": _block_index(ys),
        "stitch_token": _block_index(xs)[::-1],
    }
    return levels, record


def source_levels(
    cache: Any, source: str, layer: int | None, head: int | None,
    width: int, height: int, colours: int, thresholds: Sequence[float] | str | None = None,
    square: SquareBlocks | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Dispatch on `source` (see SOURCES); records the source, its description and any layer/head
    chosen by default (the middle layer, head 0). `square`: near-square blocks and a border (not
    for top1_prob, whose bars fill the height)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {sorted(SOURCES)}")
    rec: dict[str, Any] = {"source": source, "description": SOURCES[source]}
    if source in ("attention_head", "attention_layer_mean"):
        layer = cache.n_layers // 2 if layer is None else int(layer)
        if not 0 <= layer < cache.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{cache.n_layers - 1}")
        rec["layer"] = layer
        if source == "attention_head":
            head = 0 if head is None else int(head)
            if not 0 <= head < cache.n_heads:
                raise ValueError(f"head {head} out of range 0..{cache.n_heads - 1}")
            rec["head"] = head
            attn = np.asarray(cache.pattern(layer, head))
        else:
            attn = np.asarray(cache.layer_patterns(layer)).mean(axis=0)
        levels, more = attention_levels(attn, width, height, colours, thresholds,
                                        getattr(cache, "causal", None), square)
    elif source == "top1_prob":
        if isinstance(thresholds, str):
            raise ValueError(f"top1_prob takes numeric cut points, not {thresholds!r} ('quantiles' is for attention)")
        levels, more = top1_levels(np.asarray(cache.topk_probs)[:, 0], width, height, colours, thresholds)
    else:
        levels, more = resid_levels(np.asarray(cache.resid_norms), width, height, colours, thresholds, square)
    rec.update(more)
    if square is not None and source != "top1_prob":
        xs, ys = more["x_scale"], more["y_scale"]
        rec["square_blocks"] = {
            "stitches_per_block": xs["stitches_per_block"], "rows_per_block": ys["stitches_per_block"],
            "border_stitches": xs["offset"], "border_rows": ys["offset"],
            "rule": "blocks near square in cm at the gauge; the chart is the picture plus an MC border all round"}
    return levels, rec
