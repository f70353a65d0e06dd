"""A model's vital statistics as Markdown, from the metadata its caches carry."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache


def _md(value: Any) -> str:
    """A table cell: pipes and newlines would break the row; backticks would open code spans."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\n", " ")


@register_figure(scope="model", formats="md")
def model_summary(caches: Sequence[Cache]) -> str:
    """Layers, heads, widths, parameter count (when recorded) and what the caches hold, as Markdown."""
    if not caches:
        raise ValueError("no caches given")
    meta = caches[0].meta
    n_layers, n_heads, d_model = meta["n_layers"], meta["n_heads"], meta.get("d_model")
    lengths = np.array([c.n_tokens for c in caches])
    settings = meta.get("settings", {})
    n_params = meta.get("n_params")
    rows = [
        ("model id", meta.get("model_id", "?")),
        ("family", f"{meta.get('family', '?')} ({'causal decoder' if meta['causal'] else 'bidirectional encoder'})"),
        ("layers", n_layers),
        ("heads per layer", f"{n_heads} ({n_layers * n_heads} in all)"),
        ("d_model", d_model if d_model is not None else "not recorded"),
        ("d_head", d_model // n_heads if d_model else "not recorded"),
        ("parameters", f"{n_params:,}" if n_params else "not recorded in the caches"),
        ("prompts cached", len(caches)),
        ("tokens per prompt", f"min {lengths.min()} · median {int(np.median(lengths))} · max {lengths.max()}"),
        ("attention stored as", f"{meta.get('pattern_encoding', '?')} (max error {meta.get('pattern_max_error', '?')})"),
        ("top-k predictions", settings.get("top_k", "?")),
        ("neurons per layer", settings.get("n_neurons", "?")),
        ("logit lens", "yes" if settings.get("logit_lens") else "no"),
        ("extra hooks", ", ".join(settings.get("hooks", [])) or "none"),
        ("run on", f"{meta.get('device', '?')}, {meta.get('dtype', '?')}"),
    ]
    lines = [f"# {_md(meta['model'])}", "", "| | |", "|---|---|"]
    lines += [f"| {_md(name)} | {_md(value)} |" for name, value in rows]
    if meta.get("note"):
        lines += ["", f"> Note: {_md(meta['note'])}"]
    return "\n".join(lines) + "\n"
