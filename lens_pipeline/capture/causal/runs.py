"""Forwards with edited activations, many edits as rows of one batch: each row of a chunk is the
same input with its own edit, and only the last position is unembedded."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

import torch

from lens_pipeline.capture.causal.metric import Metric
from lens_pipeline.capture.causal.sites import Edit
from lens_pipeline.capture.explain.passes import run_to_final_norm

Hooks = list[tuple[str, Callable[..., Any]]]
ROW_TOKENS = 4096  # tokens per chunk of rows: the activations of a chunk stay a few hundred MB


def rows_per_chunk(n_tokens: int, row_tokens: int = ROW_TOKENS) -> int:
    return max(1, row_tokens // max(1, n_tokens))


def last_logits(bridge: Any, ids: torch.Tensor, hooks: Hooks) -> torch.Tensor:
    """[R, V] logits after the last position of each row of `ids` [R, T]."""
    normalized = run_to_final_norm(bridge, ids, torch.ones_like(ids), hooks)
    return bridge.unembed(normalized[:, -1:]).squeeze(1)


def capture(bridge: Any, ids: torch.Tensor, names: Sequence[str], hooks: Hooks) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward of one row: its last-position logits [V] and the named activations (row 0, float32)."""
    kept: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable[..., None]:  # by the name asked for: the bridge's hook may carry an alias's name
        def keep(value: torch.Tensor, hook: Any) -> None:
            kept[name] = value[0].detach().float().clone()
        return keep

    with torch.no_grad():
        logits = last_logits(bridge, ids, [*hooks, *((name, keeper(name)) for name in names)])
    return logits[0], kept


def _editing_hook(edits: list[tuple[int, Edit]], replacement: torch.Tensor) -> Callable[..., Any]:
    """Rows' edits of one hook, vectorised by kind: the whole activation, one position, one head, one head at one position."""
    groups: dict[tuple[bool, bool], list[tuple[int, Edit]]] = defaultdict(list)
    for row, edit in edits:
        groups[(edit.head >= 0, edit.position >= 0)].append((row, edit))
    device = replacement.device
    indexed = {kind: (torch.tensor([r for r, _ in items], device=device), torch.tensor([e.head for _, e in items], device=device),
                      torch.tensor([e.position for _, e in items], device=device)) for kind, items in groups.items()}

    def hook(value: torch.Tensor, hook: Any) -> torch.Tensor:
        # In place: the forward is gradient-free and nothing reads this activation before the hook returns it
        # (the tests compare every sweep with transformer_lens.patching); a copy per layer cost a tenth of the sweep.
        source = replacement.to(value.dtype)
        for (by_head, by_position), (rows, heads, positions) in indexed.items():
            if not by_head and not by_position:
                value[rows] = source
            elif not by_head:
                value[rows, positions] = source[positions]
            elif not by_position:
                value[rows, :, heads] = source[:, heads].transpose(0, 1)
            else:
                value[rows, positions, heads] = source[positions, heads]
        return value

    return hook


def edited_metric(bridge: Any, ids: list[int], base_hooks: Hooks, edits: Sequence[Edit],
                  replacements: Callable[[str], torch.Tensor], metric: Metric, row_tokens: int = ROW_TOKENS) -> torch.Tensor:
    """metric [len(edits)] float64 of the input `ids` run once per edit (with `base_hooks` on every row), in chunks of rows."""
    device = next(bridge.parameters()).device
    out = []
    chunk = rows_per_chunk(len(ids), row_tokens)
    for start in range(0, len(edits), chunk):
        part = edits[start : start + chunk]
        by_hook: dict[str, list[tuple[int, Edit]]] = defaultdict(list)
        for row, edit in enumerate(part):
            by_hook[edit.hook].append((row, edit))
        hooks = [*base_hooks, *((name, _editing_hook(items, replacements(name))) for name, items in by_hook.items())]
        batch = torch.tensor([ids], device=device).expand(len(part), -1)
        with torch.no_grad():
            out.append(metric(last_logits(bridge, batch, hooks)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
