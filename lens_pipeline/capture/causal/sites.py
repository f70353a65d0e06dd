"""What can be patched or ablated, as hook names of a TransformerBridge, and the checks that name a bad flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lens_pipeline.capture.models import LoadedModel, ModelLoadError
from lens_pipeline.store.cache import ExtractSettings

# Patch sites: the three residual-stream sites per layer and position, each head (its hook_z slice) at
# every position, and each head at one position.
STREAM_SITES = {"resid_pre": "blocks.{layer}.hook_resid_pre", "attn_out": "blocks.{layer}.hook_attn_out",
                "mlp_out": "blocks.{layer}.hook_mlp_out"}
HEAD_HOOK = "blocks.{layer}.attn.hook_z"
PATCH_SITES = (*STREAM_SITES, "heads", "heads_pos")
ABLATE_SITES = {"heads": HEAD_HOOK, "mlp": STREAM_SITES["mlp_out"]}
METRICS = ("logit_diff", "prob", "logprob", "kl")
ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class Edit:
    """One change to one activation in one row of a batch: the hook's value (the head's slice of
    hook_z when `head` >= 0) at `position` (every position when -1) becomes the replacement's."""

    hook: str
    head: int = -1
    position: int = -1


def hook_of(site: str, layer: int) -> str:
    return (STREAM_SITES[site] if site in STREAM_SITES else HEAD_HOOK).format(layer=layer)


def check_settings(settings: ExtractSettings) -> None:
    """One clear line (ModelLoadError) for a flag that names no site, metric or ablation."""
    for flag, asked, known in (("--patch", settings.patch, PATCH_SITES), ("--ablate", settings.ablate, tuple(ABLATE_SITES))):
        unknown = [site for site in asked if site not in known]
        if unknown:
            raise ModelLoadError(f"{flag} {unknown[0]!r}: unknown site; choose from {', '.join(known)}")
    if settings.patch_metric not in METRICS:
        raise ModelLoadError(f"--patch-metric {settings.patch_metric!r}: choose from {', '.join(METRICS)}")
    if settings.ablation not in ABLATIONS:
        raise ModelLoadError(f"--ablation {settings.ablation!r}: choose from {', '.join(ABLATIONS)}")
    if settings.attribution_patching and not settings.patch:
        raise ModelLoadError("--attribution-patching estimates the --patch sweeps: give --patch too "
                             "(e.g. --patch resid_pre,heads)")


def check_model(model: LoadedModel, settings: ExtractSettings) -> None:
    """One clear line (ModelLoadError) when the model cannot be patched or ablated."""
    check_settings(settings)
    flag = "--patch" if settings.patch else "--ablate"
    if not model.causal:
        raise ModelLoadError(f"{model.source.name}: {flag} measures next-token predictions; not supported for encoder "
                             f"models ({model.family})")
    needed = {hook_of(site, 0) for site in settings.patch} | {ABLATE_SITES[site].format(layer=0) for site in settings.ablate}
    missing = sorted(h for h in needed | {"hook_embed", "unembed.hook_in"} if h not in model.bridge.hook_dict)
    if missing:
        raise ModelLoadError(f"{model.source.name}: has no {missing[0]} hook; {flag} needs it")


def shape_of(model: Any) -> tuple[int, int]:
    """(layers, heads) of a loaded model."""
    return int(model.bridge.cfg.n_layers), int(model.bridge.cfg.n_heads)
