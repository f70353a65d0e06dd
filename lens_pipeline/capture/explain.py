"""Explaining predictions, one batch at a time: targets -> input attributions, direct logit
attribution and the lens trajectory, as per-prompt arrays (their rows are in cache.CACHE_ARRAYS).

What is explained is f, one number per target: the logit of a target token at a position, or the
difference of two logits (a contrast). The targets of a prompt come from its JSONL fields
(prompts.TARGET_FIELDS); by default there is one, the model's top-1 prediction after the last
token, and with "target_positions": "all" there is one per actual next token.

- Input attribution (`settings.attribution`) is with respect to the token embeddings (the output
  of the embedding layer; GPT-2's position embeddings are not attributed): `grad_x_input`
  = Σ_d ∂f/∂e·e, `grad_norm` = ‖∂f/∂e‖₂, and `ig`, integrated gradients along the straight line
  from a baseline (IG_BASELINES) to e, with the integration rules Captum names (IG_RULES).
- Direct logit attribution (`settings.logit_attribution`) splits f over the embeddings, every
  head, every MLP and the biases, with the final norm's scale frozen at its value on the actual
  input; the parts sum to f on models whose residual stream is that sum (checked per batch).
- The lens trajectory (`settings.lens_trajectory`) reads each layer's residual stream through
  the final norm and unembedding.

`forward` stands in for run_batch's forward pass when a setting here is on: the gradient methods
share that forward, and their backward computes no weight gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lens_pipeline.capture.models import LoadedModel, ModelLoadError
from lens_pipeline.capture.prompts import Prompt
from lens_pipeline.store.cache import ExtractSettings

if TYPE_CHECKING:
    from lens_pipeline.capture.extract import Tokenized, TokenStrings

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
LENS_TOP = 5
# Activations a gradient pass may keep for its backward; batches above it run in row chunks.
GRAD_MEMORY_BYTES = 3 * 2**30
LENS_CHUNK = 128  # positions unembedded at once: [128, vocabulary] floats stay a few tens of MB


class TargetError(ValueError):
    """A prompt's target that cannot be explained with this model; the message names the prompt line."""


@dataclass(frozen=True)
class Targets:
    """What to explain in one prompt."""

    positions: str = "last"  # "last": after the last token; "all": every actual next token
    token: int | None = None  # None: the model's top-1 prediction
    contrast: int | None = None  # f = logit(token) - logit(contrast)


def model_dtype(settings: ExtractSettings) -> str:
    """The dtype to load the model in: float32 when explaining with dtype "auto" (gradients and
    attribution sums in float16 would lose the error bounds the tests hold them to), else as asked."""
    return "float32" if settings.dtype == "auto" and settings.explains else settings.dtype


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


def resolve_targets(model: LoadedModel, prompt: Prompt) -> Targets:
    """The prompt's targets as token ids; TargetError (naming the prompt line) for a target string
    that is not exactly one token of this model's vocabulary."""
    meta = prompt.metadata

    def one_token(text: str, what: str) -> int:
        ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            raise TargetError(f"{prompt.source}: {what} {text!r} is {len(ids)} tokens for {model.source.name} "
                              f"({pieces}); a target must be exactly one token")
        return int(ids[0])

    if meta.get("target_positions", "last") == "all":
        return Targets(positions="all")
    if meta.get("contrast") is not None:
        a, b = meta["contrast"]
        return Targets(token=one_token(a, "contrast token"), contrast=one_token(b, "contrast token"))
    if meta.get("target") is not None:
        return Targets(token=one_token(meta["target"], "target"))
    return Targets()


# --------------------------------------------------------------------------- targets of a batch


@dataclass
class BatchTargets:
    """Every prompt's targets, padded to G per row: f[b, g] = logit[b, positions, tokens] - logit[.., contrast]."""

    positions: torch.Tensor  # [B, G] long
    tokens: torch.Tensor  # [B, G] long; -1 until the top-1 prediction is known
    contrast: torch.Tensor  # [B, G] long; -1: none
    valid: torch.Tensor  # [B, G] bool
    counts: list[int]
    directions: torch.Tensor | None = None  # [B, G, d]: W_U[:, token] - W_U[:, contrast]
    bias: torch.Tensor | None = None  # [B, G]: b_U[token] - b_U[contrast]

    @classmethod
    def of(cls, batch: Sequence["Tokenized"], device: torch.device) -> "BatchTargets":
        rows = []
        for item in batch:
            spec = item.targets or Targets()
            n = len(item.ids)
            if spec.positions == "all":  # position p predicts token p + 1
                rows.append((list(range(n - 1)), item.ids[1:], [-1] * (n - 1)))
            else:
                rows.append(([n - 1], [-1 if spec.token is None else spec.token],
                             [-1 if spec.contrast is None else spec.contrast]))
        width = max(1, max(len(p) for p, _, _ in rows))

        def padded(values: list[list[int]], fill: int) -> torch.Tensor:
            return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long, device=device)

        counts = [len(p) for p, _, _ in rows]
        valid = torch.tensor([[g < c for g in range(width)] for c in counts], dtype=torch.bool, device=device)
        return cls(padded([p for p, _, _ in rows], 0), padded([t for _, t, _ in rows], -1),
                   padded([c for _, _, c in rows], -1), valid, counts)

    def settle(self, logits: torch.Tensor, bridge: Any) -> None:
        """Fill in the top-1 targets from the forward's logits and the unembedding directions."""
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        top1 = logits[rows, self.positions].argmax(-1) if bool((self.tokens < 0).any()) else self.tokens
        self.tokens = torch.where(self.tokens < 0, top1, self.tokens)
        columns = bridge.W_U.detach().T  # [V, d]: index first, so only the target rows are converted
        b_U = _bias_or_zeros(bridge, "b_U", (bridge.cfg.d_vocab,), columns.device).float()
        has_contrast = self.contrast >= 0
        contrast = self.contrast.clamp(min=0)
        self.directions = columns[self.tokens].float() - columns[contrast].float() * has_contrast[..., None]
        self.bias = b_U[self.tokens] - b_U[contrast] * has_contrast

    def logits_of(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, G] f from full logits [B, T, V] (what is stored and explained)."""
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        value = logits[rows, self.positions, self.tokens].float()
        contrast = logits[rows, self.positions, self.contrast.clamp(min=0)].float()
        return torch.where(self.contrast >= 0, value - contrast, value).masked_fill(~self.valid, 0.0)

    def from_normalized(self, normalized: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[R, G] f from the final norm's output [R, T, d] of pass rows that are copies of prompts `rows`:
        the target rows of the unembedding only, so a backward never goes through the whole vocabulary."""
        assert self.directions is not None and self.bias is not None
        at = normalized[torch.arange(len(rows), device=rows.device)[:, None], self.positions[rows]]
        return ((at.float() * self.directions[rows]).sum(-1) + self.bias[rows]).masked_fill(~self.valid[rows], 0.0)


def _bias_or_zeros(bridge: Any, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    try:
        value = getattr(bridge, name)
    except AttributeError:  # a bias-free checkpoint
        value = None
    return torch.zeros(shape, device=device) if value is None else value.detach().reshape(shape)


# --------------------------------------------------------------------------- the forward pass


class _Stop(Exception):
    """Raised in a hook to end a forward once the final norm's output is there."""


def run_to_final_norm(bridge: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      fwd_hooks: list[tuple[str, Callable[..., Any]]]) -> torch.Tensor:
    """The forward with `fwd_hooks`, stopped at the unembedding's input: the final norm's output [B, T, d].
    Whoever needs logits unembeds the rows they need, so [B, T, vocabulary] is never built."""
    box: dict[str, torch.Tensor] = {}

    def stop(value: torch.Tensor, hook: Any) -> None:
        box["normalized"] = value
        raise _Stop

    try:
        bridge.run_with_hooks(input_ids, attention_mask=attention_mask, fwd_hooks=[*fwd_hooks, ("unembed.hook_in", stop)])
    except _Stop:
        pass
    return box["normalized"]


@dataclass
class _Kept:
    """What the explanation hooks keep during the forward (detached, except the gradient leaf)."""

    embed: torch.Tensor | None = None  # token embeddings [B, T, d]
    leaf: torch.Tensor | None = None  # the same, as the leaf gradients are taken against
    normalized: torch.Tensor | None = None  # final norm output [B, T, d] (with its graph when shared)
    at: dict[str, Any] = field(default_factory=dict)  # activations at the target positions
    residuals: dict[int, torch.Tensor] = field(default_factory=dict)  # lens rows by index (lens_row_names)


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
    shared = bool(gradient_methods) and _rows_that_fit(model, input_ids.shape[1]) >= len(batch)
    kept = _Kept()
    own = _keeping_hooks(model, settings, targets, kept, shared)
    out: dict[str, Any] = {}
    with _frozen_parameters(bridge), torch.enable_grad() if shared else contextlib.nullcontext():
        logits = bridge.run_with_hooks(input_ids, attention_mask=attention_mask, fwd_hooks=own + hooks)
        if targets is not None:
            targets.settle(logits.detach(), bridge)
            out.update(_target_arrays(targets, logits.detach()))
        if shared:
            out.update(_shared_gradients(kept, targets, gradient_methods))
    kept.leaf = None
    kept.normalized = None  # the graph of the shared forward goes with it
    logits = logits.detach()
    with _frozen_parameters(bridge):
        if gradient_methods and not shared:
            out.update(_gradients_in_chunks(model, input_ids, attention_mask, kept, targets, gradient_methods))
        if "ig" in settings.attribution:
            out.update(_integrated_gradients(model, settings, input_ids, attention_mask, kept, targets, out["target_values"]))
    if settings.logit_attribution:
        out.update(_logit_attribution(model, kept, targets, out["target_values"]))
    if settings.lens_on:
        residuals = [kept.residuals[row] for row in range(len(lens_row_names(settings, bridge.cfg.n_layers)))]
        out.update(_lens_trajectory(model, residuals, logits, input_ids, [len(t.ids) for t in batch]))
    return logits, out


@contextlib.contextmanager
def _frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """No parameter tracks gradients for a while: backward passes then compute input gradients only."""
    frozen = [p for p in module.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def _graph_bytes_per_row(model: LoadedModel, length: int) -> int:
    """Rough bytes a gradient pass keeps per row for its backward: a few attention-weight and
    activation tensors per layer."""
    cfg = model.bridge.cfg
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    return 4 * cfg.n_layers * length * (3 * cfg.n_heads * length + 6 * d_mlp + 8 * cfg.d_model)


def _rows_that_fit(model: LoadedModel, length: int) -> int:
    return max(1, GRAD_MEMORY_BYTES // _graph_bytes_per_row(model, length))


class _Keeper:
    """The hook functions that fill a _Kept."""

    def __init__(self, kept: _Kept, targets: BatchTargets | None, leaf: bool, at_embed: bool):
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
    model: LoadedModel, settings: ExtractSettings, targets: BatchTargets | None, kept: _Kept, shared: bool,
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


def lens_row_names(settings: ExtractSettings, n_layers: int) -> list[str]:
    """What each lens row reads, in the order the forward passes them."""
    return [f"L{layer} {where}" for layer in range(n_layers)
            for where in ((["mid"] if settings.lens_resid_mid else []) + ["post"])]


def _target_arrays(targets: BatchTargets, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "target_counts": torch.tensor(targets.counts, dtype=torch.int32),
        "target_positions": targets.positions.to(torch.int32),
        "target_ids": torch.stack([targets.tokens, targets.contrast], -1).to(torch.int32),
        "target_values": targets.logits_of(logits),
    }


# --------------------------------------------------------------------------- input attribution


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


def _shared_gradients(kept: _Kept, targets: BatchTargets | None, methods: Sequence[str]) -> dict[str, torch.Tensor]:
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


def _gradients_in_chunks(
    model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, kept: _Kept,
    targets: BatchTargets | None, methods: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Gradients for a batch too big to keep its whole graph: passes of as many rows as fit."""
    assert targets is not None and kept.embed is not None
    out = _empty_attributions(targets, kept.embed.shape[1], methods, kept.embed.device)
    step = _rows_that_fit(model, input_ids.shape[1])
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


def _integrated_gradients(
    model: LoadedModel, settings: ExtractSettings, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    kept: _Kept, targets: BatchTargets | None, values: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """IG of every target at `ig_steps`; with `ig_tolerance` > 0 the targets whose completeness
    error is above it are integrated again at twice the steps, until it holds or `ig_max_steps`
    is reached (each target keeps its last estimate and the steps it used)."""
    assert targets is not None and kept.embed is not None
    embed = kept.embed
    baseline = ig_baseline(model, settings.ig_baseline, input_ids, embed)
    delta = embed - baseline
    chunk = _rows_that_fit(model, input_ids.shape[1])
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


# --------------------------------------------------------------------------- direct logit attribution


def _logit_attribution(
    model: LoadedModel, kept: _Kept, targets: BatchTargets | None, values: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """f split over embeddings, heads, MLPs and biases, the final norm's scale frozen: each part is its
    output's dot product with the target's unembedding direction through the (now linear) final norm."""
    assert targets is not None and targets.directions is not None and targets.bias is not None
    bridge, cfg = model.bridge, model.bridge.cfg
    gamma = bridge.ln_final.w.detach().float()
    beta = getattr(bridge.ln_final, "b", None)
    read = targets.directions * gamma  # [B, G, d]
    if str(cfg.normalization_type).startswith("LN"):  # LayerNorm centres: (P c)·r = c·(P r)
        read = read - read.mean(-1, keepdim=True)
    read = read / kept.at["scale"].float()
    W_O = bridge.W_O.detach().float()
    b_O = _bias_or_zeros(bridge, "b_O", (cfg.n_layers, cfg.d_model), W_O.device).float()
    embedded = kept.at["embed"].float() + (kept.at["pos_embed"].float() if "pos_embed" in kept.at else 0.0)
    embed_part = (embedded * read).sum(-1)
    heads, mlps = [], []
    for layer in range(cfg.n_layers):
        through_o = torch.einsum("hkd,bgd->bghk", W_O[layer], read)  # the read direction in each head's z space
        heads.append((kept.at[f"z{layer}"].float() * through_o).sum(-1))
        mlps.append((kept.at[f"mlp{layer}"].float() * read).sum(-1))
    bias_part = (read @ b_O.T).sum(-1) + targets.bias
    if beta is not None:
        bias_part = bias_part + (targets.directions * beta.detach().float()).sum(-1)
    parts = {"logit_attr_heads": torch.stack(heads, 2), "logit_attr_mlp": torch.stack(mlps, 2),
             "logit_attr_embed": embed_part, "logit_attr_bias": bias_part}
    total = embed_part + parts["logit_attr_heads"].sum((2, 3)) + parts["logit_attr_mlp"].sum(2) + bias_part
    size = embed_part.abs() + parts["logit_attr_heads"].abs().sum((2, 3)) + parts["logit_attr_mlp"].abs().sum(2)
    tolerance = (1e-4 if kept.at["scale"].dtype == torch.float32 else 1e-2) * size + 1e-3
    off = ((total - values).abs() > tolerance) & targets.valid
    if bool(off.any()):
        worst = float((total - values).abs()[off].max())
        raise ModelLoadError(f"{model.source.name}: direct logit attribution does not add up (off by {worst:.3g}): this "
                             f"architecture's residual stream is not embeddings + heads + MLPs; not supported")
    return {name: value.masked_fill(~targets.valid.reshape(*targets.valid.shape, *[1] * (value.dim() - 2)), 0.0)
            for name, value in parts.items()}


# --------------------------------------------------------------------------- the lens trajectory


def _lens_trajectory(
    model: LoadedModel, residuals: list[torch.Tensor], logits: torch.Tensor, input_ids: torch.Tensor, lengths: list[int],
) -> dict[str, torch.Tensor]:
    """Per lens row and position: top-5, the actual next token's probability and rank, entropy and
    KL(final ‖ row); and the model's log-probability of each actual next token. Positions go in
    chunks, and each chunk's final distribution is used for every row."""
    bridge = model.bridge
    n_rows, (batch, length) = len(residuals), input_ids.shape
    device = logits.device
    shape = (n_rows, batch, length)
    out = {
        "lens_top_ids": torch.zeros((*shape, LENS_TOP), dtype=torch.int32, device=device),
        "lens_top_probs": torch.zeros((*shape, LENS_TOP), dtype=torch.float16, device=device),
        "lens_actual_probs": torch.full(shape, float("nan"), device=device),
        "lens_actual_ranks": torch.full(shape, -1, dtype=torch.int32, device=device),
        "lens_entropy": torch.zeros(shape, device=device),
        "lens_kl": torch.zeros(shape, device=device),
        "token_logprobs": torch.full((batch, length), float("nan"), device=device),
    }
    real = [(b, t) for b, n in enumerate(lengths) for t in range(n)]
    next_ids = torch.full((batch, length), -1, dtype=torch.long, device=device)
    next_ids[:, :-1] = input_ids[:, 1:]
    for b, n in enumerate(lengths):
        next_ids[b, n - 1 :] = -1
    with torch.no_grad():
        for start in range(0, len(real), LENS_CHUNK):
            rows = torch.tensor(real[start : start + LENS_CHUNK], device=device)
            bi, ti = rows[:, 0], rows[:, 1]
            actual = next_ids[bi, ti]
            has_next = actual >= 0
            final = torch.log_softmax(logits[bi, ti].float(), dim=-1)
            final_probs = final.exp()
            final_neg_entropy = torch.einsum("cv,cv->c", final_probs, final)
            picked = final.gather(1, actual.clamp(min=0)[:, None])[:, 0]
            out["token_logprobs"][bi, ti] = torch.where(has_next, picked, float("nan"))
            for r, residual in enumerate(residuals):
                z = bridge.unembed(bridge.ln_final(residual[bi, ti][None]))[0].float()
                _lens_stats(out, r, bi, ti, z, actual, has_next, final_neg_entropy, final_probs)
    return out


def _top(z: torch.Tensor, k: int, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """topk of each row of z [C, V]: among the `block`s whose maxima are the k largest (they hold the
    k largest values), as extract.top_predictions does: fewer passes over the vocabulary than topk."""
    if z.shape[-1] % block or z.shape[-1] < k * block:
        return z.topk(k, dim=-1)
    blocks = z.view(z.shape[0], -1, block)
    best = blocks.amax(-1).topk(k, dim=-1).indices  # [C, k]
    candidates = torch.gather(blocks, 1, best[..., None].expand(-1, -1, block)).flatten(1)
    values, within = candidates.topk(k, dim=-1)
    return values, torch.gather(best, 1, within // block) * block + within % block


def _lens_stats(out: dict[str, torch.Tensor], r: int, bi: torch.Tensor, ti: torch.Tensor, z: torch.Tensor,
                actual: torch.Tensor, has_next: torch.Tensor, final_neg_entropy: torch.Tensor, final_probs: torch.Tensor) -> None:
    """One lens row's statistics for a chunk of positions, from its logits z [C, V] (overwritten).
    Entropy and KL are sums over logits shifted by their maximum, so float32 never cancels terms
    of the logits' own size."""
    top_values, top_ids = _top(z, LENS_TOP)
    z_actual = z.gather(1, actual.clamp(min=0)[:, None])
    ranks = torch.gt(z, z_actual).sum(-1, dtype=torch.int32)  # an int32 sum: the default int64 one is slower
    peak = top_values[:, :1]
    shifted = z.sub_(peak)
    weights = shifted.exp()
    log_total = weights.sum(-1).log()
    lse = peak[:, 0] + log_total
    out["lens_top_ids"][r, bi, ti] = top_ids.to(torch.int32)
    out["lens_top_probs"][r, bi, ti] = (top_values - lse[:, None]).exp().to(torch.float16)
    out["lens_entropy"][r, bi, ti] = log_total - torch.einsum("cv,cv->c", weights, shifted) / log_total.exp()
    # KL = Σ p_final (log p_final - shifted + log_total); Σ p_final log p_final is the chunk's, for every row
    out["lens_kl"][r, bi, ti] = (final_neg_entropy - torch.einsum("cv,cv->c", final_probs, shifted) + log_total).clamp(min=0)
    out["lens_actual_probs"][r, bi, ti] = torch.where(has_next, (z_actual[:, 0] - lse).exp(), float("nan"))
    out["lens_actual_ranks"][r, bi, ti] = torch.where(has_next, ranks, -1)


# --------------------------------------------------------------------------- per prompt


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
