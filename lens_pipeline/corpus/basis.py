"""A model's shared neuron basis: the same MLP neurons kept in every cache of the model.

Chosen once over the whole prompt set by a streaming first pass (top-N per layer by activation
variance or by max activation over every real token but each prompt's first, whose attention-sink
activations would otherwise fill the basis), or given by the user (`L:i,j;L:k`). The
choice, how it was made and each neuron's direct effect on the output (the tokens its output
weights promote and suppress through the final norm's scale and the unembedding) are written to
`caches/<model>/neuron_basis.json`. A later run reuses that file, so adding prompts keeps the basis
(and every earlier cache) as it is; `--force` or deleting the file chooses again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lens_pipeline.store.cache import ExtractSettings

BASIS_FILE = "neuron_basis.json"
BASIS_METHODS = ("prompt", "variance", "max", "given")  # "prompt": per prompt (no shared basis)
EFFECT_TOP = 10  # promoted and suppressed tokens kept per neuron


class NeuronSpecError(ValueError):
    """A `--neurons L:i,j;...` list or file that cannot be used; the message says where and why."""


def parse_neuron_spec(text: str, where: str = "--neurons") -> dict[int, list[int]]:
    """'3:1,5;7:2' (or one 'L:i,j' per line, '#' comments) -> {3: [1, 5], 7: [2]}, order kept."""
    chosen: dict[int, list[int]] = {}
    parts = [part.split("#", 1)[0].strip() for chunk in text.splitlines() for part in chunk.split(";")]
    for part in filter(None, parts):
        layer, sep, ids = part.partition(":")
        try:
            if not sep:
                raise ValueError
            neurons = [int(i) for i in ids.split(",") if i.strip()]
            chosen.setdefault(int(layer), []).extend(n for n in neurons if n not in chosen.get(int(layer), []))
        except ValueError:
            raise NeuronSpecError(f"{where}: {part!r} is not LAYER:i,j,... (e.g. 3:17,512)") from None
    if not chosen:
        raise NeuronSpecError(f"{where}: no neurons given")
    return chosen


def given_ids(chosen: dict[int, list[int]], n_layers: int, d_mlp: int, where: str = "--neurons") -> tuple[tuple[int, ...], ...]:
    """A parsed list checked against the model's shape: one tuple per layer (empty where none given)."""
    for layer, neurons in chosen.items():
        if not 0 <= layer < n_layers:
            raise NeuronSpecError(f"{where}: layer {layer} is out of range (the model has {n_layers} layers)")
        bad = [n for n in neurons if not 0 <= n < d_mlp]
        if bad:
            raise NeuronSpecError(f"{where}: neuron(s) {bad} of layer {layer} out of range (d_mlp = {d_mlp})")
    return tuple(tuple(chosen.get(layer, ())) for layer in range(n_layers))


class Moments:
    """Streaming per-layer statistics of every neuron over real tokens (float64 sums)."""

    def __init__(self, n_layers: int, d_mlp: int):
        self.count = 0
        self.total = np.zeros((n_layers, d_mlp))
        self.squares = np.zeros((n_layers, d_mlp))
        self.peak = np.full((n_layers, d_mlp), -np.inf)

    def add(self, layer: int, values: Any) -> None:
        """values: a torch tensor [real tokens, d_mlp] of one layer's activations."""
        values = values.double()
        self.total[layer] += values.sum(0).cpu().numpy()
        self.squares[layer] += values.square().sum(0).cpu().numpy()
        np.maximum(self.peak[layer], values.max(0).values.cpu().numpy(), out=self.peak[layer])

    def score(self, method: str) -> np.ndarray:
        if method == "max":
            return self.peak
        mean = self.total / self.count
        return self.squares / self.count - mean * mean


def streaming_pass(model: Any, texts: Sequence[str], settings: ExtractSettings, batch_size: int,
                   log: Callable[[str], None]) -> Moments:
    """One forward over every prompt, keeping only running sums of each MLP neuron's activation."""
    import torch

    from lens_pipeline.capture import extract

    limit = extract.context_limit(model, settings)
    items = sorted((extract.tokenize(model, text, limit) for text in texts), key=lambda t: len(t.ids))
    cfg = model.bridge.cfg
    moments = Moments(cfg.n_layers, cfg.d_mlp)
    log(f"{model.source.name}: choosing the shared neuron basis over {len(items)} prompt(s) ...")
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        input_ids, mask = extract.pad_batch(model, batch)
        real = mask.bool()
        real[:, 0] = False  # the first token (BOS) is left out: its huge attention-sink activations would fill the basis
        hooks = [(f"blocks.{layer}.mlp.hook_post", _accumulate(moments, layer, real)) for layer in range(cfg.n_layers)]
        with torch.no_grad():
            model.bridge.run_with_hooks(input_ids, attention_mask=mask, fwd_hooks=hooks)
        moments.count += int(real.sum())
    return moments


def _accumulate(moments: Moments, layer: int, real: Any) -> Callable[[Any, Any], None]:
    def hook(value: Any, hook: Any) -> None:  # TransformerLens passes the hook point by this keyword
        moments.add(layer, value[real])  # [real tokens, d_mlp]: padding never counts

    return hook


def choose(moments: Moments, method: str, n: int) -> tuple[tuple[int, ...], ...]:
    """Top-n per layer by the method's score, highest first (ties: the lower id)."""
    score = moments.score(method)
    order = np.argsort(-score, axis=1, kind="stable")[:, :n]
    return tuple(tuple(int(i) for i in row) for row in order)


def direct_effects(model: Any, ids: tuple[tuple[int, ...], ...], token_strings: Callable[[np.ndarray], np.ndarray]
                   ) -> dict[str, Any]:
    """Per basis neuron, the tokens its output weights promote and suppress most: W_out[n] scaled by
    the final norm's weight, through W_U (the final norm's normalisation itself is left out)."""
    import torch

    bridge = model.bridge
    with torch.no_grad():
        w_u = bridge.W_U.detach().float()  # [d, V]
        gamma = bridge.ln_final.w.detach().float() if hasattr(bridge.ln_final, "w") else torch.ones(w_u.shape[0])
        effects: dict[str, Any] = {}
        for layer, neurons in enumerate(ids):
            if not neurons:
                continue
            rows = bridge.W_out[layer][list(neurons)].detach().float() * gamma  # [n, d]
            logits = rows @ w_u  # [n, V]
            up = logits.topk(EFFECT_TOP, dim=-1)
            down = (-logits).topk(EFFECT_TOP, dim=-1)
            for k, neuron in enumerate(neurons):
                effects[f"{layer}:{neuron}"] = {
                    "promote": _token_list(up.indices[k], up.values[k], token_strings),
                    "suppress": _token_list(down.indices[k], -down.values[k], token_strings),
                }
    return effects


def _token_list(ids: Any, values: Any, token_strings: Callable[[np.ndarray], np.ndarray]) -> list[list[Any]]:
    ids = ids.cpu().numpy().astype(np.int32)
    return [[int(i), str(s), round(float(v), 5)] for i, s, v in zip(ids, token_strings(ids), values.cpu().numpy())]


def basis_path(save_path: Path, model_slug: str) -> Path:
    return Path(save_path) / "caches" / model_slug / BASIS_FILE


def read_basis(save_path: Path, model_slug: str) -> dict[str, Any] | None:
    """The recorded basis of a model, or None (none yet, or unreadable)."""
    try:
        return json.loads(basis_path(save_path, model_slug).read_text())
    except (OSError, ValueError):
        return None


def write_basis(save_path: Path, model_slug: str, record: dict[str, Any]) -> Path:
    path = basis_path(save_path, model_slug)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(record, indent=1))
    os.replace(temp, path)  # atomic: a reader sees the old basis or the new one
    return path


def recorded_fits(record: dict[str, Any] | None, settings: ExtractSettings) -> bool:
    """Whether a recorded basis answers what these settings ask for."""
    if record is None:
        return False
    if settings.neuron_basis == "given":
        return _trimmed(record.get("neuron_ids", [])) == _trimmed(settings.neuron_ids)
    return record.get("method") == settings.neuron_basis and record.get("n") == settings.n_neurons


def _trimmed(ids: Sequence[Sequence[int]]) -> list[list[int]]:
    rows = [list(r) for r in ids]
    while rows and not rows[-1]:
        rows.pop()
    return rows


def resolved(settings: ExtractSettings, record: dict[str, Any]) -> ExtractSettings:
    """The settings with the basis's ids filled in: these are hashed into every cache's identity."""
    ids = tuple(tuple(row) for row in record["neuron_ids"])
    width = max(1, max(len(row) for row in ids))
    return dataclasses.replace(settings, neuron_ids=ids, n_neurons=width)


def resolve_basis(
    source: Any, model_slug: str, texts: Sequence[str], save_path: Path, settings: ExtractSettings, *,
    device: str, batch_size: int, force: bool, log: Callable[[str], None],
) -> tuple[ExtractSettings, Any]:
    """The settings for this model with its shared basis filled in, and the model if it had to be
    loaded (to choose the basis or compute its direct effects), else None."""
    if settings.neuron_basis == "prompt":
        return settings, None
    if settings.neuron_basis not in BASIS_METHODS:
        raise NeuronSpecError(f"--neuron-basis must be one of {list(BASIS_METHODS)}, not {settings.neuron_basis!r}")
    record = read_basis(save_path, model_slug)
    if recorded_fits(record, settings) and not force:
        return resolved(settings, record), None
    from lens_pipeline.capture import explain, extract
    from lens_pipeline.capture import models as model_sources

    model = model_sources.load_model(source, device, explain.model_dtype(settings))  # the stage's model, reused by it
    cfg = model.bridge.cfg
    if settings.neuron_basis == "given":
        ids = given_ids({layer: list(row) for layer, row in enumerate(settings.neuron_ids) if row}, cfg.n_layers, cfg.d_mlp)
        how: dict[str, Any] = {"method": "given", "n": max(len(r) for r in ids)}
    else:
        moments = streaming_pass(model, texts, settings, batch_size, log)
        ids = choose(moments, settings.neuron_basis, settings.n_neurons)
        score = "population variance" if settings.neuron_basis == "variance" else "max activation"
        how = {"method": settings.neuron_basis, "n": settings.n_neurons, "prompts": len(texts), "tokens": moments.count,
               "score": f"{score} over every real token but the first (BOS) of every prompt"}
    token_strings = extract.TokenStrings(model.tokenizer)
    record = {**how, "model": source.name, "neuron_ids": [list(r) for r in ids], "d_mlp": int(cfg.d_mlp),
              "activation": str(getattr(cfg, "act_fn", "")), "effects": direct_effects(model, ids, token_strings)}
    path = write_basis(save_path, model_slug, record)
    log(f"{source.name}: neuron basis ({how['method']}, {how['n']} per layer) written to {path}")
    return resolved(settings, record), model


def given_rows(spec: str | dict[int, Sequence[int]], where: str = "--neurons") -> dict[str, Any]:
    """A user's list ('3:1,5;7:2' or {3: [1, 5]}) as ExtractSettings fields (rows up to the last given layer)."""
    chosen = parse_neuron_spec(spec, where) if isinstance(spec, str) else {int(k): list(v) for k, v in spec.items()}
    if any(layer < 0 for layer in chosen):
        raise NeuronSpecError(f"{where}: layer numbers start at 0")
    rows = tuple(tuple(chosen.get(layer, ())) for layer in range(max(chosen) + 1))
    return {"neuron_basis": "given", "neuron_ids": rows, "n_neurons": max(len(r) for r in rows)}
