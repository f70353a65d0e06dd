"""Running batches through a model and cutting out, per prompt, the arrays a cache stores.

Pure computation: tokens in, per-prompt numpy arrays out. Padding is on the right; every
array is cut to the prompt's real length, so no pad row or column is ever stored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lens_pipeline.capture import explain, model_card
from lens_pipeline.capture.models import LoadedModel
from lens_pipeline.capture.tokens import Tokenized, TokenStrings, context_limit, pad_batch, tokenize  # noqa: F401  (extract.tokenize etc.: callers' names)
from lens_pipeline.capture.unembed import positions_per_chunk
from lens_pipeline.store.cache import (
    BYTE_PLANE_ENCODINGS,
    FIXED_POINT_LEVELS,
    PATTERN_ENCODINGS,
    ExtractSettings,
    pattern_member,
)


@dataclass
class Extracted:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _cut_hook(value: torch.Tensor, index: int, length: int, padded: int) -> torch.Tensor:
    """One prompt's slice of an extra hook: drop padding along every position axis."""
    value = value[index]
    if value.dim() >= 2 and value.shape[-1] == padded and value.shape[-2] == padded:
        return value[..., :length, :length]  # [head, q, k]-shaped hooks
    if value.dim() >= 1 and value.shape[0] == padded:
        return value[:length]
    return value


ENCODE_STEP_VALUES = 1 << 20  # values per step of the CPU encoder: its buffers stay in the last-level cache
_TRIANGLE_INDEX: dict[tuple[int, str], torch.Tensor] = {}  # the last lengths' flat lower-triangle positions


def triangle_index(n: int, device: torch.device) -> torch.Tensor:
    """Flat positions (row * n + col) of the lower triangle of an n x n matrix, row by row; kept for
    the next layers of the batch (building it cost as much as the gather)."""
    key = (n, str(device))
    if key not in _TRIANGLE_INDEX:
        if len(_TRIANGLE_INDEX) >= 2:  # batches of other lengths follow: keep memory bounded
            _TRIANGLE_INDEX.clear()
        rows, cols = torch.tril_indices(n, n, device=device)
        _TRIANGLE_INDEX[key] = rows * n + cols
    return _TRIANGLE_INDEX[key]


def _encode_fixed_point_steps(square: torch.Tensor, index: torch.Tensor | None, encoding: str,
                              step_values: int) -> torch.Tensor:
    """CPU fixed-point encoding of square [M, S] float32 (S = T*T), the positions `index` (None: all),
    a slice of positions at a time: gather, scale, round and split stay in cache instead of
    streaming the whole layer through memory once per operation. The same float32 operations, in
    the same order, as the one-pass path: bit-identical. Returns [M, 2, N] byte planes or [M, N] uint8."""
    m = square.shape[0]
    n_out = index.numel() if index is not None else square.shape[1]
    levels = FIXED_POINT_LEVELS[encoding]
    planes = encoding in BYTE_PLANE_ENCODINGS
    out = square.new_empty((m, 2, n_out) if planes else (m, n_out), dtype=torch.uint8)
    step = max(1, min(step_values // max(1, m), n_out))
    floats = square.new_empty(m * step)
    ints = square.new_empty(m * step, dtype=torch.int16 if levels < 2**15 else torch.int32) if planes else None
    for start in range(0, n_out, step):
        width = min(step, n_out - start)
        scaled = floats[: m * width].view(m, width)
        if index is not None:
            torch.gather(square, 1, index[start : start + width].expand(m, -1), out=scaled)
        else:
            scaled.copy_(square[:, start : start + width])
        scaled.mul_(levels).add_(0.5)
        if not planes:
            out[:, start : start + width].copy_(scaled)  # truncated, as .to(torch.uint8)
            continue
        values = ints[: m * width].view(m, width)
        values.copy_(scaled)  # truncated, as .to(torch.int16)
        out[:, 0, start : start + width].copy_(values)  # integer narrowing keeps the low byte
        out[:, 1, start : start + width].copy_(values.bitwise_right_shift_(8))
    return out


def encode_patterns(patterns: torch.Tensor, encoding: str, causal: bool,
                    step_values: int = ENCODE_STEP_VALUES) -> torch.Tensor:
    """Torch twin of `cache.encode_pattern` for [..., T, T] on any device, bit-identical for the
    same float32 values: the lower triangle is gathered and encoded where the patterns are,
    so only the stored bytes cross to the host (a quarter of float32 n x n for float16).
    Fixed-point encodings of float32 on the CPU go `step_values` values at a time."""
    if encoding not in PATTERN_ENCODINGS:
        raise ValueError(f"unknown pattern encoding {encoding!r}; choose from {list(PATTERN_ENCODINGS)}")
    if encoding in FIXED_POINT_LEVELS and patterns.dtype == torch.float32 and patterns.device.type == "cpu":
        n, lead = patterns.shape[-1], patterns.shape[:-2]
        square = patterns.reshape(lead.numel(), n * n)  # sizes, not -1: empty batches reshape too
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # thousands of small steps: a second thread spun at every step's barrier
        try:
            encoded = _encode_fixed_point_steps(square, triangle_index(n, patterns.device) if causal else None,
                                                encoding, step_values)
        finally:
            torch.set_num_threads(threads)
        return encoded.view(*lead, *encoded.shape[1:-1], *((encoded.shape[-1],) if causal else (n, n)))
    fresh = patterns.dtype != torch.float32  # .float() below copies: safe to work in place
    if causal:
        n, lead = patterns.shape[-1], patterns.shape[:-2]
        index = triangle_index(n, patterns.device)
        # gather with a broadcast index: 2x advanced indexing and 3x index_select on CPU
        square = patterns.reshape(lead.numel(), n * n)  # sizes, not -1: empty batches reshape too
        triangle = torch.gather(square, 1, index.expand(square.shape[0], -1))
        patterns, fresh = triangle.view(*lead, index.numel()), True
    values = patterns.float()
    if encoding not in FIXED_POINT_LEVELS:
        return values.to(torch.float16 if encoding == "float16" else torch.float32)
    # The same float32 steps as numpy: p * levels + 0.5, truncated.
    scaled = values.mul_(FIXED_POINT_LEVELS[encoding]) if fresh else values * FIXED_POINT_LEVELS[encoding]
    if encoding not in BYTE_PLANE_ENCODINGS:
        return scaled.add_(0.5).to(torch.uint8)
    # [..., H, *tail] -> [..., H, 2, *tail] uint8: low bytes, then high bytes. Integer narrowing
    # keeps the low byte; copying each plane is 1.4x faster than transposing a uint8 view.
    values = scaled.add_(0.5).to(torch.int16 if FIXED_POINT_LEVELS[encoding] < 2**15 else torch.int32)
    plane_axis = values.dim() - (1 if causal else 2)
    planes = values.new_empty(values.shape[:plane_axis] + (2,) + values.shape[plane_axis:], dtype=torch.uint8)
    planes.select(plane_axis, 0).copy_(values)
    planes.select(plane_axis, 1).copy_(values >> 8)
    return planes


def top_predictions(logits: torch.Tensor, k: int, rows: int = 16, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, ids) [..., k] of softmax(logits), overwriting `logits` with exp(logits - max).

    On the CPU this runs `rows` positions at a time so each pass stays in cache, and finds the
    top k among the `block`s whose maxima are the k largest (they hold the k largest values);
    the block maxima also give each row's maximum. 1.5x faster than log_softmax + topk over the
    batch, for the same ids."""
    flat = logits.reshape(-1, logits.shape[-1])
    blocked = not flat.is_cuda and flat.shape[-1] % block == 0 and flat.shape[-1] >= k * block
    step = rows if not flat.is_cuda else flat.shape[0]
    probs, ids = [], []
    for start in range(0, flat.shape[0], step):
        chunk = flat[start : start + step]
        if blocked:
            blocks = chunk.view(chunk.shape[0], -1, block)
            block_max = blocks.amax(-1)  # [rows, n_blocks]
            best_blocks = block_max.topk(k, dim=-1).indices  # [rows, k]
            weights = chunk.sub_(block_max.amax(-1, keepdim=True)).exp_()
            candidates = torch.gather(blocks, 1, best_blocks[..., None].expand(-1, -1, block)).flatten(1)
            top, within = candidates.topk(k, dim=-1)
            top_ids = torch.gather(best_blocks, 1, within // block) * block + within % block
        else:
            weights = chunk.sub_(chunk.amax(-1, keepdim=True)).exp_()
            top, top_ids = weights.topk(k, dim=-1)
        probs.append(top / weights.sum(-1, keepdim=True))
        ids.append(top_ids)
    shape = logits.shape[:-1] + (k,)
    return torch.cat(probs).reshape(shape), torch.cat(ids).reshape(shape)


def top_of_positions(logits_of: Callable[[torch.Tensor], torch.Tensor], positions: torch.Tensor,
                     shape: tuple[int, int], vocabulary: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """top_predictions (probabilities float16, ids int32) [B, T, k] of a [B, T] batch, computed at its flat
    real `positions` only (zeros at the padding), whose logits `logits_of(chunk of positions)` gives
    [chunk, vocabulary] a chunk at a time."""
    chunk = positions_per_chunk(vocabulary, positions.is_cuda)  # one [chunk, vocabulary] array, edited in place
    probs = torch.zeros((shape[0] * shape[1], k), dtype=torch.float16, device=positions.device)
    ids = torch.zeros((shape[0] * shape[1], k), dtype=torch.int32, device=positions.device)
    for part in positions.split(chunk):
        top_probs, top_ids = top_predictions(logits_of(part).float(), k)
        probs[part], ids[part] = top_probs.to(probs.dtype), top_ids.to(ids.dtype)
    return probs.view(*shape, k), ids.view(*shape, k)


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


@dataclass
class MemoryLimit:
    """What the device has shown it cannot hold: after an out-of-memory, batches bigger than half
    the one that failed (rows x padded tokens^2, the size of its attention patterns) are split
    before they run, so the longer batches that follow do not fail first, one by one."""

    max_cost: int | None = None

    @staticmethod
    def cost(batch: Sequence[Tokenized]) -> int:
        return len(batch) * max(len(t.ids) for t in batch) ** 2

    def fits(self, batch: Sequence[Tokenized]) -> bool:
        return self.max_cost is None or self.cost(batch) <= self.max_cost

    def failed(self, batch: Sequence[Tokenized]) -> None:
        """`batch` ran out of memory: from now on, only half its size is tried."""
        half = self.cost(batch) // 2
        self.max_cost = half if self.max_cost is None else min(self.max_cost, half)


def run_batch_with_oom_split(
    model: LoadedModel,
    batch: Sequence[Tokenized],
    settings: ExtractSettings,
    token_strings: TokenStrings,
    log: Callable[[str], None] | None = None,
    memory: MemoryLimit | None = None,
) -> list[Extracted]:
    """`run_batch`, but a batch that runs out of memory is split in halves and each half retried
    (recursively), so one long batch costs a retry, not the run; `memory` carries what was learnt
    to the next batches. One prompt that does not fit raises as before."""
    memory = memory if memory is not None else MemoryLimit()
    if len(batch) > 1 and not memory.fits(batch):
        return _run_halves(model, batch, settings, token_strings, log, memory)
    try:
        return run_batch(model, batch, settings, token_strings)
    except Exception as error:  # only out-of-memory is retried; the rest re-raise
        if len(batch) == 1 or not is_out_of_memory(error):
            raise
    # Out of the except block: the traceback, and the activations its frames hold, are freed.
    if str(model.device).startswith("cuda"):
        torch.cuda.empty_cache()
    memory.failed(batch)
    if log:
        longest = max(len(t.ids) for t in batch)
        log(f"out of memory on a batch of {len(batch)} (up to {longest} tokens): retrying as "
            f"{len(batch) // 2} + {len(batch) - len(batch) // 2}; later batches are split to fit")
    return _run_halves(model, batch, settings, token_strings, log, memory)


def _run_halves(
    model: LoadedModel, batch: Sequence[Tokenized], settings: ExtractSettings, token_strings: TokenStrings,
    log: Callable[[str], None] | None, memory: MemoryLimit,
) -> list[Extracted]:
    half = len(batch) // 2
    return run_batch_with_oom_split(model, batch[:half], settings, token_strings, log, memory) + run_batch_with_oom_split(
        model, batch[half:], settings, token_strings, log, memory
    )


def top_variance_neurons(post: torch.Tensor, real: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n` MLP neurons that vary most over each prompt's real positions (the ones a token plot
    can show): ids [B, n] and their activations [B, n, T], from post [B, T, d_mlp] and the float
    mask `real` [B, 1, T]. Masked sums as matrix products for the whole batch, E[x^2] - E[x]^2
    (2.4x faster than centring first; it only ranks neurons, and the high-variance ones it picks
    are the ones cancellation cannot blur)."""
    post = post.float()
    count = real.sum(-1, keepdim=True)  # [B, 1, 1]
    mean = torch.bmm(real, post).div_(count)
    variance = torch.bmm(real, post * post).div_(count).sub_(mean.mul_(mean))[:, 0]  # [B, d_mlp]
    chosen = variance.topk(min(n, post.shape[-1]), dim=-1).indices
    return chosen, torch.gather(post, 2, chosen[:, None, :].expand(-1, post.shape[1], -1)).transpose(1, 2)


def shared_neurons(post: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A shared basis: the same neurons `ids` [n] (-1: none, kept as zeros) for every prompt; ids [B, n]
    and activations [B, n, T] as top_variance_neurons returns them."""
    acts = post[:, :, ids.clamp(min=0)].float().mul_((ids >= 0).to(torch.float32)).transpose(1, 2)
    return ids.expand(post.shape[0], -1), acts


def shared_neuron_ids(settings: ExtractSettings) -> torch.Tensor | None:
    """The settings' shared basis as a padded [L, n] tensor (-1 pads), or None for per-prompt selection."""
    if not settings.neuron_ids:
        return None
    width = max(1, max(len(row) for row in settings.neuron_ids))
    return torch.tensor([list(row) + [-1] * (width - len(row)) for row in settings.neuron_ids], dtype=torch.long)


@dataclass
class _Kept:
    """What the hooks keep of each layer during the forward (on the device)."""

    patterns: list[Any]  # encoded
    norms: list[Any]  # residual L2 norms [B, T], embeddings first
    residuals: list[Any]  # kept only for the logit lens
    neurons: list[Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, n_layers: int) -> "_Kept":
        return cls([None] * n_layers, [None] * (n_layers + 1), [None] * n_layers, [None] * n_layers)


@dataclass
class FinalLogits:
    """Logits of flat batch positions: rows of full logits [B*T, vocabulary], or rows of a residual
    [B*T, d] put through `unembed` (e.g. the unembedding, or the final norm and the unembedding) when asked for."""

    flat: torch.Tensor
    unembed: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        rows = self.flat[positions]
        return rows if self.unembed is None else self.unembed(rows[None])[0]


@torch.no_grad()
def run_batch(
    model: LoadedModel, batch: Sequence[Tokenized], settings: ExtractSettings, token_strings: TokenStrings
) -> list[Extracted]:
    """Forward one right-padded batch and return each prompt's arrays, padding removed."""
    bridge = model.bridge
    lengths = [len(t.ids) for t in batch]
    input_ids, attention_mask = pad_batch(model, batch)
    real = attention_mask[:, None, :].to(torch.float32)  # [B, 1, T]

    # Each layer's activations are reduced inside the forward, in hooks, while they are fresh:
    # the batch never holds every layer's float patterns at once (the bare forward does not
    # either), which on CPU saved the page faults of ~1 GB of new memory per batch.
    kept = _Kept.empty(bridge.cfg.n_layers)
    hooks = _reducing_hooks(model, settings, kept, real, lengths)
    views = model_card.EmbeddingViews(model) if settings.embedding_views else None  # --embedding-views
    hooks += views.hooks() if views else []
    explained: dict[str, Any] = {}
    if settings.explains:  # the same forward, with the explanation hooks (and gradients) added
        logits, explained = explain.forward(model, settings, batch, input_ids, attention_mask, hooks)
        final = FinalLogits(logits.flatten(0, 1))
        del logits  # `final` alone holds them: deleting it frees them
    elif "unembed.hook_in" in bridge.hook_dict:  # the top-k unembeds real positions only, a chunk at a time
        final = FinalLogits(explain.run_to_final_norm(bridge, input_ids, attention_mask, hooks).flatten(0, 1), bridge.unembed)
    else:
        final = FinalLogits(bridge.run_with_hooks(input_ids, attention_mask=attention_mask, fwd_hooks=hooks).flatten(0, 1))
    if any(value is None for value in kept.patterns + kept.norms + (kept.neurons if settings.n_neurons > 0 else [])):
        raise RuntimeError(f"{model.source.name}: a pattern, residual or MLP hook did not run during the forward pass")
    positions = torch.cat([torch.arange(n, device=input_ids.device) + row * input_ids.shape[1]
                           for row, n in enumerate(lengths)])
    out = _device_outputs(model, settings, kept, final, positions, input_ids.shape, explained)
    out.update(views.outputs(input_ids) if views else {})
    del final  # device memory back before the host work
    kept.residuals.clear()
    host = to_host(out)
    return [Extracted(_prompt_arrays(model, settings, host, batch[row].ids, row, length, token_strings))
            for row, length in enumerate(lengths)]


def _reducing_hooks(
    model: LoadedModel, settings: ExtractSettings, kept: _Kept, real: torch.Tensor, lengths: list[int]
) -> list[tuple[str, Callable[[torch.Tensor, Any], None]]]:
    """Forward hooks that store each activation's reduced form in `kept`."""
    padded = max(lengths)

    def keep(target: Any, key: Any, reduce: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor, Any], None]:
        def hook(value: torch.Tensor, hook: Any) -> None:  # returns None: the forward goes on unchanged
            with torch.no_grad():  # an explaining forward may track gradients; what is kept here needs none
                target[key] = reduce(value)

        return hook

    def norm(residual: torch.Tensor) -> torch.Tensor:
        return residual.float().norm(dim=-1)

    shared = shared_neuron_ids(settings)
    shared = None if shared is None else shared.to(real.device)
    hooks = [("blocks.0.hook_resid_pre", keep(kept.norms, 0, norm))]
    for layer in range(len(kept.patterns)):
        hooks.append((f"blocks.{layer}.attn.hook_pattern",
                      keep(kept.patterns, layer, lambda p: encode_patterns(p, settings.pattern_encoding, model.causal))))
        hooks.append((f"blocks.{layer}.hook_resid_post", keep(kept.norms, layer + 1, norm)))
        if settings.logit_lens and not settings.lens_on:  # the trajectory's top-5 gives the top-1
            hooks.append((f"blocks.{layer}.hook_resid_post", keep(kept.residuals, layer, lambda r: r.detach())))
        if shared is not None:
            hooks.append((f"blocks.{layer}.mlp.hook_post",
                          keep(kept.neurons, layer, functools.partial(shared_neurons, ids=shared[layer]))))
        elif settings.n_neurons > 0:
            hooks.append((f"blocks.{layer}.mlp.hook_post",
                          keep(kept.neurons, layer, lambda post: top_variance_neurons(post, real, settings.n_neurons))))
    for name in settings.hooks:
        hooks.append((name, keep(kept.extra, name, lambda value: [
            _cut_hook(value, row, length, padded).to(torch.float16) for row, length in enumerate(lengths)])))
    return hooks


def _device_outputs(
    model: LoadedModel, settings: ExtractSettings, kept: _Kept, final_logits: FinalLogits,
    positions: torch.Tensor, shape: tuple[int, int], explained: dict[str, Any],
) -> dict[str, Any]:
    """On the device: what is left to reduce, ready for one transfer to the host. `final_logits` gives
    the logits [N, vocabulary] of flat real `positions` of the [B, T] batch."""
    bridge = model.bridge
    vocabulary = bridge.cfg.d_vocab
    out: dict[str, Any] = {"patterns": kept.patterns, "resid_norms": torch.stack(kept.norms)}  # [L+1, B, T]
    out["topk_probs"], out["topk_ids"] = top_of_positions(final_logits, positions, shape, vocabulary, settings.top_k)
    out.update(explained)
    if settings.logit_lens and settings.lens_on:  # each layer's top-1 from its row: no second unembedding
        post = [row for row, name in enumerate(explain.lens_row_names(settings, bridge.cfg.n_layers)) if name.endswith("post")]
        out["logit_lens_probs"] = explained["lens_top_probs"][post, ..., 0]
        out["logit_lens_ids"] = explained["lens_top_ids"][post, ..., 0]
    elif settings.logit_lens:  # each layer's top-1, unembedded a chunk of positions at a time
        lens = [top_of_positions(FinalLogits(residual.flatten(0, 1), lambda rows: bridge.unembed(bridge.ln_final(rows))),
                                 positions, shape, vocabulary, 1) for residual in kept.residuals]
        out["logit_lens_probs"] = torch.stack([probs[..., 0] for probs, _ in lens])  # [L, B, T]
        out["logit_lens_ids"] = torch.stack([ids[..., 0] for _, ids in lens])
    if settings.n_neurons > 0:
        out["neuron_ids"] = torch.stack([ids for ids, _ in kept.neurons], 1).to(torch.int32)  # [B, L, n]
        out["neuron_acts"] = torch.stack([acts for _, acts in kept.neurons], 1).to(torch.float16)  # [B, L, n, T]
    for name in settings.hooks:
        out[f"hooks/{name}"] = kept.extra[name]
    return out


def _prompt_arrays(
    model: LoadedModel, settings: ExtractSettings, host: dict[str, Any], token_ids: list[int], row: int, length: int,
    token_strings: TokenStrings,
) -> dict[str, np.ndarray]:
    """One prompt's arrays cut out of the batch's host arrays, padding removed."""
    arrays: dict[str, np.ndarray] = {}
    ids = np.asarray(token_ids, dtype=np.int32)
    arrays["tokens"] = ids
    arrays["token_strs"] = token_strings(ids)
    for layer, patterns in enumerate(host["patterns"]):
        encoded = patterns[row]
        encoded = encoded[..., : length * (length + 1) // 2] if model.causal else encoded[..., :length, :length]
        arrays[pattern_member(layer)] = encoded  # a view: the writer compresses it where it lies
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
    if settings.explains:
        arrays.update(explain.prompt_arrays(settings, host, row, length, token_strings, model.bridge.cfg.n_layers))
    if settings.embedding_views:
        arrays.update(model_card.prompt_arrays(host, row, length, token_strings))
    return arrays
