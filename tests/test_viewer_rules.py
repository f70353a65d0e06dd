"""Rules the viewer and its figures keep, each fact in one place: whether a cache explains a
prediction is the settings object's own rule (ExtractSettings.explains); the 3-D view's MLP width
is the model's (its model card), not guessed from the stored neurons; and a public function with
more than 10 parameters takes a settings object instead (a registered figure's parameters are its
options, set one by one with --param, so those are the exception)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from lens_pipeline.capture import model_card
from lens_pipeline.draw.builtins import architecture3d
from lens_pipeline.draw.registry import REGISTRY
from lens_pipeline.store.cache import ExtractSettings, load
from lens_pipeline.viewer.rows import cache_settings, recorded_settings
from viewer_data import latest_rows, tiny_save_path

MAX_PARAMETERS = 10


@pytest.mark.parametrize("settings", [
    ExtractSettings(),
    ExtractSettings(logit_lens=True, top_k=5),
    ExtractSettings(attribution=("ig",)),
    ExtractSettings(logit_attribution=True),
    ExtractSettings(lens_trajectory=True, logit_lens=True),
    ExtractSettings(lens_resid_mid=True),
])
def test_a_cache_explains_what_its_settings_say(settings: ExtractSettings) -> None:
    recorded = settings.as_dict()
    assert recorded_settings(recorded) == settings
    assert cache_settings({"params": recorded})["explains"] is settings.explains


def test_recorded_settings_of_another_version_are_read_as_far_as_known() -> None:
    newer = dict(ExtractSettings(lens_resid_mid=True).as_dict(), setting_of_a_later_version=3)
    assert cache_settings({"params": newer})["explains"] is True
    assert cache_settings({"params": {"lens_resid_mid": True}})["explains"] is True  # the lens after attention alone
    assert cache_settings({"params": {"hooks": ["blocks.0.hook_resid_mid"], "neuron_ids": "not ids"}})["explains"] is False


def test_the_3d_view_takes_the_mlp_width_from_the_model_card(tmp_path_factory: pytest.TempPathFactory,
                                                             tmp_path: Path) -> None:
    save_path = tiny_save_path(tmp_path_factory)
    row = latest_rows(save_path, "cache")[0]
    width = json.loads((save_path / row["path"]).with_name(model_card.CARD_JSON).read_text())["architecture"]["d_mlp"]
    with load(save_path / row["path"]) as cache:
        stored = int(cache.neuron_ids.max()) + 1
        assert architecture3d.mlp_width(cache) == (width, True) and width > stored  # the model's, not the sample's
    alone = tmp_path / "cache.zip"  # a cache without its model card beside it
    shutil.copyfile(save_path / row["path"], alone)
    with load(alone) as cache:
        assert architecture3d.mlp_width(cache) == (stored, False)


def _public_functions() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted((REPO / "lens_pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                args = node.args
                names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                found.append((str(path.relative_to(REPO)), node.name, count))
    return found


def test_public_functions_with_many_parameters_take_a_settings_object() -> None:
    import lens_pipeline.draw.builtins  # noqa: F401  (registers the built-in figures)

    figures = {spec.func.__name__ for spec in REGISTRY.values()}
    many = [(path, name, n) for path, name, n in _public_functions() if n > MAX_PARAMETERS and name not in figures]
    assert many == []
    from lens_pipeline.draw.builtins.predictions import PanelLayout, probability_panels

    assert dataclasses.is_dataclass(PanelLayout) and PanelLayout.__dataclass_params__.frozen
    assert len(inspect.signature(probability_panels).parameters) <= MAX_PARAMETERS
