"""The lens trajectory: each layer's residual stream read through the final norm and unembedding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lens_pipeline.capture.models import LoadedModel
from lens_pipeline.capture.unembed import positions_per_chunk
from lens_pipeline.store.cache import ExtractSettings

if TYPE_CHECKING:
    pass



LENS_TOP = 5


# A chunk's positions each keep 4 float32 [vocabulary] rows at once: the final log-probabilities and
# probabilities, and one lens row's logits and their exponentials (unembed.positions_per_chunk).
LENS_ARRAYS = 4


def lens_row_names(settings: ExtractSettings, n_layers: int) -> list[str]:
    """What each lens row reads, in the order the forward passes them."""
    return [f"L{layer} {where}" for layer in range(n_layers)
            for where in ((["mid"] if settings.lens_resid_mid else []) + ["post"])]


def lens_trajectory(
    model: LoadedModel, residuals: list[torch.Tensor], logits: torch.Tensor, input_ids: torch.Tensor, lengths: list[int],
) -> dict[str, torch.Tensor]:
    """Per lens row and position: top-5, the actual next token's probability and rank, entropy and
    KL(final ‖ row); and the model's log-probability of each actual next token. Positions go in
    chunks, and each chunk's final distribution is used for every row."""
    bridge = model.bridge
    n_rows, (batch, length) = len(residuals), input_ids.shape
    device = logits.device
    shape = (n_rows, batch, length)
    out = {
        "lens_top_ids": torch.zeros((*shape, LENS_TOP), dtype=torch.int32, device=device),
        "lens_top_probs": torch.zeros((*shape, LENS_TOP), dtype=torch.float16, device=device),
        "lens_actual_probs": torch.full(shape, float("nan"), device=device),
        "lens_actual_ranks": torch.full(shape, -1, dtype=torch.int32, device=device),
        "lens_entropy": torch.zeros(shape, device=device),
        "lens_kl": torch.zeros(shape, device=device),
        "token_logprobs": torch.full((batch, length), float("nan"), device=device),
    }
    real = [(b, t) for b, n in enumerate(lengths) for t in range(n)]
    next_ids = torch.full((batch, length), -1, dtype=torch.long, device=device)
    next_ids[:, :-1] = input_ids[:, 1:]
    for b, n in enumerate(lengths):
        next_ids[b, n - 1 :] = -1
    chunk = positions_per_chunk(logits.shape[-1], logits.is_cuda, LENS_ARRAYS)
    with torch.no_grad():
        for start in range(0, len(real), chunk):
            rows = torch.tensor(real[start : start + chunk], device=device)
            bi, ti = rows[:, 0], rows[:, 1]
            actual = next_ids[bi, ti]
            has_next = actual >= 0
            final = torch.log_softmax(logits[bi, ti].float(), dim=-1)
            final_probs = final.exp()
            final_neg_entropy = torch.einsum("cv,cv->c", final_probs, final)
            picked = final.gather(1, actual.clamp(min=0)[:, None])[:, 0]
            out["token_logprobs"][bi, ti] = torch.where(has_next, picked, float("nan"))
            for r, residual in enumerate(residuals):
                z = bridge.unembed(bridge.ln_final(residual[bi, ti][None]))[0].float()
                _lens_stats(out, r, bi, ti, z, actual, has_next, final_neg_entropy, final_probs)
    return out


def _top(z: torch.Tensor, k: int, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """topk of each row of z [C, V]: among the `block`s whose maxima are the k largest (they hold the
    k largest values), as extract.top_predictions does: fewer passes over the vocabulary than topk."""
    if z.shape[-1] % block or z.shape[-1] < k * block:
        return z.topk(k, dim=-1)
    blocks = z.view(z.shape[0], -1, block)
    best = blocks.amax(-1).topk(k, dim=-1).indices  # [C, k]
    candidates = torch.gather(blocks, 1, best[..., None].expand(-1, -1, block)).flatten(1)
    values, within = candidates.topk(k, dim=-1)
    return values, torch.gather(best, 1, within // block) * block + within % block


def _lens_stats(out: dict[str, torch.Tensor], r: int, bi: torch.Tensor, ti: torch.Tensor, z: torch.Tensor,
                actual: torch.Tensor, has_next: torch.Tensor, final_neg_entropy: torch.Tensor, final_probs: torch.Tensor) -> None:
    """One lens row's statistics for a chunk of positions, from its logits z [C, V] (overwritten).
    Entropy and KL are sums over logits shifted by their maximum, so float32 never cancels terms
    of the logits' own size."""
    top_values, top_ids = _top(z, LENS_TOP)
    z_actual = z.gather(1, actual.clamp(min=0)[:, None])
    ranks = torch.gt(z, z_actual).sum(-1, dtype=torch.int32)  # an int32 sum: the default int64 one is slower
    peak = top_values[:, :1]
    shifted = z.sub_(peak)
    weights = shifted.exp()
    log_total = weights.sum(-1).log()
    lse = peak[:, 0] + log_total
    out["lens_top_ids"][r, bi, ti] = top_ids.to(torch.int32)
    out["lens_top_probs"][r, bi, ti] = (top_values - lse[:, None]).exp().to(torch.float16)
    out["lens_entropy"][r, bi, ti] = log_total - torch.einsum("cv,cv->c", weights, shifted) / log_total.exp()
    # KL = Σ p_final (log p_final - shifted + log_total); Σ p_final log p_final is the chunk's, for every row
    out["lens_kl"][r, bi, ti] = (final_neg_entropy - torch.einsum("cv,cv->c", final_probs, shifted) + log_total).clamp(min=0)
    out["lens_actual_probs"][r, bi, ti] = torch.where(has_next, (z_actual[:, 0] - lse).exp(), float("nan"))
    out["lens_actual_ranks"][r, bi, ti] = torch.where(has_next, ranks, -1)
