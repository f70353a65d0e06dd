"""Direct logit attribution: f split over the embeddings, every head, every MLP and the biases."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lens_pipeline.capture.models import LoadedModel, ModelLoadError

if TYPE_CHECKING:
    pass

from lens_pipeline.capture.explain.passes import Kept
from lens_pipeline.capture.explain.targets import BatchTargets, bias_or_zeros


def logit_attribution(
    model: LoadedModel, kept: Kept, targets: BatchTargets | None, values: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """f split over embeddings, heads, MLPs and biases, the final norm's scale frozen: each part is its
    output's dot product with the target's unembedding direction through the (now linear) final norm."""
    assert targets is not None and targets.directions is not None and targets.bias is not None
    bridge, cfg = model.bridge, model.bridge.cfg
    gamma = bridge.ln_final.w.detach().float()
    beta = getattr(bridge.ln_final, "b", None)
    read = targets.directions * gamma  # [B, G, d]
    if str(cfg.normalization_type).startswith("LN"):  # LayerNorm centres: (P c)·r = c·(P r)
        read = read - read.mean(-1, keepdim=True)
    read = read / kept.at["scale"].float()
    W_O = bridge.W_O.detach().float()
    b_O = bias_or_zeros(bridge, "b_O", (cfg.n_layers, cfg.d_model), W_O.device).float()
    embedded = kept.at["embed"].float() + (kept.at["pos_embed"].float() if "pos_embed" in kept.at else 0.0)
    embed_part = (embedded * read).sum(-1)
    heads, mlps = [], []
    for layer in range(cfg.n_layers):
        through_o = torch.einsum("hkd,bgd->bghk", W_O[layer], read)  # the read direction in each head's z space
        heads.append((kept.at[f"z{layer}"].float() * through_o).sum(-1))
        mlps.append((kept.at[f"mlp{layer}"].float() * read).sum(-1))
    bias_part = (read @ b_O.T).sum(-1) + targets.bias
    if beta is not None:
        bias_part = bias_part + (targets.directions * beta.detach().float()).sum(-1)
    parts = {"logit_attr_heads": torch.stack(heads, 2), "logit_attr_mlp": torch.stack(mlps, 2),
             "logit_attr_embed": embed_part, "logit_attr_bias": bias_part}
    total = embed_part + parts["logit_attr_heads"].sum((2, 3)) + parts["logit_attr_mlp"].sum(2) + bias_part
    size = embed_part.abs() + parts["logit_attr_heads"].abs().sum((2, 3)) + parts["logit_attr_mlp"].abs().sum(2)
    tolerance = (1e-4 if kept.at["scale"].dtype == torch.float32 else 1e-2) * size + 1e-3
    off = ((total - values).abs() > tolerance) & targets.valid
    if bool(off.any()):
        worst = float((total - values).abs()[off].max())
        raise ModelLoadError(f"{model.source.name}: direct logit attribution does not add up (off by {worst:.3g}): this "
                             f"architecture's residual stream is not embeddings + heads + MLPs; not supported")
    return {name: value.masked_fill(~targets.valid.reshape(*targets.valid.shape, *[1] * (value.dim() - 2)), 0.0)
            for name, value in parts.items()}
