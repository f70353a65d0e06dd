"""“Why this token”: one position's explanation, read from a cache's explain arrays
(lens_pipeline/capture/explain.py) for the viewer's `why` view and the notebook's `show.why`.

For the next-token prediction after token `position`: the target it explains and its value, each
input attribution over the context (tokens 0..position), the direct logit attribution of every
head and MLP (the parts sum to the target's value), and the lens trajectory at that position
(each layer's top tokens, the actual next token's probability and rank, entropy, KL to the output).
Attribution and logit attribution exist only at the cache's target positions; the lens exists at
every position. Colours are computed here (the page only draws them). Heads are named with their
roles where the model has them (lens_pipeline.store.head_roles: `L18H6 · induction 0.83`); a cache
that also tests causes (docs/causal.md) says so, and the page links each head to the `cause` view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins import causal
from lens_pipeline.draw.builtins.explain import ig_steps
from lens_pipeline.store.cache import Cache
from lens_pipeline.viewer.params import ApiError

N_TOP_HEADS = 8  # the heads listed by their share of the target's logit


def _colored(values: np.ndarray, scale: float, signed: bool = True) -> dict[str, Any]:
    """Values with their colours and text colours: diverging on (-scale, scale) (red adds to the target,
    blue takes away), or for an unsigned size (the gradient norm) sequential on (0, scale)."""
    cmap, vmin = (colormap.SIGNED_CMAP, -scale) if signed else (colormap.ATTENTION_CMAP, 0.0)
    colors = colormap.hex_colors(np.nan_to_num(values), cmap, vmin, scale)
    return {"values": np.asarray(values, dtype=np.float64).tolist(), "colors": colors, "cmap": cmap, "signed": signed,
            "text_colors": [colormap.text_color(c) for c in colors], "vmin": vmin, "vmax": scale}


def _target(cache: Cache, index: int) -> dict[str, Any]:
    ids, strs = cache.array("target_ids")[index], cache.array("target_strs")[index]
    contrast = display.token_label(str(strs[1])) if ids[1] >= 0 else None
    return {"index": index, "token": display.token_label(str(strs[0])), "token_id": int(ids[0]),
            "contrast": contrast, "what": "logit difference" if contrast else "logit",
            "value": float(cache.array("target_values")[index])}


def _attributions(cache: Cache, index: int, position: int) -> list[dict[str, Any]]:
    out = []
    for name, label in display.ATTRIBUTION_METHODS.items():
        if not cache.has(name):
            continue
        values = cache.array(name)[index, : position + 1].astype(np.float64)
        scale = float(np.nanmax(np.abs(values))) or 1.0
        signed = name != "attr_grad_norm"  # a norm has a size, not a direction
        entry = {"name": name.removeprefix("attr_"), "label": label, "total": float(np.nansum(values)),
                 **_colored(values, scale, signed)}
        if name == "attr_ig":
            settings = cache.meta.get("settings", {})
            entry["note"] = (f"{ig_steps(cache, index)} steps from the {settings.get('ig_baseline', '?')} baseline "
                             f"({settings.get('ig_rule', '?')}); completeness error "
                             f"{float(cache.array('ig_completeness')[index]):.2%}")
        out.append(entry)
    return out


def _logit_parts(cache: Cache, index: int, roles: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cache.has("logit_attr_heads"):
        return None
    heads = cache.array("logit_attr_heads")[index].astype(np.float64)  # [L, H]
    mlp = cache.array("logit_attr_mlp")[index].astype(np.float64)  # [L]
    embed, bias = float(cache.array("logit_attr_embed")[index]), float(cache.array("logit_attr_bias")[index])
    # Heads and MLPs on scales of their own: the last MLPs often dwarf every head.
    head_scale, mlp_scale = float(np.abs(heads).max(initial=0.0)) or 1.0, float(np.abs(mlp).max(initial=0.0)) or 1.0
    order = np.argsort(-np.abs(heads), axis=None)[:N_TOP_HEADS]
    top = [{"layer": int(la), "head": int(h), "value": float(heads[la, h]), "label": causal.head_name(roles, int(la), int(h))}
           for la, h in zip(*np.unravel_index(order, heads.shape))]
    labels = [causal.head_name(roles, la, h) for la in range(heads.shape[0]) for h in range(heads.shape[1])]
    return {"heads": _colored(heads.ravel(), head_scale), "mlp": _colored(mlp, mlp_scale), "embed": embed, "bias": bias,
            "labels": labels,
            "n_layers": int(heads.shape[0]), "n_heads": int(heads.shape[1]), "top_heads": top,
            "sum": float(heads.sum() + mlp.sum() + embed + bias)}


def _lens(cache: Cache, position: int) -> dict[str, Any] | None:
    if not cache.has("lens_actual_probs"):
        return None
    probs = cache.array("lens_actual_probs")[:, position]
    entropy, kl = cache.array("lens_entropy")[:, position], cache.array("lens_kl")[:, position]
    colors = colormap.hex_colors(np.nan_to_num(probs), colormap.ATTENTION_CMAP, 0.0, 1.0)
    top_strs, top_probs = cache.array("lens_top_strs")[:, position], cache.array("lens_top_probs")[:, position]
    return {
        "rows": [str(r) for r in cache.array("lens_rows")],
        "actual_probs": [None if not np.isfinite(p) else float(p) for p in probs],
        "actual_ranks": cache.array("lens_actual_ranks")[:, position].tolist(),
        "colors": colors, "text_colors": [colormap.text_color(c) for c in colors], "cmap": colormap.ATTENTION_CMAP,
        "entropy": entropy.astype(np.float64).tolist(), "kl": kl.astype(np.float64).tolist(),
        "top_tokens": [[display.token_label(str(s)) for s in row] for row in top_strs],
        "top_probs": top_probs.astype(np.float64).tolist(),
        "logprob": float(cache.array("token_logprobs")[position]) if position + 1 < cache.n_tokens else None,
    }


def why(cache: Cache, row: dict[str, Any], position: int | None) -> dict[str, Any]:
    """The explanation of the prediction after token `position` (default: the last explained one)."""
    causes = causal.causal_of(cache) is not None
    if not cache.has("target_positions") and not cache.has("lens_actual_probs") and not causes:
        raise ApiError(400, "this cache explains no prediction: rerun activations with --attribution, "
                            "--logit-attribution or --lens-trajectory")
    targets = cache.array("target_positions").tolist() if cache.has("target_positions") else []
    if position is None:
        position = targets[-1] if targets else cache.n_tokens - 1
    if position >= cache.n_tokens:
        raise ApiError(400, f"position {position} is out of range: the prompt has tokens 0..{cache.n_tokens - 1}")
    index = targets.index(position) if position in targets else None
    answer: dict[str, Any] = {
        "model": cache.model, "prompt_hash": cache.prompt_hash, "settings_id": row.get("settings_id", ""),
        "position": position, "target_positions": targets, "n_layers": cache.n_layers, "n_heads": cache.n_heads,
        "shown_tokens": [display.token_label(t) for t in cache.tokens],
        "inline": [display.token_inline(t) for t in cache.tokens],
        "next_token": display.token_label(cache.tokens[position + 1]) if position + 1 < cache.n_tokens else None,
        "target": None, "attributions": [], "logit": None, "lens": _lens(cache, position), "tests_causes": causes,
    }
    if index is None:
        where = f"positions {', '.join(map(str, targets[:12]))}{' …' if len(targets) > 12 else ''}" if targets else "none"
        answer["unexplained"] = (f"no target at position {position} (this cache explains {where}); "
                                 'add "target_positions": "all" to the prompt\'s line to explain every position')
        return answer
    answer["target"] = _target(cache, index)
    answer["attributions"] = _attributions(cache, index, position)
    answer["logit"] = _logit_parts(cache, index, causal.roles_of(cache))
    return answer
