"""Corpus figures over every cache of a model (lens_pipeline/corpus/): neuron dashboard pages, one per
layer; phrasing comparisons, one per `group`/`pair` of the prompt file; the token PCA over all prompts.
Not drawn by default (each reads every cache of the model): name them, `--figures
neuron_dashboards,phrasing_comparison,corpus_token_pca`; without a shared basis or groups they are skipped."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from lens_pipeline.corpus.compare import compare_caches, group_name
from lens_pipeline.corpus.neurons import DashboardSettings, dashboards_from_caches
from lens_pipeline.corpus.projection import corpus_pca
from lens_pipeline.draw import colormap
from lens_pipeline.draw.builtins.plotting import token_label
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache

PAGE_NEURONS = 16  # neurons drawn per layer page (the first of the basis, in its order)


def shared_basis(caches: Sequence[Cache]) -> list[Cache]:
    """The caches that hold the most common neuron basis (a shared one: every cache of a
    `--neuron-basis` run); SkipFigure when caches were made with per-prompt neurons."""
    with_ids = [c for c in caches if c.has("neuron_ids") and c.meta.get("settings", {}).get("neuron_ids")]
    if not with_ids:
        raise SkipFigure("no cache holds a shared neuron basis (activations --neuron-basis variance|max or --neurons L:i,...)")
    common, _ = Counter(c.neuron_ids.tobytes() for c in with_ids).most_common(1)[0]
    return [c for c in with_ids if c.neuron_ids.tobytes() == common]


def _context_text(context: dict[str, Any]) -> str:
    peak = context["position"] - context["first"]
    parts = [token_label(t, max_chars=12) for t in context["tokens"]]
    parts[peak] = f"[{parts[peak]}]"
    return "".join(parts)


def layer_page(index: dict[str, Any], layer: int, model: str) -> Figure:
    """One layer's basis neurons: histogram and top three contexts (peak token in brackets) each."""
    slots = [s for s, n in enumerate(index["neuron_ids"][layer]) if n >= 0][:PAGE_NEURONS]
    figure = Figure(figsize=(12, 0.9 * max(1, len(slots)) + 0.8))
    figure.suptitle(f"{model} · layer {layer}: neuron dashboards over {int(index['tokens'])} tokens")
    total = max(1, int(index["tokens"]))
    for row, slot in enumerate(slots):
        hist_ax = figure.add_axes((0.02, 1 - (row + 1.6) / (len(slots) + 1.2), 0.12, 0.7 / (len(slots) + 1.2)))
        hist_ax.bar(range(len(index["hist"][layer, slot])), index["hist"][layer, slot], color="#64748b")
        hist_ax.set_yscale("symlog")
        hist_ax.set_xticks([])
        hist_ax.set_yticks([])
        neuron = int(index["neuron_ids"][layer, slot])
        active, peak = 100 * index["active"][layer, slot] / total, index["top_vals"][layer, slot, 0]
        lines = [f"N{neuron}  active {active:.1f}%  max {peak:.3g}"]
        lines += [f"{c['value']:.3g}  {_context_text(c)}" for c in index["contexts"].get((layer, slot), [])[:3]]
        figure.text(0.16, 1 - (row + 1.0) / (len(slots) + 1.2), "\n".join(lines), fontsize=7, va="top", family="monospace")
    return figure


@register_figure(scope="model", formats=("png",), needs=("neuron_acts",), default=False)
def neuron_dashboards(caches: Sequence[Cache], top_k: int = 10, window: int = 6) -> dict[str, Any]:
    """Per layer, a page of the shared basis's neurons: activation histogram (signed power-of-two bins),
    active fraction, and the top contexts over all the model's prompts."""
    kept = shared_basis(caches)
    index = dashboards_from_caches(kept, DashboardSettings(top_k=top_k, window=window))
    model = kept[0].model
    return {f"L{layer:02d}.png": layer_page(index, layer, model) for layer in range(index["neuron_ids"].shape[0])
            if (index["neuron_ids"][layer] >= 0).any()}


def comparison_figure(result: dict[str, Any], title: str) -> Figure:
    """Top-k side by side, residual norms per layer, entropy differences and neuron lines across prompts."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    n = len(result["prompts"])
    figure = Figure(figsize=(13, 9), layout="constrained")
    figure.suptitle(token_label(title, max_chars=160))
    grid = figure.add_gridspec(3, max(2, n))
    for p, top in enumerate(result["next_token"]["top"]):
        ax = figure.add_subplot(grid[0, p])
        ax.barh(range(5)[::-1], top["probs"][:5], color=colors[p % len(colors)])
        ax.set_yticks(range(5)[::-1], [token_label(s, max_chars=14) for s in top["strs"][:5]], fontsize=7)
        ax.set_title(f"prompt {p + 1}: " + token_label(result["prompts"][p]["text"], max_chars=40), fontsize=8)
        ax.set_xlim(0, 1)
    jsd = np.array(result["next_token"]["jsd"])
    norms = figure.add_subplot(grid[1, 0])
    for p, values in enumerate(result["resid_norms"]["last"]):
        norms.plot(values, color=colors[p % len(colors)], label=f"prompt {p + 1}")
    norms.set_title(f"residual norm, last position · JSD(1, 2) = {jsd[0, 1]:.3f} nats", fontsize=8)
    norms.legend(fontsize=7)
    heat = figure.add_subplot(grid[1, 1])
    diff = np.array(result["heads"]["entropy"]["difference"][-1])
    limit = float(np.abs(diff).max()) or 1.0
    heat.imshow(diff, origin="lower", aspect="auto", cmap=colormap.SIGNED_CMAP, vmin=-limit, vmax=limit)
    heat.set_title(f"attention entropy per head: prompt {n} minus prompt 1 (±{limit:.2f})", fontsize=8)
    heat.set_xlabel("head", fontsize=7)
    heat.set_ylabel("layer", fontsize=7)
    for k, line in enumerate(result["neurons"].get("lines", [])[: max(2, n)]):
        ax = figure.add_subplot(grid[2, k])
        for p, values in enumerate(line["values"]):
            ax.plot(values, color=colors[p % len(colors)], marker=".")
        ax.set_title(f"L{line['layer']} N{line['neuron']} on aligned tokens", fontsize=8)
    return figure


@register_figure(scope="model", formats=("png",), needs=("topk_probs", "resid_norms"), default=False)
def phrasing_comparison(caches: Sequence[Cache]) -> dict[str, Any]:
    """For each `group`/`pair` of the prompt file: the prompts' next-token predictions, residual norms,
    head entropy differences and the neurons that differ most on aligned tokens."""
    groups: dict[str, list[Cache]] = {}
    for cache in caches:
        name = group_name(cache.meta.get("prompt_metadata") or {})
        if name:
            groups.setdefault(name, []).append(cache)
    groups = {name: members for name, members in groups.items() if len(members) > 1}
    if not groups:
        raise SkipFigure('no prompt groups: give prompts a "group" or "pair" field in the JSONL')
    out = {}
    for name, members in sorted(groups.items()):
        result = compare_caches(members, [c.prompt_hash for c in members])
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        out[f"{safe}.png"] = comparison_figure(result, f"{members[0].model} · {name}")
    return out


@register_figure(scope="model", formats=("png", "json"), needs=("neuron_acts",), default=False)
def corpus_token_pca(caches: Sequence[Cache], highlight: str = "") -> dict[str, Any]:
    """Every token of every prompt on the same two PCA axes of the shared basis's neuron activations;
    `highlight`: a prompt hash (or its start) whose tokens are coloured and labelled."""
    kept = shared_basis(caches)
    result = corpus_pca(kept)
    figure = Figure(figsize=(8, 7), layout="constrained")
    ax = figure.add_subplot()
    points = np.concatenate([np.asarray(p["coords"]).reshape(-1, 2) for p in result["prompts"]])
    ax.scatter(points[:, 0], points[:, 1], s=4, color="#cbd5e1")
    for prompt in result["prompts"]:
        if highlight and prompt["prompt_hash"].startswith(highlight):
            coords = np.asarray(prompt["coords"]).reshape(-1, 2)
            ax.plot(coords[:, 0], coords[:, 1], color="#d62728", marker="o", markersize=3, linewidth=0.6)
            for (x, y), token in zip(coords, prompt["tokens"]):
                ax.annotate(token_label(token, max_chars=12), (x, y), fontsize=6)
    explained = result["explained"]
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}%)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}%)")
    title = f"{result['model']} · token PCA over {len(kept)} prompts, {result['n_tokens']} tokens"
    ax.set_title(token_label(title, max_chars=120))
    return {"png": figure, "json": result}
