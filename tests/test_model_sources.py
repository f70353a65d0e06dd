"""Model sources: the registry, the fast availability check (no torch) and the local HF cache."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from conftest import DATA, REPO
from lens_pipeline.capture import models
from lens_pipeline.capture.models import MODEL_SOURCES, ModelLoadError, ModelSource
from lens_pipeline.store import index

TINY_REPO = "someorg/tiny"
TINY_COMMIT = "0123456789abcdef0123456789abcdef01234567"
HEAVY = ("torch", "transformers", "transformer_lens")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lens_pipeline.activations", *args]


def _env(hf_home: Path, offline: str | None) -> dict[str, str]:
    env = dict(os.environ, HF_HOME=str(hf_home))
    env.pop("HF_HUB_CACHE", None)  # HF_HOME alone decides where the cache is
    env.pop("HF_HUB_OFFLINE", None)
    if offline is not None:
        env["HF_HUB_OFFLINE"] = offline
    return env


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds a tiny 1-layer GPT-2 (random weights, SmolLM2's tokenizer)
    in the hub's own layout: blobs/ named by hash, snapshots/<commit>/ of links, refs/main."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lens_pipeline.capture import random_models

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / f"models--{TINY_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / TINY_COMMIT
    tokenizer = random_models.offline_tokenizer()
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "blobs").mkdir()
    for file in sorted(p for p in snapshot.iterdir() if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        file.replace(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(TINY_COMMIT)
    return home


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every connection attempt is recorded and refused."""
    attempts: list[tuple] = []

    def refuse(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        raise ConnectionRefusedError(address)

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# ------------------------------------------------------------------------- unreachable hub


@pytest.mark.parametrize("offline", [None, "1"], ids=["HF_HUB_OFFLINE unset", "HF_HUB_OFFLINE=1"])
def test_an_unreachable_hub_model_fails_in_under_3_s_with_one_line(tmp_path: Path, offline: str | None) -> None:
    (tmp_path / "hf").mkdir()
    started = time.perf_counter()
    result = subprocess.run(
        _cli("--model", "gpt2", "--prompts", str(DATA / "small.jsonl"), "--save-path", str(tmp_path / "out")),
        capture_output=True, text=True, timeout=60, env=_env(tmp_path / "hf", offline), cwd=REPO,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert "'gpt2'" in error_lines[0] and str(tmp_path / "hf" / "hub") in error_lines[0]
    assert "HF_HOME" in error_lines[0] and "local model folder" in error_lines[0] and "smollm2" in error_lines[0]
    assert seconds < 3.0, f"took {seconds:.1f} s"


def test_the_check_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys, lens_pipeline.capture.models as m, lens_pipeline.capture.random_models\n"
        f"heavy = {HEAVY!r}\n"
        "assert not [k for k in heavy if k in sys.modules], 'imported at module level'\n"
        "for name, random in (('smollm2', False), ('minilm', False), ('tiny-gpt2', True), ('gpt2', False)):\n"
        "    source = m.resolve_source(name, random_weights=random)\n"
        "    try:\n"
        "        m.check_available(source)\n"
        "    except m.ModelLoadError:\n"
        "        assert source.kind == 'hub'\n"
        "print([k for k in heavy if k in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=_env(tmp_path, "1"), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_offline_fails_without_touching_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    no_network: list[tuple]) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        models.check_available(models.resolve_source("gpt2"))
    assert no_network == []


def test_a_hanging_connection_is_given_up_on_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connect timeout does not cover DNS: a lookup that hangs must not hang the check."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    release = threading.Event()

    def hang(*args: object, **kwargs: object) -> socket.socket:
        release.wait(30)
        raise TimeoutError("released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.perf_counter()
    try:
        with pytest.raises(ModelLoadError, match=r"'gpt2'.*cannot be reached"):
            models.check_available(models.resolve_source("gpt2"))
        assert time.perf_counter() - started < models.HUB_CONNECT_TIMEOUT_S + 0.5
    finally:
        release.set()  # let the abandoned connect thread end


def test_a_reachable_hub_passes_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        models.check_available(models.resolve_source("gpt2"))  # no error: the loader may download it
    finally:
        server.close()


# ------------------------------------------------------------------------ filled HF cache


def test_a_filled_hf_cache_is_found_without_the_network(hf_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                        no_network: list[tuple]) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = models.resolve_source(TINY_REPO)
    assert (source.kind, source.name, source.model_id) == ("hub", "someorg_tiny", "hf:someorg/tiny")
    assert not source.random_weights
    models.check_available(source)
    snapshot = hf_home / "hub" / "models--someorg--tiny" / "snapshots" / TINY_COMMIT
    assert MODEL_SOURCES["hub"].location(source) == str(snapshot)  # the loader gets the folder, not the id
    assert no_network == []
    with pytest.raises(ModelLoadError, match="someorg/other"):  # another id of the same org is not cached
        models.check_available(models.resolve_source("someorg/other"))


def test_a_cached_hub_model_loads_offline(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    model = models.load(models.resolve_source(TINY_REPO), device="cpu")
    assert (model.family, model.causal, model.device, model.dtype) == ("gpt2", True, "cpu", "float32")
    assert (model.bridge.cfg.n_layers, model.bridge.cfg.n_heads, model.bridge.cfg.d_model) == (1, 2, 32)
    ids = torch.tensor([model.tokenizer("To be, or not to be")["input_ids"]])
    _, cached = model.bridge.run_with_cache(ids, names_filter="blocks.0.attn.hook_pattern")
    pattern = cached["blocks.0.attn.hook_pattern"][0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, ids.shape[1]))


def test_the_cli_runs_a_cached_hub_model_with_hf_hub_offline_unset(hf_home: Path, tmp_path: Path) -> None:
    """Given the hub id, the loader would retry the network for minutes; given the snapshot
    folder it never asks."""
    result = subprocess.run(
        _cli("--model", TINY_REPO, "--prompts", str(DATA / "small.jsonl"), "--save-path", str(tmp_path), "--quiet"),
        capture_output=True, text=True, timeout=180, env=_env(hf_home, None), cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    rows = [r for r in index.read_rows(tmp_path) if r["kind"] == "cache"]
    n_prompts = len([line for line in (DATA / "small.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()])
    assert len(rows) == n_prompts and {r["model_id"] for r in rows} == {"hf:someorg/tiny"}
    assert not any(r["random_weights"] for r in rows)


# ------------------------------------------------------------------------------- registry


def test_every_source_is_registered_with_a_one_line_description() -> None:
    assert list(MODEL_SOURCES) == ["smollm2", "minilm", "local", "hub", "random"]
    for name, kind in MODEL_SOURCES.items():
        assert kind.name == name
        assert kind.description and "\n" not in kind.description
    assert [k.name for k in MODEL_SOURCES.values() if k.random_weights] == ["random"]


def test_names_resolve_to_their_kinds(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    expected = {
        "smollm2": "smollm2", "SmolLM2-135M-Instruct": "smollm2",
        "minilm": "minilm", "sentence-transformers/all-MiniLM-L6-v2": "minilm",
        str(folder): "local", "gpt2": "hub", "openai-community/gpt2": "hub",
    }
    assert {name: models.resolve_source(name).kind for name in expected} == expected
    assert models.resolve(None) == models.resolve_source(models.DEFAULT_MODEL)
    local = folder.resolve()
    assert models.resolve(str(folder)) == ModelSource("local", "my-model", f"local:{local}", str(local))
    random = models.resolve_source("tiny-gpt2", random_weights=True)
    assert random.kind == "random" and random.random_weights and random.name == "tiny-gpt2-random"
    with pytest.raises(ModelLoadError, match="no such model folder"):
        models.resolve_source("./no-such-folder")
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="needs a config.json"):
        models.resolve_source(str(folder))
    with pytest.raises(ModelLoadError, match="unknown model source kind"):
        models.check_available(ModelSource("nope", "x", "x", "x"))


def test_a_registered_source_is_tried_before_the_hub_id() -> None:
    @models.register_model_source("test-zoo")
    class ZooSource(models.ModelSourceKind):
        """Test models from an imaginary zoo."""

        def resolve(self, name: str) -> ModelSource | None:
            return ModelSource(self.name, name, f"zoo:{name}", name) if name.startswith("zoo:") else None

    try:
        assert list(MODEL_SOURCES)[-1] == "test-zoo"  # registered after the hub, still tried first
        assert models.resolve_source("zoo:cat").kind == "test-zoo"
        assert models.resolve_source("cat").kind == "hub"
        assert MODEL_SOURCES["test-zoo"].description == "Test models from an imaginary zoo."
    finally:
        del MODEL_SOURCES["test-zoo"]
    with pytest.raises(ValueError, match="docstring"):
        models.register_model_source("undocumented")(type("Undocumented", (models.ModelSourceKind,), {}))
    assert "undocumented" not in MODEL_SOURCES


def test_load_model_builds_random_sources_afresh_and_keeps_pretrained_ones() -> None:
    source = models.resolve_source("tiny-gpt2", random_weights=True)
    kept = dict(models._LAST_LOADED)
    first, second = models.load_model(source, device="cpu"), models.load_model(source, device="cpu")
    assert first is not second and first.source == source and first.family == "gpt2"
    assert models._LAST_LOADED == kept  # a random build does not evict the kept pretrained model
    assert (MODEL_SOURCES["random"].reuse_loaded, MODEL_SOURCES["hub"].reuse_loaded) == (False, True)
