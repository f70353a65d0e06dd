"""Text as a model sees it: token ids (with BOS where the model expects one), cut to the context,
padded into a batch; and token ids back to strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lens_pipeline.capture.explain.targets import Targets
from lens_pipeline.capture.models import LoadedModel
from lens_pipeline.store.cache import ExtractSettings


@dataclass
class Tokenized:
    ids: list[int]
    truncated_from: int | None = None  # original length when cut to max_tokens
    targets: Targets | None = None  # what to explain (explain.resolve_targets); None: the default


def context_limit(model: LoadedModel, settings: ExtractSettings) -> int:
    n_ctx = getattr(model.bridge.cfg, "n_ctx", None) or settings.max_tokens
    return min(int(n_ctx), settings.max_tokens)


def tokenize(model: LoadedModel, text: str, limit: int) -> Tokenized:
    """Token ids as the model sees them: the tokenizer's specials, plus BOS for causal models
    whose tokenizer does not add it (TransformerLens's default_prepend_bos convention)."""
    tokenizer = model.tokenizer
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if model.causal and getattr(model.bridge.cfg, "default_prepend_bos", True) and bos is not None:
        if not ids or ids[0] != bos:
            ids = [bos] + ids
    if len(ids) > limit:
        return Tokenized(ids[:limit], truncated_from=len(ids))
    return Tokenized(ids)


class TokenStrings:
    """id -> decoded string, memoised: decoding is per id and top-k repeats ids a lot."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.memo: dict[int, str] = {}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = []
        for token_id in ids.reshape(-1).tolist():
            if token_id not in self.memo:
                self.memo[token_id] = self.tokenizer.decode([token_id])
            out.append(self.memo[token_id])
        return np.array(out, dtype=str).reshape(ids.shape) if out else np.zeros(ids.shape, dtype="<U1")


def pad_batch(model: LoadedModel, batch: Sequence[Tokenized]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, T], right-padded, on the model's device."""
    padded = max(len(t.ids) for t in batch)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), padded), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), padded), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.ids)] = torch.tensor(item.ids)
        attention_mask[row, : len(item.ids)] = 1
    return input_ids.to(model.device), attention_mask.to(model.device)
