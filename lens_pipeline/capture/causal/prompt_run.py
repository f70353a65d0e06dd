"""One prompt's causal arrays and their meta: the clean run kept, then every asked-for patching
sweep, ablation and attribution-patching estimate (docs/causal.md names the arrays)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from lens_pipeline.capture.causal import ablation, patching
from lens_pipeline.capture.causal.corruption import Corruption
from lens_pipeline.capture.causal.metric import metric_for
from lens_pipeline.capture.causal.runs import ROW_TOKENS, capture, last_logits
from lens_pipeline.capture.causal.sites import ABLATE_SITES, hook_of, shape_of
from lens_pipeline.capture.explain.targets import Targets
from lens_pipeline.store.cache import ExtractSettings

PATCH_PREFIX, ESTIMATE_PREFIX, ABLATE_PREFIX = "patch_", "attrpatch_", "ablate_"


def request(settings: ExtractSettings, prompt_metadata: dict[str, Any]) -> dict[str, Any]:
    """What a stored causal array depends on besides its site: equal requests give equal arrays."""
    keys = ("corrupt", "target", "contrast")
    return {"metric": settings.patch_metric, "ablation": settings.ablation, "means": settings.ablation_means_id,
            **{key: prompt_metadata[key] for key in keys if key in prompt_metadata}}


def causal_arrays(
    model: Any, ids: list[int], targets: Targets, corruption: Corruption | None, settings: ExtractSettings,
    token_string: Callable[[int], str], means: dict[str, torch.Tensor] | None = None,
    stored: dict[str, np.ndarray] | None = None, row_tokens: int = ROW_TOKENS,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of one prompt. `stored`: arrays of an earlier cache made for the same request, kept as they are."""
    bridge, stored = model.bridge, stored or {}
    shape = shape_of(model)
    n_layers = shape[0]
    patch_sites = settings.patch if corruption is not None else ()
    names = sorted({hook_of(site, layer) for site in patch_sites for layer in range(n_layers)}
                   | {ABLATE_SITES[site].format(layer=layer) for site in settings.ablate for layer in range(n_layers)})
    device = next(bridge.parameters()).device
    with torch.no_grad():
        clean_logits, clean_acts = capture(bridge, torch.tensor([ids], device=device), names, [])
    metric = metric_for(settings.patch_metric, targets, clean_logits)
    clean = float(metric(clean_logits[None])[0])
    contrast = token_string(metric.contrast) if metric.contrast is not None else None
    meta: dict[str, Any] = {"metric": metric.name, "metric_label": metric.label(token_string(metric.token), contrast),
                            "target": token_string(metric.token), "target_id": metric.token, "contrast": contrast,
                            "target_position": len(ids) - 1, "clean": clean, "sites": list(patch_sites),
                            "ablate": list(settings.ablate), "ablation": settings.ablation}
    arrays: dict[str, np.ndarray] = {}
    if corruption is not None:
        with torch.no_grad():
            corrupt_logits = last_logits(bridge, torch.tensor([corruption.ids], device=device), corruption.embed_hook())
        corrupt = float(metric(corrupt_logits)[0])
        meta.update(corrupt=corrupt, corruption=corruption.spec, corrupt_tokens=[token_string(i) for i in corruption.ids])
        for site in patch_sites:
            name = PATCH_PREFIX + site
            arrays[name] = stored[name] if name in stored else patching.exact(
                bridge, corruption, clean_acts, site, shape, metric, clean, corrupt, row_tokens)
        if settings.attribution_patching and patch_sites:
            missing = tuple(site for site in patch_sites if ESTIMATE_PREFIX + site not in stored)
            estimates = (patching.attribution(bridge, corruption, clean_acts, missing, shape, metric, clean, corrupt)
                         if missing else {})
            for site in patch_sites:
                arrays[ESTIMATE_PREFIX + site] = stored.get(ESTIMATE_PREFIX + site, estimates.get(site))
            meta["attribution_patching_correlation"] = {
                site: patching.correlation(arrays[PATCH_PREFIX + site], arrays[ESTIMATE_PREFIX + site]) for site in patch_sites}
    replacement = ablation.replacements(settings.ablation, means, len(ids), clean_acts)
    for site in settings.ablate:
        name = ABLATE_PREFIX + site
        arrays[name] = stored[name] if name in stored else ablation.ablate(
            bridge, ids, site, shape, metric, clean, replacement, row_tokens)
    meta["reused"] = sorted(name for name in arrays if name in stored)
    return arrays, meta
