"""The Python side of working in a notebook: finding caches, TransformerLens-style names, figures
displayed with captions, user figures from the shell, vector formats. (The interactive widgets
and a real Jupyter kernel: tests/test_notebook.py.)"""

from __future__ import annotations

import io
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import lens_pipeline
from conftest import SHORT_TEXTS, python_cmd, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.figures import run_figures


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("notebook_api")
    records = [{"text": t, "act": i % 2} for i, t in enumerate(SHORT_TEXTS[1:4])]
    prompts = write_jsonl(root / "prompts.jsonl", records)
    run_activations("tiny-llama", prompts, root / "data", random_weights=True, hooks=["blocks.0.hook_resid_mid"],
                    progress=False, log=lambda message: None)
    return root / "data"


def test_the_package_front_names_the_figure_api_and_stays_light() -> None:
    """`from lens_pipeline import register_figure, run_figures` (the import a notebook tries first)
    gives the registry's and the figures stage's own functions, each imported on first use: a bare
    `import lens_pipeline` imports no stage, no torch and no matplotlib."""
    probe = ("import sys, lens_pipeline; print(sorted(m for m in sys.modules if m.startswith('lens_pipeline')"
             " or m.split('.')[0] in ('torch', 'matplotlib', 'numpy', 'anywidget')))")
    loaded = subprocess.run(python_cmd("-c", probe), capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "['lens_pipeline', 'lens_pipeline.version']"

    from lens_pipeline import __version__, register_figure, run_figures
    from lens_pipeline.draw import registry
    from lens_pipeline.figures import stage

    assert register_figure is registry.register_figure and run_figures is stage.run_figures
    assert run_figures is lens_pipeline.figures.run_figures and __version__ == lens_pipeline.version.__version__
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        lens_pipeline.no_such_name


def test_open_lists_filters_and_iterates_caches(small_run: Path) -> None:
    run = lens_pipeline.open(small_run)
    assert run.models == ["tiny-llama-random"] and len(run.caches()) == 3
    assert [c.text for c in run.caches(text="ROMANS")] == [SHORT_TEXTS[2]]
    assert len(run.caches(act=1)) == 1 and len(run.caches(model="other")) == 0
    texts = [cache.text for cache in run.caches()]
    assert sorted(texts) == sorted(SHORT_TEXTS[1:4])
    assert "3 cache(s)" in repr(run.caches()) and "<table>" in run.caches()._repr_html_()
    with pytest.raises(FileNotFoundError, match="index.jsonl"):
        lens_pipeline.open(small_run / "nowhere")


def test_transformer_lens_names(small_run: Path) -> None:
    with lens_pipeline.open(small_run).caches()[0] as cache:
        pattern = cache["blocks.1.attn.hook_pattern"]
        assert pattern.shape == (cache.n_heads, cache.n_tokens, cache.n_tokens)
        assert np.array_equal(pattern[1], cache.pattern(1, 1))
        assert cache["blocks.0.hook_resid_mid"].shape[0] == cache.n_tokens
        assert np.array_equal(cache["resid_norms"], cache.array("resid_norms"))
        with pytest.raises(KeyError, match="hook_pattern"):
            cache["blocks.0.hook_nothing"]


def test_display_shows_this_calls_figures_with_captions_in_order(small_run: Path, tmp_path: Path) -> None:
    save = tmp_path / "data"
    shutil.copytree(small_run, save)
    InteractiveShell.instance()  # IPython's display machinery, as in a kernel
    options = dict(figures=["attention_heatmap"], layers="0", heads="0-1", progress=False, display=True)
    with capture_output() as first:
        drawn = run_figures(save, **options)
    with capture_output() as again:  # a rerun draws nothing and still shows what this call covers
        cached = run_figures(save, **options)
    assert drawn.written == 6 and cached.written == 0 and cached.skipped == 6
    for captured in (first, again):
        captions = [o.data["text/html"] for o in captured.outputs if "text/html" in o.data]
        images = [o for o in captured.outputs if "image/png" in o.data]
        assert len(captions) == 6 and len(images) == 6
        assert all("attention_heatmap · tiny-llama-random" in c and "L0 H" in c for c in captions)
    order = [c for c in (o.data.get("text/html", "") for o in again.outputs) if c]
    assert order == [c for c in (o.data.get("text/html", "") for o in first.outputs) if c]
    with capture_output() as limited:
        run_figures(save, display_limit=2, **{k: v for k, v in options.items() if k != "display"}, display=True)
    assert sum("image/png" in o.data for o in limited.outputs) == 2
    assert any("Showing 2 of 6" in o.data.get("text/markdown", "") for o in limited.outputs)
    assert len(repr(cached)) < 200 and "already up to date" in repr(cached)


def test_cli_imports_user_figures_and_lists_options(small_run: Path, tmp_path: Path) -> None:
    save = tmp_path / "data"
    shutil.copytree(small_run, save)
    module = tmp_path / "my_figs.py"
    module.write_text(
        "from lens_pipeline.draw.registry import register_figure\n\n"
        "@register_figure(scope='prompt', formats='txt')\n"
        "def token_count(cache, prefix: str = 'n='):\n"
        "    '''How many tokens the prompt has.'''\n"
        "    return f'{prefix}{cache.n_tokens}'\n"
    )
    listed = subprocess.run(python_cmd("-m", "lens_pipeline.figures", "--import", str(module), "--list"),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "token_count  [prompt; txt]  How many tokens" in listed.stdout
    assert "--param token_count.prefix=…  (str, default \"n=\")" in listed.stdout
    assert "--param knitting_pattern.layer=…  (int | None, default null)" in listed.stdout
    done = subprocess.run(python_cmd("-m", "lens_pipeline.figures", "--save-path", str(save), "--quiet",
                                     "--import", str(module), "--figures", "token_count", "--param", "token_count.prefix=T"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outputs = sorted(p.read_text() for p in (save / "figures").rglob("token_count.txt"))
    assert len(outputs) == 3 and all(text.startswith("T") for text in outputs)
    missing = subprocess.run(python_cmd("-m", "lens_pipeline.figures", "--save-path", str(save), "--import", "no_such_figs"),
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: --import no_such_figs")


def test_matplotlib_builtins_write_svg_and_pdf(small_run: Path, tmp_path: Path) -> None:
    from pypdf import PdfReader

    save = tmp_path / "data"
    shutil.copytree(small_run, save)
    # attention_labeled: a matplotlib built-in (the default ones draw with PIL); 3 prompts x 2 heads
    heads = {"layers": "0", "heads": "0-1"}
    summary = run_figures(save, figures=["attention_labeled"], image_formats=["svg", "pdf"], progress=False, **heads)
    assert summary.written == 6 and summary.failed == 0
    files = [f for row in summary.rows for f in row["files"]]
    assert sorted({f["format"] for f in files}) == ["pdf", "svg"] and len(files) == 12
    for entry in files:
        data = (save / entry["path"]).read_bytes()
        if entry["format"] == "svg":
            root = ET.fromstring(data)
            svg = "{http://www.w3.org/2000/svg}"
            # Text drawn as paths: the file looks the same without the fonts.
            assert root.tag == f"{svg}svg" and not list(root.iter(f"{svg}text")) and len(list(root.iter(f"{svg}path"))) > 10
        else:
            reader = PdfReader(io.BytesIO(data))
            assert len(reader.pages) == 1 and reader.pages[0].mediabox.width > 100
    # The same run again is up to date; PNG again is a redraw.
    assert run_figures(save, figures=["attention_labeled"], image_formats=["svg", "pdf"], progress=False, **heads).written == 0
    assert run_figures(save, figures=["attention_labeled"], progress=False, **heads).written == 6
