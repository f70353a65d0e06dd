"""Phrasing comparisons: the prompts of a `group` (or a `pair`) of the prompt file, side by side.

For the current caches of a model's grouped prompts: the next-token distributions at the last
position (top-k side by side, Jensen-Shannon divergence), per-head attention statistics (each
prompt's and its difference from the first prompt), residual norms per layer, and shared-basis
neuron activations on aligned tokens. Tokens are aligned to the first prompt by matching token
strings (difflib's longest matching blocks); the alignment is part of the answer.

The Jensen-Shannon divergence (nats, at most ln 2) is computed from the stored top-k only: over
the union of both top-k lists plus one "rest" bucket per distribution (its mass outside its own
top-k); a token missing from one list counts as probability 0 there (its true probability is
below that list's k-th). An approximation, close when the top-k hold most of the mass.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lens_pipeline.corpus.head_statistics import DEFINITIONS, STATISTICS, prompt_statistics
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, load

ALIGNMENT = "difflib.SequenceMatcher(autojunk=False) longest matching blocks of token strings, against the first prompt"
NEURON_LINES = 12  # neurons whose activations differ most across the group, drawn as lines


def group_name(metadata: dict[str, Any]) -> str | None:
    """The comparison a prompt belongs to: its `group`, or `pair:A+B` for a pair (ids sorted)."""
    if metadata.get("group") is not None:
        return str(metadata["group"])
    if metadata.get("pair") is not None:
        return "pair:" + "+".join(sorted([str(metadata.get("id")), str(metadata["pair"])]))
    return None


def js_divergence(ids_a: Sequence[int], probs_a: Sequence[float], ids_b: Sequence[int], probs_b: Sequence[float]) -> float:
    """JSD (nats) between two top-k distributions over the union of their tokens plus a rest bucket (module doc)."""
    a, b = dict(zip(map(int, ids_a), map(float, probs_a))), dict(zip(map(int, ids_b), map(float, probs_b)))
    union = sorted(set(a) | set(b))
    p = np.array([a.get(t, 0.0) for t in union] + [max(0.0, 1.0 - sum(a.values()))])
    q = np.array([b.get(t, 0.0) for t in union] + [max(0.0, 1.0 - sum(b.values()))])
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        keep = x > 0
        return float((x[keep] * np.log(x[keep] / m[keep])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def align(reference: Sequence[str], other: Sequence[str]) -> list[tuple[int, int]]:
    """(reference position, other position) pairs of equal token strings, in order."""
    matcher = difflib.SequenceMatcher(None, list(reference), list(other), autojunk=False)
    return [(block.a + k, block.b + k) for block in matcher.get_matching_blocks() for k in range(block.size)]


class Comparisons:
    """Groups of a save path's current caches, and the comparison of one group."""

    def __init__(self, save_path: str | Path):
        self.save_path = Path(save_path)

    def _rows(self, model: str) -> list[dict[str, Any]]:
        current = index.current_caches(index.latest(index.read_rows(self.save_path, warn=lambda m: None)).values())
        return [row for (m, _), row in current.items() if m == model and index.is_complete(row, self.save_path)]

    def groups(self, model: str) -> dict[str, Any]:
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self._rows(model):
            name = group_name(row.get("prompt_metadata") or {})
            if name:
                found.setdefault(name, []).append({"prompt_hash": row["prompt_hash"], "text": row.get("text", "")})
        return {"model": model, "groups": [{"name": name, "prompts": members} for name, members in sorted(found.items())
                                           if len(members) > 1]}

    def compare(self, model: str, group: str | None = None, prompts: Sequence[str] | None = None) -> dict[str, Any]:
        rows = self._rows(model)
        if group is not None:
            chosen = [row for row in rows if group_name(row.get("prompt_metadata") or {}) == group]
        else:
            by_hash = {row["prompt_hash"]: row for row in rows}
            missing = [h for h in prompts or () if h not in by_hash]
            if missing:
                raise KeyError(f"{model}: no current cache for prompt(s) {', '.join(missing)}")
            chosen = [by_hash[h] for h in prompts or ()]
        if len(chosen) < 2:
            raise KeyError(f"{model}: group {group!r} has {len(chosen)} cached prompt(s); a comparison needs two or more")
        caches = [load(self.save_path / row["path"]) for row in chosen]
        return {"model": model, "group": group, **compare_caches(caches, [row["prompt_hash"] for row in chosen])}


def compare_caches(caches: Sequence[Cache], hashes: Sequence[str]) -> dict[str, Any]:
    """The comparison of two or more caches of one model (the first is the reference)."""
    tokens = [list(cache.tokens) for cache in caches]
    pairs = [align(tokens[0], t) for t in tokens]
    common = sorted(set.intersection(*[{a for a, _ in p} for p in pairs]))  # reference positions every prompt matches
    columns = [[dict(p)[a] for a in common] for p in pairs]  # per prompt, its position of each common column
    last = [len(t) - 1 for t in tokens]
    predictions = [{"ids": c.array("topk_ids")[n].tolist(), "strs": [str(s) for s in c.array("topk_strs")[n]],
                    "probs": [float(x) for x in c.array("topk_probs")[n].astype(np.float32)]} for c, n in zip(caches, last)]
    jsd = [[js_divergence(a["ids"], a["probs"], b["ids"], b["probs"]) for b in predictions] for a in predictions]
    stats = [prompt_statistics(cache) for cache in caches]
    heads = {name: {"values": [s[name].tolist() for s in stats],
                    "difference": [(s[name] - stats[0][name]).tolist() for s in stats]} for name in STATISTICS}
    norms = [cache.array("resid_norms").astype(np.float32) for cache in caches]
    return {
        "prompts": [{"prompt_hash": h, "tokens": t, "text": c.meta.get("text", "")} for h, t, c in zip(hashes, tokens, caches)],
        "alignment": {"method": ALIGNMENT, "pairs": [[list(p) for p in pair] for pair in pairs], "common": common,
                      "columns": columns},
        "next_token": {"position": "last", "top": predictions, "jsd": jsd,
                       "jsd_note": "nats, from the top-k: their union plus a rest bucket; a token outside a list is 0 there"},
        "heads": heads, "head_statistics": STATISTICS, "head_definitions": DEFINITIONS,
        "resid_norms": {"last": [n[:, -1].tolist() for n in norms],
                        "mean": [(n[:, 1:] if n.shape[1] > 1 else n).mean(1).tolist() for n in norms]},
        "neurons": _neurons(caches, columns),
    }


def _neurons(caches: Sequence[Cache], columns: list[list[int]]) -> dict[str, Any]:
    """Shared-basis activations on the common aligned tokens, and the neurons that differ most."""
    if not all(c.has("neuron_ids") for c in caches):
        return {"reason": "no neurons stored"}
    ids = caches[0].neuron_ids
    if not all(np.array_equal(c.neuron_ids, ids) for c in caches) or not columns[0]:
        return {"reason": "the prompts do not share a neuron basis (activations --neuron-basis)" if columns[0]
                else "no aligned tokens"}
    aligned = np.stack([c.neuron_acts[:, :, cols] for c, cols in zip(caches, columns)])  # [P, L, N, A]
    spread = np.abs(aligned - aligned[:1]).mean(-1).max(0)  # [L, N]: the largest mean difference from the first prompt
    spread[ids < 0] = -1
    flat = np.argsort(-spread, axis=None, kind="stable")[:NEURON_LINES]
    lines = []
    for layer, slot in zip(*np.unravel_index(flat, spread.shape)):
        lines.append({"layer": int(layer), "neuron": int(ids[layer, slot]), "mean_abs_difference": float(spread[layer, slot]),
                      "values": aligned[:, layer, slot].tolist()})
    return {"neuron_ids": ids.tolist(), "mean_abs_difference": spread.tolist(), "lines": lines}
