"""“Testing causes”: a prompt's activation patching, ablation and attribution patching, read from a
cache's causal arrays (docs/causal.md) for the viewer's `cause` view and the notebook's `show.cause`.

`cause` answers the prompt's page: the metric and the two runs, a layers × positions heatmap per
patched stream site, the layers × heads grids of patching and ablation, each MLP's ablation and
how well attribution patching estimates the exact values. `cause_head` answers one head's card:
its direct logit attribution (where the cache explains the same position), its patching effect
(and per position), its ablation effect and its detector scores (head roles). Colours and every
sentence are made here, with the figures' own rules (draw/builtins/causal.py); the page only draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins import causal as facts_of
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import ROLES, score
from lens_pipeline.viewer.caches import finite
from lens_pipeline.viewer.params import ApiError

CAUSAL_ARRAYS = (*(f"patch_{site}" for site in facts_of.SITES), *(f"attrpatch_{site}" for site in facts_of.SITES),
                 "ablate_heads", "ablate_mlp")


def _num(value: Any) -> float | None:
    """A float for JSON: NaN (patching where the clean and corrupted metrics are equal) becomes null."""
    return None if value is None or not np.isfinite(value) else float(value)


def has_causes(cache: Cache) -> bool:
    """Whether the cache holds any patching or ablation (the cause view has something to show)."""
    return facts_of.causal_of(cache) is not None and any(cache.has(name) for name in CAUSAL_ARRAYS)


def _colored(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> dict[str, Any]:
    """Values (nested as the array is) with their colours and text colours, flat in row order."""
    values = np.asarray(values, dtype=np.float32)
    colors = colormap.hex_colors(values.ravel(), cmap, vmin, vmax)
    return {"values": finite(values), "colors": colors, "text_colors": [colormap.text_color(c) for c in colors],
            "cmap": cmap, "vmin": vmin, "vmax": vmax, "shape": list(values.shape)}


def _patch_colored(values: np.ndarray, scale: float) -> dict[str, Any]:
    return _colored(values, facts_of.CMAP, -scale, scale)


def _ablation_colored(values: np.ndarray, metric: str, scale: float) -> dict[str, Any]:
    if metric == "kl":  # a KL is never negative: sequential from 0, as the figure draws it
        return _colored(values, colormap.ATTENTION_CMAP, 0.0, scale)
    return _colored(values, facts_of.CMAP, -scale, scale)


def _labels(roles: dict[str, Any] | None, n_layers: int, n_heads: int) -> list[str]:
    return [facts_of.head_name(roles, la, h) for la in range(n_layers) for h in range(n_heads)]


def _facts(cache: Cache) -> facts_of.Causal:
    found = facts_of.causal_of(cache)
    if found is None or not has_causes(cache):
        raise ApiError(400, "this cache tests no causes: rerun activations with --ablate, or with --patch on a prompt "
                            "line with a \"corrupt\" field (docs/causal.md)")
    return found


def _common(cache: Cache, row: dict[str, Any], facts: facts_of.Causal) -> dict[str, Any]:
    corrupt = facts.corrupt_tokens if len(facts.corrupt_tokens) == cache.n_tokens else cache.tokens
    return {
        "model": cache.model, "prompt_hash": cache.prompt_hash, "settings_id": row.get("settings_id", ""),
        "n_layers": cache.n_layers, "n_heads": cache.n_heads, "n_tokens": cache.n_tokens,
        "shown_tokens": [display.token_label(t) for t in cache.tokens],
        "inline": [display.token_inline(t) for t in cache.tokens],
        "corrupt_inline": [display.token_inline(t) for t in corrupt],
        "changed": facts_of.changed_positions(cache, facts),
        "metric": facts.metric, "metric_label": facts.metric_label, "units": facts.units,
        "clean": _num(facts.clean), "corrupt": _num(facts.corrupt) if facts.has_corrupt else None,
        "has_corrupt": facts.has_corrupt, "target_position": facts.target_position,
        "ablation": facts.ablation, "metric_text": facts_of.metric_text(facts),
        "corruption_text": facts_of.corruption_text(cache, facts), "patch_note": facts_of.patch_note(facts),
        "ablation_label": facts_of.ablation_label(facts),
    }


def cause(cache: Cache, row: dict[str, Any]) -> dict[str, Any]:
    """The prompt's page: every patched site, the heads' patching and ablation, the MLPs', the estimates' fit."""
    facts = _facts(cache)
    roles = facts_of.roles_of(cache)
    answer = _common(cache, row, facts)
    stream = {site: cache.array(f"patch_{site}").astype(np.float32) for site in facts_of.STREAM_SITES
              if cache.has(f"patch_{site}")}
    scale = facts_of.patch_scale(np.concatenate([a.ravel() for a in stream.values()])) if stream else 1.0
    answer["sites"] = [{"site": site, "array": f"patch_{site}", "label": facts_of.STREAM_SITES[site],
                        **_patch_colored(values, scale)} for site, values in stream.items()]
    heads: dict[str, Any] = {"labels": _labels(roles, cache.n_layers, cache.n_heads), "roles": roles is not None}
    ranked = None
    if cache.has("patch_heads"):
        values = cache.array("patch_heads").astype(np.float32)
        heads["patch"] = _patch_colored(values, facts_of.patch_scale(values))
        ranked = values
    if cache.has("ablate_heads"):
        values = cache.array("ablate_heads").astype(np.float32)
        heads["ablate"] = _ablation_colored(values, facts.metric, facts_of.signed_scale(values))
        ranked = values if ranked is None else ranked
    if ranked is not None:
        patch = cache.array("patch_heads") if cache.has("patch_heads") else None
        ablate = cache.array("ablate_heads") if cache.has("ablate_heads") else None
        heads["top"] = [{"layer": la, "head": h, "label": facts_of.head_name(roles, la, h),
                         "patch": None if patch is None else _num(patch[la, h]),
                         "ablate": None if ablate is None else _num(ablate[la, h])}
                        for la, h in facts_of.top_heads(ranked, 8)]
        heads["ranked_by"] = "patch_heads" if patch is not None else "ablate_heads"
    answer["heads"] = heads
    answer["mlp"] = None
    if cache.has("ablate_mlp"):
        values = cache.array("ablate_mlp").astype(np.float32)
        answer["mlp"] = _ablation_colored(values, facts.metric, facts_of.signed_scale(values))
    answer["attribution_patching"] = [
        {"site": site, "r": facts_of.pearson(cache.array(f"patch_{site}"), cache.array(f"attrpatch_{site}")),
         "recorded_r": _num(facts.correlation.get(site))} for site in facts_of.scatter_sites(cache)]
    answer["explains"] = _dla_index(cache, facts) is not None
    return answer


def _dla_index(cache: Cache, facts: facts_of.Causal) -> int | None:
    """The explained target at the position the patching metric is read after, if the cache has its logit attribution."""
    if not cache.has("logit_attr_heads") or not cache.has("target_positions"):
        return None
    targets = cache.array("target_positions").tolist()
    return targets.index(facts.target_position) if facts.target_position in targets else None


def _rank(values: np.ndarray, layer: int, head: int) -> int:
    """1 for the head with the largest |value|."""
    size = np.abs(np.nan_to_num(values.astype(np.float64)))
    return int((size > size[layer, head]).sum()) + 1


def role_scores(roles: dict[str, Any] | None, layer: int, head: int) -> list[dict[str, Any]]:
    """The head's detector scores in head_roles.ROLES order, each with its colour: [{name, label, value, color, text_color}]."""
    out = []
    for name, label in ROLES.items():
        value = score(roles, name, layer, head)
        if value is None:
            continue  # not measured (induction on an encoder)
        color = colormap.hex_colors(np.array([value]), colormap.ATTENTION_CMAP, 0.0, 1.0)[0]
        out.append({"name": name, "label": label, "value": value, "color": color, "text_color": colormap.text_color(color)})
    return out


def causal_check(roles: dict[str, Any] | None, layer: int, head: int) -> str | None:
    """The head roles' causal check, in one sentence, when this head is the one it ablated."""
    check = (roles or {}).get("causal_check")
    top = (check or {}).get("top_head") or {}
    if not check or (top.get("layer"), top.get("head")) != (layer, head):
        return None
    worst = check.get("rise_random_max")
    versus = f"; the most of {len(check.get('random_heads') or [])} random heads: {worst:+.3f}" if worst is not None else ""
    verdict = "confirmed" if check.get("confirmed") else "not confirmed"
    return (f"the top induction head: zeroing it changes the loss on repeated sequences by {check.get('rise_top', 0):+.3f} "
            f"nats{versus} ({verdict})")


def cause_head(cache: Cache, row: dict[str, Any], layer: int | None, head: int | None) -> dict[str, Any]:
    """One head's card: direct logit attribution, patching (and per position), ablation, detector scores."""
    if layer is None or head is None:
        raise ApiError(400, "parameters 'layer' and 'head' are required")
    if not 0 <= layer < cache.n_layers:
        raise ApiError(400, f"layer {layer} is out of range: {cache.model} has layers 0..{cache.n_layers - 1}")
    if not 0 <= head < cache.n_heads:
        raise ApiError(400, f"head {head} is out of range: {cache.model} has heads 0..{cache.n_heads - 1}")
    facts = _facts(cache)
    roles = facts_of.roles_of(cache)
    n_heads = cache.n_layers * cache.n_heads
    answer: dict[str, Any] = {
        "model": cache.model, "prompt_hash": cache.prompt_hash, "settings_id": row.get("settings_id", ""),
        "layer": layer, "head": head, "name": f"L{layer}H{head}", "label": facts_of.head_name(roles, layer, head),
        "n_layers": cache.n_layers, "n_heads": cache.n_heads, "of": n_heads, "units": facts.units,
        "metric_text": facts_of.metric_text(facts), "patch_note": facts_of.patch_note(facts),
        "ablation_label": facts_of.ablation_label(facts), "target_position": facts.target_position,
        "dla": None, "patch": None, "patch_positions": None, "attrpatch": None, "ablate": None,
        "roles": role_scores(roles, layer, head), "has_roles": roles is not None,
        "causal_check": causal_check(roles, layer, head),
    }
    g = _dla_index(cache, facts)
    if g is not None:
        heads = cache.array("logit_attr_heads")[g].astype(np.float32)
        scale = facts_of.signed_scale(heads)
        strs, ids = cache.array("target_strs")[g], cache.array("target_ids")[g]
        target = display.token_label(str(strs[0])) + (f" − {display.token_label(str(strs[1]))}" if ids[1] >= 0 else "")
        value = _num(heads[layer, head])
        color = colormap.hex_colors(heads[layer, head : head + 1], facts_of.CMAP, -scale, scale)[0]
        answer["dla"] = {"value": value, "target": target, "position": facts.target_position,
                         "what": "logit difference" if ids[1] >= 0 else "logit",
                         "rank": _rank(heads, layer, head), "color": color, "text_color": colormap.text_color(color)}
    else:
        answer["dla_missing"] = ("no direct logit attribution at this position: make the cache with --logit-attribution "
                                 "as well" if not cache.has("logit_attr_heads") else
                                 f"the cache's logit attribution explains other positions than {facts.target_position}")
    if cache.has("patch_heads"):
        values = cache.array("patch_heads").astype(np.float32)
        scale = facts_of.patch_scale(values)
        value = _num(values[layer, head])
        color = colormap.hex_colors(values[layer, head : head + 1], facts_of.CMAP, -scale, scale)[0]
        answer["patch"] = {"value": value, "rank": _rank(values, layer, head), "color": color,
                           "text_color": colormap.text_color(color)}
    if cache.has("attrpatch_heads"):
        answer["attrpatch"] = {"value": _num(cache.array("attrpatch_heads")[layer, head])}
    if cache.has("patch_heads_pos"):
        every = cache.array("patch_heads_pos").astype(np.float32)
        answer["patch_positions"] = {**_patch_colored(every[layer, head], facts_of.patch_scale(every[layer, head])),
                                     "inline": [display.token_inline(t) for t in cache.tokens],
                                     "shown_tokens": [display.token_label(t) for t in cache.tokens]}
    if cache.has("ablate_heads"):
        values = cache.array("ablate_heads").astype(np.float32)
        value = _num(values[layer, head])
        colored = _ablation_colored(values[layer, head : head + 1], facts.metric, facts_of.signed_scale(values))
        answer["ablate"] = {"value": value, "rank": _rank(values, layer, head), "color": colored["colors"][0],
                            "text_color": colored["text_colors"][0]}
    return answer

