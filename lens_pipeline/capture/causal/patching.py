"""Activation patching of one prompt pair: each site's clean activation put into the corrupted run
(exact, batched), and its gradient estimate (attribution patching: one forward and one backward
on the corrupted run), both normalised so that 1.0 is the clean metric and 0.0 the corrupted one."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lens_pipeline.capture.causal.corruption import Corruption
from lens_pipeline.capture.causal.metric import Metric
from lens_pipeline.capture.causal.runs import ROW_TOKENS, Hooks, edited_metric, last_logits
from lens_pipeline.capture.causal.sites import STREAM_SITES, Edit, hook_of


def site_edits(site: str, n_layers: int, n_heads: int, n_tokens: int) -> tuple[list[Edit], tuple[int, ...]]:
    """A site's edits in the stored array's order, and that array's shape."""
    if site in STREAM_SITES:
        return [Edit(hook_of(site, layer), -1, p) for layer in range(n_layers) for p in range(n_tokens)], (n_layers, n_tokens)
    if site == "heads":
        return [Edit(hook_of(site, layer), h, -1) for layer in range(n_layers) for h in range(n_heads)], (n_layers, n_heads)
    return ([Edit(hook_of(site, layer), h, p) for layer in range(n_layers) for h in range(n_heads) for p in range(n_tokens)],
            (n_layers, n_heads, n_tokens))


def normalised(values: torch.Tensor | np.ndarray, clean: float, corrupt: float) -> np.ndarray:
    """(value − corrupt) / (clean − corrupt): 1.0 is the clean run, 0.0 the corrupted one (NaN when they are equal)."""
    gap = clean - corrupt
    values = np.asarray(values, dtype=np.float64)
    return ((values - corrupt) / gap if gap != 0 else np.full_like(values, np.nan)).astype(np.float32)


def exact(bridge: Any, corruption: Corruption, clean_acts: dict[str, torch.Tensor], site: str, shape: tuple[int, int],
          metric: Metric, clean: float, corrupt: float, row_tokens: int = ROW_TOKENS) -> np.ndarray:
    """One site's exact patching sweep, normalised, in the shape site_edits gives."""
    edits, out_shape = site_edits(site, *shape, len(corruption.ids))
    values = edited_metric(bridge, corruption.ids, corruption.embed_hook(), edits, clean_acts.__getitem__, metric, row_tokens)
    return normalised(values, clean, corrupt).reshape(out_shape)


def attribution(bridge: Any, corruption: Corruption, clean_acts: dict[str, torch.Tensor], sites: tuple[str, ...],
                shape: tuple[int, int], metric: Metric, clean: float, corrupt: float) -> dict[str, np.ndarray]:
    """Attribution patching of every site: grad of the metric on the corrupted run · (clean − corrupted activation),
    normalised like the exact sweep; one forward and one backward for all sites together."""
    n_layers, _ = shape
    names = sorted({hook_of(site, layer) for site in sites for layer in range(n_layers)})
    kept: dict[str, torch.Tensor] = {}

    def leaf_embed(value: torch.Tensor, hook: Any) -> torch.Tensor:  # parameters are frozen: the graph starts here
        return value.detach().requires_grad_(True)

    def keeper(name: str) -> Any:  # by the name asked for: the bridge's hook may carry an alias's name
        def keep(value: torch.Tensor, hook: Any) -> torch.Tensor:
            kept[name] = value
            return value  # returned, so the bridge computes on with this very tensor (hook_z is a reshaped view)
        return keep

    device = next(bridge.parameters()).device
    ids = torch.tensor([corruption.ids], device=device)
    hooks: Hooks = [("hook_embed", leaf_embed), *corruption.embed_hook(), *((name, keeper(name)) for name in names)]
    with torch.enable_grad():
        value = metric(last_logits(bridge, ids, hooks))[0]
        grads = torch.autograd.grad(value, [kept[name] for name in names], allow_unused=True)
    product = {}  # (clean − corrupted) · gradient, summed over the model width: [T] or [T, H]
    for name, grad in zip(names, grads):
        delta = clean_acts[name] - kept[name][0].detach().float()
        grad = torch.zeros_like(delta) if grad is None else grad[0].float()
        product[name] = (delta * grad).sum(-1).double().cpu()
    out = {}
    for site in sites:
        per_layer = [product[hook_of(site, layer)] for layer in range(n_layers)]  # [T] or [T, H]
        if site in STREAM_SITES:
            estimate = torch.stack(per_layer)  # [L, T]
        elif site == "heads":
            estimate = torch.stack([p.sum(0) for p in per_layer])  # [L, H]
        else:
            estimate = torch.stack([p.transpose(0, 1) for p in per_layer])  # [L, H, T]
        out[site] = normalised(estimate.numpy() + corrupt, clean, corrupt)
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two arrays' finite values (None when either is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
