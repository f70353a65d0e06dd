"""The architecture diagram: a model's shape drawn from its model card (lens_pipeline/capture/model_card.py),
never from the model itself.

Embeddings -> one block, folded with its repeat count (so 30 layers fit one screen) -> final norm ->
unembedding, each box with its widths and parameter count; a table beside it lists every part's
count, the configuration and the total. The block's inside follows the card: norms before each
sub-layer (pre-norm decoders) or after each residual add (post-norm encoders such as BERT); query and
key/value heads (GQA when fewer KV heads); the positional scheme; the MLP's widths, activation and
gating. The JSON output holds every number the picture prints.
"""

from __future__ import annotations

from typing import Any, Sequence

from matplotlib.patches import Circle, FancyBboxPatch

from lens_pipeline.capture import model_card
from lens_pipeline.draw.builtins.plotting import new_figure
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache

COLORS = {"embed": "#dff0dc", "norm": "#ececec", "attn": "#dbe8f7", "mlp": "#fde6cf", "unembed": "#ebe0f4",
          "frame": "#fafafa"}
FONT = 10.5  # points: about 15 px at the stage's 100 dpi
WIDTH_IN, HEIGHT_IN = 13.0, 9.0
BOX_X, BOX_W = 0.9, 6.3  # the main column, in axis units (the axes span 0-13 x 0-9 like the inches)
RESIDUAL_X = 0.45  # where the skip connections run


def n(value: int) -> str:
    return f"{value:,}"


def _box(axes: Any, top: float, lines: list[str], color: str, height: float | None = None) -> float:
    """A rounded box under `top` with a bold first line; returns its bottom."""
    height = height or 0.16 + 0.235 * len(lines)
    axes.add_patch(FancyBboxPatch((BOX_X, top - height), BOX_W, height, boxstyle="round,pad=0,rounding_size=0.08",
                                  facecolor=color, edgecolor="#555555", linewidth=1.0))
    for i, line in enumerate(lines):
        axes.text(BOX_X + 0.15, top - 0.2 - 0.235 * i, line, fontsize=FONT, va="center",
                  fontweight="bold" if i == 0 else "normal", color="#111111")
    return top - height


def _arrow(axes: Any, top: float, bottom: float, x: float = BOX_X + BOX_W / 2) -> None:
    axes.annotate("", xy=(x, bottom), xytext=(x, top), arrowprops={"arrowstyle": "-|>", "color": "#444444", "lw": 1.2})


def _add(axes: Any, y: float, skip_from: float) -> float:
    """A residual add (⊕) at height y, fed from the stream at `skip_from` by a skip line on the left."""
    x = BOX_X + BOX_W / 2
    axes.add_patch(Circle((x, y), 0.13, facecolor="white", edgecolor="#444444", linewidth=1.2, zorder=3))
    axes.text(x, y, "+", ha="center", va="center", fontsize=FONT + 2, zorder=4)
    axes.plot([x, RESIDUAL_X, RESIDUAL_X], [skip_from, skip_from, y], color="#888888", lw=1.2)
    axes.annotate("", xy=(x - 0.13, y), xytext=(RESIDUAL_X, y),
                  arrowprops={"arrowstyle": "-|>", "color": "#888888", "lw": 1.2})
    axes.text(x + 0.25, y, "residual add", fontsize=FONT - 1, va="center", color="#555555")
    return y


def _norm_box(axes: Any, top: float, arch: dict[str, Any], where: str) -> float:
    return _box(axes, top, [f"{arch['norm']} ({n(arch['d_model'])}) {where}"], COLORS["norm"], height=0.34)


def attention_lines(arch: dict[str, Any], block: dict[str, int]) -> list[str]:
    heads, kv = arch["n_heads"], arch["n_kv_heads"]
    sharing = (f"{kv} key/value heads: grouped-query attention (GQA), {heads // kv} query heads per K/V head"
               if arch["grouped_query"] else f"{kv} key/value heads (one per query head)")
    mask = "causal mask" if arch["causal"] else "bidirectional (no mask)"
    position = arch["positional"] + (f", {arch['positional_detail']}" if arch.get("positional_detail") and
                                     arch["positional"].startswith("rotary") else "")
    where = f"positions: {position} on q, k" if arch["positional"].startswith("rotary") else f"positions: {position} (at input)"
    return [f"Self-attention: {heads} heads × d_head {arch['d_head']}", sharing, f"{where} · {mask}",
            f"W_Q {n(block['attn_q'])} · W_K {n(block['attn_k'])} · W_V {n(block['attn_v'])} · W_O {n(block['attn_o'])}"]


def mlp_lines(arch: dict[str, Any], block: dict[str, int]) -> list[str]:
    d, hidden, act = n(arch["d_model"]), n(arch["d_mlp"] or 0), arch["activation"]
    if arch["gated_mlp"]:
        return [f"MLP, gated: {d} → {hidden} → {d}", f"{act}(x·W_gate) ⊙ (x·W_up), then ·W_down",
                f"W_gate {n(block['mlp_gate'])} · W_up {n(block['mlp_in'])} · W_down {n(block['mlp_out'])}"]
    return [f"MLP: {d} → {hidden} → {d}", f"{act}(x·W_in), then ·W_out",
            f"W_in {n(block['mlp_in'])} · W_out {n(block['mlp_out'])}"]


def _embedding_lines(arch: dict[str, Any], parts: dict[str, int]) -> list[str]:
    lines = [f"Token embedding: {n(arch['d_vocab'])} × {n(arch['d_model'])} = {n(parts['embed'])}"]
    if parts["pos_embed"]:
        lines.append(f"+ position embedding ({arch['positional']}): {n(parts['pos_embed'])}")
    if parts["token_type_embed"]:
        lines.append(f"+ token-type embedding: {n(parts['token_type_embed'])}")
    if parts["embed_norm"]:
        lines.append(f"then {arch['norm']}: {n(parts['embed_norm'])}")
    return lines


def _sublayer(axes: Any, y: float, branch: float, arch: dict[str, Any], lines: list[str], color: str) -> float:
    """One residual sub-layer from `y` down: its norm where it sits, its box, the add fed by the skip
    from `branch` (where the residual stream left for it); returns its bottom."""
    post = arch["norm_placement"] == "post"
    if not post:
        y = _norm_box(axes, y, arch, "(pre-norm)")
        _arrow(axes, y, y - 0.18)
        y -= 0.18
    y = _box(axes, y, lines, color)
    _arrow(axes, y, y - 0.2)
    y = _add(axes, y - 0.33, branch) - 0.13
    if post:
        _arrow(axes, y, y - 0.15)
        y = _norm_box(axes, y - 0.15, arch, "(after the add: post-norm)")
    return y


def _block(axes: Any, top: float, arch: dict[str, Any], counts: dict[str, Any]) -> float:
    """The folded block: its frame, its sub-layers in order, the skip connections; returns its bottom."""
    block = counts["blocks"][0]
    per_block = sum(block.values())
    frame_top, y = top, top - 0.45
    y = _sublayer(axes, y, y + 0.1, arch, attention_lines(arch, block), COLORS["attn"])
    _arrow(axes, y, y - 0.2)
    y = _sublayer(axes, y - 0.2, y - 0.1, arch, mlp_lines(arch, block), COLORS["mlp"])
    bottom = y - 0.4
    axes.add_patch(FancyBboxPatch((0.15, bottom), BOX_W + 1.0, frame_top - bottom, boxstyle="round,pad=0,rounding_size=0.12",
                                  facecolor="none", edgecolor="#333333", linewidth=1.4, linestyle="--", zorder=0))
    repeat = f"× {arch['n_layers']} blocks" + ("" if counts["blocks_identical"] else " (shapes differ: block 0 shown)")
    axes.text(0.3, frame_top - 0.22, repeat, fontsize=FONT + 2, fontweight="bold", va="center")
    axes.text(0.3, bottom + 0.18, f"{n(per_block)} parameters per block · {n(per_block * arch['n_layers'])} in all "
              f"{arch['n_layers']}" + ("" if counts["blocks_identical"] else " (block 0 × count)"),
              fontsize=FONT, va="center", color="#333333")
    return bottom


def _head_lines(arch: dict[str, Any], parts: dict[str, int]) -> list[str]:
    lines = [f"Unembedding: {n(arch['d_model'])} → {n(arch['d_vocab'])} logits"]
    if arch["tied_embeddings"]:
        lines.append("W_U tied to the token embedding: no parameters of its own")
    if parts["unembed"]:
        lines.append(f"W_U {n(parts['unembed'])}")
    if parts["head_extra"]:
        lines.append(f"LM head transform (dense + {arch['norm']}) and output bias: {n(parts['head_extra'])}")
    return lines


def _table(axes: Any, arch: dict[str, Any], counts: dict[str, Any], labels: dict[str, str]) -> None:
    """Every part's count (block parts summed over the blocks), the total, and the configuration."""
    x, y, total = 7.75, HEIGHT_IN - 1.1, counts["total"]
    axes.text(x, y, "Parameters", fontsize=FONT + 1, fontweight="bold")
    for part, count in counts["parts"].items():
        if not count:
            continue
        y -= 0.235
        axes.text(x, y, labels[part], fontsize=FONT)
        axes.text(x + 3.9, y, n(count), fontsize=FONT, ha="right", family="DejaVu Sans Mono")
        share = f"{count / total:.1%}" if count / total >= 0.001 else "<0.1%"
        axes.text(x + 5.0, y, share, fontsize=FONT, ha="right", color="#555555")
    y -= 0.3
    axes.plot([x, x + 5.0], [y + 0.14, y + 0.14], color="#333333", lw=0.8)
    axes.text(x, y, "total", fontsize=FONT, fontweight="bold")
    axes.text(x + 3.9, y, n(total), fontsize=FONT, ha="right", fontweight="bold", family="DejaVu Sans Mono")
    y -= 0.5
    axes.text(x, y, "Configuration", fontsize=FONT + 1, fontweight="bold")
    rows = [("layers", arch["n_layers"]), ("d_model", n(arch["d_model"])),
            ("query heads × d_head", f"{arch['n_heads']} × {arch['d_head']}"), ("key/value heads", arch["n_kv_heads"]),
            ("d_mlp", n(arch["d_mlp"] or 0)), ("vocabulary", n(arch["d_vocab"])), ("context", n(arch["n_ctx"])),
            ("positions", arch["positional"]), ("norm", f"{arch['norm']}, {arch['norm_placement']}-norm"),
            ("activation", arch["activation"] + (" (gated)" if arch["gated_mlp"] else "")),
            ("tied embeddings", "yes" if arch["tied_embeddings"] else "no")]
    for name, value in rows:
        y -= 0.235
        axes.text(x, y, name, fontsize=FONT)
        axes.text(x + 2.3, y, str(value), fontsize=FONT)


def diagram_data(card: model_card.ModelCard) -> dict[str, Any]:
    """Every number the diagram prints: the JSON beside the picture."""
    counts = card.parameters
    return {"model": card.info["model"], "architecture": card.architecture, "total": counts["total"],
            "parts": counts["parts"], "per_block": counts["blocks"][0], "n_blocks": len(counts["blocks"]),
            "blocks_identical": counts["blocks_identical"], "card_version": card.info["card_version"]}


def draw_architecture(card: model_card.ModelCard) -> Any:
    """The diagram of one model card as a matplotlib figure."""
    arch, counts, parts = card.architecture, card.parameters, card.parameters["parts"]
    figure = new_figure(WIDTH_IN, HEIGHT_IN)
    figure.set_layout_engine("none")  # one full-figure axes placed by hand
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, WIDTH_IN)
    axes.set_ylim(0, HEIGHT_IN)
    axes.axis("off")
    kind = "causal decoder" if arch["causal"] else "bidirectional encoder"
    axes.text(0.15, HEIGHT_IN - 0.3, f"{card.info['model']} · {arch['family']} {kind} ({arch['hf_class']})",
              fontsize=FONT + 3, fontweight="bold", va="center")
    axes.text(0.15, HEIGHT_IN - 0.62, f"{n(counts['total'])} parameters" + (" · random weights" if card.info.get(
        "random_weights") else "") + " · from the model card, not the model", fontsize=FONT, va="center", color="#333333")
    y = _box(axes, HEIGHT_IN - 0.9, _embedding_lines(arch, parts), COLORS["embed"])
    _arrow(axes, y, y - 0.25)
    y = _block(axes, y - 0.25, arch, counts)
    _arrow(axes, y, y - 0.25)
    y -= 0.25
    if parts["final_norm"]:
        y = _box(axes, y, [f"Final {arch['norm']} ({n(arch['d_model'])}): {n(parts['final_norm'])}"], COLORS["norm"], 0.34)
        _arrow(axes, y, y - 0.2)
        y -= 0.2
    y = _box(axes, y, _head_lines(arch, parts), COLORS["unembed"])
    other = {k: v for k, v in parts.items() if v and k in ("pooler", "other")}
    if other:
        axes.text(BOX_X, y - 0.3, "also: " + ", ".join(f"{card.info['parts'][k]} {n(v)}" for k, v in other.items()),
                  fontsize=FONT)
    _table(axes, arch, counts, card.info["parts"])
    return figure


@register_figure(scope="model", formats=("png", "svg", "json"))
def architecture(caches: Sequence[Cache]) -> dict[str, Any]:
    """Architecture diagram: embeddings, the block folded with its count, final norm, unembedding, parameter counts."""
    card = model_card.card_for(caches[0])
    figure = draw_architecture(card)
    return {"png": figure, "svg": figure, "json": diagram_data(card)}
