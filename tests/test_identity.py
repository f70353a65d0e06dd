"""Nothing lost, nothing stale: what a cache and a figure are, and what a rerun does with them.

Each test here failed on the code before cache and figure identity (issue 11): a rerun with
other settings overwrote caches, a redefined function was not redrawn, a typo in a parameter
overwrote good rows, errors lost their tracebacks, old knitting files stayed beside new ones,
and an encoder's meaningless predictions were drawn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SHORT_TEXTS, python_cmd, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.draw.registry import REGISTRY, register_figure
from lens_pipeline.figures import FigureParamError, run_figures
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache

QUIET = dict(progress=False, log=lambda message: None)


def newest(save_path: Path) -> dict:
    return index.latest(index.read_rows(save_path))


def rows_of(save_path: Path, function: str) -> list[dict]:
    return [r for r in newest(save_path).values() if r.get("function") == function]


@pytest.fixture(scope="module")
def lens_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random tiny-llama caches of 3 prompts made with the logit lens, as `make run` makes them."""
    root = tmp_path_factory.mktemp("identity")
    prompts = write_jsonl(root / "prompts.jsonl", [{"text": t} for t in SHORT_TEXTS[1:4]])
    run_activations("tiny-llama", prompts, root / "data", random_weights=True, logit_lens=True, **QUIET)
    return root


@pytest.fixture
def run_copy(lens_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(lens_run, tmp_path / "run")
    return tmp_path / "run" / "prompts.jsonl", tmp_path / "run" / "data"


def test_other_settings_never_destroy_a_cache(run_copy: tuple[Path, Path]) -> None:
    prompts, save = run_copy
    run_figures(save, figures=["logit_lens", "attention_overview"], progress=False)
    lens_caches = {r["path"] for r in newest(save).values() if r["kind"] == "cache"}

    # The README's stage command, without --logit-lens: the caches that have it already cover it.
    again = run_activations("tiny-llama", prompts, save, random_weights=True, **QUIET)
    assert again.written == 0 and again.skipped == 3

    # Other settings: new caches beside the old ones, which keep their logit lens.
    other = run_activations("tiny-llama", prompts, save, random_weights=True, pattern_encoding="q16", **QUIET)
    assert other.written == 3
    for path in lens_caches:
        with Cache(save / path) as cache:
            assert cache.has("logit_lens_ids") and cache.meta["settings"]["logit_lens"] is True
    current = index.current_caches(newest(save).values())
    assert {r["params"]["pattern_encoding"] for r in current.values()} == {"q16"}
    assert len(list((save / "caches").rglob("*.zip"))) == 6

    # Figures follow the current caches: the logit lens is not drawn from them (it has none) and
    # what was drawn from the old caches is not shown as current.
    summary = run_figures(save, figures=["logit_lens"], progress=False)
    assert summary.written == 0
    lens_rows = rows_of(save, "logit_lens")
    assert lens_rows and all(r["status"] == "skipped" and "logit_lens_ids" in r["reason"] for r in lens_rows)
    assert not list((save / "figures").rglob("logit_lens.png"))  # its old files went with its old row
    overview = rows_of(save, "attention_overview")
    assert all(r["status"] == "stale" and "current" in r["reason"] for r in overview)

    # Asking for the first settings again makes their caches current again, without recomputing.
    back = run_activations("tiny-llama", prompts, save, random_weights=True, logit_lens=True, **QUIET)
    assert back.written == 0 and back.skipped == 3
    assert {r["path"] for r in index.current_caches(newest(save).values()).values()} == lens_caches

    # Only --prune removes data, and it says what it removed.
    messages: list[str] = []
    pruned = run_activations("tiny-llama", prompts, save, random_weights=True, logit_lens=True, prune=True,
                             progress=False, log=messages.append)
    assert len(pruned.pruned) == 3 and any("pruned 3 cache(s)" in m for m in messages)
    assert {p.relative_to(save).as_posix() for p in (save / "caches").rglob("*.zip")} == lens_caches


def test_a_deleted_cache_makes_its_figures_stale(run_copy: tuple[Path, Path]) -> None:
    _, save = run_copy
    run_figures(save, figures=["attention_overview"], progress=False)
    victim = next(r for r in newest(save).values() if r["kind"] == "cache")
    (save / victim["path"]).unlink()
    summary = run_figures(save, figures=["attention_overview"], progress=False)
    assert summary.stale == 1
    row = next(r for r in rows_of(save, "attention_overview") if r["prompt_hash"] == victim["prompt_hash"])
    assert row["status"] == "stale" and "gone" in row["reason"]


def _register_from_source(code: str) -> None:
    """Define a figure the way a notebook cell does: code compiled in __main__-like namespace."""
    exec(compile(textwrap.dedent(code), "<notebook cell>", "exec"), {"register_figure": register_figure, "__name__": "__main__"})


def test_a_redefined_function_is_redrawn(run_copy: tuple[Path, Path]) -> None:
    _, save = run_copy
    try:
        _register_from_source('''
            @register_figure(scope="prompt", formats="txt")
            def cell_figure(cache):
                return "first version"
        ''')
        first = run_figures(save, figures=["cell_figure"], progress=False)
        assert first.written == 3
        assert run_figures(save, figures=["cell_figure"], progress=False).written == 0  # unchanged: not redrawn
        _register_from_source('''
            @register_figure(scope="prompt", formats="txt")
            def cell_figure(cache):
                return "second version"
        ''')
        second = run_figures(save, figures=["cell_figure"], progress=False)
        assert second.written == 3
        rows = rows_of(save, "cell_figure")
        assert {(save / r["path"]).read_text() for r in rows} == {"second version"}
        assert len({r["code_sha256"] for r in rows}) == 1 and rows[0]["code_sha256"] != first.rows[0]["code_sha256"]
        # A changed param redraws too.
        assert run_figures(save, figures=["attention_overview"], progress=False).written == 3
        assert run_figures(save, figures=["attention_overview"], params={"attention_overview": {"cell": 32}},
                           progress=False).written == 3
    finally:
        REGISTRY.pop("cell_figure", None)


def test_bad_params_fail_before_anything_is_drawn(run_copy: tuple[Path, Path]) -> None:
    _, save = run_copy
    run_figures(save, figures=["knitting_pattern"], progress=False)
    before = (save / "index.jsonl").read_bytes()
    cases = {
        "knitting_pattern.widht=30": ["widht", "width"],          # a typo: the closest option
        "knitting.width=30": ["'knitting'", "knitting_pattern"],  # no such figure: the closest name
        'knitting_pattern.width="wide"': ["width", "int"],        # a value of the wrong type
    }
    for param, words in cases.items():
        done = subprocess.run(python_cmd("-m", "lens_pipeline.figures", "--save-path", str(save), "--quiet",
                                         "--param", param), capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert all(word in lines[0] for word in words), lines[0]
    with pytest.raises(FigureParamError, match="width"):
        run_figures(save, params={"knitting_pattern": {"widht": 30}}, progress=False)
    assert (save / "index.jsonl").read_bytes() == before
    assert all(r["status"] == "ok" for r in rows_of(save, "knitting_pattern"))


def test_errors_keep_their_traceback_and_can_be_raised(run_copy: tuple[Path, Path]) -> None:
    _, save = run_copy

    @register_figure(scope="prompt", formats="txt")
    def broken_figure(cache):
        raise RuntimeError("oops")

    try:
        summary = run_figures(save, figures=["broken_figure"], progress=False)
        assert summary.failed == 3
        row = rows_of(save, "broken_figure")[0]
        assert row["error"] == "RuntimeError: oops"
        assert "Traceback" in row["traceback"] and 'raise RuntimeError("oops")' in row["traceback"]
        with pytest.raises(RuntimeError, match="oops"):
            run_figures(save, figures=["broken_figure"], progress=False, raise_errors=True)
    finally:
        REGISTRY.pop("broken_figure", None)

    # From the command line: one line per error naming figure and prompt (no "LNone HNone"); --raise
    # shows the traceback. The figure lives in a script, as a user's module would.
    script = save.parent / "broken.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        from lens_pipeline.draw.registry import register_figure
        from lens_pipeline.figures import main

        @register_figure(scope="prompt", formats="txt")
        def broken_figure(cache):
            raise RuntimeError("oops")

        sys.exit(main(["--save-path", {str(save)!r}, "--figures", "broken_figure", "--quiet"] + sys.argv[1:]))
    '''))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(errors) == 3, done.stderr
    assert all("broken_figure on tiny-llama-random" in e and "RuntimeError: oops" in e and "None" not in e for e in errors)
    raised = subprocess.run([sys.executable, str(script), "--raise"], capture_output=True, text=True, timeout=120)
    assert raised.returncode != 0 and "Traceback" in raised.stderr and "RuntimeError: oops" in raised.stderr


def test_a_figure_folder_holds_exactly_its_latest_files(run_copy: tuple[Path, Path]) -> None:
    _, save = run_copy
    prompt = sorted(r["prompt_hash"] for r in newest(save).values() if r["kind"] == "cache")[0]
    small = run_figures(save, figures=["knitting_pattern"], prompts=[prompt], progress=False)
    folder = save / Path(small.rows[0]["path"]).parent
    assert (folder / "ayab.png").exists()
    # 120 stitches is over the KH-270's 112 needles: the AYAB export is refused this time.
    big = run_figures(save, figures=["knitting_pattern"], prompts=[prompt], progress=False,
                      params={"knitting_pattern": {"width": 120, "ayab_machine": "KH-270", "blocks": "fill"}})
    row = big.rows[0]
    assert row["status"] == "ok" and "ayab.png" not in {Path(f["path"]).name for f in row["files"]}
    on_disk = {p.relative_to(save).as_posix() for p in folder.iterdir()}
    assert on_disk == {f["path"] for f in row["files"]}
    meta_file = next(f["path"] for f in row["files"] if f["path"].endswith("meta.json"))
    assert json.loads((save / meta_file).read_text())["ayab"]["error"]


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minilm")
    prompts = write_jsonl(root / "prompts.jsonl", [{"text": t} for t in SHORT_TEXTS[1:3]])
    run_activations("minilm", prompts, root, logit_lens=True, **QUIET)
    return root


def test_an_encoder_gets_no_next_token_figures(minilm_run: Path) -> None:
    summary = run_figures(minilm_run, figures=["topk_*", "logit_lens", "knitting_pattern", "attention_overview"],
                          params={"knitting_pattern": {"source": "top1_prob"}}, progress=False)
    assert summary.failed == 0
    for function in ("topk_bars", "topk_heatmap", "logit_lens", "knitting_pattern"):
        rows = rows_of(minilm_run, function)
        assert len(rows) == 2 and all(r["status"] == "skipped" and "LM head" in r["reason"] for r in rows), rows
        assert not any("path" in r for r in rows)
    assert all(r["status"] == "ok" for r in rows_of(minilm_run, "attention_overview"))
    # The default knitting source (attention) is meaningful for an encoder and is drawn.
    drawn = run_figures(minilm_run, figures=["knitting_pattern"], progress=False)
    assert drawn.written == 2
