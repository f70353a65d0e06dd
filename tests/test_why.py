"""“Why this token”: the viewer's `why` view and `show.why` read the cache's explain arrays exactly.

SmolLM2 explains the repeated-text prompt at every position (gradient × input, logit attribution,
lens trajectory) and a second prompt at its default target only; the API, the page in headless
Chromium and the notebook widget are checked against the cache file's own arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.draw import colormap
from lens_pipeline.notebook import show
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache
from lens_pipeline.viewer import ViewerApi
from lens_pipeline.viewer.params import ApiError
from viewer_data import browser_fixture, css, running_server, wait  # noqa: F401  (fixture driver)

REPEAT = "When shall we three meet again? When shall we three meet again?"
ONE_TARGET = "The capital of France is"


@pytest.fixture(scope="module")
def save_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("why")
    prompts = write_jsonl(root / "p.jsonl", [{"id": "repeat", "text": REPEAT, "target_positions": "all"},
                                             {"id": "one", "text": ONE_TARGET}])
    summary = run_activations("smollm2", prompts, root / "data", progress=False, log=lambda _: None, batch_size=2,
                              attribution=("grad_x_input",), logit_attribution=True, lens_trajectory=True)
    assert summary.written == 2 and not summary.failed
    return root / "data"


def cache_of(save_path: Path, prompt_id: str) -> tuple[dict[str, Any], Cache]:
    text = REPEAT if prompt_id == "repeat" else ONE_TARGET
    row = next(r for r in index.latest(index.read_rows(save_path)).values() if r["kind"] == "cache" and r["text"] == text)
    return row, Cache(save_path / row["path"])


def ask(save_path: Path, row: dict[str, Any], **params: Any) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in {"model": row["model"], "prompt": row["prompt_hash"], **params}.items())
    return ViewerApi(save_path).handle("/api/why", query)


def test_api_answers_are_the_cache_arrays(save_path: Path) -> None:
    row, cache = cache_of(save_path, "repeat")
    targets = cache.array("target_positions").tolist()
    assert targets == list(range(cache.n_tokens - 1))  # "all": every actual next token
    position = cache.n_tokens - 4
    answer = ask(save_path, row, position=position)
    g = targets.index(position)
    assert answer["target"]["token_id"] == cache.token_ids[position + 1]
    assert answer["target"]["value"] == pytest.approx(float(cache.array("target_values")[g]))
    (grad_x_input,) = answer["attributions"]
    assert grad_x_input["values"] == cache.array("attr_grad_x_input")[g, : position + 1].astype(np.float64).tolist()
    scale = float(np.abs(cache.array("attr_grad_x_input")[g, : position + 1]).max())
    assert grad_x_input["colors"] == colormap.hex_colors(cache.array("attr_grad_x_input")[g, : position + 1],
                                                         colormap.SIGNED_CMAP, -scale, scale)
    logit = answer["logit"]
    assert logit["heads"]["values"] == cache.array("logit_attr_heads")[g].astype(np.float64).ravel().tolist()
    assert logit["sum"] == pytest.approx(answer["target"]["value"], abs=1e-3)  # the parts sum to the logit
    top = logit["top_heads"][0]
    assert abs(top["value"]) == pytest.approx(float(np.abs(cache.array("logit_attr_heads")[g]).max()))
    lens = answer["lens"]
    assert lens["actual_probs"] == cache.array("lens_actual_probs")[:, position].astype(np.float64).tolist()
    assert lens["actual_ranks"] == cache.array("lens_actual_ranks")[:, position].tolist()
    assert len(lens["rows"]) == cache.n_layers
    # The final layer's lens is the model's own output: its log-probability of the actual next token.
    assert np.log(lens["actual_probs"][-1]) == pytest.approx(lens["logprob"], abs=1e-4)


def test_default_and_unexplained_positions(save_path: Path) -> None:
    row, cache = cache_of(save_path, "one")
    answer = ask(save_path, row)
    assert answer["position"] == cache.n_tokens - 1 == answer["target_positions"][0]
    assert answer["next_token"] is None and answer["target"]["token_id"] == int(cache.array("target_ids")[0, 0])
    earlier = ask(save_path, row, position=1)
    assert earlier["target"] is None and earlier["attributions"] == [] and earlier["logit"] is None
    assert "target_positions" in earlier["unexplained"] and earlier["lens"] is not None  # the lens is at every position
    with pytest.raises(ApiError, match="out of range"):
        ask(save_path, row, position=cache.n_tokens)


def test_page_shows_the_cache_and_opens_the_head_that_wrote_the_logit(driver: Any, save_path: Path) -> None:
    row, cache = cache_of(save_path, "repeat")
    position = cache.n_tokens - 4
    g = cache.array("target_positions").tolist().index(position)
    with running_server(save_path) as server:
        driver.get("about:blank")
        driver.get(f"{server.url}#view=why&model={row['model']}&prompt={row['prompt_hash']}&position={position}")
        spans = wait(driver, lambda d: css(d, ".why-method[data-method='grad_x_input'] .tv"))
        shown = [float(s.get_attribute("data-value")) for s in spans]
        assert shown == cache.array("attr_grad_x_input")[g, : position + 1].astype(np.float64).tolist()
        cells = css(driver, ".why-grid a.why-cell")
        assert len(cells) == cache.n_layers * cache.n_heads
        heads = cache.array("logit_attr_heads")[g]
        assert [float(c.get_attribute("data-value")) for c in cells] == heads.astype(np.float64).ravel().tolist()
        p_next = [c.text for c in css(driver, ".why-lens td[data-field='p_next']")]
        assert len(p_next) == cache.n_layers
        # Another token: the view follows it.
        css(driver, ".why-token[data-position='3']")[0].click()
        wait(driver, lambda d: css(d, ".why-token.selected[data-position='3']"))
        # The top head of the list opens its head view.
        link = wait(driver, lambda d: css(d, ".why-top a"))[0]
        layer, head = link.get_attribute("data-layer"), link.get_attribute("data-head")
        link.click()
        wait(driver, lambda d: css(d, f"canvas.heatmap[data-layer='{layer}'][data-head='{head}']"))
        assert driver.execute_script("return window.__dialogs") == []


def test_notebook_widget_embeds_the_same_answer(save_path: Path) -> None:
    row, cache = cache_of(save_path, "repeat")
    widget = show.why(cache, position=5)
    assert widget.params["view"] == "why" and widget.params["position"] == 5
    embedded = [a["body"] for key, a in widget.answers.items() if key.startswith("[\"why\"")]
    assert embedded and embedded[0]["position"] == 5
    assert embedded[0]["logit"]["heads"]["values"] == ask(save_path, row, position=5)["logit"]["heads"]["values"]
    with pytest.raises(ValueError, match="out of range"):
        show.why(cache, position=cache.n_tokens)


def test_prompt_list_offers_the_view(save_path: Path) -> None:
    prompts = ViewerApi(save_path).handle("/api/prompts", "")
    assert all(p["explains"] for p in prompts["rows"])

