"""Ablation of one prompt: each head (its hook_z slice at every position) or MLP layer set to zero
or to its mean over the prompt set, and the metric's change from the clean run."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from lens_pipeline.capture.causal.metric import Metric
from lens_pipeline.capture.causal.runs import ROW_TOKENS, edited_metric
from lens_pipeline.capture.causal.sites import ABLATE_SITES, Edit


def ablate_edits(site: str, n_layers: int, n_heads: int) -> tuple[list[Edit], tuple[int, ...]]:
    hook = ABLATE_SITES[site]
    if site == "heads":
        return [Edit(hook.format(layer=layer), h, -1) for layer in range(n_layers) for h in range(n_heads)], (n_layers, n_heads)
    return [Edit(hook.format(layer=layer), -1, -1) for layer in range(n_layers)], (n_layers,)


def replacements(ablation: str, means: dict[str, torch.Tensor] | None, n_tokens: int,
                 like: dict[str, torch.Tensor]) -> Callable[[str], torch.Tensor]:
    """hook name -> the [T, ...] activation an ablated component takes: zeros, or the prompt-set mean at every position."""
    def replacement(name: str) -> torch.Tensor:
        if ablation == "zero":
            return torch.zeros_like(like[name])
        assert means is not None
        mean = means[name].to(like[name].device, like[name].dtype)
        return mean.expand(n_tokens, *mean.shape)

    return replacement


def ablate(bridge: Any, ids: list[int], site: str, shape: tuple[int, int], metric: Metric, clean: float,
           replacement: Callable[[str], torch.Tensor], row_tokens: int = ROW_TOKENS) -> np.ndarray:
    """metric(ablated) − metric(clean) per component, in the metric's units (for "kl": KL(clean ‖ ablated))."""
    edits, out_shape = ablate_edits(site, *shape)
    values = edited_metric(bridge, ids, [], edits, replacement, metric, row_tokens)
    return (values.numpy() - clean).astype(np.float32).reshape(out_shape)
