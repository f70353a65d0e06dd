"""What is explained: each prompt's targets, and a batch's, padded (f per target)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from lens_pipeline.capture.models import LoadedModel
from lens_pipeline.capture.prompts import Prompt


class TargetError(ValueError):
    """A prompt's target that cannot be explained with this model; the message names the prompt line."""


@dataclass(frozen=True)
class Targets:
    """What to explain in one prompt."""

    positions: str = "last"  # "last": after the last token; "all": every actual next token
    token: int | None = None  # None: the model's top-1 prediction
    contrast: int | None = None  # f = logit(token) - logit(contrast)


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


class TargetedTokens(Protocol):
    """A prompt's tokens and what to explain in them (capture.tokens.Tokenized)."""

    ids: list[int]
    targets: Targets | None


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
    def of(cls, batch: Sequence["TargetedTokens"], device: torch.device) -> "BatchTargets":
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
        b_U = bias_or_zeros(bridge, "b_U", (bridge.cfg.d_vocab,), columns.device).float()
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


def bias_or_zeros(bridge: Any, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    try:
        value = getattr(bridge, name)
    except AttributeError:  # a bias-free checkpoint
        value = None
    return torch.zeros(shape, device=device) if value is None else value.detach().reshape(shape)
