"""How a cache's settings are named for people: ["encoding", "q12 (max error 1.2e-04)"], ...

A fact of the store (a cache's settings are ExtractSettings, store/cache.py): the cache's notebook
view (Cache._repr_html_) writes it, and draw.display hands the same pairs to the figures and the
viewer."""

from __future__ import annotations

from typing import Any

from lens_pipeline.store.encodings import PATTERN_MAX_ERROR

SETTING_LABELS = {  # cache settings (ExtractSettings), in the order they are shown
    "pattern_encoding": "encoding",
    "top_k": "top-k",
    "n_neurons": "neurons per layer",
    "neuron_basis": "neuron basis",
    "logit_lens": "logit lens",
    "hooks": "hooks",
    "max_tokens": "max tokens",
    "dtype": "dtype",
    "attribution": "attribution",
    "ig_steps": "IG steps",
    "ig_baseline": "IG baseline",
    "ig_rule": "IG rule",
    "ig_tolerance": "IG tolerance",
    "ig_max_steps": "IG max steps",
    "logit_attribution": "logit attribution",
    "lens_trajectory": "lens trajectory",
    "lens_resid_mid": "lens after attention",
    "patch": "patched sites",
    "patch_metric": "patch metric",
    "ablate": "ablated",
    "ablation": "ablation",
    "attribution_patching": "attribution patching",
}
# Bookkeeping the stage fills in, not a choice: its file is named elsewhere (corpus/ablation_means.py).
HIDDEN_SETTINGS = ("ablation_means_id",)
# Shown only when integrated gradients were computed.
IG_SETTINGS = ("ig_steps", "ig_baseline", "ig_rule", "ig_tolerance", "ig_max_steps")


def settings_summary(settings: dict[str, Any] | None, resolved: dict[str, Any] | None = None) -> list[list[str]]:
    """[label, value] pairs naming how a cache was made, e.g. ["encoding", "q12 (max error 1.2e-04)"];
    `resolved` (the cache's meta) says what an "auto" setting became, e.g. ["dtype", "auto (float32)"]."""
    settings, resolved = settings or {}, resolved or {}
    pairs = []
    for name in [*SETTING_LABELS, *sorted(set(settings) - set(SETTING_LABELS))]:
        if (name not in settings or name in HIDDEN_SETTINGS
                or name in IG_SETTINGS and "ig" not in (settings.get("attribution") or ())):
            continue
        value = settings[name]
        if name == "pattern_encoding" and value in PATTERN_MAX_ERROR:
            error = PATTERN_MAX_ERROR[value]
            text = f"{value} ({f'max error {error:.1e}' if error else 'exact'})"
        elif isinstance(value, bool):
            text = "on" if value else "off"
        elif name == "neuron_ids":  # a shared basis: hundreds of ids, listed in caches/<model>/neuron_basis.json
            text = f"{sum(len(row) for row in value)} shared over {len(value)} layers"
        elif isinstance(value, (list, tuple)):
            text = ", ".join(map(str, value)) or "none"
        else:
            text = str(value)
        if value == "auto" and resolved.get(name) not in (None, "auto"):
            text = f"auto ({resolved[name]})"
        pairs.append([SETTING_LABELS.get(name, name), text])
    return pairs
