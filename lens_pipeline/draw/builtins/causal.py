"""Testing causes: activation patching, ablation and attribution patching, from the arrays
lens_pipeline/capture/causal stores (docs/causal.md).

Patching values are normalised (1 = the clean run's metric, 0 = the corrupted run's) and drawn on a
diverging scale centred on 0, so a cell that restores the clean prediction is as red as 1 and one
that pushes it further away is blue. Ablation effects are in the metric's own units. Every figure
names the metric, the two runs and what was patched into what; heads are labelled with their roles
(lens_pipeline.store.head_roles) where the model has them. Drawn on a PIL canvas (draw/canvas.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from lens_pipeline.draw import canvas, colormap, display
from lens_pipeline.draw.builtins.plotting import _font_charmap, title_for
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import head_label, roles_beside

STREAM_SITES = {  # patch_<site> arrays [L, T]: what one cell replaced
    "resid_pre": "residual stream before the layer",
    "attn_out": "attention output of the layer",
    "mlp_out": "MLP output of the layer",
}
HEAD_SITES = {"heads": "each head's output (hook_z) at every position", "heads_pos": "each head's output at one position"}
SITES = {**STREAM_SITES, **HEAD_SITES}  # every site patching and attribution patching may store, in order
METRIC_UNITS = {"logit_diff": "logits", "prob": "probability", "logprob": "nats", "kl": "nats"}
SITE_COLORS = {"resid_pre": (31, 119, 180), "attn_out": (214, 39, 40), "mlp_out": (44, 160, 44),
               "heads": (148, 103, 189), "heads_pos": (255, 127, 14)}  # the scatter's points, one colour per site
CHANGED = (191, 84, 0)  # a corrupted token that differs from the clean one
CMAP = colormap.SIGNED_CMAP
TOP_HEADS = 5  # heads named under a layers x heads grid
LEFT, GAP = 8, 6


# --------------------------------------------------------------------------- what was run


@dataclass(frozen=True)
class Causal:
    """The cache meta's `cause` entry, as the figures and the viewer name it."""

    metric: str
    metric_label: str
    clean: float
    corrupt: float
    corruption: dict[str, Any]
    corrupt_tokens: list[str]
    target_position: int
    ablation: str
    correlation: dict[str, float]

    @property
    def has_corrupt(self) -> bool:
        """Whether there is a corrupted run (ablation alone needs none)."""
        return bool(self.corruption) and math.isfinite(self.corrupt)

    @property
    def units(self) -> str:
        return METRIC_UNITS.get(self.metric, self.metric)


def causal_of(cache: Cache) -> Causal | None:
    """The cache's patching and ablation facts, or None when it was made without them."""
    meta = cache.meta.get("cause")
    if not isinstance(meta, dict):
        return None
    return Causal(metric=str(meta.get("metric", "logit_diff")), metric_label=str(meta.get("metric_label", "")),
                  clean=_number(meta.get("clean")), corrupt=_number(meta.get("corrupt")),
                  corruption=dict(meta.get("corruption") or {}),
                  corrupt_tokens=[str(t) for t in meta.get("corrupt_tokens") or []],
                  target_position=int(meta.get("target_position", cache.n_tokens - 1)),
                  ablation=str(meta.get("ablation", "zero")),
                  correlation={str(k): float(v) for k, v in (meta.get("attribution_patching_correlation") or {}).items()})


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


NO_CORRUPT = 'nothing patched: the prompt has no "corrupt" field (docs/causal.md)'


def _causal(cache: Cache) -> Causal:
    facts = causal_of(cache)
    if facts is None:
        raise SkipFigure("this cache holds no patching or ablation (made without --patch or --ablate)")
    return facts


def changed_positions(cache: Cache, facts: Causal) -> list[int]:
    """Positions whose corrupted token differs from the clean one (a corrupted text), or the noised ones."""
    if not facts.has_corrupt:
        return []
    noise = facts.corruption.get("noise")
    if noise:
        return list(range(int(noise[0]), min(int(noise[1]), cache.n_tokens)))
    return [i for i, (a, b) in enumerate(zip(cache.tokens, facts.corrupt_tokens)) if a != b]


def corruption_text(cache: Cache, facts: Causal) -> str:
    """One line saying how the corrupted run differs from the clean one."""
    if not facts.has_corrupt:
        return 'no corrupted run: the prompt has no "corrupt" field, so only ablation applies'
    noise = facts.corruption.get("noise")
    if noise:
        std = facts.corruption.get("std")
        return (f"corrupted run: Gaussian noise of {facts.corruption.get('scale', '?')} × the embedding std"
                f"{f' ({float(std):.3g})' if std is not None else ''} on the token embeddings of positions "
                f"{int(noise[0])}–{int(noise[1]) - 1}")
    changed = changed_positions(cache, facts)
    swaps = ", ".join(f"“{shown(cache.tokens[i])}” → “{shown(facts.corrupt_tokens[i])}” (position {i})" for i in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    return f"corrupted run: the prompt with {swaps}{more}" if changed else "corrupted run: the same tokens"


def metric_text(facts: Causal) -> str:
    """The metric and its two raw values."""
    corrupted = f", corrupted run {facts.corrupt:.4g}" if facts.has_corrupt else ""
    return (f"metric: {facts.metric_label or facts.metric} after position {facts.target_position}; "
            f"clean run {facts.clean:.4g}{corrupted} ({facts.units})")


def patch_note(facts: Causal) -> str:
    """What a normalised patching value means."""
    if facts.metric == "kl":
        return "value = 1 − KL(clean ‖ patched) / KL(clean ‖ corrupted): 1 = the clean prediction restored, 0 = none of it"
    return "value = (patched − corrupted) / (clean − corrupted): 1 = the clean run's metric, 0 = the corrupted run's"


def ablation_label(facts: Causal) -> str:
    """What an ablation value is, in the metric's units."""
    how = "set to zero" if facts.ablation == "zero" else f"set to its {facts.ablation} over the prompt set"
    if facts.metric == "kl":
        return f"KL(clean ‖ ablated) in nats, the component's output {how}"
    return f"metric(ablated) − metric(clean) in {facts.units}, the component's output {how}"


def ablated(facts: Causal) -> str:
    return "zeroed" if facts.ablation == "zero" else f"{facts.ablation}-ablated"


def patch_scale(values: np.ndarray) -> float:
    """The half-width of the diverging scale: at least 1 (the clean value), more when a patch overshoots."""
    finite = np.abs(values[np.isfinite(values)])
    return max(1.0, float(finite.max())) if finite.size else 1.0


def signed_scale(values: np.ndarray) -> float:
    """The half-width of a scale centred on 0: the largest |value| (1 when every value is 0)."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r over the finite pairs, or None when it is undefined."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def roles_of(cache: Cache) -> dict[str, Any] | None:
    """The model's head roles (caches/<model>/head_roles.json beside the cache file), or None when it has none."""
    return roles_beside(cache.path)


def head_name(roles: dict[str, Any] | None, layer: int, head: int) -> str:
    """`L18H6 · induction 0.83` where the model's head roles give the head a role, else `L18H6`."""
    return head_label(roles, layer, head)


def shown(token: str, max_chars: int = 20) -> str:
    """A token as drawn: whitespace visible, glyphs the font lacks as □, long ones cut."""
    charmap = _font_charmap()
    text = "".join(c if ord(c) in charmap else "□" for c in display.token_inline(token))
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def top_heads(values: np.ndarray, count: int = TOP_HEADS) -> list[tuple[int, int]]:
    """The (layer, head) of the largest |value|, largest first."""
    order = np.argsort(-np.abs(np.nan_to_num(values)), axis=None, kind="stable")[:count]
    return [(int(la), int(h)) for la, h in zip(*np.unravel_index(order, values.shape))]


# --------------------------------------------------------------------------- drawing helpers


def _stack(parts: Sequence[canvas.Canvas]) -> canvas.Canvas:
    """Canvases top to bottom on one, keeping what each used (colour maps, inks, sizes, grids)."""
    width = max(p.image.width for p in parts)
    out = canvas.Canvas(width, sum(p.image.height for p in parts))
    y = 0
    for part in parts:
        out.image.paste(part.image, (0, y))
        out.cmaps |= part.cmaps
        out.inks |= part.inks
        out.sizes |= part.sizes
        out.grids += [canvas.Grid(g.x, g.y + y, g.cell_w, g.cell_h, g.rows, g.cols) for g in part.grids]
        y += part.image.height
    return out


def _header(cache: Cache, what: str, lines: Sequence[str], width: int = canvas.MAX_WIDTH) -> canvas.Canvas:
    """The title, then each line word-wrapped."""
    line = canvas.line_height()
    count = sum(canvas.wrapped_lines(text, width - 2 * LEFT) for text in lines)
    picture = canvas.Canvas(width, 8 + canvas.line_height(canvas.TITLE_PX) + count * line + GAP)
    picture.text(LEFT, 4, canvas.fit_text(title_for(cache, what), width - 2 * LEFT, canvas.TITLE_PX), canvas.TITLE_PX)
    y = 6 + canvas.line_height(canvas.TITLE_PX)
    for i, text in enumerate(lines):
        y = picture.wrap(LEFT, y, text, width - 2 * LEFT, color=canvas.TEXT if i == 0 else canvas.MUTED)
    return picture


def _ticks(vmin: float, vmax: float, marks: Sequence[float] = ()) -> list[tuple[float, str]]:
    """Colour-bar ticks at nice values and at `marks` (e.g. 1 = clean), as fractions of the bar."""
    values = sorted({*canvas.nice_ticks(vmin, vmax, 5), *[m for m in marks if vmin <= m <= vmax]})
    return [((v - vmin) / (vmax - vmin), canvas.number(v)) for v in values]


@dataclass(frozen=True)
class Heat:
    """One heatmap panel: [rows, cols] values on (vmin, vmax) of `cmap`, labelled."""

    title: str
    values: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    vmin: float
    vmax: float
    bar_label: str
    cmap: str = CMAP
    marks: tuple[float, ...] = ()  # colour-bar ticks besides the nice ones
    changed: dict[int, str] | None = None  # column -> corrupted token, drawn in a second label row
    marked_col: int | None = None  # the column the metric is read after, marked above the grid
    framed: tuple[tuple[int, int], ...] = ()  # cells outlined (the top heads)
    col_title: str = "position"
    cell_h_max: int = 18


def _heat_panel(panel: Heat, width: int = canvas.MAX_WIDTH) -> canvas.Canvas:
    rows, cols = panel.values.shape
    line = canvas.line_height()
    changed = panel.changed or {}
    corner = [panel.col_title] + (["corrupted"] if changed else [])  # written left of the column labels
    label_w = 10 + max([canvas.text_width(t) for t in [*panel.row_labels, *corner]])
    bar_w = 110
    cell_w = int(max(1, min(48, (width - LEFT - label_w - bar_w) // max(cols, 1))))
    cell_h = int(max(4, min(panel.cell_h_max, 360 // max(rows, 1))))
    vertical = cell_w < 36
    label_h = min(90, max(canvas.text_width(t) for t in panel.col_labels) + 4) if vertical else line
    title_lines = canvas.wrapped_lines(panel.title, width - 2 * LEFT)
    top = 4 + title_lines * line + (line if panel.marked_col is not None else 4)
    height = top + rows * cell_h + 4 + label_h + (label_h + 4 if changed else 0) + line + GAP
    picture = canvas.Canvas(width, height)
    picture.wrap(LEFT, 4, panel.title, width - 2 * LEFT, color=canvas.TEXT)
    index = colormap.to_index(np.nan_to_num(panel.values, nan=panel.vmin), panel.vmin, panel.vmax)
    grid = picture.heatmap(LEFT + label_w, top, index, panel.cmap, cell_w, cell_h, masked=~np.isfinite(panel.values))
    picture.frame(grid)
    for row, col in panel.framed:
        x, y = grid.cell(row, col)
        picture.draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), outline=(0, 0, 0), width=2 if cell_w > 6 else 1)
    picture.y_labels(grid, panel.row_labels, width=label_w - 8)
    if panel.marked_col is not None:
        cx, _ = grid.center(0, panel.marked_col)
        picture.text(cx, top - 1, "▼", anchor="mb", color=canvas.TEXT)
    y = grid.y + grid.height + 3
    _col_labels(picture, grid, panel.col_labels, y, vertical, label_h, canvas.TEXT)
    picture.text(grid.x - 4, y, panel.col_title, color=canvas.MUTED, anchor="rt")
    if changed:
        y += label_h + 4
        labels = [changed.get(col, "") for col in range(cols)]
        _col_labels(picture, grid, labels, y, vertical, label_h, CHANGED)
        picture.text(grid.x - 4, y, "corrupted", color=CHANGED, anchor="rt")
    ticks = _ticks(panel.vmin, panel.vmax, panel.marks)
    picture.colorbar(grid.x + grid.width + 10, top, max(grid.height, 60), panel.cmap, ticks, panel.bar_label)
    return picture


def _col_labels(picture: canvas.Canvas, grid: canvas.Grid, labels: Sequence[str], y: int, vertical: bool,
                limit: int, color: tuple[int, int, int]) -> None:
    """Column labels under a grid, thinned to every n-th when vertical labels would overlap."""
    step = max(1, math.ceil(canvas.line_height() / grid.cell_w)) if vertical else 1
    for col in range(0, len(labels), step):
        if not labels[col]:
            continue
        cx, _ = grid.center(0, col)
        text = canvas.fit_text(labels[col], limit - 4 if vertical else grid.cell_w - 2)
        picture.text(cx, y, text, anchor="mt", vertical=vertical, color=color)


def _head_list(cache: Cache, title: str, values: np.ndarray, heads: list[tuple[int, int]], units: str,
               width: int = canvas.MAX_WIDTH) -> canvas.Canvas:
    """The named heads with their values, one a line."""
    roles = roles_of(cache)
    lines = [f"{head_name(roles, la, h)}: {values[la, h]:+.3g}{units}" for la, h in heads]
    line = canvas.line_height()
    picture = canvas.Canvas(width, line * (len(lines) + 1) + GAP)
    picture.text(LEFT, 0, title, color=canvas.TEXT)
    for i, text in enumerate(lines):
        picture.text(LEFT + 12, line * (i + 1), canvas.fit_text(text, width - 2 * LEFT - 12))
    return picture


def _layer_labels(n: int) -> list[str]:
    return [f"L{layer}" for layer in range(n)]


def _token_labels(tokens: Sequence[str]) -> list[str]:
    return [shown(t, 14) for t in tokens]


def _changed_labels(cache: Cache, facts: Causal) -> dict[int, str] | None:
    if facts.corruption.get("noise"):
        return {i: "noise" for i in changed_positions(cache, facts)}
    changed = changed_positions(cache, facts)
    return {i: shown(facts.corrupt_tokens[i], 14) for i in changed} or None


# --------------------------------------------------------------------------- the figures


def patching_sites_canvas(cache: Cache) -> canvas.Canvas:
    facts = _causal(cache)
    present = [site for site in STREAM_SITES if cache.has(f"patch_{site}")]
    if not present:
        raise SkipFigure(NO_CORRUPT if not facts.has_corrupt else
                         "no patched stream site in this cache (made without --patch resid_pre, attn_out or mlp_out)")
    arrays = {site: cache.array(f"patch_{site}").astype(np.float32) for site in present}
    scale = patch_scale(np.concatenate([a.ravel() for a in arrays.values()]))
    parts = [_header(cache, "activation patching: clean → corrupted run, per layer and position",
                     [metric_text(facts), corruption_text(cache, facts),
                      f"Each cell: the corrupted run with one layer's site at one position replaced by the clean run's; "
                      f"{patch_note(facts)}. Layer 0 at the top; ▼ the position the metric is read after."])]
    for site in present:
        parts.append(_heat_panel(Heat(
            title=f"patched: {STREAM_SITES[site]} (patch_{site})", values=arrays[site],
            row_labels=_layer_labels(arrays[site].shape[0]), col_labels=_token_labels(cache.tokens),
            vmin=-scale, vmax=scale, bar_label="share of the clean metric restored", marks=(0.0, 1.0),
            changed=_changed_labels(cache, facts), marked_col=facts.target_position)))
    return _stack(parts)


@register_figure(scope="prompt", formats="png", needs=("lm_head",))
def patching_sites(cache: Cache) -> Image.Image:
    """Activation patching per layer and position: one heatmap per patched stream site (1 = clean restored)."""
    return patching_sites_canvas(cache).finish()


def patching_heads_canvas(cache: Cache) -> canvas.Canvas:
    facts = _causal(cache)
    values = cache.array("patch_heads").astype(np.float32)  # [L, H]
    scale = patch_scale(values)
    best = top_heads(values)
    header = _header(cache, "activation patching per head: clean → corrupted run",
                     [metric_text(facts), corruption_text(cache, facts),
                      f"Each cell: the corrupted run with one head's output (hook_z) at every position replaced by "
                      f"the clean run's; {patch_note(facts)}. Framed: the {len(best)} largest."])
    grid = _heat_panel(Heat(title="patched: each head's output at every position (patch_heads)", values=values,
                            row_labels=_layer_labels(values.shape[0]), col_labels=[f"H{h}" for h in range(values.shape[1])],
                            vmin=-scale, vmax=scale, bar_label="share of the clean metric restored", marks=(0.0, 1.0),
                            framed=tuple(best), col_title="head"), width=min(canvas.MAX_WIDTH, 60 + values.shape[1] * 48 + 200))
    listing = _head_list(cache, "largest patching effects (1 = the clean metric restored):", values, best, "")
    return _stack([header, grid, listing])


@register_figure(scope="prompt", formats="png", needs=("patch_heads", "lm_head"))
def patching_heads(cache: Cache) -> Image.Image:
    """Activation patching per head: layers × heads, each head's output patched at every position (1 = clean)."""
    return patching_heads_canvas(cache).finish()


def patching_heads_positions_canvas(cache: Cache, top: int = 12) -> canvas.Canvas:
    facts = _causal(cache)
    values = cache.array("patch_heads_pos").astype(np.float32)  # [L, H, T]
    peak = np.nanmax(np.abs(np.nan_to_num(values)), axis=2)  # [L, H]
    chosen = top_heads(peak, min(top, peak.size))
    rows = np.stack([values[la, h] for la, h in chosen])
    roles = roles_of(cache)
    scale = patch_scale(rows)
    header = _header(cache, "activation patching per head and position: clean → corrupted run",
                     [metric_text(facts), corruption_text(cache, facts),
                      f"Each cell: the corrupted run with one head's output at one position replaced by the clean "
                      f"run's; {patch_note(facts)}. The {len(chosen)} heads with the largest effect at any position, "
                      "largest first."])
    panel = _heat_panel(Heat(title="patched: one head at one position (patch_heads_pos)", values=rows,
                             row_labels=[head_name(roles, la, h) for la, h in chosen], col_labels=_token_labels(cache.tokens),
                             vmin=-scale, vmax=scale, bar_label="share of the clean metric restored", marks=(0.0, 1.0),
                             changed=_changed_labels(cache, facts), marked_col=facts.target_position))
    return _stack([header, panel])


@register_figure(scope="prompt", formats="png", needs=("patch_heads_pos", "lm_head"))
def patching_heads_positions(cache: Cache, top: int = 12) -> Image.Image:
    """Activation patching per head and position: the `top` heads' effect at each position (1 = clean)."""
    return patching_heads_positions_canvas(cache, top).finish()


def ablation_heads_canvas(cache: Cache) -> canvas.Canvas:
    facts = _causal(cache)
    values = cache.array("ablate_heads").astype(np.float32)  # [L, H]
    best = top_heads(values)
    if facts.metric == "kl":  # a KL is never negative: a sequential scale from 0
        cmap, vmin, vmax = colormap.ATTENTION_CMAP, 0.0, signed_scale(values)
    else:
        cmap, vmax = CMAP, signed_scale(values)
        vmin = -vmax
    header = _header(cache, f"ablation per head: each head's output {ablated(facts)}",
                     [f"metric: {facts.metric_label or facts.metric} after position {facts.target_position}; "
                      f"clean run {facts.clean:.4g} {facts.units}",
                      f"Each cell: {ablation_label(facts)}, in the clean run. Framed: the {len(best)} largest."])
    grid = _heat_panel(Heat(title="ablated: one head at every position (ablate_heads)", values=values,
                            row_labels=_layer_labels(values.shape[0]), col_labels=[f"H{h}" for h in range(values.shape[1])],
                            vmin=vmin, vmax=vmax, bar_label=f"effect ({facts.units})", cmap=cmap, framed=tuple(best),
                            col_title="head"), width=min(canvas.MAX_WIDTH, 60 + values.shape[1] * 48 + 200))
    listing = _head_list(cache, f"largest ablation effects ({facts.units}):", values, best, f" {facts.units}")
    return _stack([header, grid, listing])


@register_figure(scope="prompt", formats="png", needs=("ablate_heads", "lm_head"))
def ablation_heads(cache: Cache) -> Image.Image:
    """Ablation per head: layers × heads of what the metric loses with that head knocked out (metric units)."""
    return ablation_heads_canvas(cache).finish()


BAR_H = 14


def ablation_mlp_canvas(cache: Cache) -> canvas.Canvas:
    facts = _causal(cache)
    values = cache.array("ablate_mlp").astype(np.float32)  # [L]
    header = _header(cache, f"ablation per MLP: each layer's MLP output {ablated(facts)}",
                     [f"metric: {facts.metric_label or facts.metric} after position {facts.target_position}; "
                      f"clean run {facts.clean:.4g} {facts.units}",
                      f"Each bar: {ablation_label(facts)}, in the clean run; red raises the metric, blue lowers it."])
    line = canvas.line_height()
    width, label_w, value_w = 640, 48, 70
    bar_span = width - label_w - value_w - 2 * LEFT
    picture = canvas.Canvas(width, len(values) * BAR_H + 2 * line + 2 * GAP)
    low, high = min(0.0, float(np.nanmin(values))), max(0.0, float(np.nanmax(values)))
    span = (high - low) or 1.0
    zero = LEFT + label_w + int(round(-low / span * bar_span))
    red, blue = (196, 58, 50), (49, 99, 168)
    picture.inks |= {red, blue}
    for layer, value in enumerate(values):
        y = GAP + layer * BAR_H
        picture.text(LEFT + label_w - 6, y + BAR_H / 2, f"L{layer}", anchor="rm")
        if np.isfinite(value) and value != 0:
            end = zero + int(round(float(value) / span * bar_span))
            picture.draw.rectangle((min(zero, end), y + 2, max(zero, end), y + BAR_H - 2), fill=red if value > 0 else blue)
        picture.text(width - LEFT - value_w + 6, y + BAR_H / 2, f"{value:+.3g}" if np.isfinite(value) else "–", anchor="lm")
    bottom = GAP + len(values) * BAR_H
    picture.draw.line((zero, GAP, zero, bottom), fill=canvas.TEXT)
    for tick in canvas.nice_ticks(low, high, 5):
        x = LEFT + label_w + int(round((tick - low) / span * bar_span))
        picture.draw.line((x, bottom, x, bottom + 3), fill=canvas.TEXT)
        picture.text(x, bottom + 4, canvas.number(tick), anchor="mt")
    picture.text(LEFT + label_w + bar_span / 2, bottom + 4 + line, f"effect of ablating the MLP ({facts.units})",
                 anchor="mt", color=canvas.MUTED)
    return _stack([header, picture])


@register_figure(scope="prompt", formats="png", needs=("ablate_mlp", "lm_head"))
def ablation_mlp(cache: Cache) -> Image.Image:
    """Ablation per MLP: one bar per layer of what the metric loses with that MLP knocked out (metric units)."""
    return ablation_mlp_canvas(cache).finish()


def scatter_sites(cache: Cache) -> list[str]:
    """The sites with both the exact patching and its attribution-patching estimate."""
    return [site for site in SITES if cache.has(f"patch_{site}") and cache.has(f"attrpatch_{site}")]


PLOT = 420  # the scatter's square, px


def attribution_patching_scatter_canvas(cache: Cache) -> canvas.Canvas:
    facts = _causal(cache)
    sites = scatter_sites(cache)
    if not sites:
        raise SkipFigure(NO_CORRUPT if not facts.has_corrupt else "no attribution patching beside exact patching in "
                         "this cache (made without --attribution-patching, or without --patch)")
    pairs = {site: (cache.array(f"patch_{site}").astype(np.float64).ravel(),
                    cache.array(f"attrpatch_{site}").astype(np.float64).ravel()) for site in sites}
    every = np.concatenate([np.concatenate(p) for p in pairs.values()])
    every = every[np.isfinite(every)]
    low, high = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    low, high = min(low, 0.0), max(high, 1.0)
    pad = 0.04 * (high - low)
    low, high = low - pad, high + pad
    header = _header(cache, "attribution patching against exact activation patching",
                     [metric_text(facts),
                      "Each point: one patched component (a layer's site at a position, or a head); x = the exact "
                      "patching value, y = its gradient estimate (attribution patching); both normalised, "
                      "1 = clean, 0 = corrupted. The line is y = x; r = Pearson correlation per site."])
    line = canvas.line_height()
    left, top = 60, 10
    picture = canvas.Canvas(canvas.MAX_WIDTH, top + PLOT + 2 * line + 12)

    def px(value: float) -> float:
        return left + (value - low) / (high - low) * PLOT

    def py(value: float) -> float:
        return top + PLOT - (value - low) / (high - low) * PLOT

    draw = picture.draw
    draw.rectangle((left, top, left + PLOT, top + PLOT), outline=canvas.FRAME)
    for tick in canvas.nice_ticks(low, high, 6):
        draw.line((px(tick), top + PLOT, px(tick), top + PLOT + 3), fill=canvas.TEXT)
        picture.text(px(tick), top + PLOT + 4, canvas.number(tick), anchor="mt")
        draw.line((left - 3, py(tick), left, py(tick)), fill=canvas.TEXT)
        picture.text(left - 5, py(tick), canvas.number(tick), anchor="rm")
    draw.line((px(low), py(low), px(high), py(high)), fill=canvas.MUTED, width=1)
    picture.text(left + PLOT / 2, top + PLOT + 4 + line, "exact patching (normalised)", anchor="mt", color=canvas.MUTED)
    picture.text(12, top + PLOT / 2, "attribution patching", anchor="mm", vertical=True, color=canvas.MUTED)
    radius = 2 if sum(len(p[0]) for p in pairs.values()) > 2000 else 3
    for site, (exact, estimate) in pairs.items():
        color = SITE_COLORS[site]
        picture.inks.add(color)
        ok = np.isfinite(exact) & np.isfinite(estimate)
        for x, y in zip(np.clip(exact[ok], low, high), np.clip(estimate[ok], low, high)):
            draw.ellipse((px(x) - radius, py(y) - radius, px(x) + radius, py(y) + radius), fill=color)
    x0, y = left + PLOT + 24, top
    picture.text(x0, y, "site (Pearson r)", color=canvas.TEXT)
    for site, (exact, estimate) in pairs.items():
        y += line + 4
        r = pearson(exact, estimate)
        picture.legend(x0, y, [(SITE_COLORS[site], f"{site}: r = {'n/a' if r is None else f'{r:.3f}'}")])
    return _stack([header, picture])


@register_figure(scope="prompt", formats="png", needs=("lm_head",))
def attribution_patching_scatter(cache: Cache) -> Image.Image:
    """Attribution patching against exact patching: one point per component, a colour and Pearson r per site, y = x."""
    return attribution_patching_scatter_canvas(cache).finish()
