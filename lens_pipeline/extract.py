"""Running batches through a model and cutting out, per prompt, the arrays a cache stores.

Pure computation: tokens in, per-prompt numpy arrays out. Padding is on the right; every
array is cut to the prompt's real length, so no pad row or column is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from lens_pipeline.cache import ExtractSettings, encode_pattern, pattern_member
from lens_pipeline.models import LoadedModel


@dataclass
class Tokenized:
    ids: list[int]
    truncated_from: int | None = None  # original length when cut to max_tokens


@dataclass
class Extracted:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


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


def hook_names(model: LoadedModel, settings: ExtractSettings) -> list[str]:
    n_layers = model.bridge.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.hook_resid_post"]
        if settings.n_neurons > 0:
            names.append(f"blocks.{layer}.mlp.hook_post")
    return names + [h for h in settings.hooks if h not in names]


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


def _cut_hook(value: torch.Tensor, index: int, length: int, padded: int) -> torch.Tensor:
    """One prompt's slice of an extra hook: drop padding along every position axis."""
    value = value[index]
    if value.dim() >= 2 and value.shape[-1] == padded and value.shape[-2] == padded:
        return value[..., :length, :length]  # [head, q, k]-shaped hooks
    if value.dim() >= 1 and value.shape[0] == padded:
        return value[:length]
    return value


@torch.no_grad()
def run_batch(
    model: LoadedModel, batch: Sequence[Tokenized], settings: ExtractSettings, token_strings: TokenStrings
) -> list[Extracted]:
    """Forward one right-padded batch and return each prompt's arrays, padding removed."""
    bridge = model.bridge
    lengths = [len(t.ids) for t in batch]
    padded = max(lengths)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), padded), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), padded), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.ids)] = torch.tensor(item.ids)
        attention_mask[row, : len(item.ids)] = 1
    input_ids = input_ids.to(model.device)
    attention_mask = attention_mask.to(model.device)

    names = hook_names(model, settings)
    logits, activations = bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=names)
    n_layers = bridge.cfg.n_layers

    # Batched reductions first (one pass over the batch), then cut per prompt.
    residuals = [activations["blocks.0.hook_resid_pre"]] + [
        activations[f"blocks.{layer}.hook_resid_post"] for layer in range(n_layers)
    ]
    resid_norms = torch.stack([r.float().norm(dim=-1) for r in residuals]).cpu().numpy()  # [L+1, B, T]
    top_probs, top_ids = torch.log_softmax(logits.float(), dim=-1).topk(settings.top_k, dim=-1)
    top_probs, top_ids = top_probs.exp().cpu().numpy(), top_ids.cpu().numpy()
    if settings.logit_lens:
        lens_probs, lens_ids = [], []
        for residual in residuals[1:]:
            probs = torch.softmax(bridge.unembed(bridge.ln_final(residual)).float(), dim=-1).max(dim=-1)
            lens_probs.append(probs.values.cpu().numpy())
            lens_ids.append(probs.indices.cpu().numpy())
        lens_probs_all, lens_ids_all = np.stack(lens_probs), np.stack(lens_ids)  # [L, B, T]

    results = []
    for row, length in enumerate(lengths):
        arrays: dict[str, np.ndarray] = {}
        ids = np.asarray(batch[row].ids, dtype=np.int32)
        arrays["tokens"] = ids
        arrays["token_strs"] = token_strings(ids)
        for layer in range(n_layers):
            pattern = activations[f"blocks.{layer}.attn.hook_pattern"][row, :, :length, :length]
            arrays[pattern_member(layer)] = encode_pattern(
                pattern.float().cpu().numpy(), settings.pattern_encoding, model.causal
            )
        arrays["topk_ids"] = top_ids[row, :length].astype(np.int32)
        arrays["topk_probs"] = top_probs[row, :length].astype(np.float16)
        arrays["topk_strs"] = token_strings(arrays["topk_ids"])
        arrays["resid_norms"] = resid_norms[:, row, :length].astype(np.float32)
        if settings.n_neurons > 0:
            post = torch.stack([activations[f"blocks.{layer}.mlp.hook_post"][row, :length] for layer in range(n_layers)])
            post = post.float()  # [L, T, d_mlp]
            n = min(settings.n_neurons, post.shape[-1])
            # The neurons that vary most over this prompt are the ones a token plot can show.
            chosen = post.var(dim=1, unbiased=False).topk(n, dim=-1).indices  # [L, n]
            acts = torch.gather(post, 2, chosen[:, None, :].expand(-1, length, -1)).transpose(1, 2)
            arrays["neuron_ids"] = chosen.cpu().numpy().astype(np.int32)
            arrays["neuron_acts"] = acts.cpu().numpy().astype(np.float16)
        if settings.logit_lens:
            arrays["logit_lens_ids"] = lens_ids_all[:, row, :length].astype(np.int32)
            arrays["logit_lens_probs"] = lens_probs_all[:, row, :length].astype(np.float16)
            arrays["logit_lens_strs"] = token_strings(arrays["logit_lens_ids"])
        for hook in settings.hooks:
            arrays[f"hooks/{hook}"] = _cut_hook(activations[hook], row, length, padded).float().cpu().numpy().astype(np.float16)
        results.append(Extracted(arrays))
    return results
