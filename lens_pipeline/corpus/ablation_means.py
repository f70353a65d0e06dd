"""A model's mean activations for mean ablation: each head's output (hook_z) and each MLP layer's
output, averaged over every real token of the prompt set by one streaming pass (like the shared
neuron basis, corpus/basis.py), written once to `caches/<model>/ablation_means.npz` and reused by
later runs; `--force` or deleting the file computes them again. Its digest is part of every cache's
settings (`ablation_means_id`), so caches ablated with other means never pass for current.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lens_pipeline.store.cache import ExtractSettings, write_atomic

MEANS_FILE = "ablation_means.npz"
MEAN_HOOKS = ("blocks.{layer}.attn.hook_z", "blocks.{layer}.hook_mlp_out")


def means_path(save_path: Path, model_slug: str) -> Path:
    return Path(save_path) / "caches" / model_slug / MEANS_FILE


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def read_means(save_path: Path, model_slug: str) -> dict[str, Any]:
    """hook name -> mean activation (torch, float32), from the model's written file."""
    import torch

    with np.load(means_path(save_path, model_slug)) as stored:
        return {name: torch.from_numpy(stored[name].astype(np.float32)) for name in stored.files if name != "tokens"}


def streaming_means(model: Any, texts: Sequence[str], settings: ExtractSettings, batch_size: int,
                    log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], int]:
    """One forward over every prompt, keeping float64 running sums of the ablated activations."""
    import torch

    from lens_pipeline.capture import extract

    limit = extract.context_limit(model, settings)
    items = sorted((extract.tokenize(model, text, limit) for text in texts), key=lambda t: len(t.ids))
    names = [hook.format(layer=layer) for layer in range(model.bridge.cfg.n_layers) for hook in MEAN_HOOKS]
    sums: dict[str, np.ndarray] = {}
    count = 0
    log(f"{model.source.name}: mean activations for --ablation mean over {len(items)} prompt(s) ...")
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        input_ids, mask = extract.pad_batch(model, batch)
        real = mask.bool()

        def adder(name: str) -> Callable[[Any, Any], None]:
            def add(value: Any, hook: Any) -> None:  # padding never counts
                total = value[real].double().sum(0).cpu().numpy()
                sums[name] = sums[name] + total if name in sums else total
            return add

        with torch.no_grad():
            model.bridge.run_with_hooks(input_ids, attention_mask=mask, fwd_hooks=[(name, adder(name)) for name in names])
        count += int(real.sum())
    return {name: total / count for name, total in sums.items()}, count


def resolve_means(
    source: Any, model_slug: str, texts: Sequence[str], save_path: Path, settings: ExtractSettings, *,
    device: str, batch_size: int, force: bool, log: Callable[[str], None], model: Any = None,
) -> tuple[ExtractSettings, Any]:
    """The settings with the means' digest filled in (mean ablation only), and the model if it was loaded here."""
    if not (settings.ablate and settings.ablation == "mean"):
        return settings, model
    path = means_path(save_path, model_slug)
    if path.exists() and not force:
        return dataclasses.replace(settings, ablation_means_id=digest(path)), model
    from lens_pipeline.capture import explain
    from lens_pipeline.capture import models as model_sources

    model = model or model_sources.load_model(source, device, explain.model_dtype(settings))
    means, count = streaming_means(model, texts, settings, batch_size, log)
    from lens_pipeline.capture.model_card import npz_bytes

    # Fixed zip times: the same means give the same bytes, so the same digest in every cache's settings.
    data = npz_bytes({"tokens": np.array(count), **{name: value.astype(np.float32) for name, value in sorted(means.items())}})
    write_atomic(path, data)
    log(f"{source.name}: mean activations over {count} token(s) written to {path}")
    return dataclasses.replace(settings, ablation_means_id=digest(path)), model
