"""Input attribution to the token embeddings: gradient x input, gradient norm, integrated gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from lens_pipeline.capture.models import LoadedModel, ModelLoadError
from lens_pipeline.store.cache import ExtractSettings

if TYPE_CHECKING:
    pass

from lens_pipeline.capture.explain.passes import Kept, rows_that_fit, run_to_final_norm
from lens_pipeline.capture.explain.targets import BatchTargets

ATTRIBUTION_METHODS: dict[str, str] = {
    "grad_x_input": "gradient × input",
    "grad_norm": "gradient L2 norm",
    "ig": "integrated gradients",
}


ATTRIBUTION_ARRAYS = {"grad_x_input": "attr_grad_x_input", "grad_norm": "attr_grad_norm", "ig": "attr_ig"}


# What each token's embedding starts from on the integrated-gradients path. A leading BOS keeps its
# own embedding (it is no part of the text; its attribution is 0).
IG_BASELINES: dict[str, str] = {
    "space": "the embedding of the ' ' token at every position",
    "zero": "zero vectors (on RMSNorm models the path passes through the norm's singular point: poor completeness)",
    "pad": "the embedding of the pad (else EOS) token at every position",
}


IG_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def _each_target(values: torch.Tensor, valid: torch.Tensor, leaf: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(g, ∂(Σ_rows f[:, g])/∂leaf) for each target column: rows are independent prompts (or copies),
    so one backward gives every row's own gradient."""
    columns = [g for g in range(values.shape[1]) if bool(valid[:, g].any())]
    for n, g in enumerate(columns):
        with torch.enable_grad():  # the column's sum joins the graph
            total = values[:, g].sum()
        (grad,) = torch.autograd.grad(total, leaf, retain_graph=n + 1 < len(columns))
        yield g, grad.float()


def _empty_attributions(
    targets: BatchTargets, length: int, methods: Sequence[str], device: torch.device,
) -> dict[str, torch.Tensor]:
    shape = (*targets.positions.shape, length)
    return {ATTRIBUTION_ARRAYS[m]: torch.zeros(shape, dtype=torch.float32, device=device) for m in methods}


def _reduce_gradient(out: dict[str, torch.Tensor], rows: torch.Tensor | slice, g: int, grad: torch.Tensor,
                     embed: torch.Tensor, methods: Sequence[str]) -> None:
    if "grad_x_input" in methods:
        out["attr_grad_x_input"][rows, g] = (grad * embed.float()).sum(-1)
    if "grad_norm" in methods:
        out["attr_grad_norm"][rows, g] = grad.norm(dim=-1)


def shared_gradients(kept: Kept, targets: BatchTargets | None, methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Gradients from the forward run_batch made anyway (tracking them): one backward per target column."""
    assert targets is not None and kept.leaf is not None and kept.normalized is not None and kept.embed is not None
    out = _empty_attributions(targets, kept.embed.shape[1], methods, kept.embed.device)
    rows = torch.arange(kept.embed.shape[0], device=kept.embed.device)
    values = targets.from_normalized(kept.normalized, rows)
    for g, grad in _each_target(values, targets.valid, kept.leaf):
        _reduce_gradient(out, slice(None), g, grad, kept.embed, methods)
    return out


def _gradient_pass(
    model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
    embeddings: torch.Tensor, targets: BatchTargets, wanted: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Forward copies of prompts `rows` with their token embeddings replaced by `embeddings`, up to the
    final norm (the unembedding is not needed: f reads only the target rows of it); then, per target
    column (those with a `wanted` row; default: a valid one), (g, gradient w.r.t. those embeddings)."""
    leaf = embeddings.detach().requires_grad_(True)
    with torch.enable_grad():
        normalized = run_to_final_norm(model.bridge, input_ids[rows], attention_mask[rows],
                                       [("hook_embed", lambda value, hook: leaf)])
        values = targets.from_normalized(normalized, rows)
        del normalized
    yield from _each_target(values, targets.valid[rows] if wanted is None else wanted, leaf)


def _values_at(model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
               embeddings: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
    """f for copies of prompts `rows` with these token embeddings (no gradients)."""
    with torch.no_grad():
        normalized = run_to_final_norm(model.bridge, input_ids[rows], attention_mask[rows],
                                       [("hook_embed", lambda value, hook: embeddings)])
        return targets.from_normalized(normalized, rows)


def gradients_in_chunks(
    model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, kept: Kept,
    targets: BatchTargets | None, methods: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Gradients for a batch too big to keep its whole graph: passes of as many rows as fit."""
    assert targets is not None and kept.embed is not None
    out = _empty_attributions(targets, kept.embed.shape[1], methods, kept.embed.device)
    step = rows_that_fit(model, input_ids.shape[1])
    for start in range(0, input_ids.shape[0], step):
        rows = torch.arange(start, min(start + step, input_ids.shape[0]), device=input_ids.device)
        for g, grad in _gradient_pass(model, input_ids, attention_mask, rows, kept.embed[rows], targets):
            _reduce_gradient(out, rows, g, grad, kept.embed[rows], methods)
    return out


def integration_rule(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """(alphas, weights) of an integration rule on [0, 1], the values Captum 0.9 uses for the same name."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
    alphas = {
        "riemann_trapezoid": lambda: torch.linspace(0, 1, steps),
        "riemann_left": lambda: torch.linspace(0, 1 - 1 / steps, steps),
        "riemann_right": lambda: torch.linspace(1 / steps, 1, steps),
        "riemann_middle": lambda: torch.linspace(1 / (2 * steps), 1 - 1 / (2 * steps), steps),
    }[rule]().tolist()
    weights = [1 / steps] * steps
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    return alphas, weights


def ig_baseline(model: LoadedModel, name: str, input_ids: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """[B, T, d] baseline embeddings (IG_BASELINES); a leading BOS keeps its own embedding."""
    tokenizer = model.tokenizer
    if name == "zero":
        baseline = torch.zeros_like(embed)
    else:
        if name == "space":
            ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ModelLoadError(f"--ig-baseline space: ' ' is not one token for {model.source.name}; use zero or pad")
            token = ids[0]
        else:
            token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            row = model.bridge.embed(torch.tensor([[token]], device=input_ids.device))[0, 0]
        baseline = row.to(embed.dtype).expand_as(embed).clone()
    bos = tokenizer.bos_token_id
    if bos is not None:
        first_is_bos = (input_ids[:, 0] == bos)[:, None]
        baseline[:, 0] = torch.where(first_is_bos, embed[:, 0], baseline[:, 0])
    return baseline


def integrated_gradients(
    model: LoadedModel, settings: ExtractSettings, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    kept: Kept, targets: BatchTargets | None, values: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """IG of every target at `ig_steps`; with `ig_tolerance` > 0 the targets whose completeness
    error is above it are integrated again at twice the steps, until it holds or `ig_max_steps`
    is reached (each target keeps its last estimate and the steps it used)."""
    assert targets is not None and kept.embed is not None
    embed = kept.embed
    baseline = ig_baseline(model, settings.ig_baseline, input_ids, embed)
    delta = embed - baseline
    chunk = rows_that_fit(model, input_ids.shape[1])
    at_baseline = torch.cat([
        _values_at(model, input_ids, attention_mask, rows, baseline[rows], targets)
        for rows in torch.arange(embed.shape[0], device=embed.device).split(chunk)
    ])
    change = values - at_baseline
    attribution = torch.zeros((*targets.positions.shape, embed.shape[1]), dtype=torch.float32, device=embed.device)
    error = torch.zeros(targets.positions.shape, dtype=torch.float32, device=embed.device)
    steps_used = torch.zeros(targets.positions.shape, dtype=torch.int32, device=embed.device)
    pending = torch.ones_like(targets.valid)  # the first pass integrates every row, as a fixed-step run does
    steps = settings.ig_steps
    while True:
        rows = pending.any(1).nonzero()[:, 0]
        part = _ig_pass(model, settings.ig_rule, steps, input_ids, attention_mask, rows, baseline, delta, targets,
                        pending[rows] & targets.valid[rows], chunk)
        part_error = (part.sum(-1) - change[rows]).abs() / change[rows].abs()
        update = pending[rows]
        attribution[rows] = torch.where(update[..., None], part, attribution[rows])
        error[rows] = torch.where(update, part_error, error[rows])
        steps_used[rows] = torch.where(update, steps, steps_used[rows])
        # NaN: f(x) = f(baseline), nothing to integrate; a target over the tolerance goes round again.
        pending = pending & targets.valid & (error > settings.ig_tolerance)
        if settings.ig_tolerance <= 0 or steps * 2 > settings.ig_max_steps or not bool(pending.any()):
            break
        steps *= 2
    out = {"attr_ig": attribution, "ig_baseline_values": at_baseline, "ig_completeness": error}
    if settings.ig_tolerance > 0:
        out["ig_steps_used"] = steps_used
    return out


def _ig_pass(
    model: LoadedModel, rule: str, steps: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    rows: torch.Tensor, baseline: torch.Tensor, delta: torch.Tensor, targets: BatchTargets, wanted: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """[len(rows), G, T] IG of prompts `rows` at `steps` of `rule`: steps x (one forward + one backward
    per wanted target column), in passes of (prompt, alpha) rows that fit."""
    alphas, weights = integration_rule(rule, steps)
    pairs = [(i, step) for i in range(len(rows)) for step in range(len(alphas))]
    attribution = torch.zeros((len(rows), targets.positions.shape[1], delta.shape[1]), dtype=torch.float32,
                              device=delta.device)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        local = torch.tensor([i for i, _ in part], device=delta.device)
        prompts = rows[local]
        alpha = torch.tensor([alphas[s] for _, s in part], dtype=delta.dtype, device=delta.device)[:, None, None]
        weight = torch.tensor([weights[s] for _, s in part], dtype=torch.float32, device=delta.device)[:, None]
        points = baseline[prompts] + alpha * delta[prompts]
        for g, grad in _gradient_pass(model, input_ids, attention_mask, prompts, points, targets, wanted[local]):
            step = (grad * delta[prompts].float()).sum(-1) * weight  # [pass rows, T]
            attribution[:, g].index_add_(0, local, step)
    return attribution
