"""A prompt's corrupted run: another text of the same token length, or Gaussian noise on the token
embeddings of a span (causal tracing), checked against the clean prompt's tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from lens_pipeline.capture.models import LoadedModel
from lens_pipeline.capture.prompts import CORRUPT_FIELD, Prompt
from lens_pipeline.capture.tokens import tokenize


class CorruptionError(ValueError):
    """A prompt's corruption that cannot be used with this model; the message names the prompt line."""


@dataclass(frozen=True)
class Corruption:
    """The corrupted run's input: its token ids, and the noise added to the token embeddings (or None)."""

    ids: list[int]
    noise: torch.Tensor | None = None  # [T, d]: zero outside the span
    spec: dict[str, Any] | None = None  # as recorded: {"text": ...} or the noise spec with the std used

    def embed_hook(self) -> list[tuple[str, Callable[..., Any]]]:
        """The forward hook that adds the noise (none for a text corruption)."""
        if self.noise is None:
            return []
        noise = self.noise

        def add_noise(value: torch.Tensor, hook: Any) -> torch.Tensor:
            return value + noise.to(value.dtype)

        return [("hook_embed", add_noise)]


def embedding_std(model: LoadedModel) -> float:
    """The standard deviation of every entry of the token embedding matrix: the unit of the noise."""
    return float(model.bridge.W_E.detach().float().std())


def corruption_of(model: LoadedModel, prompt: Prompt, clean_ids: list[int], limit: int) -> Corruption | None:
    """The prompt's corruption (None when the line has none); CorruptionError naming the line for a
    text of another token length or a noise span outside the prompt."""
    corrupt = prompt.metadata.get(CORRUPT_FIELD)
    if corrupt is None:
        return None
    n = len(clean_ids)
    if isinstance(corrupt, str):
        ids = tokenize(model, corrupt, limit).ids
        if len(ids) != n:
            raise CorruptionError(f"{prompt.source}: corrupt prompt is {len(ids)} tokens, clean is {n}")
        if ids == clean_ids:
            raise CorruptionError(f"{prompt.source}: corrupt prompt has the same tokens as the clean one; nothing to patch")
        return Corruption(list(ids), spec={"text": corrupt})
    start, end = corrupt["noise"]
    if end > n:
        raise CorruptionError(f"{prompt.source}: corrupt noise span [{start}, {end}] is outside the prompt's {n} tokens "
                              f"(positions 0..{n - 1}; end is exclusive)")
    scale, seed = float(corrupt.get("scale", 3.0)), int(corrupt.get("seed", 0))
    std = embedding_std(model)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.zeros(n, int(model.bridge.cfg.d_model))
    noise[start:end] = torch.randn(end - start, noise.shape[1], generator=generator) * (scale * std)
    device = next(model.bridge.parameters()).device
    return Corruption(list(clean_ids), noise.to(device), {"noise": [start, end], "scale": scale, "seed": seed, "std": std})
