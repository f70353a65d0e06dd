"""Forward passes the explanations share: stopped at the final norm, with parameters frozen, in
row chunks that fit in memory; and what the explanation hooks keep."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from lens_pipeline.capture.models import LoadedModel

if TYPE_CHECKING:
    pass



# Activations a gradient pass may keep for its backward; batches above it run in row chunks.
GRAD_MEMORY_BYTES = 3 * 2**30


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
class Kept:
    """What the explanation hooks keep during the forward (detached, except the gradient leaf)."""

    embed: torch.Tensor | None = None  # token embeddings [B, T, d]
    leaf: torch.Tensor | None = None  # the same, as the leaf gradients are taken against
    normalized: torch.Tensor | None = None  # final norm output [B, T, d] (with its graph when shared)
    at: dict[str, Any] = field(default_factory=dict)  # activations at the target positions
    residuals: dict[int, torch.Tensor] = field(default_factory=dict)  # lens rows by index (lens_row_names)


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
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


def rows_that_fit(model: LoadedModel, length: int) -> int:
    return max(1, GRAD_MEMORY_BYTES // _graph_bytes_per_row(model, length))
