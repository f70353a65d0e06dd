"""Head roles: what each attention head of a model does, measured once per model while the
activations stage has it loaded, like the model card (lens_pipeline/capture/model_card.py).

Written beside the model's caches, atomically, and recorded in the index as a row of kind
"head_roles" (one per model; `is_current` says whether a save path's roles are this version's):

    caches/<model>/head_roles.json   per-head scores, the top heads of each role, the causal check

What is run (every choice fixed, so the same model always gives the same file):
- the natural text: the model card's REFERENCE_TEXT, tokenized as the stage tokenizes prompts;
- the repeated sequences: N_REPEATS rows of [first token, r_1..r_n, r_1..r_n], n = REPEAT_LEN, where
  the first token is the one the natural text starts with (BOS where the model has one) and r_1..r_n
  are distinct token ids drawn with numpy's default_rng(SEED) from the vocabulary without the
  tokenizer's special and added tokens (so each second-half token has exactly one earlier copy).

The scores, each an attention share in [0, 1] per head (A[i, j]: attention from query i to key j):
- previous_token: mean over queries i >= 1 of A[i, i-1];
- duplicate_token: mean, over queries whose token occurs earlier in the sequence, of the attention
  on the earlier positions holding the same token (for an encoder: the other positions, either side);
- first_token: mean over queries i >= 1 of A[i, 0] (for an encoder, every query: nothing forces it);
  these three on the natural text and on every repeated sequence: each sequence's score, then their
  mean, every sequence weighted alike;
- induction: on the repeated sequences only, mean over second-half queries i = n+1..2n of A[i, i-n+1]
  (the token after the earlier copy of query i's token), then the mean over sequences.

transformer_lens.head_detector's "mul" scores with its own detection patterns are the same sums
over the whole [T, T] pattern divided by T instead of by the number of queries that have the role:
previous = TL x T / (T-1), duplicate = TL x T / (queries with an earlier copy), induction (on a
repeated sequence) = TL x T / n.

The causal check (causal models only): the top induction head's output (its slice of
`blocks.L.attn.hook_z`) zeroed, and each of N_RANDOM_HEADS other heads drawn with
default_rng(SEED), one ablation per group of batch rows in one forward over the first N_CAUSAL
repeated sequences; the loss is the mean cross-entropy of predicting second-half tokens r_2..r_n
(the ones an induction head can copy), over those sequences, and the clean loss is the same on the
clean forward. Confirmed when ablating the top head raises it more
than ablating any random head. Encoders (bidirectional attention, no next-token loss) get no
induction score and no causal check: `scores["induction"]` and `causal_check` are null.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lens_pipeline.capture.model_card import REFERENCE_TEXT
from lens_pipeline.capture.models import LoadedModel, ModelSource, slug
from lens_pipeline.store import index
from lens_pipeline.store.cache import write_atomic
from lens_pipeline.store.head_roles import HEAD_ROLES_JSON, LABEL_THRESHOLDS, ROLES

HEAD_ROLES_VERSION = 1  # bump when the scores' definitions or inputs change: the next activations run rewrites them
HEAD_ROLES_KIND = "head_roles"  # its index row's kind
TEXTS = (REFERENCE_TEXT,)
REPEAT_LEN = 40  # n: random tokens in each half
N_REPEATS = 4  # repeated sequences
SEED = 0
N_CAUSAL = 2  # of the repeated sequences, the first ones the causal check runs on (its forward has 6 copies of each)
N_RANDOM_HEADS = 5  # heads ablated to compare the top induction head with
TOP_K = 5  # heads listed per role
TEXT_LIMIT = 512  # tokens of a natural text used at most
# Each score's definition, written into the JSON (A[i, j]: attention from query i to key j; n = REPEAT_LEN).
DEFINITIONS: dict[str, str] = {
    "previous_token": "mean over queries i >= 1 of A[i, i-1]; per sequence (the natural text and each repeated "
                      "sequence), then the mean over sequences",
    "duplicate_token": "mean, over queries whose token occurs at an earlier position (an encoder: any other position), "
                       "of the attention on those positions; per sequence, then the mean over sequences",
    "induction": "on the repeated sequences [first, r_1..r_n, r_1..r_n] only: mean over queries i = n+1..2n of "
                 "A[i, i-n+1], the token after the earlier copy; then the mean over sequences",
    "first_token": "mean over queries i >= 1 (an encoder: every query) of A[i, 0]; per sequence, then the mean over "
                   "sequences",
}


# --------------------------------------------------------------------------- inputs


def ordinary_token_ids(model: LoadedModel) -> np.ndarray:
    """The token ids the random sequences draw from: the model's vocabulary less special and added tokens."""
    tokenizer = model.tokenizer
    vocabulary = min(int(model.bridge.cfg.d_vocab), len(tokenizer))
    excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return np.array([i for i in range(vocabulary) if i not in excluded], dtype=np.int64)


def text_tokens(model: LoadedModel) -> list[list[int]]:
    """The natural texts' token ids, as the stage tokenizes a prompt."""
    from lens_pipeline.capture.tokens import tokenize

    limit = min(TEXT_LIMIT, int(getattr(model.bridge.cfg, "n_ctx", TEXT_LIMIT) or TEXT_LIMIT))
    return [tokenize(model, text, limit).ids for text in TEXTS]


def repeated_tokens(model: LoadedModel, n: int = REPEAT_LEN, rows: int = N_REPEATS, seed: int = SEED) -> np.ndarray:
    """[rows, 2n+1] int64: [first token, r_1..r_n, r_1..r_n], the r distinct and never the first token."""
    first = text_tokens(model)[0][0]
    pool = ordinary_token_ids(model)
    pool = pool[pool != first]
    rng = np.random.default_rng(seed)
    out = np.empty((rows, 2 * n + 1), dtype=np.int64)
    for row in range(rows):
        half = rng.choice(pool, n, replace=False)
        out[row] = np.concatenate([[first], half, half])
    return out


# --------------------------------------------------------------------------- scores


def pattern_scores(pattern: Any, tokens: Any, causal: bool = True, repeat_len: int | None = None) -> dict[str, Any]:
    """Per-sequence scores [B, H] (float64 tensors) of one layer's patterns [B, H, T, T] of unpadded
    sequences `tokens` [B, T]: the roles' definitions (module docstring); "induction" only with
    `repeat_len` (the sequences are then [first, r, r] with |r| = repeat_len). A sequence with no
    query that has an earlier copy gets NaN for duplicate_token."""
    import torch

    pattern = pattern.double()
    length = pattern.shape[-1]
    queries = slice(1, None) if causal else slice(None)
    out = {"previous_token": pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1),
           "first_token": pattern[..., queries, 0].mean(-1)}
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, T, T]
    eye = torch.eye(length, dtype=torch.bool, device=same.device)
    duplicate = same & (torch.ones_like(eye).tril(-1) if causal else ~eye)
    has = duplicate.any(-1)  # [B, T]: queries whose token occurs at another (earlier) position
    on_copies = (pattern * duplicate[:, None]).sum(-1)  # [B, H, T]
    counts = has.sum(-1)[:, None].double()
    out["duplicate_token"] = (on_copies * has[:, None]).sum(-1) / counts  # 0 / 0 = NaN: no duplicates
    if repeat_len is not None:
        query = torch.arange(repeat_len + 1, 2 * repeat_len + 1, device=pattern.device)
        out["induction"] = pattern[..., query, query - repeat_len + 1].mean(-1)
    return out


def _forward(model: LoadedModel, input_ids: Any, hooks: list[tuple[str, Callable[..., Any]]]) -> Any:
    """The forward with hooks, to the final norm's output [B, T, d] where the bridge has an unembedding
    hook (logits are unembedded only where needed), else its full output."""
    import torch

    from lens_pipeline.capture.explain.passes import run_to_final_norm

    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        if "unembed.hook_in" in model.bridge.hook_dict:
            return run_to_final_norm(model.bridge, input_ids, mask, hooks)
        return model.bridge.run_with_hooks(input_ids, attention_mask=mask, fwd_hooks=hooks)


def _logits(model: LoadedModel, final: Any) -> Any:
    return model.bridge.unembed(final) if "unembed.hook_in" in model.bridge.hook_dict else final


def sequence_scores(model: LoadedModel, tokens: Any, repeat_len: int | None = None,
                    ablate: list[tuple[int, int]] | None = None) -> tuple[dict[str, np.ndarray], Any]:
    """({role: [B, L, H] float64} per-sequence scores, the forward's final-norm output or logits) of one
    batch of equal-length sequences [B, T]. `ablate`: one (layer, head) per equal group of rows,
    zeroed in `blocks.L.attn.hook_z` for those rows only; the scores are then not measured ({})."""
    import torch

    n_layers = int(model.bridge.cfg.n_layers)
    input_ids = torch.as_tensor(tokens, dtype=torch.long, device=model.device)
    per_layer: list[dict[str, Any] | None] = [None] * n_layers

    def score_hook(layer: int) -> Callable[[Any, Any], None]:
        def hook(value: Any, hook: Any) -> None:
            per_layer[layer] = pattern_scores(value.detach(), input_ids, model.causal, repeat_len)

        return hook

    hooks: list[tuple[str, Callable[..., Any]]] = [] if ablate else [
        (f"blocks.{layer}.attn.hook_pattern", score_hook(layer)) for layer in range(n_layers)]
    if ablate:
        group = input_ids.shape[0] // len(ablate)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for slot, (layer, head) in enumerate(ablate):
            by_layer.setdefault(layer, []).append((slot, head))

        def zero(ablations: list[tuple[int, int]]) -> Callable[[Any, Any], Any]:
            def hook(value: Any, hook: Any) -> Any:
                value = value.clone()
                for slot, head in ablations:
                    value[slot * group : (slot + 1) * group, :, head] = 0.0
                return value

            return hook

        hooks += [(f"blocks.{layer}.attn.hook_z", zero(ablations)) for layer, ablations in by_layer.items()]
    final = _forward(model, input_ids, hooks)
    if ablate:
        return {}, final
    if any(scores is None for scores in per_layer):
        raise RuntimeError(f"{model.source.name}: a blocks.L.attn.hook_pattern hook did not run")
    roles = per_layer[0].keys()  # type: ignore[union-attr]
    stacked = {role: torch.stack([s[role] for s in per_layer], 1).cpu().numpy() for role in roles}  # type: ignore[index]
    return stacked, final


def repeat_loss(model: LoadedModel, final: Any, tokens: Any, n: int = REPEAT_LEN) -> np.ndarray:
    """[B] mean cross-entropy (nats) of predicting tokens n+2..2n (r_2..r_n of the second copy) of
    repeated sequences, from the forward's final-norm output (or logits) at positions n+1..2n-1."""
    import torch

    targets = torch.as_tensor(tokens, dtype=torch.long, device=final.device)[:, n + 2 : 2 * n + 1]
    with torch.no_grad():
        logits = _logits(model, final[:, n + 1 : 2 * n]).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return loss.view(targets.shape).mean(-1).double().cpu().numpy()


def random_heads(n_layers: int, n_heads: int, exclude: tuple[int, int], k: int = N_RANDOM_HEADS,
                 seed: int = SEED) -> list[tuple[int, int]]:
    """k distinct heads other than `exclude`, drawn with default_rng(seed)."""
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) != exclude]
    picks = np.random.default_rng(seed).choice(len(heads), min(k, len(heads)), replace=False)
    return [heads[int(i)] for i in picks]


def causal_check(model: LoadedModel, tokens: np.ndarray, induction: np.ndarray, clean_loss: float) -> dict[str, Any]:
    """The top induction head and N_RANDOM_HEADS random heads ablated (module docstring), one forward."""
    n_layers, n_heads = induction.shape
    top = tuple(int(i) for i in np.unravel_index(int(np.argmax(induction)), induction.shape))
    others = random_heads(n_layers, n_heads, top)  # type: ignore[arg-type]
    ablations = [top, *others]
    batch = np.concatenate([tokens] * len(ablations))
    _, final = sequence_scores(model, batch, REPEAT_LEN, ablate=ablations)  # type: ignore[arg-type]
    losses = repeat_loss(model, final, batch).reshape(len(ablations), len(tokens)).mean(-1)
    rises = losses - clean_loss
    return {
        "method": f"zero the head's slice of blocks.L.attn.hook_z; loss = mean cross-entropy (nats) of predicting "
                  f"r_2..r_n of the second copy, over the first {len(tokens)} repeated sequences",
        "top_head": {"layer": top[0], "head": top[1], "induction": float(induction[top])},
        "loss_clean": float(clean_loss),
        "loss_ablated_top": float(losses[0]),
        "random_heads": [{"layer": layer, "head": head, "loss": float(loss)}
                         for (layer, head), loss in zip(others, losses[1:])],
        "rise_top": float(rises[0]),
        "rise_random_max": float(rises[1:].max()) if len(others) else None,
        "confirmed": bool(len(others) == 0 or rises[0] > rises[1:].max()),
    }


def top_heads(table: np.ndarray, k: int = TOP_K) -> list[dict[str, Any]]:
    """The k highest-scoring heads of a [L, H] table, best first."""
    order = np.argsort(-table, axis=None, kind="stable")[:k]
    return [{"layer": int(layer), "head": int(head), "score": float(table[layer, head])}
            for layer, head in zip(*np.unravel_index(order, table.shape))]


def build(model: LoadedModel) -> dict[str, Any]:
    """The head roles of a loaded model: the JSON's content."""
    n_layers, n_heads = int(model.bridge.cfg.n_layers), int(model.bridge.cfg.n_heads)
    per_sequence: dict[str, list[np.ndarray]] = {role: [] for role in ROLES}  # each [L, H]
    for ids in text_tokens(model):
        scores, _ = sequence_scores(model, np.array([ids]))
        for role, table in scores.items():
            per_sequence[role].append(table[0])
    repeated = repeated_tokens(model)
    scores, final = sequence_scores(model, repeated, REPEAT_LEN if model.causal else None)
    for role, table in scores.items():
        per_sequence[role].extend(table)
    tables: dict[str, np.ndarray | None] = {}
    for role in ROLES:
        kept = [t for t in per_sequence[role] if not np.isnan(t).all()]  # a text without duplicates says nothing
        tables[role] = np.round(np.mean(kept, axis=0), 6) if kept else None  # as stored: the top heads name stored values
    check = None
    if model.causal and tables["induction"] is not None:
        clean = float(repeat_loss(model, final[:N_CAUSAL], repeated[:N_CAUSAL]).mean())
        check = causal_check(model, repeated[:N_CAUSAL], tables["induction"], clean)
    return {
        "head_roles_version": HEAD_ROLES_VERSION,
        "model": model.source.name,
        "model_id": model.source.model_id,
        "random_weights": model.source.random_weights,
        "causal": model.causal,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "roles": ROLES,
        "definitions": DEFINITIONS,
        "label_thresholds": LABEL_THRESHOLDS,
        "scores": {role: None if t is None else t.tolist() for role, t in tables.items()},
        "top": {role: top_heads(t) for role, t in tables.items() if t is not None},
        "causal_check": check,
        "inputs": {"texts": list(TEXTS), "text_tokens": [len(ids) for ids in text_tokens(model)],
                   "repeat_len": REPEAT_LEN, "n_repeats": N_REPEATS, "seed": SEED,
                   "repeated_first_token": int(repeated[0, 0]),
                   "induction": "repeated sequences only" if model.causal else "not measured: bidirectional encoder"},
        "captured_on": {"device": model.device, "dtype": model.dtype},
    }


# --------------------------------------------------------------------------- writing and the index


def relpath(model_name: str) -> str:
    return f"caches/{slug(model_name)}/{HEAD_ROLES_JSON}"


def row_key(model_name: str) -> index.Key:
    return (HEAD_ROLES_KIND, model_name, "", "", None, None, "")


def write(model: LoadedModel, save_path: str | Path) -> dict[str, Any]:
    """Build the head roles, write their JSON atomically and return its index row."""
    started = time.perf_counter()
    info = build(model)
    seconds = round(time.perf_counter() - started, 2)  # in the row only: the same model writes the same bytes
    path = relpath(model.source.name)
    data = json.dumps(info, ensure_ascii=False, indent=1).encode("utf-8")
    write_atomic(Path(save_path) / path, data)
    check = info["causal_check"]
    return index.make_row(HEAD_ROLES_KIND, model=model.source.name, model_id=model.source.model_id, prompt_hash="",
                          path=path, format="json", bytes=len(data), sha256=index.sha256_bytes(data),
                          head_roles_version=HEAD_ROLES_VERSION, random_weights=model.source.random_weights,
                          seconds=seconds, induction_confirmed=None if check is None else check["confirmed"])


def is_current(save_path: str | Path, source: ModelSource, newest: dict[index.Key, dict[str, Any]] | None = None,
               accept_error: bool = True) -> bool:
    """Whether the save path holds this version's head roles of `source`, file intact (with
    `accept_error`, roles that failed for this version count too: they are not retried on every run)."""
    newest = newest if newest is not None else index.latest(index.read_rows(save_path))
    return index.model_output_current(newest.get(row_key(source.name)), save_path, "head_roles_version",
                                      HEAD_ROLES_VERSION, source.model_id, accept_error)


def ensure(model: LoadedModel, save_path: str | Path, record: Callable[[list[dict[str, Any]]], Any],
           log: Callable[[str], None] | None = None) -> None:
    """Write the head roles unless this version's are there (the model is loaded anyway). Roles that
    fail are recorded as an error row, never fatal."""
    import traceback

    source = model.source
    if is_current(save_path, source, accept_error=False):
        return
    try:
        row = write(model, save_path)
    except Exception as error:  # the caches matter more; the figure says the roles are missing
        if log:
            log(f"warning: {source.name}: head roles failed: {type(error).__name__}: {error}")
        record([index.make_row(HEAD_ROLES_KIND, model=source.name, model_id=source.model_id, prompt_hash="",
                               status="error", head_roles_version=HEAD_ROLES_VERSION, path=relpath(source.name),
                               error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())])
        return
    record([row])
