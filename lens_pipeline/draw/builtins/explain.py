"""Why the model predicted a token: input attribution over the prompt's tokens (saliency), the
targets x sources matrix, direct logit attribution per head and MLP, the lens trajectory and the
per-token loss, from the arrays lens_pipeline/capture/explain.py stores.

All are drawn with PIL (no matplotlib): tokens as coloured chips with a bar each, heatmaps as
palette images through the colour lookup. Every title names the target and the method.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins.plotting import _font_charmap
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache

METHODS = display.ATTRIBUTION_METHODS  # array -> how titles name it
SIGNED_CMAP = colormap.SIGNED_CMAP  # attributions and logit parts: red adds to f, blue takes away
POSITIVE, NEGATIVE = (196, 58, 50), (49, 99, 168)
INK, MUTED, PAPER, FRAME = (30, 30, 30), (120, 120, 120), (255, 255, 255), (0, 0, 0)
NOT_A_SOURCE = (236, 238, 242)  # a token after the explained position: it cannot affect f
MARGIN, LINE_GAP = 10, 4


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), size)


def _shown(token: str, max_chars: int = 24) -> str:
    """A token as drawn in running text: breaks visible, glyphs the font lacks as □, long ones cut."""
    charmap = _font_charmap()
    text = "".join(c if ord(c) in charmap else "□" for c in display.token_inline(token))
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


# --------------------------------------------------------------------------- what is explained


@dataclass(frozen=True)
class Target:
    index: int
    position: int
    text: str  # how titles name it: “ Paris” after “ is” (position 12), or “ Paris” − “ London”
    value: float


def _target(cache: Cache, index: int) -> Target:
    ids, strs = cache.array("target_ids"), cache.array("target_strs")
    if len(ids) == 0:
        raise SkipFigure("no targets: the prompt has a single token")
    if not -len(ids) <= index < len(ids):
        raise ValueError(f"target {index} out of range: this cache explains {len(ids)} target(s)")
    index %= len(ids)
    position = int(cache.array("target_positions")[index])
    name = f"“{_shown(str(strs[index, 0]))}”"
    if ids[index, 1] >= 0:
        name += f" − “{_shown(str(strs[index, 1]))}”"
    after = _shown(cache.tokens[position])
    what = "logit difference" if ids[index, 1] >= 0 else "logit"
    return Target(index, position, f"{name} after “{after}” (position {position}; {what})",
                  float(cache.array("target_values")[index]))


def ig_steps(cache: Cache, index: int) -> str:
    """The integrated-gradients steps target `index` used: its own under --ig-tolerance, else the setting."""
    if cache.has("ig_steps_used"):
        return str(int(cache.array("ig_steps_used")[index]))
    return str(cache.meta.get("settings", {}).get("ig_steps", "?"))


def _ig_note(cache: Cache, index: int) -> str:
    settings = cache.meta.get("settings", {})
    error = float(cache.array("ig_completeness")[index])
    return (f"{ig_steps(cache, index)} steps, {settings.get('ig_baseline', '?')} baseline, "
            f"{settings.get('ig_rule', '?')}; completeness error {error:.1%}")


def _methods(cache: Cache, method: str) -> list[str]:
    """The attribution arrays to draw: `method` ('all', or an array name or method name)."""
    present = [name for name in METHODS if cache.has(name)]
    if method != "all":
        wanted = method if method.startswith("attr_") else f"attr_{method}"
        if wanted not in METHODS:
            raise ValueError(f"method {method!r}: choose from all, {', '.join(n[5:] for n in METHODS)}")
        present = [name for name in present if name == wanted]
    if not present:
        raise SkipFigure(f"no input attribution {method!r} in this cache (made without --attribution)")
    return present


# --------------------------------------------------------------------------- drawing helpers


def _text_block(lines: Sequence[tuple[str, int, tuple[int, int, int]]], width: int) -> Image.Image:
    """Lines of (text, size, colour), top to bottom."""
    height = sum(size + LINE_GAP for _, size, _ in lines) + LINE_GAP
    image = Image.new("RGB", (width, height), PAPER)
    draw, y = ImageDraw.Draw(image), LINE_GAP
    for text, size, color in lines:
        draw.text((MARGIN, y), text, fill=color, font=_font(size))
        y += size + LINE_GAP
    return image


def _stack(images: Sequence[Image.Image]) -> Image.Image:
    width = max(image.width for image in images)
    out = Image.new("RGB", (width, sum(image.height for image in images)), PAPER)
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height
    return out


def _token_strip(tokens: Sequence[str], colors: Sequence[tuple[int, int, int] | None], bars: np.ndarray,
                 bar_colors: Sequence[tuple[int, int, int]], framed: int | None, width: int) -> Image.Image:
    """Tokens as chips on their colours (None: not a source), wrapped to `width`, each with a bar
    below of height `bars` (0..1); the chip `framed` gets a black frame."""
    font, chip_h, bar_h = _font(13), 18, 14
    labels = [_shown(t) for t in tokens]
    sizes = [int(font.getlength(label)) + 4 for label in labels]
    rows, x, y = [], MARGIN, 0
    for size in sizes:
        if x + size > width - MARGIN and x > MARGIN:
            x, y = MARGIN, y + chip_h + bar_h + 6
        rows.append((x, y))
        x += size + 2
    image = Image.new("RGB", (width, y + chip_h + bar_h + 6), PAPER)
    draw = ImageDraw.Draw(image)
    for i, ((x, y), label, size) in enumerate(zip(rows, labels, sizes)):
        fill = colors[i] or NOT_A_SOURCE
        draw.rectangle((x, y, x + size - 1, y + chip_h - 1), fill=fill,
                       outline=FRAME if i == framed else None, width=2 if i == framed else 1)
        text_fill = _rgb(colormap.text_color("#%02x%02x%02x" % fill)) if colors[i] else MUTED
        draw.text((x + 2, y + 2), label, fill=text_fill, font=font)
        height = int(round(float(np.clip(bars[i], 0, 1)) * (bar_h - 2)))
        if height:
            bottom = y + chip_h + bar_h
            draw.rectangle((x + 1, bottom - height, x + size - 2, bottom - 1), fill=bar_colors[i])
    return image


def _signed_strip(tokens: Sequence[str], values: np.ndarray, last_source: int, framed: int, width: int) -> Image.Image:
    """Signed values on a symmetric diverging scale; tokens after `last_source` are not sources."""
    scale = float(np.nanmax(np.abs(values[: last_source + 1]))) or 1.0
    hexes = colormap.hex_colors(values, SIGNED_CMAP, -scale, scale)
    colors = [_rgb(h) if i <= last_source else None for i, h in enumerate(hexes)]
    bars = np.abs(values) / scale
    bar_colors = [POSITIVE if v >= 0 else NEGATIVE for v in values]
    return _token_strip(tokens, colors, bars, bar_colors, framed, width)


def _heatmap(values: np.ndarray, cmap: str, vmin: float, vmax: float, cell: tuple[int, int],
             masked: np.ndarray | None = None) -> Image.Image:
    """[rows, cols] values as an RGB image of cell (w, h) pixels each; masked cells light grey."""
    index = colormap.to_index(np.nan_to_num(values, nan=vmin), vmin, vmax)
    rgb = colormap.lut(cmap).take(index, axis=0)
    if masked is not None:
        rgb[masked] = NOT_A_SOURCE
    rgb = np.repeat(np.repeat(rgb, cell[1], axis=0), cell[0], axis=1)
    return Image.fromarray(np.ascontiguousarray(rgb))


def _colour_key(cmap: str, vmin: float, vmax: float, label: str, width: int = 260) -> Image.Image:
    ramp = colormap.lut(cmap)[np.linspace(0, 255, width - 2 * MARGIN).astype(int)]
    image = Image.new("RGB", (width + 220, 34), PAPER)
    image.paste(Image.fromarray(np.ascontiguousarray(np.repeat(ramp[None], 10, axis=0))), (MARGIN, 4))
    draw, font = ImageDraw.Draw(image), _font(11)
    draw.text((MARGIN, 16), f"{vmin:.3g}", fill=INK, font=font)
    draw.text((width - MARGIN - 40, 16), f"{vmax:.3g}", fill=INK, font=font)
    draw.text((width + 4, 2), label, fill=INK, font=font)
    return image


def _heading(cache: Cache, what: str) -> tuple[str, int, tuple[int, int, int]]:
    return (f"{what} · {cache.model} · {cache.prompt_hash}", 14, INK)


# --------------------------------------------------------------------------- the figures


@register_figure(scope="prompt", formats="png", needs=("target_ids", "lm_head"))
def saliency_tokens(cache: Cache, target: int = -1, method: str = "all", width: int = 900) -> Image.Image:
    """Tokens coloured by their attribution to the target, a bar each (red adds to it, blue takes away)."""
    chosen = _target(cache, target)
    tokens = cache.tokens
    parts = [_text_block([_heading(cache, "input attribution"),
                          (f"target: {chosen.text} = {chosen.value:.3f}", 13, INK),
                          ("each source token's share of it; framed: where the prediction is made; grey: after it", 11, MUTED)],
                         width)]
    for name in _methods(cache, method):
        values = cache.array(name)[chosen.index].astype(np.float32)
        note = f" ({_ig_note(cache, chosen.index)})" if name == "attr_ig" else ""
        total = f"; sum {float(values.sum()):.3f}" if name != "attr_grad_norm" else ""
        parts.append(_text_block([(f"{METHODS[name]}{note}{total}", 12, INK)], width))
        if name == "attr_grad_norm":  # a norm has no sign: one colour scale from 0
            scale = float(values[: chosen.position + 1].max()) or 1.0
            hexes = colormap.hex_colors(values, colormap.ATTENTION_CMAP, 0.0, scale)
            colors = [_rgb(h) if i <= chosen.position else None for i, h in enumerate(hexes)]
            parts.append(_token_strip(tokens, colors, values / scale, [MUTED] * len(values), chosen.position, width))
        else:
            parts.append(_signed_strip(tokens, values, chosen.position, chosen.position, width))
    return _stack(parts)


@register_figure(scope="prompt", formats="png", needs=("target_ids", "lm_head"))
def attribution_matrix(cache: Cache, method: str = "ig", normalize: str = "row", cell: int = 0) -> Image.Image:
    """Targets x sources: each actual next token's attribution over the tokens before it (several targets)."""
    if len(cache.array("target_ids")) < 2:
        raise SkipFigure("one target: the matrix needs several (\"target_positions\": \"all\")")
    present = [name for name in METHODS if cache.has(name)]
    name = f"attr_{method}" if f"attr_{method}" in present else (present[0] if present else None)
    if name is None:
        raise SkipFigure("no input attribution in this cache (made without --attribution)")
    values = cache.array(name).astype(np.float32)  # [G, T]
    positions = cache.array("target_positions")
    masked = np.arange(values.shape[1])[None, :] > positions[:, None]
    if normalize == "row":  # each target on its own scale: their sizes differ by orders of magnitude
        scale = np.abs(np.where(masked, 0, values)).max(axis=1, keepdims=True)
        values = values / np.where(scale > 0, scale, 1.0)
    elif normalize != "none":
        raise ValueError(f"normalize {normalize!r}: choose row or none")
    signed = name != "attr_grad_norm"
    top = float(np.abs(np.where(masked, 0, values)).max()) or 1.0
    side = cell or max(1, min(8, 700 // max(values.shape)))
    image = _heatmap(values, SIGNED_CMAP if signed else colormap.ATTENTION_CMAP, -top if signed else 0.0, top,
                     (side, side), masked)
    method_note = METHODS[name] + (f" ({_ig_note(cache, -1).split(';')[0]})" if name == "attr_ig" else "")
    scaling = "each row scaled to its largest value" if normalize == "row" else "unscaled"
    head = _text_block([_heading(cache, "targets × sources"), (f"{method_note}, {scaling}", 12, INK),
                        (f"row g: the logit of the actual token after position g ({len(positions)} targets); "
                         "column: source token; grey: after the target position", 11, MUTED)],
                       max(image.width + 2 * MARGIN, 700))
    body = Image.new("RGB", (head.width, image.height + 2 * MARGIN), PAPER)
    body.paste(image, (MARGIN, MARGIN))
    key = _colour_key(SIGNED_CMAP if signed else colormap.ATTENTION_CMAP, -top if signed else 0.0, top,
                      "attribution" + (" / row max" if normalize == "row" else ""))
    return _stack([head, body, key])


@register_figure(scope="prompt", formats="png", needs=("logit_attr_heads", "lm_head"))
def logit_attribution_heads(cache: Cache, target: int = -1, cell: int = 18) -> Image.Image:
    """Direct logit attribution: layers x heads, plus each layer's MLP, of the target's logit."""
    chosen = _target(cache, target)
    heads = cache.array("logit_attr_heads")[chosen.index]  # [L, H]
    mlp = cache.array("logit_attr_mlp")[chosen.index]  # [L]
    n_layers, n_heads = heads.shape
    grid = np.full((n_layers, n_heads + 2), np.nan, dtype=np.float32)
    grid[:, :n_heads], grid[:, n_heads + 1] = heads, mlp  # a blank column between heads and MLPs
    scale = float(np.nanmax(np.abs(grid))) or 1.0
    image = _heatmap(grid, SIGNED_CMAP, -scale, scale, (cell, cell), np.isnan(grid))
    embed, bias = float(cache.array("logit_attr_embed")[chosen.index]), float(cache.array("logit_attr_bias")[chosen.index])
    order = np.dstack(np.unravel_index(np.argsort(-np.abs(heads), axis=None), heads.shape))[0][:3]
    best = ", ".join(f"L{layer}H{head} {heads[layer, head]:+.2f}" for layer, head in order)
    label_w, label_h = 40, 16
    width = max(label_w + image.width + 2 * MARGIN, 760)
    head = _text_block([_heading(cache, "direct logit attribution"),
                        (f"target: {chosen.text} = {chosen.value:.3f} (final norm's scale frozen)", 13, INK),
                        (f"heads {float(heads.sum()):+.3f} · MLPs {float(mlp.sum()):+.3f} · embeddings {embed:+.3f} · "
                         f"biases {bias:+.3f}; largest heads: {best}", 11, MUTED)], width)
    body = Image.new("RGB", (width, image.height + label_h + 2 * MARGIN), PAPER)
    body.paste(image, (label_w, label_h + MARGIN))
    draw, font = ImageDraw.Draw(body), _font(10)
    for col in range(n_heads):
        draw.text((label_w + col * cell + 2, MARGIN), f"H{col}", fill=INK, font=font)
    draw.text((label_w + (n_heads + 1) * cell - 2, MARGIN), "MLP", fill=INK, font=font)
    for layer in range(n_layers):
        draw.text((4, label_h + MARGIN + layer * cell + (cell - 10) // 2), f"L{layer}", fill=INK, font=font)
    return _stack([head, body, _colour_key(SIGNED_CMAP, -scale, scale, "share of the logit")])


@register_figure(scope="prompt", formats="png", needs=("lens_actual_probs", "lm_head"))
def lens_trajectory(cache: Cache, value: str = "prob", max_positions: int = 200, cell_height: int = 12) -> Image.Image:
    """Lens trajectory: per layer and position the actual next token's probability (or rank), and entropy."""
    if value not in ("prob", "rank"):
        raise ValueError(f"value {value!r}: choose prob or rank")
    rows = [str(r) for r in cache.array("lens_rows")]
    n = cache.n_tokens
    shown = list(range(max(0, n - 1 - max_positions), n - 1))  # the last position has no actual next token
    if not shown:
        raise SkipFigure("one token: no actual next token to follow")
    cell_w = max(1, min(24, 900 // len(shown)))
    if value == "prob":
        first = cache.array("lens_actual_probs")[:, shown]
        first_map, first_range, first_label = colormap.ATTENTION_CMAP, (0.0, 1.0), "probability of the actual next token"
    else:  # log10(rank + 1): rank 0 (top-1) is 0
        first = np.log10(cache.array("lens_actual_ranks")[:, shown].astype(np.float32) + 1)
        first_map, first_range = "magma_r", (0.0, float(first.max()) or 1.0)
        first_label = "log10(rank + 1) of the actual next token"
    entropy = cache.array("lens_entropy")[:, shown]
    panels = [_lens_panel(values, rows, shown, cmap, bounds, label, cell_w, max(cell_height, 6))
              for values, cmap, bounds, label in ((first, first_map, first_range, first_label),
                                                  (entropy, "magma", (0.0, float(np.nanmax(entropy)) or 1.0), "entropy (nats)"))]
    loss = -cache.array("token_logprobs")[shown]
    head = _text_block([_heading(cache, "lens trajectory"),
                        (f"each layer's residual through the final norm and unembedding; positions {shown[0]}–{shown[-1]}: "
                         "after token p, for token p + 1", 11, MUTED),
                        (f"final per-token loss: mean {float(np.nanmean(loss)):.3f} nats", 12, INK)],
                       max(760, max(p.width for p in panels)))
    return _stack([head, *panels])


def _lens_panel(values: np.ndarray, rows: list[str], shown: list[int], cmap: str, bounds: tuple[float, float], label: str,
                cell_w: int, cell_h: int) -> Image.Image:
    """One rows x positions heatmap, the last row on top, with row names, position numbers and a key."""
    image = _heatmap(values[::-1], cmap, bounds[0], bounds[1], (cell_w, cell_h))
    left, top = 64, 3
    panel = Image.new("RGB", (max(image.width + left + MARGIN, 400), image.height + top + 16), PAPER)
    panel.paste(image, (left, top))
    draw, font = ImageDraw.Draw(panel), _font(9)
    step = max(1, -(-11 // cell_h))  # a name every `step` rows, so they never overlap
    for i, name in enumerate(rows[::-1]):
        if i % step == 0:
            draw.text((2, top + i * cell_h + max(0, cell_h - 10) // 2), name, fill=INK, font=font)
    every = max(1, -(-40 // cell_w))
    for j in range(0, len(shown), every):
        draw.text((left + j * cell_w, top + image.height + 2), str(shown[j]), fill=MUTED, font=font)
    return _stack([_text_block([(label, 12, INK)], panel.width), panel, _colour_key(cmap, bounds[0], bounds[1], label)])


@register_figure(scope="prompt", formats="png", needs=("token_logprobs", "lm_head"))
def token_loss(cache: Cache, width: int = 900) -> Image.Image:
    """Per-token loss: each token coloured by −log p given the tokens before it, with a bar each."""
    logprobs = cache.array("token_logprobs").astype(np.float32)  # position p: token p + 1
    loss = np.concatenate([[np.nan], -logprobs[:-1]])  # on the token being predicted; the first has none
    if not np.isfinite(loss).any():
        raise SkipFigure("one token: nothing is predicted")
    top = float(np.nanmax(loss)) or 1.0
    hexes = colormap.hex_colors(loss, "magma_r", 0.0, top)
    colors = [_rgb(h) if np.isfinite(v) else None for h, v in zip(hexes, loss)]
    bars = np.nan_to_num(loss / top)
    head = _text_block([_heading(cache, "per-token loss"),
                        (f"−log p(token | the tokens before it), nats: mean {float(np.nanmean(loss)):.3f}, "
                         f"max {top:.3f} at “{_shown(cache.tokens[int(np.nanargmax(loss))])}”", 13, INK)], width)
    strip = _token_strip(cache.tokens, colors, bars, [MUTED] * len(loss), None, width)
    return _stack([head, strip, _colour_key("magma_r", 0.0, top, "loss (nats)")])
