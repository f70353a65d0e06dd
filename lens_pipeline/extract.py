"""Running batches through a model and cutting out, per prompt, the arrays a cache stores.

Pure computation: tokens in, per-prompt numpy arrays out. Padding is on the right; every
array is cut to the prompt's real length, so no pad row or column is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lens_pipeline.cache import FIXED_POINT_LEVELS, PATTERN_ENCODINGS, ExtractSettings, pattern_member
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


def encode_patterns(patterns: torch.Tensor, encoding: str, causal: bool) -> torch.Tensor:
    """Torch twin of `cache.encode_pattern` for [..., T, T] on any device, bit-identical for the
    same float32 values: the lower triangle is gathered and encoded where the patterns are,
    so only the stored bytes cross to the host (a quarter of float32 n x n for float16)."""
    if encoding not in PATTERN_ENCODINGS:
        raise ValueError(f"unknown pattern encoding {encoding!r}; choose from {list(PATTERN_ENCODINGS)}")
    if causal:
        rows, cols = torch.tril_indices(patterns.shape[-1], patterns.shape[-1], device=patterns.device)
        patterns = patterns[..., rows, cols]
    patterns = patterns.float()
    if encoding in FIXED_POINT_LEVELS:  # torch.round = np.rint: half to even
        scaled = patterns.clamp(0, 1).mul_(FIXED_POINT_LEVELS[encoding]).round_()  # one buffer, not three
        return scaled.to(torch.uint8 if encoding == "q8" else torch.uint16)
    return patterns.to(torch.float16 if encoding == "float16" else torch.float32)


def to_host(tensors: dict[str, Any]) -> dict[str, Any]:
    """Tensors (or lists of them) -> numpy. On CUDA every copy goes into pinned memory without
    blocking and the stream is synchronised once, so the copies overlap each other."""
    flat = [t for value in tensors.values() for t in (value if isinstance(value, list) else [value])]
    if not any(t.is_cuda for t in flat):
        return {k: [t.numpy() for t in v] if isinstance(v, list) else v.numpy() for k, v in tensors.items()}

    def pinned(t: torch.Tensor) -> torch.Tensor:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)

    copies = {k: [pinned(t) for t in v] if isinstance(v, list) else pinned(v) for k, v in tensors.items()}
    torch.cuda.synchronize(next(t.device for t in flat if t.is_cuda))
    return {k: [t.numpy() for t in v] if isinstance(v, list) else v.numpy() for k, v in copies.items()}


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA/MPS out of memory, or a CPU allocation that failed."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def run_batch_with_oom_split(
    model: LoadedModel,
    batch: Sequence[Tokenized],
    settings: ExtractSettings,
    token_strings: TokenStrings,
    log: Callable[[str], None] | None = None,
) -> list[Extracted]:
    """`run_batch`, but a batch that runs out of memory is split in halves and each half retried
    (recursively), so one long batch costs a retry, not the run. One prompt that does not fit
    raises as before."""
    try:
        return run_batch(model, batch, settings, token_strings)
    except Exception as error:  # only out-of-memory is retried; the rest re-raise
        if len(batch) == 1 or not is_out_of_memory(error):
            raise
    # Out of the except block: the traceback, and the activations its frames hold, are freed.
    if str(model.device).startswith("cuda"):
        torch.cuda.empty_cache()
    half = len(batch) // 2
    if log:
        longest = max(len(t.ids) for t in batch)
        log(f"out of memory on a batch of {len(batch)} (up to {longest} tokens): retrying as {half} + {len(batch) - half}")
    return run_batch_with_oom_split(model, batch[:half], settings, token_strings, log) + run_batch_with_oom_split(
        model, batch[half:], settings, token_strings, log
    )


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


@torch.no_grad()
def run_batch(
    model: LoadedModel, batch: Sequence[Tokenized], settings: ExtractSettings, token_strings: TokenStrings
) -> list[Extracted]:
    """Forward one right-padded batch and return each prompt's arrays, padding removed."""
    bridge = model.bridge
    lengths = [len(t.ids) for t in batch]
    padded = max(lengths)
    input_ids, attention_mask = pad_batch(model, batch)
    names = hook_names(model, settings)
    logits, activations = bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=names)
    n_layers = bridge.cfg.n_layers

    # On the device: batched reductions, patterns cut and encoded; then one transfer to the host.
    out: dict[str, Any] = {}
    # Causal: the row-major lower triangle of a T x T prompt is the prefix of the padded one's.
    out["patterns"] = [
        encode_patterns(activations[f"blocks.{layer}.attn.hook_pattern"], settings.pattern_encoding, model.causal)
        for layer in range(n_layers)
    ]
    residuals = [activations["blocks.0.hook_resid_pre"]] + [
        activations[f"blocks.{layer}.hook_resid_post"] for layer in range(n_layers)
    ]
    out["resid_norms"] = torch.stack([r.float().norm(dim=-1) for r in residuals])  # [L+1, B, T]
    scores = logits.float()  # logits are not needed after this: normalise in place, no second [B, T, vocab]
    top_probs, top_ids = torch.log_softmax(scores, dim=-1, out=scores).topk(settings.top_k, dim=-1)
    out["topk_probs"], out["topk_ids"] = top_probs.exp().to(torch.float16), top_ids.to(torch.int32)
    if settings.logit_lens:
        lens = [torch.softmax(bridge.unembed(bridge.ln_final(r)).float(), dim=-1).max(dim=-1) for r in residuals[1:]]
        out["logit_lens_probs"] = torch.stack([m.values for m in lens]).to(torch.float16)  # [L, B, T]
        out["logit_lens_ids"] = torch.stack([m.indices for m in lens]).to(torch.int32)
    if settings.n_neurons > 0:
        # The neurons that vary most over each prompt are the ones a token plot can show. Variance
        # over real positions only, for the whole batch at once: masked sums as matrix products
        # (two passes, for accuracy), 5x faster on CPU than a torch.var per prompt.
        real = attention_mask[:, None, :].to(torch.float32)  # [B, 1, T]
        count = real.sum(-1, keepdim=True)  # [B, 1, 1]
        chosen_layers, acts_layers = [], []
        for layer in range(n_layers):
            post = activations[f"blocks.{layer}.mlp.hook_post"].float()  # [B, T, d_mlp]
            centred = post - torch.bmm(real, post) / count
            variance = torch.bmm(real, centred.mul_(centred))[:, 0]  # [B, d_mlp], times count
            chosen = variance.topk(min(settings.n_neurons, post.shape[-1]), dim=-1).indices  # [B, n]
            chosen_layers.append(chosen)
            acts_layers.append(torch.gather(post, 2, chosen[:, None, :].expand(-1, padded, -1)).transpose(1, 2))
        out["neuron_ids"] = torch.stack(chosen_layers, 1).to(torch.int32)  # [B, L, n]
        out["neuron_acts"] = torch.stack(acts_layers, 1).to(torch.float16)  # [B, L, n, T]
    for hook in settings.hooks:
        out[f"hooks/{hook}"] = [
            _cut_hook(activations[hook], row, length, padded).to(torch.float16) for row, length in enumerate(lengths)
        ]
    del activations, logits, residuals  # device memory back before the host work
    host = to_host(out)

    results = []
    for row, length in enumerate(lengths):
        arrays: dict[str, np.ndarray] = {}
        ids = np.asarray(batch[row].ids, dtype=np.int32)
        arrays["tokens"] = ids
        arrays["token_strs"] = token_strings(ids)
        for layer in range(n_layers):
            encoded = host["patterns"][layer][row]
            encoded = encoded[:, : length * (length + 1) // 2] if model.causal else encoded[:, :length, :length]
            arrays[pattern_member(layer)] = np.ascontiguousarray(encoded)  # own copy: the batch buffer can go
        arrays["topk_ids"] = host["topk_ids"][row, :length]
        arrays["topk_probs"] = host["topk_probs"][row, :length]
        arrays["topk_strs"] = token_strings(arrays["topk_ids"])
        arrays["resid_norms"] = host["resid_norms"][:, row, :length]
        if settings.n_neurons > 0:
            arrays["neuron_ids"] = host["neuron_ids"][row]
            arrays["neuron_acts"] = np.ascontiguousarray(host["neuron_acts"][row, :, :, :length])
        if settings.logit_lens:
            arrays["logit_lens_ids"] = host["logit_lens_ids"][:, row, :length]
            arrays["logit_lens_probs"] = host["logit_lens_probs"][:, row, :length]
            arrays["logit_lens_strs"] = token_strings(arrays["logit_lens_ids"])
        for hook in settings.hooks:
            arrays[f"hooks/{hook}"] = host[f"hooks/{hook}"][row]
        results.append(Extracted(arrays))
    return results
