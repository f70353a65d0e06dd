"""The model card: what the model-level figures need to know about a model, captured once per model
while the activations stage has it loaded, so that no figure ever loads a model.

Written beside the model's caches, atomically, and recorded in the index as a row of kind
"model_card" (one per model; `is_current` says whether a save path's card is this version's):

    caches/<model>/model_card.json   config, parameter counts, module tree, what the arrays hold
    caches/<model>/model_card.npz    the arrays (CARD_ARRAYS): plain .npy members in a zip, np.load reads it

What it holds:
- the architecture (`architecture`): layers, heads, KV heads, head size, widths, vocabulary,
  positional scheme, norm type and placement, MLP activation and gating, tied embeddings;
- parameter counts (`parameter_counts`) per part (PARTS), per block and in total, from a copy of
  the Hugging Face model built on the meta device from the loaded model's config (no memory, and
  the names and shapes are the library's own, without the TransformerBridge's extra split
  q/k/v views of a fused GPT-2 c_attn); a fused q/k/v matrix is split by head counts; the module
  tree with each module's count;
- the input-embedding PCA (`pca_basis`): mean, top 3 components and explained-variance ratios of
  the token embedding matrix, from the float64 eigendecomposition of its centred Gram matrix XᵀX
  (equal to numpy's SVD of the centred matrix up to sign); every token's 3-D coordinates and a
  fixed sample of VOCAB_SAMPLE token ids (seeded, sorted) with their strings, for backgrounds;
- the shared residual basis (`residual_basis`): one per model, so trajectories of different prompts
  share axes. The residual stream before layer 0 and after every layer, for every position but the
  first of REFERENCE_TEXT (a fixed text, so the basis does not depend on which prompts ran first),
  each vector scaled to unit RMS (x / sqrt(mean(x²)), what the next norm sees before its gain, so
  late layers' larger norms do not take over the axes); PCA of those vectors as above.

`EmbeddingViews` computes the per-prompt arrays of `--embedding-views` inside the extract forward
(residuals projected on the shared basis, each token's nearest neighbours in the embedding matrix).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lens_pipeline.capture.models import ENCODER_TYPES, LoadedModel, ModelSource, slug
from lens_pipeline.store import index
from lens_pipeline.store.cache import FIXED_ZIP_TIME, write_atomic

CARD_VERSION = 1  # bump when the card's content changes: the next activations run rewrites it
CARD_KIND = "model_card"  # its index row's kind
CARD_JSON, CARD_NPZ = "model_card.json", "model_card.npz"
N_COMPONENTS = 3
VOCAB_SAMPLE = 2000
SAMPLE_SEED = 0
N_NEIGHBORS = 5  # nearest neighbours per token stored with --embedding-views
REFERENCE_TEXT = (
    "The old lighthouse keeper climbed the stairs each evening and lit the lamp before the sun went down. "
    "Ships passing the rocks at night could see its beam from twenty miles away. In 1887 a storm broke "
    "three windows, and the keeper wrote in his log: \"Wind from the north-east, heavy rain, lamp kept "
    "burning.\" Today the tower is a museum, and visitors ask how many steps there are (there are 114). "
    "def add(a, b):\n    return a + b\nprint(add(2, 3))  # prints 5\n"
    "Water boils at 100 degrees Celsius at sea level, but at the top of a high mountain it boils sooner. "
    "She said she would call back tomorrow; he was not sure she meant it."
)
# The parts parameters are counted in, in drawing order; `other` catches anything unrecognised,
# so the parts always sum to the total.
PARTS: dict[str, str] = {
    "embed": "token embedding",
    "pos_embed": "position embedding",
    "token_type_embed": "token-type embedding",
    "embed_norm": "embedding norm",
    "attn_q": "attention W_Q",
    "attn_k": "attention W_K",
    "attn_v": "attention W_V",
    "attn_o": "attention W_O",
    "mlp_gate": "MLP gate",
    "mlp_in": "MLP in (up)",
    "mlp_out": "MLP out (down)",
    "block_norms": "block norms",
    "block_other": "other block parameters",
    "final_norm": "final norm",
    "unembed": "unembedding",
    "head_extra": "LM head transform and bias",
    "pooler": "pooler",
    "other": "other",
}
BLOCK_PARTS = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_in", "mlp_out", "block_norms", "block_other")
CARD_ARRAYS: dict[str, str] = {
    "embed_mean": "[d_model] float64: mean of the token embedding matrix's rows",
    "embed_components": "[3, d_model] float64: its top principal axes (unit rows; largest |loading| positive)",
    "embed_explained": "[3] float64: the share of the embedding variance each axis explains",
    "vocab_coords": "[V, 3] float32: every token's embedding projected, (E[id] - mean) @ components.T",
    "vocab_sample_ids": f"[{VOCAB_SAMPLE}] int32: a fixed sample of token ids (seed {SAMPLE_SEED}, sorted)",
    "vocab_sample_strs": f"[{VOCAB_SAMPLE}] str: their strings",
    "resid_mean": "[d_model] float64: mean of the unit-RMS reference residuals",
    "resid_components": "[3, d_model] float64: their top principal axes: the shared residual basis",
    "resid_explained": "[3] float64: the share of their variance each axis explains",
    "resid_reference": "[L+1, T-1, 3] float32: the reference text's residuals projected (a background)",
}
FUSED_QKV = {"c_attn", "qkv_proj", "query_key_value", "wqkv", "qkv"}
ATTN_NAMES = {"q": {"q_proj", "query", "q", "wq"}, "k": {"k_proj", "key", "k", "wk"}, "v": {"v_proj", "value", "v", "wv"},
              "o": {"o_proj", "out_proj", "c_proj", "dense", "o", "wo"}}
MLP_NAMES = {"gate": {"gate_proj", "w1"}, "in": {"up_proj", "c_fc", "fc1", "dense_h_to_4h", "w3", "fc_in"},
             "out": {"down_proj", "fc2", "dense_4h_to_h", "w2", "fc_out"}}
BLOCK_RE = re.compile(r"^(.*?\.)?(?:layers|h|layer|blocks)\.(\d+)\.(.+)$")


class CardMissing(Exception):
    """A figure needs the model card and the save path has none (or an older version)."""


# --------------------------------------------------------------------------- architecture


def architecture(model: LoadedModel) -> dict[str, Any]:
    """The shape facts the diagram draws, from TransformerLens's config and the HF config."""
    cfg, hf_config = model.bridge.cfg, model.bridge.original_model.config
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or getattr(hf_config, "num_key_value_heads", None) or n_heads)
    rope = getattr(hf_config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    positional = str(getattr(cfg, "positional_embedding_type", "standard"))
    hf_position = getattr(hf_config, "position_embedding_type", None)
    return {
        "family": model.family,
        "hf_class": type(model.bridge.original_model).__name__,
        "causal": model.causal,
        "n_layers": int(cfg.n_layers),
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "grouped_query": n_kv < n_heads,
        "d_head": int(cfg.d_head),
        "d_model": int(cfg.d_model),
        "d_mlp": int(cfg.d_mlp) if getattr(cfg, "d_mlp", None) else None,
        "d_vocab": int(cfg.d_vocab),
        "n_ctx": int(cfg.n_ctx),
        "positional": {"rotary": "rotary (RoPE)", "standard": "learned absolute"}.get(positional, positional),
        "positional_detail": (f"θ = {theta:g}" if theta else "") if positional == "rotary" else (hf_position or ""),
        "norm": {"RMS": "RMSNorm", "RMSPre": "RMSNorm", "LN": "LayerNorm", "LNPre": "LayerNorm"}.get(
            str(cfg.normalization_type), str(cfg.normalization_type)),
        # Encoders here are BERT-style (norm after each residual add); the decoders pre-norm.
        "norm_placement": "post" if model.family in ENCODER_TYPES else "pre",
        "activation": str(cfg.act_fn),
        "gated_mlp": bool(getattr(cfg, "gated_mlp", False)),
        "tied_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False)),
    }


def _clean_copy(model: LoadedModel) -> Any:
    """The Hugging Face model rebuilt from its config on the meta device: the library's own parameter
    names and shapes, untouched by the bridge, in no memory."""
    import torch

    hf = model.bridge.original_model
    with torch.device("meta"):
        return type(hf)(hf.config)


def classify(name: str) -> tuple[int | None, str]:
    """(block index or None, part) of a parameter by its Hugging Face name; fused q/k/v -> "attn_qkv"."""
    match = BLOCK_RE.match(name)
    if match is None:
        return None, _outside_part(name.lower().split("."))
    parts = match.group(3).lower().split(".")
    return int(match.group(2)), _block_part(parts)


def _outside_part(parts: list[str]) -> str:
    leaf = parts[-2] if len(parts) > 1 else parts[-1]
    if any(p in ("word_embeddings", "embed_tokens", "wte", "embed_in") for p in parts):
        return "embed"
    if any(p in ("position_embeddings", "wpe", "embed_positions") for p in parts):
        return "pos_embed"
    if "token_type_embeddings" in parts:
        return "token_type_embed"
    if any(p in ("cls", "predictions") for p in parts):
        return "head_extra"
    if "pooler" in parts:
        return "pooler"
    if any("norm" in p or p.startswith("ln") for p in parts):
        return "embed_norm" if "embeddings" in parts else "final_norm"
    if leaf in ("lm_head", "embed_out") or parts[0] == "lm_head":
        return "unembed"
    return "other"


def _block_part(parts: list[str]) -> str:
    module = parts[-2] if len(parts) > 1 else parts[-1]
    if any("norm" in p or p.startswith("ln_") for p in parts):
        return "block_norms"
    if module in FUSED_QKV:
        return "attn_qkv"
    in_attention = any(p in ("self_attn", "attn", "attention", "self_attention") for p in parts)
    if in_attention:
        for key, names in ATTN_NAMES.items():
            if module in names:
                return f"attn_{key}"
        return "block_other"
    in_mlp = (any(p in ("mlp", "intermediate", "feed_forward", "ffn", "output") for p in parts)
              or any(module in names for names in MLP_NAMES.values()))  # OPT's fc1/fc2 sit in the block itself
    if in_mlp:
        if parts[0] == "intermediate" or module in MLP_NAMES["in"]:
            return "mlp_in"
        if parts[0] == "output" or module in MLP_NAMES["out"] or module == "c_proj":
            return "mlp_out"
        if module in MLP_NAMES["gate"]:
            return "mlp_gate"
    return "block_other"


def _split_qkv(numel: int, n_heads: int, n_kv: int) -> dict[str, int]:
    """A fused q/k/v matrix (or bias) in proportion to query and key/value heads; sums to numel."""
    q = numel * n_heads // (n_heads + 2 * n_kv)
    k = numel * n_kv // (n_heads + 2 * n_kv)
    return {"attn_q": q, "attn_k": k, "attn_v": numel - q - k}


def n_params(model: LoadedModel) -> int:
    """The model's parameter count, each tensor once (tied ones too), as `parameter_counts` totals
    them: from the clean copy, since the bridge's own copy of GPT-2 holds split q/k/v copies of
    c_attn beside it (summing that copy counts q/k/v twice)."""
    return sum(int(parameter.numel()) for parameter in _clean_copy(model).parameters())


def parameter_counts(clean: Any, n_heads: int, n_kv: int) -> dict[str, Any]:
    """Counts per part, per block (each block's parts) and in total; tied tensors counted once."""
    parts = dict.fromkeys(PARTS, 0)
    blocks: dict[int, dict[str, int]] = {}
    for name, parameter in clean.named_parameters():  # named_parameters skips a tied tensor's second name
        block, part = classify(name)
        numel = int(parameter.numel())
        shares = _split_qkv(numel, n_heads, n_kv) if part == "attn_qkv" else {part: numel}
        for key, count in shares.items():
            parts[key] += count
            if block is not None:
                blocks.setdefault(block, dict.fromkeys(BLOCK_PARTS, 0))[key] += count
    per_block = [blocks.get(i, dict.fromkeys(BLOCK_PARTS, 0)) for i in range(max(blocks, default=-1) + 1)]
    return {"total": sum(parts.values()), "parts": parts, "blocks": per_block,
            "blocks_identical": all(b == per_block[0] for b in per_block)}


def module_tree(clean: Any) -> list[dict[str, Any]]:
    """Every module (path, class, depth, parameters under it, tied tensors counted at their first name)."""
    owner = [(name.rsplit(".", 1)[0] if "." in name else "", int(p.numel())) for name, p in clean.named_parameters()]
    nodes = []
    for path, module in clean.named_modules():
        prefix = path + "." if path else ""
        count = sum(n for where, n in owner if where == path or where.startswith(prefix) or not path)
        nodes.append({"path": path or "(model)", "type": type(module).__name__, "depth": path.count(".") + bool(path),
                      "params": count})
    return nodes


# --------------------------------------------------------------------------- PCA


ROW_CHUNK = 8192  # rows converted to float64 at once: a vocabulary's float64 copy would be hundreds of MB


def _row_chunks(matrix: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, matrix.shape[0], ROW_CHUNK):
        yield np.asarray(matrix[start : start + ROW_CHUNK], dtype=np.float64)


def pca_basis(matrix: np.ndarray, k: int = N_COMPONENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [d], components [k, d], explained-variance ratios [k]) of the rows of `matrix`, in float64.

    The eigendecomposition of the centred Gram matrix XᵀX (d x d): the same axes as numpy's SVD of
    the centred matrix (up to sign), a fraction of its cost for V >> d; summed over row chunks, so no
    float64 copy of the whole matrix is made. Each axis's sign is fixed so its largest-magnitude
    loading is positive: the same matrix always gives the same basis."""
    mean = sum(chunk.sum(0) for chunk in _row_chunks(matrix)) / matrix.shape[0]
    gram = sum((chunk - mean).T @ (chunk - mean) for chunk in _row_chunks(matrix))
    eigenvalues, vectors = np.linalg.eigh(gram)  # ascending
    order = np.argsort(eigenvalues)[::-1][:k]
    components = vectors[:, order].T
    components *= np.sign(components[np.arange(len(order)), np.abs(components).argmax(1)])[:, None]
    total = float(np.clip(eigenvalues, 0, None).sum())
    ratio = np.clip(eigenvalues[order], 0, None) / (total if total > 0 else 1.0)
    if len(order) < k:  # fewer dimensions than axes asked for: the rest are flat
        components = np.pad(components, ((0, k - len(order)), (0, 0)))
        ratio = np.pad(ratio, (0, k - len(order)))
    return mean, components, ratio


def project(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Coordinates of row vectors on a basis: (x - mean) @ components.T, in float64 a chunk of rows at a time."""
    vectors = np.asarray(vectors)
    rows = vectors.reshape(-1, vectors.shape[-1])
    out = np.empty((rows.shape[0], components.shape[0]), dtype=np.float64)
    for start, chunk in zip(range(0, rows.shape[0], ROW_CHUNK), _row_chunks(rows)):
        out[start : start + ROW_CHUNK] = (chunk - mean) @ components.T
    return out.reshape(*vectors.shape[:-1], components.shape[0])


def unit_rms(x: Any) -> Any:
    """Each vector scaled to unit root-mean-square (numpy or torch, last axis)."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.sqrt((x * x).mean(-1, keepdims=True)), 1e-12)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def input_embeddings(model: LoadedModel) -> Any:
    """The token embedding matrix [V, d_model] (a tensor on the model's device)."""
    return model.bridge.original_model.get_input_embeddings().weight


def reference_residuals(model: LoadedModel) -> np.ndarray:
    """[L+1, T-1, d_model] float64: REFERENCE_TEXT's residual stream before layer 0 and after each
    layer, without its first position (BOS or [CLS]: a sink whose state is unlike any word's)."""
    import torch

    from lens_pipeline.capture.tokens import context_limit, pad_batch, tokenize

    tokens = tokenize(model, REFERENCE_TEXT, context_limit(model, _default_settings()))
    n_layers = model.bridge.cfg.n_layers
    kept: list[Any] = [None] * (n_layers + 1)

    def keeper(slot: int) -> Callable[[Any, Any], None]:
        def hook(value: Any, hook: Any) -> None:
            kept[slot] = value.detach()[0].double().cpu()

        return hook

    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    input_ids, attention_mask = pad_batch(model, [tokens])
    with torch.no_grad():
        model.bridge.run_with_hooks(input_ids, attention_mask=attention_mask,
                                    fwd_hooks=[(name, keeper(slot)) for slot, name in enumerate(names)])
    return torch.stack(kept)[:, 1:].numpy()


def _default_settings() -> Any:
    from lens_pipeline.store.cache import ExtractSettings

    return ExtractSettings()


# --------------------------------------------------------------------------- building and writing


def build(model: LoadedModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the card's JSON content, its arrays) for a loaded model."""
    arch = architecture(model)
    clean = _clean_copy(model)
    counts = parameter_counts(clean, arch["n_heads"], arch["n_kv_heads"])
    out_embed = clean.get_output_embeddings()
    arch["tied_embeddings"] = bool(out_embed is not None and out_embed.weight is clean.get_input_embeddings().weight)
    embeddings = input_embeddings(model).detach().float().cpu().numpy()  # float64 a chunk at a time
    mean, components, ratio = pca_basis(embeddings)
    vocab = embeddings.shape[0]
    sample = np.sort(np.random.default_rng(SAMPLE_SEED).choice(vocab, min(VOCAB_SAMPLE, vocab), replace=False))
    reference = unit_rms(reference_residuals(model))
    r_mean, r_components, r_ratio = pca_basis(reference.reshape(-1, reference.shape[-1]))
    arrays = {
        "embed_mean": mean, "embed_components": components, "embed_explained": ratio,
        "vocab_coords": project(embeddings, mean, components).astype(np.float32),
        "vocab_sample_ids": sample.astype(np.int32),
        "vocab_sample_strs": np.array([model.tokenizer.decode([int(i)]) for i in sample], dtype=str),
        "resid_mean": r_mean, "resid_components": r_components, "resid_explained": r_ratio,
        "resid_reference": project(reference, r_mean, r_components).astype(np.float32),
    }
    info = {
        "card_version": CARD_VERSION,
        "model": model.source.name,
        "model_id": model.source.model_id,
        "random_weights": model.source.random_weights,
        "architecture": arch,
        "parameters": counts,
        "parts": PARTS,
        "embedding_pca": {"method": "eigendecomposition of the centred token-embedding Gram matrix, float64",
                          "explained_variance_ratio": [float(r) for r in ratio], "vocab_sample": int(len(sample))},
        "residual_basis": {"method": "PCA of unit-RMS residuals (before layer 0 and after each layer, first position "
                                     "left out) of the fixed reference text", "reference_text": REFERENCE_TEXT,
                           "n_vectors": int(reference.shape[0] * reference.shape[1]),
                           "explained_variance_ratio": [float(r) for r in r_ratio]},
        "captured_on": {"device": model.device, "dtype": model.dtype},
        "arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape), "meaning": CARD_ARRAYS[name]}
                   for name, a in arrays.items()},
        "module_tree": module_tree(clean),
    }
    return info, arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A .npz (zip of .npy members, deflated) with fixed times: the same arrays, the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def card_relpaths(model_name: str) -> tuple[str, str]:
    folder = f"caches/{slug(model_name)}"
    return f"{folder}/{CARD_JSON}", f"{folder}/{CARD_NPZ}"


def card_key(model_name: str) -> index.Key:
    return (CARD_KIND, model_name, "", "", None, None, "")


def write(model: LoadedModel, save_path: str | Path) -> dict[str, Any]:
    """Build the card, write its two files atomically (arrays first) and return its index row."""
    info, arrays = build(model)
    json_path, npz_path = card_relpaths(model.source.name)
    files = []
    for relpath, data, fmt in ((npz_path, npz_bytes(arrays), "npz"),
                               (json_path, json.dumps(info, ensure_ascii=False, indent=1).encode("utf-8"), "json")):
        write_atomic(Path(save_path) / relpath, data)
        files.append({"path": relpath, "format": fmt, "bytes": len(data), "sha256": index.sha256_bytes(data)})
    return index.make_row(CARD_KIND, model=model.source.name, model_id=model.source.model_id, prompt_hash="", path=json_path,
                          format="json+npz", bytes=files[1]["bytes"], sha256=files[1]["sha256"], files=files,
                          card_version=CARD_VERSION, random_weights=model.source.random_weights,
                          n_params=info["parameters"]["total"])


def is_current(save_path: str | Path, source: ModelSource, newest: dict[index.Key, dict[str, Any]] | None = None,
               accept_error: bool = True) -> bool:
    """Whether the save path holds this version's card of `source`, files intact (with `accept_error`,
    a card that failed for this version counts too: it is not retried on every run)."""
    newest = newest if newest is not None else index.latest(index.read_rows(save_path))
    return index.model_output_current(newest.get(card_key(source.name)), save_path, "card_version", CARD_VERSION, source.model_id,
                                      accept_error)


_BASES: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # model id -> the residual basis the caches project on


def load_basis(save_path: str | Path, source: ModelSource) -> None:
    """Remember the saved card's residual basis for `EmbeddingViews`, when this version's card is there."""
    if is_current(save_path, source, accept_error=False):
        card = load(Path(save_path) / card_relpaths(source.name)[0])
        _BASES[source.model_id] = (card.arrays["resid_mean"], card.arrays["resid_components"])


def ensure(model: LoadedModel, save_path: str | Path, record: Callable[[list[dict[str, Any]]], Any],
           log: Callable[[str], None] | None = None) -> None:
    """Write the card unless this version's is there (the model is loaded anyway); remember its
    residual basis for `EmbeddingViews`. A card that fails is recorded as an error row, never fatal."""
    import traceback

    source = model.source
    if is_current(save_path, source, accept_error=False):
        load_basis(save_path, source)
        return
    try:
        row = write(model, save_path)
    except Exception as error:  # a figure can say the card is missing; the caches matter more
        if log:
            log(f"warning: {source.name}: model card failed: {type(error).__name__}: {error}")
        record([index.make_row(CARD_KIND, model=source.name, model_id=source.model_id, prompt_hash="", status="error",
                               card_version=CARD_VERSION, path=card_relpaths(source.name)[0],
                               error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())])
        return
    record([row])
    card = load(Path(save_path) / row["path"])
    _BASES[source.model_id] = (card.arrays["resid_mean"], card.arrays["resid_components"])


# --------------------------------------------------------------------------- reading


@dataclass
class ModelCard:
    """A card as figures read it: `info` (the JSON) and `arrays` (CARD_ARRAYS)."""

    info: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def architecture(self) -> dict[str, Any]:
        return self.info["architecture"]

    @property
    def parameters(self) -> dict[str, Any]:
        return self.info["parameters"]

    def embedding_coords(self, token_ids: Any) -> np.ndarray:
        """[n, 3] coordinates of tokens in the input-embedding PCA."""
        return self.arrays["vocab_coords"][np.asarray(token_ids, dtype=np.int64)].astype(np.float64)


_LOADED: dict[tuple[str, int, int], ModelCard] = {}


def load(json_path: str | Path) -> ModelCard:
    """Read a card (its JSON and the .npz beside it); memoised per file version."""
    json_path = Path(json_path)
    try:
        stat = json_path.stat()
    except OSError:
        raise CardMissing(f"no model card at {json_path}: run python -m lens_pipeline.activations for this model "
                          f"(it writes one whenever it has the model loaded)") from None
    key = (str(json_path), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        info = json.loads(json_path.read_text(encoding="utf-8"))
        if info.get("card_version") != CARD_VERSION:
            raise CardMissing(f"{json_path} is version {info.get('card_version')}, not {CARD_VERSION}: rerun "
                              f"python -m lens_pipeline.activations to rewrite it")
        with np.load(json_path.with_name(CARD_NPZ), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        _LOADED.clear()  # one model's card at a time is what a figures run reads
        _LOADED[key] = ModelCard(info, arrays)
    return _LOADED[key]


def card_for(cache: Any) -> ModelCard:
    """The card beside a cache file (caches/<model>/)."""
    return load(Path(cache.path).parent / CARD_JSON)


# --------------------------------------------------------------------------- per-prompt arrays (--embedding-views)


def residual_basis(model: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """The shared residual basis (mean, components): the card's when `ensure` has run, else computed."""
    if model.source.model_id not in _BASES:
        reference = unit_rms(reference_residuals(model))
        mean, components, _ = pca_basis(reference.reshape(-1, reference.shape[-1]))
        _BASES[model.source.model_id] = (mean, components)
    return _BASES[model.source.model_id]


class EmbeddingViews:
    """Hooks and outputs for `--embedding-views`: each layer's residuals projected on the shared basis
    ([L+1, B, T, 3]: unit-RMS, as the basis was made), and each token's N_NEIGHBORS nearest tokens by
    cosine similarity of input embeddings (itself left out)."""

    def __init__(self, model: LoadedModel):
        import torch

        mean, components = residual_basis(model)
        weight = input_embeddings(model).detach()
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=weight.device)
        self.components = torch.as_tensor(components, dtype=torch.float32, device=weight.device)
        self.weight = weight
        self.projected: list[Any] = [None] * (model.bridge.cfg.n_layers + 1)

    def hooks(self) -> list[tuple[str, Callable[[Any, Any], None]]]:
        def keep(slot: int) -> Callable[[Any, Any], None]:
            def hook(value: Any, hook: Any) -> None:
                self.projected[slot] = (unit_rms(value.detach().float()) - self.mean) @ self.components.T

            return hook

        n_layers = len(self.projected) - 1
        return [("blocks.0.hook_resid_pre", keep(0))] + [(f"blocks.{layer}.hook_resid_post", keep(layer + 1))
                                                         for layer in range(n_layers)]

    def outputs(self, input_ids: Any, chunk: int = 256) -> dict[str, Any]:
        import torch

        unique, inverse = torch.unique(input_ids, return_inverse=True)
        normed = torch.nn.functional.normalize(self.weight.float(), dim=-1)
        sims, ids = [], []
        for start in range(0, len(unique), chunk):
            rows = unique[start : start + chunk]
            scores = normed[rows] @ normed.T  # [chunk, V]
            scores[torch.arange(len(rows), device=scores.device), rows] = -torch.inf  # not itself
            top = scores.topk(N_NEIGHBORS, dim=-1)
            sims.append(top.values)
            ids.append(top.indices)
        return {"resid_proj": torch.stack(self.projected),  # [L+1, B, T, 3]
                "embed_neighbors": torch.cat(ids)[inverse].to(torch.int32),  # [B, T, k]
                "embed_neighbor_sims": torch.cat(sims)[inverse].to(torch.float16)}


def prompt_arrays(host: dict[str, Any], row: int, length: int, token_strings: Callable[[np.ndarray], np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """One prompt's `--embedding-views` arrays cut out of the batch's host arrays."""
    neighbors = np.ascontiguousarray(host["embed_neighbors"][row, :length])
    return {"resid_proj": np.ascontiguousarray(host["resid_proj"][:, row, :length]).astype(np.float32),
            "embed_neighbors": neighbors,
            "embed_neighbor_sims": np.ascontiguousarray(host["embed_neighbor_sims"][row, :length]),
            "embed_neighbor_strs": token_strings(neighbors)}
