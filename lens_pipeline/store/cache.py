"""The cache file: one per (model, prompt), holding what the figures need.

Format (schema 2; schema 1 caches still load), documented in docs/cache.md:
  A zip archive (stored, not deflated) so that any one array can be read without touching the
  others. Each member `NAME.npy.zst` is a standard `.npy` file (np.save, never pickled)
  compressed with zstandard; `meta.json` describes the prompt, the model and every array.

  The arrays a cache can hold are listed once, in CACHE_ARRAYS below.

Pattern encodings (absolute error per weight): "q12" (default; round(p*4095), <= 1.2e-4),
"q16" (round(p*65535), <= 7.7e-6), "q8" (round(p*255) in uint8, <= 2.0e-3), "float16"
(<= 2.4e-4, finer for tiny weights), "float32" (exact). Why byte planes: most weights are
tiny, so the high bytes are nearly all zero, and apart zstd packs them smaller and faster than
interleaved uint16 (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import zstandard

from lens_pipeline.store.encodings import (  # noqa: F401  (PATTERN_MAX_ERROR: store.cache's readers' name)
    BYTE_PLANE_ENCODINGS,
    DEFAULT_PATTERN_ENCODING,
    FIXED_POINT_LEVELS,
    PATTERN_ENCODINGS,
    PATTERN_MAX_ERROR,
)
from lens_pipeline.store.settings_text import settings_summary

SCHEMA_VERSION = 2  # 2: q12/q16 patterns as byte planes (1: plain uint16, still read)
READABLE_SCHEMAS = (1, 2)
# zstd's fastest strategy with a 64-entry match table: on SmolLM2 caches 23% faster than level 1
# and 1.6% smaller (pattern bytes are mostly literals; their matches are recent zero runs, which a
# table that stays in L1 still finds). Level 3 was slower still and no smaller.
ZSTD_PARAMETERS = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_FAST, window_log=19, hash_log=6, chain_log=6, search_log=1, min_match=7, target_length=0
)
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # same content, same bytes, same sha256


@dataclass(frozen=True)
class ArraySpec:
    """One kind of array a cache can hold: the single description the stage, the loader, figure
    `needs=` and docs/cache.md's cache table all follow."""

    name: str  # member name; "patterns" and "hooks" stand for the families patterns/L{ll}, hooks/<name>
    dtype: str
    shape: str
    setting: str  # the activations setting that makes it ("always" when every cache has it)
    meaning: str


CACHE_ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("tokens", "int32", "[T]", "always", "token ids (BOS included for causal models; padding dropped)"),
    ArraySpec("token_strs", "str", "[T]", "always", "each token as the tokenizer decodes it"),
    ArraySpec("patterns", "per encoding",
              "[H, T(T+1)/2] causal, [H, T, T] bidirectional; q12/q16 as uint8 [H, 2, ...] byte planes",
              "pattern_encoding", "attention of layer ll (member `patterns/L{ll}`), lower triangle row by row"),
    ArraySpec("topk_ids", "int32", "[T, k]", "top_k", "the k most likely next tokens at each position"),
    ArraySpec("topk_probs", "float16", "[T, k]", "top_k", "their probabilities"),
    ArraySpec("topk_strs", "str", "[T, k]", "top_k", "their strings"),
    ArraySpec("resid_norms", "float32", "[L+1, T]", "always",
              "residual-stream L2 norm before layer 0 and after every layer"),
    ArraySpec("neuron_ids", "int32", "[L, N]", "n_neurons",
              "per layer, the N MLP neurons with the largest activation variance over the prompt, or the model's "
              "shared basis (`--neuron-basis`, `--neurons L:i,j;...`; -1 pads a layer given fewer)"),
    ArraySpec("neuron_acts", "float16", "[L, N, T]", "n_neurons", "their post-activation values"),
    ArraySpec("logit_lens_ids", "int32", "[L, T]", "logit_lens",
              "each layer's top-1 token through the final norm and unembedding"),
    ArraySpec("logit_lens_probs", "float16", "[L, T]", "logit_lens", "its probability"),
    ArraySpec("logit_lens_strs", "str", "[L, T]", "logit_lens", "its string"),
    ArraySpec("hooks", "float16", "as the hook, padding removed", "hooks",
              "any other TransformerLens hook (member `hooks/<name>`)"),
    # Explaining a prediction (lens_pipeline/capture/explain.py). G targets: 1, or T - 1 with "target_positions": "all".
    ArraySpec("target_positions", "int32", "[G]", "targets",
              "the position whose next-token prediction each target explains (sources are positions ≤ it)"),
    ArraySpec("target_ids", "int32", "[G, 2]", "targets",
              "the target token and the contrast token (-1: none); default target: the top-1 prediction after the last token"),
    ArraySpec("target_strs", "str", "[G, 2]", "targets", "their strings (empty: none)"),
    ArraySpec("target_values", "float32", "[G]", "targets",
              "what is explained, f: the target's logit, or logit(target) - logit(contrast)"),
    ArraySpec("attr_grad_x_input", "float32", "[G, T]", "attribution",
              "gradient × input: Σ over d_model of ∂f/∂(token embedding) · token embedding, per source token"),
    ArraySpec("attr_grad_norm", "float32", "[G, T]", "attribution", "L2 norm of ∂f/∂(token embedding) per source token"),
    ArraySpec("attr_ig", "float32", "[G, T]", "attribution",
              "integrated gradients from the baseline (settings `ig_baseline`, `ig_steps`, `ig_rule`)"),
    ArraySpec("ig_baseline_values", "float32", "[G]", "attribution", "f at the integrated-gradients baseline"),
    ArraySpec("ig_completeness", "float32", "[G]", "attribution",
              "completeness error: abs(Σ attr_ig - (f(x) - f(baseline))) / abs(f(x) - f(baseline))"),
    ArraySpec("ig_steps_used", "int32", "[G]", "ig_tolerance",
              "the integrated-gradients steps each target's `attr_ig` used (doubled from `ig_steps` until the "
              "completeness error is at most `ig_tolerance`, or `ig_max_steps`)"),
    ArraySpec("logit_attr_heads", "float32", "[G, L, H]", "logit_attribution",
              "direct logit attribution of f to each attention head (final norm's scale frozen at its actual value)"),
    ArraySpec("logit_attr_mlp", "float32", "[G, L]", "logit_attribution", "… to each MLP"),
    ArraySpec("logit_attr_embed", "float32", "[G]", "logit_attribution", "… to the embeddings (token + position)"),
    ArraySpec("logit_attr_bias", "float32", "[G]", "logit_attribution",
              "… to the biases (attention output, final norm, unembedding): the four parts sum to `target_values`"),
    ArraySpec("lens_rows", "str", "[R]", "lens_trajectory",
              "what each lens row reads: `L{l} post` after layer l (R = L), plus `L{l} mid` after its attention "
              "with `--lens-resid-mid` (R = 2L)"),
    ArraySpec("lens_top_ids", "int32", "[R, T, 5]", "lens_trajectory",
              "the 5 most likely next tokens per row and position, through the final norm and unembedding"),
    ArraySpec("lens_top_probs", "float16", "[R, T, 5]", "lens_trajectory", "their probabilities"),
    ArraySpec("lens_top_strs", "str", "[R, T, 5]", "lens_trajectory", "their strings"),
    ArraySpec("lens_actual_probs", "float32", "[R, T]", "lens_trajectory",
              "probability of the actual next token (NaN at the last position)"),
    ArraySpec("lens_actual_ranks", "int32", "[R, T]", "lens_trajectory", "its rank (0 = top; -1 at the last position)"),
    ArraySpec("lens_entropy", "float32", "[R, T]", "lens_trajectory", "entropy of the row's next-token distribution (nats)"),
    ArraySpec("lens_kl", "float32", "[R, T]", "lens_trajectory",
              "KL(final ‖ row) in nats: how far the row's distribution is from the model's output"),
    ArraySpec("token_logprobs", "float32", "[T]", "lens_trajectory",
              "the model's log-probability of each actual next token (position p: token p + 1; NaN at the last); "
              "minus it is the per-token loss"),
    # Embedding views (lens_pipeline/capture/model_card.py): figures place them with the model card's arrays.
    ArraySpec("resid_proj", "float32", "[L+1, T, 3]", "embedding_views",
              "the residual stream before layer 0 and after every layer, scaled to unit RMS, projected on the "
              "model's shared residual basis (`model_card.npz` `resid_mean`, `resid_components`)"),
    ArraySpec("embed_neighbors", "int32", "[T, 5]", "embedding_views",
              "each token's 5 nearest tokens by cosine similarity of input embeddings (itself left out)"),
    ArraySpec("embed_neighbor_sims", "float16", "[T, 5]", "embedding_views", "their cosine similarities"),
    ArraySpec("embed_neighbor_strs", "str", "[T, 5]", "embedding_views", "their strings"),
    # Testing causes (lens_pipeline/capture/causal; docs/causal.md). Patching: 1.0 is the clean run's metric, 0.0 the
    # corrupted run's; a prompt without "corrupt" has no patch arrays.
    *(ArraySpec(f"patch_{site}", "float32", "[L, T]", "patch",
                f"normalised metric with layer l's `{site}` patched from the clean run into the corrupted one at position t")
      for site in ("resid_pre", "attn_out", "mlp_out")),
    ArraySpec("patch_heads", "float32", "[L, H]", "patch", "… with one head's output (`hook_z`) patched at every position"),
    ArraySpec("patch_heads_pos", "float32", "[L, H, T]", "patch", "… with one head patched at one position"),
    *(ArraySpec(f"attrpatch_{site}", "float32", shape, "attribution_patching",
                f"attribution patching's estimate of `patch_{site}`: gradient on the corrupted run · (clean − corrupted)")
      for site, shape in (("resid_pre", "[L, T]"), ("attn_out", "[L, T]"), ("mlp_out", "[L, T]"), ("heads", "[L, H]"),
                          ("heads_pos", "[L, H, T]"))),
    ArraySpec("ablate_heads", "float32", "[L, H]", "ablate",
              "metric(head ablated at every position) − metric(clean), in the metric's units (`kl`: KL(clean ‖ ablated))"),
    ArraySpec("ablate_mlp", "float32", "[L]", "ablate", "… with one MLP layer's output ablated"),
)
SETTING_FLAGS = {"always": "always", "pattern_encoding": "`--pattern-encoding`", "top_k": "`--top-k`",
                 "n_neurons": "`--neurons`", "logit_lens": "`--logit-lens`", "hooks": "`--hooks`",
                 "targets": "`--attribution` or `--logit-attribution`", "attribution": "`--attribution`",
                 "ig_tolerance": "`--attribution ig` with `--ig-tolerance`",
                 "logit_attribution": "`--logit-attribution`", "lens_trajectory": "`--lens-trajectory`",
                 "embedding_views": "`--embedding-views`", "patch": "`--patch` (prompts with `corrupt`)",
                 "attribution_patching": "`--attribution-patching`", "ablate": "`--ablate`"}


def arrays_markdown() -> str:
    """docs/cache.md's cache table, made from CACHE_ARRAYS (a test keeps the page equal to it)."""
    lines = ["| array | dtype | shape | made by | what |", "|---|---|---|---|---|"]
    for spec in CACHE_ARRAYS:
        lines.append(f"| `{spec.name}` | {spec.dtype} | {spec.shape} | {SETTING_FLAGS[spec.setting]} | {spec.meaning} |")
    return "\n".join(lines) + "\n"
ARRAYS: dict[str, ArraySpec] = {spec.name: spec for spec in CACHE_ARRAYS}
# What a cache can mean beyond the arrays it holds; figure `needs=` may name these too.
CAPABILITIES: dict[str, str] = {
    "lm_head": "a trained LM head (next-token predictions mean something); encoders like MiniLM have none",
}


def array_family(member: str) -> str:
    """patterns/L03 -> patterns, hooks/blocks.0.hook_resid_mid -> hooks, topk_ids -> topk_ids."""
    return member.split("/", 1)[0]


def check_needs(needs: tuple[str, ...], where: str) -> None:
    """Raise ValueError for a need that names no cache array and no capability."""
    import difflib

    known = [*ARRAYS, *CAPABILITIES]
    for need in needs:
        if need not in known:
            close = difflib.get_close_matches(need, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
            raise ValueError(f"{where}: needs={need!r} names no cache array or capability{hint}")


@dataclass(frozen=True)
class ExtractSettings:
    """Every setting that changes what a cache holds: recorded in its meta and index row, and
    hashed into its identity (`settings_id`, part of its file name)."""

    pattern_encoding: str = DEFAULT_PATTERN_ENCODING
    top_k: int = 10
    n_neurons: int = 32
    hooks: tuple[str, ...] = ()
    logit_lens: bool = False
    max_tokens: int = 1024
    dtype: str = "auto"  # as asked: "auto" is float32 on CPU, float16 on CUDA (meta records which)
    # Explaining a prediction (lens_pipeline/capture/explain.py; targets per prompt from its JSONL fields).
    attribution: tuple[str, ...] = ()  # input attribution methods: grad_x_input, grad_norm, ig
    ig_steps: int = 64
    ig_baseline: str = "space"  # what each token's embedding starts from (explain.IG_BASELINES)
    ig_rule: str = "gausslegendre"  # the integration rule, named as Captum names it
    ig_tolerance: float = 0.0  # > 0: steps doubled per target until the completeness error is at most this
    ig_max_steps: int = 1024  # ... or the steps reach this cap
    logit_attribution: bool = False  # direct logit attribution to embeddings, heads, MLPs
    lens_trajectory: bool = False  # top-5, actual token's probability and rank, entropy, KL per layer
    lens_resid_mid: bool = False  # the lens trajectory after each attention too
    # A shared neuron basis (lens_pipeline/corpus/basis.py): "prompt" picks per prompt; "variance" or "max" over the
    # model's prompt set, or "given" by the user; `neuron_ids` then holds the chosen ids per layer (-1 pads).
    neuron_basis: str = "prompt"
    neuron_ids: tuple[tuple[int, ...], ...] = ()
    embedding_views: bool = False  # residuals on the model card's basis, embedding nearest neighbours
    # Testing causes (lens_pipeline/capture/causal; docs/causal.md): sites patched from a prompt's clean run into
    # its "corrupt" run, components ablated, and the gradient estimate of the same patching.
    patch: tuple[str, ...] = ()  # resid_pre, attn_out, mlp_out, heads, heads_pos
    patch_metric: str = "logit_diff"  # logit_diff, prob, logprob, kl
    ablate: tuple[str, ...] = ()  # heads, mlp
    ablation: str = "zero"  # zero, or mean (over the prompt set: corpus/ablation_means.py)
    ablation_means_id: str = ""  # the mean-ablation file's digest: which means the ablation used
    attribution_patching: bool = False

    def __post_init__(self) -> None:
        # Lists (JSON, keywords) and "a,b" strings become tuples, so recorded settings compare equal.
        for name in ("hooks", "attribution", "patch", "ablate"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                parts = value.split(",") if isinstance(value, str) else value
                object.__setattr__(self, name, tuple(p.strip() for p in parts if p.strip()))
        if not (isinstance(self.neuron_ids, tuple) and all(isinstance(row, tuple) for row in self.neuron_ids)):
            object.__setattr__(self, "neuron_ids", tuple(tuple(int(i) for i in row) for row in self.neuron_ids))

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self) | {"hooks": list(self.hooks), "attribution": list(self.attribution),
                                             "patch": list(self.patch), "ablate": list(self.ablate)}
        defaults = _DEFAULT_VALUES
        # Explanation settings all at their defaults are left out: caches made before they existed keep their settings_id.
        if all(values[name] == defaults[name] for name in EXPLAIN_FIELDS):
            values = {k: v for k, v in values.items() if k not in EXPLAIN_FIELDS}
        if self.neuron_basis == "prompt" and not self.neuron_ids:  # likewise for a per-prompt neuron choice
            values = {k: v for k, v in values.items() if k not in NEURON_BASIS_FIELDS}
        else:
            values["neuron_ids"] = [list(row) for row in self.neuron_ids]
        if not self.embedding_views:  # off: caches made before it existed keep their settings_id
            values.pop("embedding_views")
        if not self.causal:  # off: caches made before patching existed keep their settings_id
            values = {k: v for k, v in values.items() if k not in CAUSAL_FIELDS}
        if not self.ig_tolerance:  # fixed steps, as before the tolerance existed: the same settings_id
            values.pop("ig_tolerance", None)
            values.pop("ig_max_steps", None)
        return values

    @property
    def needs_targets(self) -> bool:
        """Whether a target is explained per prompt (input or direct logit attribution)."""
        return bool(self.attribution or self.logit_attribution)

    @property
    def causal(self) -> bool:
        """Whether anything of lens_pipeline.capture.causal is asked for (patching, ablation)."""
        return bool(self.patch or self.ablate)

    @property
    def lens_on(self) -> bool:
        """Whether the lens trajectory is computed."""
        return bool(self.lens_trajectory or self.lens_resid_mid)

    @property
    def explains(self) -> bool:
        """Whether anything of lens_pipeline.capture.explain is asked for."""
        return self.needs_targets or self.lens_on

    @property
    def settings_id(self) -> str:
        """8 hex digits naming these settings: caches made with other settings live beside each other."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:8]

    def covers(self, recorded: dict[str, Any]) -> bool:
        """Whether a cache made with `recorded` settings holds everything these settings ask for:
        the same values, except that extra hooks or an extra logit lens do no harm."""
        try:
            other = ExtractSettings(**{**recorded, "hooks": tuple(recorded.get("hooks", ())),
                                   "patch": tuple(recorded.get("patch", ())), "ablate": tuple(recorded.get("ablate", ()))})
        except TypeError:  # settings of an older version, with fields this one does not know
            return False
        extras_ok = dataclasses.replace(other, hooks=self.hooks, logit_lens=self.logit_lens,
                                        embedding_views=self.embedding_views)
        return (extras_ok == self and set(self.hooks) <= set(other.hooks)
                and (other.logit_lens or not self.logit_lens) and (other.embedding_views or not self.embedding_views))


EXPLAIN_FIELDS = ("attribution", "ig_steps", "ig_baseline", "ig_rule", "ig_tolerance", "ig_max_steps",
                  "logit_attribution", "lens_trajectory", "lens_resid_mid")
NEURON_BASIS_FIELDS = ("neuron_basis", "neuron_ids")
CAUSAL_FIELDS = ("patch", "patch_metric", "ablate", "ablation", "ablation_means_id", "attribution_patching")
_DEFAULT_VALUES = {f.name: f.default for f in dataclasses.fields(ExtractSettings)} | {"attribution": []}


def prompt_hash(model_id: str, text: str) -> str:
    """Content address of a (model, prompt) pair: the cache's file name."""
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()[:16]


def pattern_member(layer: int) -> str:
    return f"patterns/L{layer:02d}"


def encode_pattern(patterns: np.ndarray, encoding: str, causal: bool) -> np.ndarray:
    """[H, T, T] float -> stored array: lower triangle only when causal, then the encoding."""
    if encoding not in PATTERN_ENCODINGS:
        raise ValueError(f"unknown pattern encoding {encoding!r}; choose from {list(PATTERN_ENCODINGS)}")
    if causal:
        rows, cols = np.tril_indices(patterns.shape[-1])
        patterns = patterns[:, rows, cols]
    if encoding not in FIXED_POINT_LEVELS:
        return patterns.astype(PATTERN_ENCODINGS[encoding])
    # Round half up: p * levels + 0.5, truncated, all in float32 (the torch twin does the same).
    scaled = patterns.astype(np.float32) * np.float32(FIXED_POINT_LEVELS[encoding])
    scaled += np.float32(0.5)
    values = scaled.astype(PATTERN_ENCODINGS[encoding])
    if encoding in BYTE_PLANE_ENCODINGS:
        return np.stack([values & 0xFF, values >> 8], axis=1).astype(np.uint8)
    return values


def decode_pattern(stored: np.ndarray, encoding: str, causal: bool, n_tokens: int) -> np.ndarray:
    """Stored array -> [H, T, T] float32 with zeros above the diagonal for causal models."""
    if encoding in BYTE_PLANE_ENCODINGS and stored.dtype == np.uint8:  # schema 1 kept plain uint16
        stored = stored[:, 0].astype(np.uint16) | (stored[:, 1].astype(np.uint16) << 8)
    values = stored.astype(np.float32)
    if encoding in FIXED_POINT_LEVELS:
        values /= FIXED_POINT_LEVELS[encoding]
    if not causal:
        return values
    square = np.zeros((stored.shape[0], n_tokens, n_tokens), dtype=np.float32)
    rows, cols = np.tril_indices(n_tokens)
    square[:, rows, cols] = values
    return square


def write_npy_zst(array: np.ndarray, compressor: zstandard.ZstdCompressor, target: Any) -> None:
    """Write `np.save(np.ascontiguousarray(array))` zstd-compressed to the file-like `target`. The
    .npy bytes are laid out once, in one buffer (a slice of a batch, [H, 2, n] out of [B, H, 2, N],
    is copied straight into it), and compressed in one call. One copy instead of np.save's three:
    caches compress 4% faster on two threads than via np.save, 10% faster than streaming the runs."""
    header = io.BytesIO()
    described = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    np.lib.format.write_array_header_1_0(header, described)  # the bytes always go in C order
    npy = bytearray(header.tell() + array.nbytes)
    npy[: header.tell()] = header.getbuffer()
    if array.size:
        np.copyto(np.frombuffer(npy, dtype=array.dtype, offset=header.tell()).reshape(array.shape), array)
    target.write(compressor.compress(npy))


@dataclass
class CacheContents:
    """Everything one cache file holds, in memory, before it is written."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def member_compressor() -> zstandard.ZstdCompressor:
    """The compressor every cache member goes through (one per thread: they are not thread-safe)."""
    return zstandard.ZstdCompressor(compression_params=ZSTD_PARAMETERS)


def _compressed_member(array: np.ndarray) -> bytes:
    """One member's zstd-compressed .npy bytes (a compressor per member: they are not thread-safe)."""
    buffer = io.BytesIO()
    write_npy_zst(array, member_compressor(), buffer)
    return buffer.getvalue()


def serialize(contents: CacheContents, map_members: Callable[..., Iterable[bytes]] = map) -> bytes:
    """The cache file's bytes. A pure function of `contents`; `map_members` (e.g. a thread pool's map:
    zstd frees the GIL) compresses the members, each on its own, so the bytes are the same either way."""
    unknown = sorted({array_family(name) for name in contents.arrays} - set(ARRAYS))
    if unknown:  # CACHE_ARRAYS is the one list of what a cache holds: add a row there first
        raise ValueError(f"cache arrays {unknown} are not described in lens_pipeline.store.cache.CACHE_ARRAYS")
    buffer = io.BytesIO()
    meta = dict(contents.meta, schema_version=SCHEMA_VERSION)
    meta["arrays"] = {
        name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in contents.arrays.items()
    }
    compressed = map_members(_compressed_member, contents.arrays.values())
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("meta.json", FIXED_ZIP_TIME), json.dumps(meta, ensure_ascii=False, indent=1))
        for name, data in zip(contents.arrays, compressed):
            archive.writestr(zipfile.ZipInfo(f"{name}.npy.zst", FIXED_ZIP_TIME), data)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write via a temp file and rename, so a killed run never leaves a half-written file.
    `durable` also fsyncs (survives power loss); small figures skip it for speed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_temp_files(folder: Path) -> int:
    """Remove temp files that `write_atomic` calls killed with -9 left behind (their pid is gone)."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class CacheError(Exception):
    """A cache file that is missing, truncated or not in this format."""


class Cache:
    """Lazy reader: opening reads only the zip directory and meta.json; each array is
    decompressed on first use and kept, so a figures run decompresses each member once."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            self.meta: dict[str, Any] = json.loads(self._zip.read("meta.json"))
        except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
            raise CacheError(f"{self.path}: not a readable lens_pipeline cache ({error})") from None
        if self.meta.get("schema_version") not in READABLE_SCHEMAS:
            raise CacheError(f"{self.path}: schema {self.meta.get('schema_version')}, expected one of {READABLE_SCHEMAS}")
        self._arrays: dict[str, np.ndarray] = {}
        self._decoded_layer: tuple[int, np.ndarray] | None = None  # per-head figures reuse it
        self._decompressor = zstandard.ZstdDecompressor()

    def __repr__(self) -> str:
        return f"Cache({self.model!r}, {self.prompt_hash}, {self.n_tokens} tokens)"

    def _repr_html_(self) -> str:
        """Jupyter's view of a cache: model, prompt start, tokens, layers × heads, settings, arrays."""
        import html

        text = " ".join(self.text.split())
        families: dict[str, list[str]] = {}
        for name in self.names():
            families.setdefault(array_family(name), []).append(name)
        arrays = [f"{family} ×{len(names)}" if len(names) > 1 else
                  f"{family} {'×'.join(map(str, self.meta['arrays'][names[0]]['shape']))}" for family, names in families.items()]
        settings = settings_summary(self.meta.get("settings"), self.meta)
        rows = [("model", self.model), ("prompt", text[:100] + ("…" if len(text) > 100 else "")),
                ("tokens", str(self.n_tokens)), ("layers × heads", f"{self.n_layers} × {self.n_heads}"),
                ("settings", ", ".join(f"{label} {value}" for label, value in settings)),
                ("arrays", ", ".join(arrays)), ("file", self.path.name)]
        left = ' style="text-align:left"'
        cells = "".join(f"<tr><th{left}>{html.escape(k)}</th><td{left}>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<table>{cells}</table>"

    def __getitem__(self, name: str) -> np.ndarray:
        """TransformerLens-style names where one applies: `cache["blocks.18.attn.hook_pattern"]` is
        layer 18's [head, query, key] pattern, a stored hook by its own name (`--hooks`), else an array
        by its cache name (`cache["resid_norms"]`)."""
        match = re.fullmatch(r"blocks\.(\d+)\.attn\.hook_pattern", name)
        if match:
            return self.layer_patterns(int(match.group(1)))
        if self.has(f"hooks/{name}"):
            return self.array(f"hooks/{name}").astype(np.float32)
        if name in self.meta["arrays"]:
            return self.array(name)
        hooks = [m.split("/", 1)[1] for m in self.meta["arrays"] if m.startswith("hooks/")]
        raise KeyError(f"{self.path.name} has no {name!r}: it has blocks.L.attn.hook_pattern for L in 0..{self.n_layers - 1}"
                       f"{', the hooks ' + ', '.join(hooks) if hooks else ''} and the arrays {self.names()}")

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- generic access -------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.meta["arrays"])

    def has(self, name: str) -> bool:
        """A stored member (`patterns/L03`), an array family (`patterns`) or a capability (`lm_head`)."""
        if name in CAPABILITIES:
            return self.missing((name,)) == []
        return name in self.meta["arrays"] or any(array_family(m) == name for m in self.meta["arrays"])

    def missing(self, needs: tuple[str, ...]) -> list[str]:
        """Why this cache cannot serve each need it fails, e.g. ['needs logit_lens_ids (made with ...)']."""
        reasons = []
        for need in needs:
            if need == "lm_head":
                # Caches before this field: causal models here all have a trained head, encoders none.
                if not self.meta.get("lm_head", self.meta.get("causal", True)):
                    reasons.append(f"needs {CAPABILITIES['lm_head']}; {self.model} has none")
            elif not (need in self.meta["arrays"] or any(array_family(m) == need for m in self.meta["arrays"])):
                flag = SETTING_FLAGS[ARRAYS[need].setting].replace("`", "") if need in ARRAYS else "?"
                reasons.append(f"needs the cache array {need}, which the activations stage makes with {flag}; "
                               f"this cache was made without it")
        return reasons

    def array(self, name: str) -> np.ndarray:
        """One stored array as saved (no decoding); decompresses only that member."""
        if name not in self._arrays:
            if not self.has(name):
                raise KeyError(f"{self.path.name} has no array {name!r}; it has {self.names()}")
            try:
                raw = self._decompressor.decompress(self._zip.read(f"{name}.npy.zst"))
            except (zipfile.BadZipFile, zstandard.ZstdError, KeyError) as error:
                raise CacheError(f"{self.path}: member {name} is corrupt ({error})") from None
            self._arrays[name] = np.load(io.BytesIO(raw), allow_pickle=False)
        return self._arrays[name]

    # --- what the figures use -------------------------------------------------------
    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def prompt_hash(self) -> str:
        return self.meta["prompt_hash"]

    @property
    def text(self) -> str:
        return self.meta["text"]

    @property
    def n_layers(self) -> int:
        return self.meta["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.meta["n_heads"]

    @property
    def n_tokens(self) -> int:
        return self.meta["n_tokens"]

    @property
    def causal(self) -> bool:
        return self.meta["causal"]

    @cached_property
    def tokens(self) -> list[str]:
        return [str(t) for t in self.array("token_strs")]

    @property
    def token_ids(self) -> np.ndarray:
        return self.array("tokens")

    def layer_patterns(self, layer: int) -> np.ndarray:
        """[H, T, T] float32 attention of one layer (query rows, key columns)."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        if self._decoded_layer is None or self._decoded_layer[0] != layer:
            square = decode_pattern(
                self.array(pattern_member(layer)), self.meta["pattern_encoding"], self.causal, self.n_tokens
            )
            square.flags.writeable = False  # shared between callers
            self._decoded_layer = (layer, square)
        return self._decoded_layer[1]

    def pattern(self, layer: int, head: int) -> np.ndarray:
        """[T, T] float32 attention of one head."""
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} out of range 0..{self.n_heads - 1}")
        return self.layer_patterns(layer)[head]

    @property
    def topk_ids(self) -> np.ndarray:
        return self.array("topk_ids")

    @property
    def topk_probs(self) -> np.ndarray:
        return self.array("topk_probs").astype(np.float32)

    @property
    def topk_strs(self) -> np.ndarray:
        return self.array("topk_strs")

    @property
    def resid_norms(self) -> np.ndarray:
        return self.array("resid_norms").astype(np.float32)

    @property
    def neuron_ids(self) -> np.ndarray:
        return self.array("neuron_ids")

    @property
    def neuron_acts(self) -> np.ndarray:
        return self.array("neuron_acts").astype(np.float32)


def load(path: str | os.PathLike[str]) -> Cache:
    """Open a cache file lazily (see `Cache`)."""
    return Cache(path)
