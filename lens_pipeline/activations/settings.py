"""How the activations stage runs, as one object (what changes a cache's contents is its `extract`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lens_pipeline.store.cache import ExtractSettings

DEFAULT_PROMPTS = "data/prompts.jsonl"


DEFAULT_SAVE_PATH = "attn_data"


@dataclass(frozen=True)
class ActivationsSettings:
    """How the stage runs, as one object: built by keyword from the CLI or from Python, passed
    whole to every path (local, Ray). What changes a cache's contents lives in `extract`."""

    extract: ExtractSettings = ExtractSettings()
    batch_size: int = 8
    device: str = "auto"
    random_weights: bool = False
    ray: str | None = None
    force: bool = False
    prune: bool = False
    strict: bool = False
    progress: bool = True

    @classmethod
    def build(cls, **options: Any) -> "ActivationsSettings":
        """From flat keywords (batch_size=4, logit_lens=True, ...): each goes where it belongs."""
        extract_fields = {f.name for f in dataclasses.fields(ExtractSettings)}
        stage_fields = {f.name for f in dataclasses.fields(cls)} - {"extract"}
        unknown = set(options) - extract_fields - stage_fields
        if unknown:
            raise TypeError(f"unknown activations option(s) {sorted(unknown)}; known: {sorted(extract_fields | stage_fields)}")
        extract = {k: v for k, v in options.items() if k in extract_fields}
        if "hooks" in extract:
            extract["hooks"] = tuple(extract["hooks"])
        if isinstance(extract.get("neuron_ids"), (str, dict)):  # "3:1,5;7:2" or {3: [1, 5]}: a user's basis
            from lens_pipeline.corpus.basis import given_rows

            extract.update(given_rows(extract["neuron_ids"]))
        return cls(extract=ExtractSettings(**extract), **{k: v for k, v in options.items() if k in stage_fields})
