"""One batch explained: the settings checked, the forward with the hooks that keep what the
explanations need, then each asked-for explanation; and each prompt's arrays and summary."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from lens_pipeline.capture.models import LoadedModel, ModelLoadError
from lens_pipeline.store.cache import ExtractSettings

if TYPE_CHECKING:
    from lens_pipeline.capture.tokens import Tokenized, TokenStrings

from lens_pipeline.capture.explain.attribution import (
    ATTRIBUTION_ARRAYS,
    ATTRIBUTION_METHODS,
    IG_BASELINES,
    IG_RULES,
    gradients_in_chunks,
    integrated_gradients,
    shared_gradients,
)
from lens_pipeline.capture.explain.lens import lens_row_names, lens_trajectory
from lens_pipeline.capture.explain.logit_attribution import logit_attribution
from lens_pipeline.capture.explain.passes import Kept, frozen_parameters, rows_that_fit
from lens_pipeline.capture.explain.targets import BatchTargets


def model_dtype(settings: ExtractSettings) -> str:
    """The dtype to load the model in: float32 when explaining or patching with dtype "auto" (gradients,
    attribution sums and normalised patching in float16 would lose the bounds the tests hold them to), else as asked."""
    return "float32" if settings.dtype == "auto" and (settings.explains or settings.causal) else settings.dtype


def check_settings(settings: ExtractSettings) -> None:
    """One clear line (ModelLoadError) for explanation settings that name no method, baseline or rule."""
    unknown = [m for m in settings.attribution if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise ModelLoadError(f"--attribution {unknown[0]!r}: unknown method; choose from {', '.join(ATTRIBUTION_METHODS)} or all")
    if "ig" in settings.attribution:
        if settings.ig_rule not in IG_RULES:
            raise ModelLoadError(f"--ig-rule {settings.ig_rule!r}: choose from {', '.join(IG_RULES)}")
        if settings.ig_baseline not in IG_BASELINES:
            raise ModelLoadError(f"--ig-baseline {settings.ig_baseline!r}: choose from {', '.join(IG_BASELINES)}")
        if settings.ig_steps < (1 if settings.ig_rule == "gausslegendre" else 2):
            raise ModelLoadError(f"--ig-steps {settings.ig_steps}: too few for the {settings.ig_rule} rule")
        if not 0 <= settings.ig_tolerance < 1:
            raise ModelLoadError(f"--ig-tolerance {settings.ig_tolerance}: a fraction from 0 (fixed steps) below 1, "
                                 f"e.g. 0.01 for 1 %")
        if settings.ig_tolerance > 0 and settings.ig_max_steps < settings.ig_steps:
            raise ModelLoadError(f"--ig-max-steps {settings.ig_max_steps}: below --ig-steps {settings.ig_steps}")


def check_model(model: LoadedModel, settings: ExtractSettings) -> None:
    """One clear line (ModelLoadError) when the model cannot be explained this way."""
    check_settings(settings)
    name = model.source.name
    if not model.causal:
        raise ModelLoadError(f"{name}: --attribution, --logit-attribution and --lens-trajectory explain next-token "
                             f"predictions; not supported for encoder models ({model.family})")
    missing = [h for h in ("hook_embed", "unembed.hook_in", "ln_final.hook_scale") if h not in model.bridge.hook_dict]
    if missing:
        raise ModelLoadError(f"{name}: has no {missing[0]} hook; these explanations need it")


def forward(
    model: LoadedModel,
    settings: ExtractSettings,
    batch: Sequence["Tokenized"],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hooks: list[tuple[str, Callable[..., Any]]],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """run_batch's forward with its `hooks`, plus what the settings ask to explain:
    (logits, device arrays batched as [B, ...] or [R, B, ...] for the lens)."""
    bridge = model.bridge
    targets = BatchTargets.of(batch, input_ids.device) if settings.needs_targets else None
    gradient_methods = [m for m in settings.attribution if m in ("grad_x_input", "grad_norm")]
    shared = bool(gradient_methods) and rows_that_fit(model, input_ids.shape[1]) >= len(batch)
    kept = Kept()
    own = _keeping_hooks(model, settings, targets, kept, shared)
    out: dict[str, Any] = {}
    with frozen_parameters(bridge), torch.enable_grad() if shared else contextlib.nullcontext():
        logits = bridge.run_with_hooks(input_ids, attention_mask=attention_mask, fwd_hooks=own + hooks)
        if targets is not None:
            targets.settle(logits.detach(), bridge)
            out.update(_target_arrays(targets, logits.detach()))
        if shared:
            out.update(shared_gradients(kept, targets, gradient_methods))
    kept.leaf = None
    kept.normalized = None  # the graph of the shared forward goes with it
    logits = logits.detach()
    with frozen_parameters(bridge):
        if gradient_methods and not shared:
            out.update(gradients_in_chunks(model, input_ids, attention_mask, kept, targets, gradient_methods))
        if "ig" in settings.attribution:
            out.update(integrated_gradients(model, settings, input_ids, attention_mask, kept, targets, out["target_values"]))
    if settings.logit_attribution:
        out.update(logit_attribution(model, kept, targets, out["target_values"]))
    if settings.lens_on:
        residuals = [kept.residuals[row] for row in range(len(lens_row_names(settings, bridge.cfg.n_layers)))]
        out.update(lens_trajectory(model, residuals, logits, input_ids, [len(t.ids) for t in batch]))
    return logits, out


class _Keeper:
    """The hook functions that fill a Kept."""

    def __init__(self, kept: Kept, targets: BatchTargets | None, leaf: bool, at_embed: bool):
        self.kept, self.targets, self.leaf, self.at_embed = kept, targets, leaf, at_embed

    def at_targets(self, value: torch.Tensor) -> torch.Tensor:
        assert self.targets is not None
        positions = self.targets.positions
        value = value.detach()
        if value.shape[0] != positions.shape[0]:  # broadcast over the batch (position embeddings)
            value = value.expand(positions.shape[0], *value.shape[1:])
        return value[torch.arange(value.shape[0], device=value.device)[:, None], positions]

    def keep_at(self, key: str) -> Callable[..., None]:
        def hook(value: torch.Tensor, hook: Any) -> None:
            self.kept.at[key] = self.at_targets(value)
        return hook

    def keep_residual(self, row: int) -> Callable[..., None]:
        def hook(value: torch.Tensor, hook: Any) -> None:
            self.kept.residuals[row] = value.detach()
        return hook

    def embed(self, value: torch.Tensor, hook: Any) -> torch.Tensor | None:
        self.kept.embed = value.detach()
        if self.at_embed:
            self.kept.at["embed"] = self.at_targets(value)
        if self.leaf:  # returned, it replaces the embeddings: same values, now a leaf of the graph
            self.kept.leaf = value.detach().requires_grad_(True)
            return self.kept.leaf
        return None

    def normalized(self, value: torch.Tensor, hook: Any) -> None:
        self.kept.normalized = value


def _keeping_hooks(
    model: LoadedModel, settings: ExtractSettings, targets: BatchTargets | None, kept: Kept, shared: bool,
) -> list[tuple[str, Callable[..., Any]]]:
    """Hooks that keep what the explanations need; with `shared`, the embeddings become the leaf the
    gradients are taken against (same values: every other output of the forward is unchanged)."""
    bridge = model.bridge
    keeper = _Keeper(kept, targets, shared, settings.logit_attribution)
    hooks: list[tuple[str, Callable[..., Any]]] = []
    if settings.attribution or settings.logit_attribution:
        hooks.append(("hook_embed", keeper.embed))
    if shared:
        hooks.append(("unembed.hook_in", keeper.normalized))
    if settings.logit_attribution:
        if "hook_pos_embed" in bridge.hook_dict:
            hooks.append(("hook_pos_embed", keeper.keep_at("pos_embed")))
        for layer in range(bridge.cfg.n_layers):
            hooks.append((f"blocks.{layer}.attn.hook_z", keeper.keep_at(f"z{layer}")))
            hooks.append((f"blocks.{layer}.hook_mlp_out", keeper.keep_at(f"mlp{layer}")))
        hooks.append(("ln_final.hook_scale", keeper.keep_at("scale")))
    if settings.lens_on:
        for row, name in enumerate(lens_row_names(settings, bridge.cfg.n_layers)):
            layer, where = name[1:].split(" ")
            hooks.append((f"blocks.{layer}.hook_resid_{where}", keeper.keep_residual(row)))
    return hooks


def _target_arrays(targets: BatchTargets, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "target_counts": torch.tensor(targets.counts, dtype=torch.int32),
        "target_positions": targets.positions.to(torch.int32),
        "target_ids": torch.stack([targets.tokens, targets.contrast], -1).to(torch.int32),
        "target_values": targets.logits_of(logits),
    }


def prompt_arrays(
    settings: ExtractSettings, host: dict[str, Any], row: int, length: int, token_strings: "TokenStrings", n_layers: int,
) -> dict[str, np.ndarray]:
    """One prompt's explanation arrays out of the batch's host arrays, padding removed."""
    arrays: dict[str, np.ndarray] = {}
    if settings.needs_targets:
        count = int(host["target_counts"][row])
        ids = host["target_ids"][row, :count]
        arrays["target_positions"] = host["target_positions"][row, :count]
        arrays["target_ids"] = ids
        strings = token_strings(np.maximum(ids, 0))
        arrays["target_strs"] = np.where(ids >= 0, strings, "")
        arrays["target_values"] = host["target_values"][row, :count]
        for method in settings.attribution:
            arrays[ATTRIBUTION_ARRAYS[method]] = np.ascontiguousarray(host[ATTRIBUTION_ARRAYS[method]][row, :count, :length])
        if "ig" in settings.attribution:
            arrays["ig_baseline_values"] = host["ig_baseline_values"][row, :count]
            arrays["ig_completeness"] = host["ig_completeness"][row, :count]
            if "ig_steps_used" in host:
                arrays["ig_steps_used"] = host["ig_steps_used"][row, :count]
        if settings.logit_attribution:
            for name in ("logit_attr_heads", "logit_attr_mlp", "logit_attr_embed", "logit_attr_bias"):
                arrays[name] = host[name][row, :count]
    if settings.lens_on:
        arrays["lens_rows"] = np.array(lens_row_names(settings, n_layers))
        for name in ("lens_top_ids", "lens_top_probs", "lens_actual_probs", "lens_actual_ranks", "lens_entropy", "lens_kl"):
            arrays[name] = np.ascontiguousarray(host[name][:, row, :length])
        arrays["lens_top_strs"] = token_strings(arrays["lens_top_ids"])
        arrays["token_logprobs"] = host["token_logprobs"][row, :length]
    return arrays


def summary(arrays: dict[str, np.ndarray], settings: ExtractSettings) -> dict[str, Any] | None:
    """What a cache's meta and index row say about its explanation: targets, and the IG completeness
    error (max and median over targets) with the baseline, steps and rule it was measured with."""
    if "target_ids" not in arrays:
        return None
    strs = arrays["target_strs"]
    info: dict[str, Any] = {"n_targets": int(len(strs))}
    if len(strs):
        info["target"] = str(strs[-1, 0])
        if arrays["target_ids"][-1, 1] >= 0:
            info["contrast"] = str(strs[-1, 1])
        info["target_position"] = int(arrays["target_positions"][-1])
        info["target_value"] = round(float(arrays["target_values"][-1]), 4)
    if "ig_completeness" in arrays and len(arrays["ig_completeness"]):
        errors = arrays["ig_completeness"].astype(np.float64)
        info["ig"] = {"baseline": settings.ig_baseline, "steps": settings.ig_steps, "rule": settings.ig_rule,
                      "completeness_error_max": float(np.nanmax(errors)),
                      "completeness_error_median": float(np.nanmedian(errors))}
        if "ig_steps_used" in arrays:
            over = np.flatnonzero(errors > settings.ig_tolerance)  # NaN (f(x) = f(baseline)) is not over
            info["ig"].update(tolerance=settings.ig_tolerance, max_steps=settings.ig_max_steps,
                              steps_used_max=int(arrays["ig_steps_used"].max()),
                              over_tolerance=[{"target": int(g), "position": int(arrays["target_positions"][g]),
                                               "error": float(errors[g])} for g in over])
    return info
