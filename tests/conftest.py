"""Shared fixtures: real models, real files. SmolLM2 loads once per session (~15 s)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
sys.path.insert(0, str(REPO / "scripts"))  # tests reuse the scripts' helpers (e.g. screenshots.hover_cell)

# Tests must never wait on the (unreachable) hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


MIXED_PROMPTS = [
    {"text": "The capital of France is Paris. The capital of France is", "id": "paris"},
    {"text": "Hi", "id": "short"},
    {"text": "Double, double toil and trouble; fire burn and cauldron bubble. Double, double toil and trouble."},
    {"text": "To be, or not to be, that is the question."},
    {"text": "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him."},
]


# Short real sentences for fast random-weight model tests (distinct lengths: padding matters).
SHORT_TEXTS = [
    "Hi",
    "To be, or not to be: that is the question:",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "Double, double toil and trouble; fire burn and cauldron bubble.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
]


@pytest.fixture(scope="session")
def mixed_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "mixed.jsonl", MIXED_PROMPTS)


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory, mixed_prompts: Path) -> Path:
    """A save path with SmolLM2 caches of the mixed prompts (with the logit lens)."""
    from lens_pipeline.activations import run_activations

    save_path = tmp_path_factory.mktemp("smollm2_run")
    summary = run_activations("smollm2", mixed_prompts, save_path, batch_size=4, progress=False, logit_lens=True)
    assert summary.written == len(MIXED_PROMPTS)
    return save_path


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]
