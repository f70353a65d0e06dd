"""Where a user could get a wrong answer without being told: corruption the file size does not show,
a corrupt cache left vouched for, one bad byte in a prompt file, torn index lines, and integrated
gradients' completeness to a stated tolerance. Real caches of a random-weight model, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO, SHORT_TEXTS, python_cmd, write_jsonl
from lens_pipeline.store import index
from lens_pipeline.store.cache import ExtractSettings, load

MODEL = "tiny-llama"  # random weights: loads in about a second
FIGURES = "attention_heatmap,attention_overview,attention_stats_across_prompts"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(python_cmd(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def activations(prompts: Path, save: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run("-m", "lens_pipeline.activations", "--model", MODEL, "--random-weights", "--prompts", str(prompts),
               "--save-path", str(save), "--batch-size", "2", "--quiet", *extra, ok=ok)


def figures(save: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run("-m", "lens_pipeline.figures", "--save-path", str(save), "--figures", FIGURES, "--heads", "0",
               "--quiet", *extra, ok=ok)


def newest(save: Path) -> dict[Any, dict[str, Any]]:
    return index.latest(index.read_rows(save, warn=lambda message: None))


def cache_rows(save: Path) -> list[dict[str, Any]]:
    return sorted(index.current_caches(newest(save).values()).values(), key=lambda row: row["prompt_hash"])


def flip(path: Path, count: int = 64) -> None:
    """Flip `count` bytes in the middle of a file; its size stays."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("trust_prompts") / "p.jsonl", [{"text": t} for t in SHORT_TEXTS[:4]])


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory, prompts: Path) -> Path:
    save = tmp_path_factory.mktemp("trust") / "save"
    activations(prompts, save, "--logit-lens")
    done = figures(save)
    assert " 0 failed" in done.stderr
    return save


# --------------------------------------------------------------------------- 2: same-size corruption


def test_same_size_corruption_is_seen_without_force(tmp_path: Path, drawn: Path) -> None:
    save = tmp_path / "save"
    shutil.copytree(drawn, save)
    bad, *good = cache_rows(save)
    flip(save / bad["path"])
    done = figures(save, ok=False)
    assert done.returncode == 1  # its figures failed, naming the file
    rows = [row for row in newest(save).values() if row["kind"] == "figure"]
    of_bad = [row for row in rows if row.get("prompt_hash") == bad["prompt_hash"]]
    assert of_bad and all(row["status"] == "error" and bad["path"] in row["error"] for row in of_bad), of_bad
    assert all(row["status"] == "ok" for row in rows if row.get("prompt_hash") not in ("", bad["prompt_hash"]))
    # The model-scope figure leaves the corrupt cache out, says so, and is drawn from the others.
    (across,) = [row for row in rows if row["function"] == "attention_stats_across_prompts"]
    assert across["status"] == "ok" and bad["path"] in across["warnings"][0], across
    assert across["cache_sha256"] != next(r for r in index.read_rows(drawn)
                                          if r.get("function") == "attention_stats_across_prompts")["cache_sha256"]
    assert f"warning: attention_stats_across_prompts on {bad['model']}: left out 1 cache(s)" in done.stderr
    prompts_in = json.loads((save / across["files"][0]["path"]).read_text())
    assert bad["prompt_hash"] not in json.dumps(prompts_in) and good[0]["prompt_hash"] in json.dumps(prompts_in)


def test_a_truncated_cache_is_named_not_called_gone(tmp_path: Path, drawn: Path) -> None:
    save = tmp_path / "save"
    shutil.copytree(drawn, save)
    bad = cache_rows(save)[1]
    data = (save / bad["path"]).read_bytes()
    (save / bad["path"]).write_bytes(data[: len(data) // 2])
    figures(save, ok=False)
    of_bad = [row for row in newest(save).values() if row["kind"] == "figure" and row.get("prompt_hash") == bad["prompt_hash"]]
    assert of_bad and all(row["status"] == "error" and bad["path"] in row["error"] for row in of_bad)
    assert not any("is gone" in (row.get("reason") or "") for row in of_bad)
    # Drawn for other prompts only, its figures are marked stale with the file named, not "gone".
    other = cache_rows(save)[0]["prompt_hash"]
    figures(save, "--prompts", other[:8], "--force")
    for row in newest(save).values():
        if row["kind"] == "figure" and row.get("prompt_hash") == bad["prompt_hash"] and row["status"] == "stale":
            assert bad["path"] in row["reason"] and "gone" not in row["reason"]


def test_the_content_check_hashes_a_cache_again_only_when_its_stamp_changes(tmp_path: Path, drawn: Path) -> None:
    from lens_pipeline.store.integrity import MEMO_NAME, ContentCheck

    save = tmp_path / "save"
    shutil.copytree(drawn, save)
    (save / MEMO_NAME).unlink(missing_ok=True)
    row = cache_rows(save)[0]
    check = ContentCheck(save)
    assert check.holds(row) and check.changed
    check.save()
    again = ContentCheck(save)
    assert again.holds(row) and not again.changed  # remembered: no hash
    path = save / row["path"]
    stat = path.stat()
    flip(path, 8)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, mtime put back: the ctime still moved
    assert not ContentCheck(save).holds(row)


# --------------------------------------------------------------------------- 3: a corrupt cache of other settings


def test_a_corrupt_cache_met_with_other_settings_is_marked_corrupt(tmp_path: Path, drawn: Path, prompts: Path) -> None:
    save = tmp_path / "save"
    shutil.copytree(drawn, save)
    bad = cache_rows(save)[2]
    assert bad["params"]["logit_lens"]
    flip(save / bad["path"])
    done = activations(prompts, save)  # without --logit-lens: another settings id
    assert f"warning: {save / bad['path']} does not match its recorded sha256 (corrupt or changed); marked corrupt " \
           f"in the index and not used" in done.stderr
    old = newest(save)[index.row_key(bad)]
    assert old["status"] == "corrupt" and "sha256" in old["reason"]
    assert not index.is_complete(old, save)  # nothing vouches for it now
    current = index.current_caches(newest(save).values())[(bad["model"], bad["prompt_hash"])]
    assert current["settings_id"] != bad["settings_id"] and index.is_complete(current, save, verify=True)
    assert "1 cache(s) written" in done.stderr


# --------------------------------------------------------------------------- 4: one invalid-UTF-8 line


def test_one_invalid_utf8_line_is_one_bad_line(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"text": "To be, or not to be"}\n{"text": "caf\xe9 au lait"}\n'
                        b'{"text": "All the world\xe2\x80\xa8s a stage"}\n')  # U+2028 inside a JSON string: one line
    done = activations(prompts, tmp_path / "save")
    assert f"warning: skipped {prompts}:2: not valid UTF-8 (byte 0xe9 at column 14)" in done.stderr
    assert "1 bad prompt line(s) skipped" in done.stderr and "2 cache(s) written" in done.stderr
    assert sorted(row["text"] for row in cache_rows(tmp_path / "save")) == ["All the world\u2028s a stage",
                                                                            "To be, or not to be"]
    strict = activations(prompts, tmp_path / "strict", "--strict", ok=False)
    assert strict.returncode == 2 and f"{prompts}:2: not valid UTF-8" in strict.stderr


# --------------------------------------------------------------------------- 5: torn index lines


@pytest.mark.parametrize("stage", ["activations", "figures"])
def test_a_torn_index_line_is_taken_out_by_either_stage(tmp_path: Path, drawn: Path, prompts: Path, stage: str) -> None:
    save = tmp_path / "save"
    shutil.copytree(drawn, save)
    path = index.index_path(save)
    clean = path.read_bytes()
    lines = clean.split(b"\n")
    torn_middle, torn_tail = lines[1][:40], lines[2][:25]  # a crash mid-append, then a writer starting afresh
    path.write_bytes(b"\n".join(lines[:1] + [torn_middle] + lines[1:]) + torn_tail)
    done = activations(prompts, save) if stage == "activations" else figures(save)
    n_lines = len(lines)  # the torn tail is the last line
    assert f"warning: {save}/index.jsonl:2: took out a line that is not an index row" in done.stderr
    assert f"warning: {save}/index.jsonl:{n_lines + 1}: took out a line that is not an index row" in done.stderr
    assert done.stderr.count("kept in index.jsonl.torn") == 2
    assert (save / index.TORN_NAME).read_bytes() == torn_middle + b"\n" + torn_tail + b"\n"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and all(json.loads(line)["kind"] in index.ROW_KINDS for line in text.splitlines())
    assert path.read_bytes().startswith(clean)  # every row kept, in order; nothing redone
    again = activations(prompts, save) if stage == "activations" else figures(save)
    assert "took out" not in again.stderr


# --------------------------------------------------------------------------- 6: IG to a stated tolerance


@pytest.fixture(scope="module")
def ig_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ig_prompts") / "p.jsonl",
                       [{"text": SHORT_TEXTS[1]}, {"text": SHORT_TEXTS[3], "target_positions": "all"}])


def ig_arrays(save: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for row in cache_rows(save):
        cache = load(save / row["path"])
        out[row["prompt_hash"]] = {name: cache.array(name) for name in cache.meta["arrays"] if "ig" in name}
    return out


def test_ig_tolerance_doubles_steps_per_target_until_it_holds(tmp_path: Path, ig_prompts: Path) -> None:
    save = tmp_path / "adaptive"
    done = activations(ig_prompts, save, "--attribution", "ig", "--ig-steps", "2", "--ig-tolerance", "0.002",
                       "--ig-rule", "riemann_trapezoid")
    assert "warning:" not in done.stderr, done.stderr
    adaptive = ig_arrays(save)
    used = np.concatenate([a["ig_steps_used"] for a in adaptive.values()])
    errors = np.concatenate([a["ig_completeness"] for a in adaptive.values()])
    # NaN: position 0's target, whose only source is the BOS the baseline keeps (f(x) = f(baseline)).
    assert (errors[~np.isnan(errors)] <= 0.002).all() and np.isnan(errors).sum() == 1, errors
    assert len(set(used.tolist())) > 1 and used.min() >= 2 and used.max() <= 1024  # per target, not per run
    for row in cache_rows(save):
        ig = row["explain"]["ig"]
        assert ig["tolerance"] == 0.002 and ig["over_tolerance"] == [] and ig["steps_used_max"] == int(used.max())
    # Each target's attribution is the fixed-step IG at the steps it used.
    for steps in sorted(set(used.tolist())):
        fixed_save = tmp_path / f"fixed{steps}"
        activations(ig_prompts, fixed_save, "--attribution", "ig", "--ig-steps", str(steps), "--ig-rule",
                    "riemann_trapezoid")
        for prompt, fixed in ig_arrays(fixed_save).items():
            assert "ig_steps_used" not in fixed  # fixed steps store what they stored before
            chosen = adaptive[prompt]["ig_steps_used"] == steps
            np.testing.assert_allclose(adaptive[prompt]["attr_ig"][chosen], fixed["attr_ig"][chosen], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(adaptive[prompt]["ig_completeness"][chosen], fixed["ig_completeness"][chosen],
                                       rtol=1e-4, atol=1e-6)


def test_targets_over_the_cap_are_named(tmp_path: Path, ig_prompts: Path) -> None:
    save = tmp_path / "capped"
    done = activations(ig_prompts, save, "--attribution", "ig", "--ig-steps", "2", "--ig-tolerance", "1e-9",
                       "--ig-max-steps", "8", "--ig-rule", "riemann_trapezoid")
    lines = [line for line in done.stderr.splitlines() if "over the 0.00% tolerance at the 8-step cap" in line]
    assert len(lines) == 2 and all(line.startswith(f"warning: {ig_prompts}:") for line in lines), done.stderr
    for row in cache_rows(save):
        over = row["explain"]["ig"]["over_tolerance"]
        assert over and all(entry["error"] > 1e-9 for entry in over)
        assert any("8-step cap" in warning for warning in row["warnings"])
        cache = load(save / row["path"])
        integrated = ~np.isnan(cache.array("ig_completeness"))  # a NaN target has nothing to integrate: one pass
        assert (cache.array("ig_steps_used")[integrated] == 8).all() and (cache.array("ig_steps_used")[~integrated] == 2).all()


def test_fixed_steps_keep_their_settings_id() -> None:
    """--ig-steps N alone is the run it was before the tolerance existed: the same cache identity."""
    from lens_pipeline.activations import build_parser, settings_from_args

    fixed = settings_from_args(build_parser().parse_args(["--attribution", "ig", "--ig-steps", "64"])).extract
    assert fixed.ig_tolerance == 0 and "ig_tolerance" not in fixed.as_dict()
    assert fixed.settings_id == ExtractSettings(attribution=("ig",), ig_steps=64).settings_id == "9a0102f5"
    adaptive = settings_from_args(build_parser().parse_args(["--attribution", "ig"])).extract
    assert (adaptive.ig_steps, adaptive.ig_tolerance, adaptive.ig_max_steps) == (64, 0.01, 1024)
    assert adaptive.settings_id != fixed.settings_id
    assert not ExtractSettings(**{**fixed.as_dict(), "hooks": ()}).covers(adaptive.as_dict())


def test_the_figures_summary_says_why_planned_figures_were_not_drawn(tmp_path: Path, drawn: Path) -> None:
    save = tmp_path / "save"
    shutil.copytree(drawn, save)
    done = run("-m", "lens_pipeline.figures", "--save-path", str(save), "--figures", "saliency_tokens", "--quiet")
    assert "0 figure(s) written" in done.stderr and ", 4 not applicable;" in done.stderr, done.stderr
    assert ("  4 not applicable: saliency_tokens: needs the cache array target_ids, which the activations stage "
            "makes with --attribution or --logit-attribution; this cache was made without it"
            ) in done.stderr.splitlines(), done.stderr


def test_without_integrated_gradients_the_tolerance_changes_no_setting() -> None:
    from lens_pipeline.activations import build_parser, settings_from_args

    for argv in ([], ["--attribution", "grad_x_input"], ["--logit-attribution"]):
        extract = settings_from_args(build_parser().parse_args(argv)).extract
        assert extract.ig_tolerance == 0 and extract.settings_id == ExtractSettings(
            attribution=extract.attribution, logit_attribution=extract.logit_attribution).settings_id
    assert settings_from_args(build_parser().parse_args([])).extract.settings_id == "53b023a6"  # as before the tolerance
