"""Neuron dashboards: for every neuron of a model's shared basis, an index over its current caches.

Per neuron, over every token but each prompt's first (BOS): the top-K activating (prompt, token)
contexts with the activations of the W tokens on each side, a histogram of its activations (fixed
signed power-of-two bins, so counts add across prompts), the fraction of tokens where it is active (activation > 0) and its
direct effect on the output (read from caches/<model>/neuron_basis.json, written at capture).

Incremental: each cache gives one small part (its per-neuron top-K, histogram and counts), kept
under corpus/<model>/parts/ and named by the cache's sha256; the index merges the parts of the
current caches, ordering ties by (activation desc, prompt hash, position), so the result does not
depend on which prompts came first. A rerun computes parts only for new caches, drops those of
caches no longer current, and reads windows only for contexts the previous index did not hold.

Files (under SAVE_PATH/corpus/<model>/): neurons.npz (arrays, no pickles) and neurons.json (the
prompts referenced, the basis, the bins, how it was built).
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_pipeline.capture.models import slug
from lens_pipeline.corpus.basis import read_basis
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, load

# Signed power-of-two bin edges: |activation| from 2^-6 to 2^6, each sign, plus the two open ends.
_MAGNITUDES = 2.0 ** np.arange(-6, 7)
HIST_EDGES = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])  # bin i: [edge i-1, edge i)
SKIP_FIRST = 1  # the first token (BOS) is left out: attention-sink neurons reach thousands there, on every prompt
ACTIVE_ABOVE = 0.0  # a neuron is active on a token when its post-activation value is above this


@dataclass(frozen=True)
class DashboardSettings:
    """What the index keeps per neuron; a change rebuilds every part."""

    top_k: int = 20
    window: int = 8  # tokens shown on each side of a top context


@dataclass
class BuildReport:
    model: str
    prompts: int
    parts_computed: int
    parts_removed: int
    windows_read: int
    skipped: list[str]
    seconds: float
    bytes: int


def corpus_dir(save_path: Path, model: str) -> Path:
    return Path(save_path) / "corpus" / slug(model)


def _bins(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each value: 0 below -2^6 ... len(HIST_EDGES) at or above 2^6."""
    return np.searchsorted(HIST_EDGES, values, side="right")


def prompt_part(acts: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """One cache's contribution from its neuron_acts [L, N, T]: per neuron the top-k (value,
    position) (ties: the earlier position; -1 pads a short prompt), histogram counts and active count,
    all over the tokens after the first (SKIP_FIRST)."""
    acts = acts[..., SKIP_FIRST:]
    n_layers, n_neurons, n_tokens = acts.shape
    order = np.argsort(-acts, axis=-1, kind="stable")[..., :k] + SKIP_FIRST
    values = np.take_along_axis(acts, order - SKIP_FIRST, axis=-1)
    pad = k - values.shape[-1]
    if pad > 0:
        values = np.concatenate([values, np.full((n_layers, n_neurons, pad), -np.inf, np.float32)], -1)
        order = np.concatenate([order, np.full((n_layers, n_neurons, pad), -1)], -1)
    bins = _bins(acts).reshape(n_layers * n_neurons, n_tokens)
    rows = np.repeat(np.arange(n_layers * n_neurons), n_tokens) * (len(HIST_EDGES) + 1)
    hist = np.bincount(rows + bins.ravel(), minlength=n_layers * n_neurons * (len(HIST_EDGES) + 1))
    return {"top_vals": values.astype(np.float32), "top_pos": order.astype(np.int32),
            "hist": hist.reshape(n_layers, n_neurons, -1).astype(np.uint16),  # a prompt has at most 65535 tokens
            "active": (acts > ACTIVE_ABOVE).sum(-1).astype(np.int64), "tokens": np.int64(n_tokens)}


def save_part(handle: Any, part: dict[str, np.ndarray]) -> None:
    """A part as an .npz that np.load reads, deflated at level 1: 4x faster to write than np.savez_compressed."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, value in part.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def _current_caches(save_path: Path, model: str) -> list[dict[str, Any]]:
    rows = index.current_caches(index.latest(index.read_rows(save_path, warn=lambda m: None)).values())
    return sorted((row for (m, _), row in rows.items() if m == model and index.is_complete(row, save_path)),
                  key=lambda row: row["prompt_hash"])


def atomic_write(path: Path, write: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as handle:
        write(handle)
    os.replace(temp, path)


def build(save_path: str | os.PathLike[str], model: str, settings: DashboardSettings | None = None) -> BuildReport:
    """Bring corpus/<model>/ up to date with the model's current caches (see the module doc)."""
    started = time.perf_counter()
    settings = settings or DashboardSettings()
    save_path = Path(save_path)
    out = corpus_dir(save_path, model)
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    old = _read_old(out, settings)
    basis = read_basis(save_path, slug(model))
    rows, basis_ids, skipped = basis_rows(save_path, model, basis)
    wanted = {row["sha256"]: i for i, row in enumerate(rows)}
    removed = [p for p in parts_dir.glob("*.npz") if p.stem not in wanted or old is None]
    for path in removed:
        path.unlink()
    old_shas = [p["sha256"] for p in old["meta"]["prompts"]] if old else []
    # Prompts only added: the old index's top-k already holds the best of the old parts, so it merges with the new ones alone.
    add_only = old is not None and set(old_shas) <= set(wanted) and not removed
    parts, opened, computed = {}, {}, 0
    for sha, i in wanted.items():
        path = parts_dir / f"{sha}.npz"
        if add_only and sha in old_shas:
            continue
        if path.exists() and old is not None:
            with np.load(path) as data:
                parts[i] = {name: data[name] for name in data.files}
            continue
        opened[i] = load(save_path / rows[i]["path"])
        part = prompt_part(opened[i].neuron_acts, settings.top_k)
        part["token_strs"] = np.array(opened[i].tokens, dtype=str)
        atomic_write(path, lambda handle, part=part: save_part(handle, part))
        parts[i] = part
        computed += 1
    blocks = [_part_block(part, i) for i, part in parts.items()]
    totals = [{k: part[k] for k in ("hist", "active", "tokens")} for part in parts.values()]
    if add_only:
        blocks.append(_old_block(old, np.array([wanted[sha] for sha in old_shas])))
        totals.append({k: old["arrays"][k] for k in ("hist", "active", "tokens")})
    merged = merge(blocks, totals, settings.top_k)
    read = _fill_windows(save_path, rows, merged, settings, old if not add_only else None, opened)
    tokens = {i: [str(t) for t in part["token_strs"]] for i, part in parts.items()}
    for entry in old["meta"]["prompts"] if old else []:
        if "token_strs" in entry and entry["sha256"] in wanted:
            tokens.setdefault(wanted[entry["sha256"]], entry["token_strs"])
    meta = _write_index(out, model, rows, tokens, basis_ids, merged, settings, skipped, basis or {})
    parts_bytes = sum(path.stat().st_size for path in parts_dir.glob("*.npz"))
    report = BuildReport(model, len(rows), computed, len(removed), read, skipped, 0.0,
                         (out / "neurons.npz").stat().st_size + parts_bytes)
    report.seconds = time.perf_counter() - started
    meta["build"] = asdict(report)  # recorded bytes: the arrays and parts; the report returned adds this JSON
    text = json.dumps(meta).encode()
    atomic_write(out / "neurons.json", lambda handle: handle.write(text))
    report.bytes += len(text)
    return report


def basis_rows(save_path: Path, model: str, basis: dict[str, Any] | None = None
               ) -> tuple[list[dict[str, Any]], np.ndarray, list[str]]:
    """The current caches holding the shared basis (the recorded one, else the most common), and why others are left out."""
    rows = _current_caches(save_path, model)
    basis = basis if basis is not None else read_basis(save_path, slug(model))
    by_ids: dict[bytes, list[dict[str, Any]]] = {}
    shapes: dict[bytes, np.ndarray] = {}
    for row in rows:
        ids = _row_ids(row)
        if ids is None:
            continue
        key = ids.tobytes() + str(ids.shape).encode()
        by_ids.setdefault(key, []).append(row)
        shapes[key] = ids
    if not by_ids:
        raise ValueError(f"{model}: no current cache holds a shared neuron basis (run activations with "
                         "--neuron-basis variance|max or --neurons L:i,j;...)")
    wanted = None
    if basis is not None:
        ids = _padded(basis["neuron_ids"])
        wanted = ids.tobytes() + str(ids.shape).encode()
    if wanted not in by_ids:
        wanted = max(by_ids, key=lambda key: len(by_ids[key]))
    kept = by_ids[wanted]
    skipped = [f"{row['prompt_hash']}: " + ("per-prompt neurons" if _row_ids(row) is None else "another neuron basis")
               for row in rows if row not in kept]
    return kept, shapes[wanted], skipped


def _row_ids(row: dict[str, Any]) -> np.ndarray | None:
    ids = (row.get("params") or {}).get("neuron_ids")
    return _padded(ids) if ids else None


def _padded(ids: list[list[int]]) -> np.ndarray:
    width = max(1, max(len(r) for r in ids))
    return np.array([list(r) + [-1] * (width - len(r)) for r in ids], dtype=np.int32)


def _part_block(part: dict[str, np.ndarray], prompt: int) -> dict[str, np.ndarray]:
    """A prompt's top-k as merge candidates; their windows are not known yet."""
    return {"vals": part["top_vals"], "prompt": np.full(part["top_vals"].shape, prompt, np.int32), "pos": part["top_pos"],
            "windows": None}


def _old_block(old: dict[str, Any], renumber: np.ndarray) -> dict[str, np.ndarray]:
    """The previous index's top-k, its prompts renumbered to this build's order, with their windows."""
    arrays = old["arrays"]
    prompt = np.where(arrays["top_prompt"] >= 0, renumber[np.maximum(arrays["top_prompt"], 0)], -1).astype(np.int32)
    return {"vals": arrays["top_vals"], "prompt": prompt, "pos": arrays["top_pos"],
            "windows": arrays["windows"].astype(np.float32)}


def merge(blocks: list[dict[str, Any]], totals: list[dict[str, Any]], k: int) -> dict[str, np.ndarray]:
    """Top-k per neuron over candidate blocks (ties: prompt number, i.e. prompt hash order, then
    position), with the windows the blocks carry (`have` marks them), and summed histograms and counts.
    The result depends only on the candidates, not on the blocks' order."""
    vals = np.concatenate([b["vals"] for b in blocks], -1)  # [L, N, candidates]
    prompt = np.concatenate([b["prompt"] for b in blocks], -1)
    pos = np.concatenate([b["pos"] for b in blocks], -1)
    order = np.lexsort((pos, prompt, -vals), axis=-1)[..., :k]
    top_vals = np.take_along_axis(vals, order, -1)
    top_prompt = np.take_along_axis(prompt, order, -1)
    top_pos = np.take_along_axis(pos, order, -1).astype(np.int32)
    empty = ~np.isfinite(top_vals)
    top_prompt[empty], top_pos[empty] = -1, -1
    width = next((b["windows"].shape[-1] for b in blocks if b["windows"] is not None), 1)
    carried = np.concatenate([b["windows"] if b["windows"] is not None else np.full((*b["vals"].shape, width), np.nan, np.float32)
                              for b in blocks], -2)
    have = np.concatenate([np.full(b["vals"].shape, b["windows"] is not None) for b in blocks], -1)
    return {"top_vals": top_vals, "top_prompt": top_prompt, "top_pos": top_pos,
            "windows": np.take_along_axis(carried, order[..., None], -2), "have": np.take_along_axis(have, order, -1),
            "hist": np.sum([t["hist"].astype(np.int64) for t in totals], 0), "active": np.sum([t["active"] for t in totals], 0),
            "tokens": np.int64(sum(int(t["tokens"]) for t in totals))}


def _read_old(out: Path, settings: DashboardSettings) -> dict[str, Any] | None:
    """The previous index (meta and arrays), when it was built with these settings."""
    try:
        meta = json.loads((out / "neurons.json").read_text())
        if meta.get("settings") != asdict(settings):
            return None
        with np.load(out / "neurons.npz") as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError):
        return None
    return {"meta": meta, "arrays": arrays}


def _fill_windows(save_path: Path, rows: list[dict[str, Any]], merged: dict[str, np.ndarray], settings: DashboardSettings,
                  old: dict[str, Any] | None, opened: dict[int, Cache]) -> int:
    """Each top context's activations of its neuron at positions pos-W .. pos+W (NaN off the prompt): those
    not carried from the previous index come from `old`'s windows when it held them, else from the cache.
    Returns how many caches were read for them."""
    width = 2 * settings.window + 1
    windows, top_prompt, top_pos = merged["windows"], merged["top_prompt"], merged["top_pos"]
    if windows.shape[-1] != width:
        windows = merged["windows"] = np.full((*top_prompt.shape, width), np.nan, np.float32)
        merged["have"][:] = False
    known = {}
    if old is not None:  # after a removal: reuse what the previous index held (a prompt's values do not change)
        keys, arrays = [p["sha256"] for p in old["meta"]["prompts"]], old["arrays"]
        for (layer, slot, j), prompt in np.ndenumerate(arrays["top_prompt"]):
            if prompt >= 0:
                known[(keys[prompt], layer, slot, int(arrays["top_pos"][layer, slot, j]))] = arrays["windows"][layer, slot, j]
    needed: dict[int, list[tuple[int, int, int]]] = {}
    for layer, slot, j in zip(*np.nonzero((top_prompt >= 0) & ~merged["have"])):
        prompt = int(top_prompt[layer, slot, j])
        key = (rows[prompt]["sha256"], layer, slot, int(top_pos[layer, slot, j]))
        if key in known:
            windows[layer, slot, j] = known[key]
        else:
            needed.setdefault(prompt, []).append((layer, slot, j))
    for prompt, slots in needed.items():
        cache = opened.get(prompt) or load(save_path / rows[prompt]["path"])
        padded = np.pad(cache.neuron_acts, ((0, 0), (0, 0), (settings.window, settings.window)), constant_values=np.nan)
        for layer, slot, j in slots:
            start = int(top_pos[layer, slot, j])
            windows[layer, slot, j] = padded[layer, slot, start:start + width]
    del merged["have"]
    return len(needed)


def _write_index(out: Path, model: str, rows: list[dict[str, Any]], tokens: dict[int, list[str]], basis_ids: np.ndarray,
                 merged: dict[str, np.ndarray], settings: DashboardSettings, skipped: list[str],
                 basis: dict[str, Any]) -> dict[str, Any]:
    used = {int(p) for p in np.unique(merged["top_prompt"]) if p >= 0}
    prompts = []
    for i, row in enumerate(rows):
        entry = {"prompt_hash": row["prompt_hash"], "settings_id": row.get("settings_id"), "path": row["path"],
                 "sha256": row["sha256"], "text": row.get("text", "")}
        if i in used:  # token strings only for prompts with a top context
            entry["token_strs"] = tokens[i]
        prompts.append(entry)
    arrays = {**merged, "windows": merged["windows"].astype(np.float16), "neuron_ids": basis_ids, "hist_edges": HIST_EDGES}
    atomic_write(out / "neurons.npz", lambda handle: np.savez(handle, **arrays))
    return {"model": model, "settings": asdict(settings), "prompts": prompts, "skipped": skipped,
            "basis": {k: v for k, v in basis.items() if k != "effects"}, "active_above": ACTIVE_ABOVE}


class Dashboards:
    """Reads a built index (reloaded when its file changes) and answers per-neuron questions."""

    def __init__(self, save_path: str | os.PathLike[str]):
        self.save_path = Path(save_path)
        self._loaded: dict[str, tuple[float, dict[str, Any], dict[str, np.ndarray]]] = {}

    def models(self) -> list[str]:
        root = self.save_path / "corpus"
        return sorted(json.loads(p.read_text())["model"] for p in root.glob("*/neurons.json")) if root.is_dir() else []

    def open(self, model: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        out = corpus_dir(self.save_path, model)
        try:
            stamp = (out / "neurons.json").stat().st_mtime
        except OSError:
            raise KeyError(f"no neuron dashboards for {model}: run python -m lens_pipeline.corpus --model ...") from None
        if model not in self._loaded or self._loaded[model][0] != stamp:
            meta = json.loads((out / "neurons.json").read_text())
            meta["effects"] = (read_basis(self.save_path, slug(model)) or {}).get("effects", {})  # kept once, beside the caches
            with np.load(out / "neurons.npz") as data:
                arrays = {name: data[name] for name in data.files}
            self._loaded[model] = (stamp, meta, arrays)
        return self._loaded[model][1], self._loaded[model][2]

    def neuron(self, model: str, layer: int, neuron: int) -> dict[str, Any]:
        """One neuron's dashboard as plain data: contexts, histogram, active fraction, effects."""
        meta, arrays = self.open(model)
        ids = arrays["neuron_ids"]
        if not 0 <= layer < ids.shape[0]:
            raise KeyError(f"layer {layer} is out of range (0..{ids.shape[0] - 1})")
        slots = np.flatnonzero(ids[layer] == neuron)
        if not slots.size:
            raise KeyError(f"neuron {neuron} is not in the basis of layer {layer}; stored: "
                           f"{', '.join(str(i) for i in ids[layer] if i >= 0)}")
        slot = int(slots[0])
        half = meta["settings"]["window"]
        contexts = []
        for j in range(arrays["top_vals"].shape[-1]):
            prompt = int(arrays["top_prompt"][layer, slot, j])
            if prompt < 0:
                continue
            pos = int(arrays["top_pos"][layer, slot, j])
            entry = meta["prompts"][prompt]
            tokens = entry["token_strs"]
            lo = max(0, pos - half)
            acts = arrays["windows"][layer, slot, j].astype(np.float32)[lo - (pos - half):][: len(tokens[lo:pos + half + 1])]
            contexts.append({"prompt_hash": entry["prompt_hash"], "settings_id": entry["settings_id"],
                             "position": pos, "value": float(arrays["top_vals"][layer, slot, j]),
                             "tokens": tokens[lo:pos + half + 1], "acts": [float(a) for a in acts], "first": lo})
        total = int(arrays["tokens"])
        return {"model": meta["model"], "layer": layer, "neuron": neuron, "contexts": contexts,
                "hist": [int(c) for c in arrays["hist"][layer, slot]], "hist_edges": [float(e) for e in arrays["hist_edges"]],
                "active_fraction": float(arrays["active"][layer, slot]) / total if total else 0.0,
                "active_above": meta["active_above"], "tokens": total, "prompts": len(meta["prompts"]),
                "effects": meta["effects"].get(f"{layer}:{neuron}")}

    def basis(self, model: str) -> dict[str, Any]:
        """The model's basis neurons per layer, with each one's max activation and active fraction."""
        meta, arrays = self.open(model)
        total = max(1, int(arrays["tokens"]))
        layers = []
        for layer, row in enumerate(arrays["neuron_ids"]):
            layers.append([{"neuron": int(n), "max": float(arrays["top_vals"][layer, s, 0]),
                            "active_fraction": float(arrays["active"][layer, s]) / total}
                           for s, n in enumerate(row) if n >= 0])
        return {"model": meta["model"], "layers": layers, "prompts": len(meta["prompts"]), "tokens": int(arrays["tokens"]),
                "basis": meta["basis"], "skipped": meta["skipped"]}


def dashboards_from_caches(caches: list[Cache], settings: DashboardSettings | None = None) -> dict[str, Any]:
    """The same index in memory, from open caches that share one basis (the figures stage's
    model-scope figures get caches, not a save path): merged arrays, each top context's token
    strings and the windows' activations."""
    settings = settings or DashboardSettings()
    caches = sorted(caches, key=lambda c: c.prompt_hash)
    acts = [cache.neuron_acts for cache in caches]  # [L, N, T] each, decompressed once
    parts = [prompt_part(a, settings.top_k) for a in acts]
    merged = merge([_part_block(part, i) for i, part in enumerate(parts)], parts, settings.top_k)
    half = settings.window
    contexts: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for (layer, slot, j), prompt in np.ndenumerate(merged["top_prompt"]):
        if prompt < 0:
            continue
        pos = int(merged["top_pos"][layer, slot, j])
        lo, hi = max(0, pos - half), pos + half + 1
        contexts.setdefault((layer, slot), []).append({
            "prompt_hash": caches[prompt].prompt_hash, "position": pos, "first": lo, "tokens": caches[prompt].tokens[lo:hi],
            "acts": acts[prompt][layer, slot, lo:hi].tolist(), "value": float(merged["top_vals"][layer, slot, j])})
    return {**merged, "neuron_ids": caches[0].neuron_ids, "contexts": contexts, "hist_edges": HIST_EDGES}
