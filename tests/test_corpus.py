"""The corpus stage on real SmolLM2 caches: shared neuron basis, neuron dashboards, phrasing comparisons.

Known case (found on SmolLM2-135M-Instruct with a variance basis over Shakespeare quotes): MLP
neuron 965 of layer 21 fires on clause punctuation (',' most, then ';' and '.') and its output
weights promote ' and' and suppress ',' through the unembedding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.capture.prompts import read_prompts
from lens_pipeline.corpus import neurons
from lens_pipeline.corpus.basis import NeuronSpecError, given_rows, read_basis
from lens_pipeline.corpus.compare import Comparisons, js_divergence
from lens_pipeline.store import index
from lens_pipeline.store.cache import load
from viewer_data import browser_fixture  # noqa: F401  (the `driver` fixture: headless Chromium)

MODEL = "SmolLM2-135M-Instruct"
COMMA_LAYER, COMMA_NEURON = 21, 965
PROMPTS = [
    {"id": "fr1", "group": "capital", "text": "The capital of France is"},
    {"id": "fr2", "group": "capital", "text": "The capital city of France is"},
    {"id": "fr3", "group": "capital", "text": "France's capital is"},
    {"id": "cat", "pair": "dog", "text": "The cat sat on the mat, and then it slept."},
    {"id": "dog", "pair": "cat", "text": "The dog sat on the mat, and then it barked."},
    {"text": "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him."},
    {"text": "Double, double toil and trouble; fire burn, and cauldron bubble."},
    {"text": "Now is the winter of our discontent, made glorious summer by this sun of York."},
]
FIRST = 5  # the first run caches these; the second adds the rest (an incremental update)
GIVEN = "21:965;3:7,2"
SETTINGS = neurons.DashboardSettings(top_k=6, window=3)

pytestmark = pytest.mark.slow


def current_rows(save_path: Path) -> list[dict[str, Any]]:
    rows = index.current_caches(index.latest(index.read_rows(save_path)).values())
    return [row for (model, _), row in rows.items() if model == MODEL and index.is_complete(row, save_path)]


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("corpus_prompts")
    return write_jsonl(folder / "first.jsonl", PROMPTS[:FIRST]), write_jsonl(folder / "all.jsonl", PROMPTS)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory, prompt_files: tuple[Path, Path]) -> dict[str, Any]:
    """A variance basis chosen over the first prompts; dashboards built, then the rest added and rebuilt."""
    save_path = tmp_path_factory.mktemp("corpus_shared")
    options = dict(batch_size=4, progress=False, neuron_basis="variance", n_neurons=4)
    assert run_activations("smollm2", prompt_files[0], save_path, **options).written == FIRST
    first = neurons.build(save_path, MODEL, SETTINGS)
    assert run_activations("smollm2", prompt_files[1], save_path, **options).written == len(PROMPTS) - FIRST
    second = neurons.build(save_path, MODEL, SETTINGS)
    return {"save_path": save_path, "first": first, "second": second}


@pytest.fixture(scope="module")
def given_run(tmp_path_factory: pytest.TempPathFactory, prompt_files: tuple[Path, Path]) -> Path:
    save_path = tmp_path_factory.mktemp("corpus_given")
    run_activations("smollm2", prompt_files[1], save_path, batch_size=4, progress=False, neuron_ids=GIVEN)
    neurons.build(save_path, MODEL, neurons.DashboardSettings(top_k=10, window=3))
    return save_path


def brute_force(save_path: Path, rows: list[dict[str, Any]], k: int) -> dict[str, np.ndarray]:
    """Top-k (value, prompt, position) per neuron over every cache, ties by prompt hash then position."""
    caches = {row["prompt_hash"]: load(save_path / row["path"]) for row in rows}
    ids = next(iter(caches.values())).neuron_ids
    out = {"value": np.zeros((*ids.shape, k)), "prompt": np.empty((*ids.shape, k), object), "pos": np.zeros((*ids.shape, k), int)}
    hist = np.zeros((*ids.shape, len(neurons.HIST_EDGES) + 1), int)
    active = np.zeros(ids.shape, int)
    for layer in range(ids.shape[0]):
        for slot in range(ids.shape[1]):
            entries = []
            for hash_, cache in caches.items():
                acts = cache.neuron_acts[layer, slot]
                entries += [(-float(v), hash_, p) for p, v in enumerate(acts) if p >= 1]
                hist[layer, slot] += np.bincount(np.searchsorted(neurons.HIST_EDGES, acts[1:], side="right"),
                                                 minlength=len(neurons.HIST_EDGES) + 1)
                active[layer, slot] += int((acts[1:] > 0).sum())
            for j, (v, h, p) in enumerate(sorted(entries)[:k]):
                out["value"][layer, slot, j], out["prompt"][layer, slot, j], out["pos"][layer, slot, j] = -v, h, p
    return {**out, "hist": hist, "active": active}


def index_entries(save_path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return neurons.Dashboards(save_path).open(MODEL)


def test_shared_basis_every_cache_holds_the_same_neurons(shared_run: dict[str, Any]) -> None:
    save_path = shared_run["save_path"]
    basis = read_basis(save_path, MODEL)
    assert basis["method"] == "variance" and basis["n"] == 4 and basis["prompts"] == FIRST  # kept when prompts were added
    assert "first (BOS)" in basis["score"]
    rows = current_rows(save_path)
    assert len(rows) == len(PROMPTS)
    for row in rows:
        assert load(save_path / row["path"]).neuron_ids.tolist() == basis["neuron_ids"]
    assert len({row["settings_id"] for row in rows}) == 1
    assert set(basis["effects"]) == {f"{layer}:{n}" for layer, ids in enumerate(basis["neuron_ids"]) for n in ids}
    promote = basis["effects"][f"0:{basis['neuron_ids'][0][0]}"]["promote"]
    assert len(promote) == 10 and promote[0][2] >= promote[-1][2]


def test_user_list_is_honoured_exactly(given_run: Path) -> None:
    from lens_pipeline.capture import models

    expected = [[-1, -1] for _ in range(30)]
    expected[3], expected[21] = [7, 2], [965, -1]
    rows = current_rows(given_run)
    cache = load(given_run / rows[0]["path"])
    for row in rows:
        assert load(given_run / row["path"]).neuron_ids.tolist() == expected
    assert np.all(cache.neuron_acts[21, 1] == 0) and np.all(cache.neuron_acts[0] == 0)
    model = models.load_model(models.resolve("smollm2"))  # the stage's model, kept loaded
    import torch

    with torch.no_grad():
        _, acts = model.bridge.run_with_cache(torch.tensor([cache.token_ids.tolist()]),
                                              names_filter=lambda name: name.endswith("mlp.hook_post"))
    np.testing.assert_allclose(cache.neuron_acts[3, 0], acts["blocks.3.mlp.hook_post"][0, :, 7].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(cache.neuron_acts[21, 0], acts["blocks.21.mlp.hook_post"][0, :, 965].numpy(), rtol=2e-3, atol=2e-3)


def test_bad_neuron_lists_fail_in_one_line(tmp_path: Path, prompt_files: tuple[Path, Path]) -> None:
    with pytest.raises(NeuronSpecError, match="'3-5' is not LAYER"):
        given_rows("3-5")
    assert given_rows("2:5,1;0:3")["neuron_ids"] == ((3,), (), (5, 1))
    with pytest.raises(NeuronSpecError, match="layer 40 is out of range"):
        run_activations("smollm2", prompt_files[0], tmp_path, progress=False, neuron_ids="40:1")
    with pytest.raises(NeuronSpecError, match=r"neuron\(s\) \[99999\]"):
        run_activations("smollm2", prompt_files[0], tmp_path, progress=False, neuron_ids="1:99999")


def test_dashboard_index_equals_brute_force(shared_run: dict[str, Any]) -> None:
    save_path = shared_run["save_path"]
    rows = current_rows(save_path)
    expected = brute_force(save_path, rows, SETTINGS.top_k)
    meta, arrays = index_entries(save_path)
    hashes = np.array([p["prompt_hash"] for p in meta["prompts"]], object)
    np.testing.assert_array_equal(arrays["top_vals"], expected["value"].astype(np.float32))
    np.testing.assert_array_equal(hashes[arrays["top_prompt"]], expected["prompt"])
    np.testing.assert_array_equal(arrays["top_pos"], expected["pos"])
    np.testing.assert_array_equal(arrays["hist"], expected["hist"])
    np.testing.assert_array_equal(arrays["active"], expected["active"])
    caches = {row["prompt_hash"]: load(save_path / row["path"]) for row in rows}
    for (layer, slot, j), prompt in list(np.ndenumerate(arrays["top_prompt"]))[::7]:  # windows: the cache's values around
        acts, pos = caches[hashes[prompt]].neuron_acts[layer, slot], arrays["top_pos"][layer, slot, j]
        window = arrays["windows"][layer, slot, j].astype(np.float32)
        for offset in range(-SETTINGS.window, SETTINGS.window + 1):
            shown = window[offset + SETTINGS.window]
            assert (np.isnan(shown) if not 0 <= pos + offset < len(acts) else shown == acts[pos + offset])


def test_incremental_add_equals_recompute(shared_run: dict[str, Any], tmp_path: Path) -> None:
    save_path = shared_run["save_path"]
    assert shared_run["first"].parts_computed == FIRST
    assert shared_run["second"].parts_computed == len(PROMPTS) - FIRST and shared_run["second"].prompts == len(PROMPTS)
    incremental = index_entries(save_path)
    fresh = tmp_path / "fresh"
    shutil.copytree(save_path, fresh, ignore=shutil.ignore_patterns("corpus"))
    report = neurons.build(fresh, MODEL, SETTINGS)
    assert report.parts_computed == len(PROMPTS)
    recomputed = index_entries(fresh)
    for name in incremental[1]:
        np.testing.assert_array_equal(incremental[1][name], recomputed[1][name], err_msg=name)
    drop = ("build",)
    assert {k: v for k, v in incremental[0].items() if k not in drop} == {k: v for k, v in recomputed[0].items() if k not in drop}


def test_removing_a_cache_removes_its_contexts(shared_run: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shared_run["save_path"], copy)
    meta, arrays = index_entries(copy)
    counts = np.bincount(arrays["top_prompt"][arrays["top_prompt"] >= 0].ravel())
    victim = meta["prompts"][int(np.argmax(counts))]  # the prompt with the most top contexts
    (copy / victim["path"]).unlink()
    report = neurons.build(copy, MODEL, SETTINGS)
    assert report.parts_removed == 1 and report.prompts == len(PROMPTS) - 1
    meta, arrays = index_entries(copy)
    assert victim["prompt_hash"] not in [p["prompt_hash"] for p in meta["prompts"]]
    assert not (copy / "corpus" / MODEL / "parts" / f"{victim['sha256']}.npz").exists()
    expected = brute_force(copy, current_rows(copy), SETTINGS.top_k)
    np.testing.assert_array_equal(arrays["top_vals"], expected["value"].astype(np.float32))
    np.testing.assert_array_equal(arrays["hist"], expected["hist"])


def test_known_case_layer_21_neuron_965_fires_on_clause_punctuation(given_run: Path) -> None:
    """Its top contexts peak on ',' (then ';' and '.'); through the unembedding it promotes ' and' and
    suppresses ',': a clause-boundary neuron that predicts a conjunction after a comma."""
    dash = neurons.Dashboards(given_run).neuron(MODEL, COMMA_LAYER, COMMA_NEURON)
    peaks = [c["tokens"][c["position"] - c["first"]] for c in dash["contexts"]]
    assert peaks[:4] == [","] * 4 and set(peaks) <= {",", ";", "."}, peaks
    assert dash["contexts"][0]["value"] > 4.0  # measured 6.3
    assert " and" in [t for _, t, _ in dash["effects"]["promote"][:3]]
    assert dash["effects"]["suppress"][0][1] == ","
    comma, other = [], []
    for row in current_rows(given_run):
        cache = load(given_run / row["path"])
        acts = cache.neuron_acts[COMMA_LAYER, 0]
        for token, value in list(zip(cache.tokens, acts))[1:]:
            (comma if "," in token else other).append(value)
    assert np.mean(comma) > 3 * max(np.mean(other), 0.05), (np.mean(comma), np.mean(other))


def test_groups_and_pairs_are_checked_with_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "pair": "zzz", "text": "one"},
        {"id": "b", "group": "g", "model": "smollm2", "text": "two"},
        {"id": "c", "group": "g", "model": "gpt2", "text": "three"},
        {"id": "d", "group": "", "text": "four"},
        {"id": "e", "pair": "b", "text": "five"},
    ])
    good, bad = read_prompts(path)
    assert [p.metadata["id"] for p in good] == ["b", "e"]
    messages = [str(b) for b in bad]
    assert messages[0] == f"{path}:1: \"pair\" names 'zzz', which is not the \"id\" of another prompt in this file"
    assert messages[1] == f"{path}:3: group 'g' spans models: 'smollm2' at {path}:2, 'gpt2' here"
    assert messages[2].startswith(f"{path}:4: \"group\" must be a non-empty string")


def test_comparing_a_group(shared_run: dict[str, Any]) -> None:
    save_path = shared_run["save_path"]
    comparisons = Comparisons(save_path)
    groups = {g["name"]: len(g["prompts"]) for g in comparisons.groups(MODEL)["groups"]}
    assert groups == {"capital": 3, "pair:cat+dog": 2}
    result = comparisons.compare(MODEL, group="pair:cat+dog")
    caches = [load(save_path / row["path"]) for row in current_rows(save_path)
              if row["prompt_hash"] in [p["prompt_hash"] for p in result["prompts"]]]
    by_hash = {c.prompt_hash: c for c in caches}
    ref, other = (by_hash[p["prompt_hash"]] for p in result["prompts"])
    for a, b in result["alignment"]["pairs"][1]:
        assert ref.tokens[a] == other.tokens[b]
    unmatched = {ref.tokens[i] for i in range(len(ref.tokens)) if i not in result["alignment"]["common"]}
    assert unmatched == {" cat", " slept"}  # against ' dog' and ' barked'; every other token aligned
    jsd = np.array(result["next_token"]["jsd"])
    assert jsd[0, 0] == 0 and jsd[0, 1] == jsd[1, 0] and 0 < jsd[0, 1] <= np.log(2)
    assert js_divergence([1, 2], [0.5, 0.5], [3, 4], [0.5, 0.5]) == pytest.approx(np.log(2))
    np.testing.assert_allclose(result["resid_norms"]["last"][1], other.array("resid_norms")[:, -1], rtol=1e-6)
    assert np.all(np.array(result["heads"]["entropy"]["difference"][0]) == 0)
    lines = result["neurons"]["lines"]
    assert lines and len(lines[0]["values"]) == 2 and len(lines[0]["values"][0]) == len(result["alignment"]["common"])
    cols = result["alignment"]["columns"][1]
    slot = ref.neuron_ids[lines[0]["layer"]].tolist().index(lines[0]["neuron"])
    np.testing.assert_allclose(lines[0]["values"][1], other.neuron_acts[lines[0]["layer"], slot, cols])


def test_corpus_command_reports_what_it_did(shared_run: dict[str, Any]) -> None:
    from lens_pipeline.corpus.stage import main

    assert main(["--save-path", str(shared_run["save_path"]), "--top-k", str(SETTINGS.top_k),
                 "--window", str(SETTINGS.window)]) == 0
    meta = json.loads((neurons.corpus_dir(shared_run["save_path"], MODEL) / "neurons.json").read_text())
    assert meta["build"]["parts_computed"] == 0 and meta["build"]["windows_read"] == 0  # nothing new: all reused


# ----------------------------------------------------------------------------- the viewer, in Chromium


@pytest.fixture(scope="module")
def corpus_server(shared_run: dict[str, Any]) -> Any:
    from viewer_data import running_server

    with running_server(shared_run["save_path"]) as server:
        yield server


def test_browser_neuron_page_shows_the_index_values(corpus_server: Any, driver: Any, shared_run: dict[str, Any]) -> None:
    from viewer_data import css, wait

    save_path = shared_run["save_path"]
    meta, arrays = index_entries(save_path)
    layer, slot = 12, 1
    neuron = int(arrays["neuron_ids"][layer, slot])
    driver.get("about:blank")
    driver.get(corpus_server.url + f"#view=neurons&model={MODEL}&layer={layer}&neuron={neuron}")
    def shown(d: Any) -> list[dict[str, Any]] | None:  # read in one go: a re-render makes elements stale (wait retries)
        rows = css(d, "tr.context")
        if len(rows) != SETTINGS.top_k:
            return None
        return [{"prompt": r.get_attribute("data-prompt"), "position": r.get_attribute("data-position"),
                 "value": float(r.get_attribute("data-value")),
                 "spans": [(float(t.get_attribute("data-value")), "peak" in t.get_attribute("class")) for t in css(r, "span.tv")]}
                for r in rows]

    rows = wait(driver, shown)
    hashes = [p["prompt_hash"] for p in meta["prompts"]]
    caches = {row["prompt_hash"]: load(save_path / row["path"]) for row in current_rows(save_path)}
    for j, row in enumerate(rows):
        prompt, pos = hashes[arrays["top_prompt"][layer, slot, j]], int(arrays["top_pos"][layer, slot, j])
        assert row["prompt"] == prompt and row["position"] == str(pos)
        assert row["value"] == float(caches[prompt].neuron_acts[layer, slot, pos])
        assert [v for v, peak in row["spans"] if peak] == [float(caches[prompt].neuron_acts[layer, slot, pos])]
        window = caches[prompt].neuron_acts[layer, slot, max(0, pos - SETTINGS.window):pos + SETTINGS.window + 1]
        assert [v for v, _ in row["spans"]] == [float(v) for v in window]
    counts = wait(driver, lambda d: [int(b.get_attribute("data-count")) for b in css(d, ".hist-bar")])
    assert counts == arrays["hist"][layer, slot].tolist()
    effects = read_basis(save_path, MODEL)["effects"][f"{layer}:{neuron}"]
    tokens = wait(driver, lambda d: [int(li.get_attribute("data-token")) for li in css(d, ".effects:first-child li")])
    assert tokens == [t for t, _, _ in effects["promote"]]
    wait(driver, lambda d: css(d, "tr.context a.jump")[0].click() or True)  # jump to the prompt, coloured by this neuron
    wait(driver, lambda d: css(d, ".token-flow span.tv") and "view=tokens" in d.current_url)
    values = [float(s.get_attribute("data-value")) for s in css(driver, ".token-flow span.tv")]
    first_prompt = hashes[arrays["top_prompt"][layer, slot, 0]]
    assert values == pytest.approx(caches[first_prompt].neuron_acts[layer, slot].astype(float).tolist())


def test_browser_prompt_comparison_shows_the_cache_values(corpus_server: Any, driver: Any, shared_run: dict[str, Any]) -> None:
    from viewer_data import css, wait

    save_path = shared_run["save_path"]
    driver.get("about:blank")
    driver.get(corpus_server.url + f"#view=phrasings&model={MODEL}&group=capital")

    def shown(d: Any) -> dict[str, Any] | None:  # read in one go: a re-render makes elements stale (wait retries)
        cells = css(d, "table.compare-predictions td")
        if not cells:
            return None
        return {"order": [li.get_attribute("data-prompt") for li in css(d, "ol.compare-prompts li")],
                "cells": [(int(c.get_attribute("data-prompt")), int(c.get_attribute("data-rank")),
                           float(c.get_attribute("data-prob"))) for c in cells],
                "jsd": {(int(td.get_attribute("data-a")), int(td.get_attribute("data-b"))): float(td.get_attribute("data-value"))
                        for td in css(d, "table.jsd td")},
                "diffs": [float(c.get_attribute("data-value")) for c in css(d, ".head-grid[data-prompt='1'] .head-cell")],
                "lines": len(css(d, ".neuron-line"))}

    page = wait(driver, shown)
    order = page["order"]
    assert len(order) == 3
    caches = {row["prompt_hash"]: load(save_path / row["path"]) for row in current_rows(save_path)}
    for prompt, rank, prob in page["cells"]:
        assert prob == float(caches[order[prompt]].array("topk_probs")[-1, rank])
    comparison = Comparisons(save_path).compare(MODEL, group="capital")
    assert page["jsd"] == {(a, b): v for a, row in enumerate(comparison["next_token"]["jsd"]) for b, v in enumerate(row)}
    from lens_pipeline.draw.builtins.attention_stats import prompt_statistics

    expected = prompt_statistics(caches[order[1]])["entropy"] - prompt_statistics(caches[order[0]])["entropy"]
    assert sorted(page["diffs"]) == pytest.approx(sorted(expected.ravel().tolist()))
    assert page["lines"] > 0  # the neurons that differ most, as lines across the prompts
    wait(driver, lambda d: css(d, "a.button.secondary")[0].click() or True)  # the same head of each prompt, side by side
    wait(driver, lambda d: len(css(d, "figure.panel canvas.heatmap")) == 3)
    assert [f.get_attribute("data-prompt") for f in css(driver, "figure.panel")] == order


def test_corpus_figures_and_pca(shared_run: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    from lens_pipeline.corpus.projection import write_pca
    from lens_pipeline.draw.builtins.corpus import corpus_token_pca, neuron_dashboards, phrasing_comparison
    from lens_pipeline.draw.registry import SkipFigure

    save_path = shared_run["save_path"]
    caches = [load(save_path / row["path"]) for row in current_rows(save_path)]
    pages = neuron_dashboards(caches, top_k=3, window=2)
    assert sorted(pages) == [f"L{layer:02d}.png" for layer in range(30)] and all(isinstance(f, Figure) for f in pages.values())
    assert sorted(phrasing_comparison(caches)) == ["capital.png", "pair_cat_dog.png"]
    with pytest.raises(SkipFigure, match="no prompt groups"):
        phrasing_comparison(caches[:1])
    result = corpus_token_pca(caches, highlight=caches[0].prompt_hash[:6])["json"]
    # Brute force: every token (but each first) of every cache stacked, standardised, SVD.
    features = np.concatenate([c.neuron_acts.reshape(-1, c.n_tokens)[:, 1:].T for c in
                               sorted(caches, key=lambda c: [p["prompt_hash"] for p in result["prompts"]].index(c.prompt_hash))])
    z = (features - features.mean(0)) / features.std(0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    coords = np.concatenate([np.asarray(p["coords"]) for p in result["prompts"]])
    for k in range(2):
        assert abs(np.corrcoef(coords[:, k], z @ vt[k])[0, 1]) > 0.9999
    np.testing.assert_allclose(result["explained"], (s[:2] ** 2) / (s ** 2).sum(), rtol=1e-6)
    assert write_pca(save_path, MODEL)["n_tokens"] == len(features)


def test_browser_corpus_pca_highlights_a_prompt(corpus_server: Any, driver: Any, shared_run: dict[str, Any]) -> None:
    from lens_pipeline.corpus.projection import write_pca
    from viewer_data import css, wait

    result = write_pca(shared_run["save_path"], MODEL)
    prompt = result["prompts"][2]
    driver.get("about:blank")
    driver.get(corpus_server.url + f"#view=pca&model={MODEL}&prompt={prompt['prompt_hash']}")
    marks = wait(driver, lambda d: (m := css(d, "svg.pca-plot circle.highlighted")) and m)
    assert len(marks) == len(prompt["tokens"])
    others = css(driver, "svg.pca-plot circle:not(.highlighted)")
    assert len(others) == result["n_tokens"] - len(prompt["tokens"])
