"""Fault injection (issue 11): disk full, a read-only save path, corrupt caches, garbage in the
index, concurrent runs and kill -9. Real files, real processes, the real CLIs; nothing of the
stages is mocked. Each fault ends with the same two checks: the save path is consistent (no temp
file, every file recorded with its size and sha256, no row for a file that is missing) and, after
the fault is removed, a rerun gives exactly what an uninterrupted run gives."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO, SHORT_TEXTS, python_cmd, write_jsonl
from lens_pipeline.activations import SavePathError, run_activations
from lens_pipeline.figures import run_figures
from lens_pipeline.store import index

MODEL = "tiny-llama"  # architecture-only random weights: loads in about a second
# One prompt per forward pass: a resumed run batches other prompts together than a clean run, and
# padding to another length moves resid_norms/neuron_acts by an ulp (other bytes, same values).
BATCH = 1
# Byte-deterministic figures: PIL images, and knitting_pattern's SVG/PDF (no dates) among 9 files.
FIGURES = ["attention_heatmap", "attention_layer_grid", "attention_overview", "knitting_pattern"]
KNIT = {"width": 10, "height": 10}  # a 10x10 chart: a third of the default 20x20's drawing time
TEXTS = SHORT_TEXTS + [
    "Out, damned spot! out, I say!",
    "The lady doth protest too much, methinks.",
    "Brevity is the soul of wit.",
    "We know what we are, but know not what we may be.",
    "Love all, trust a few, do wrong to none.",
    "The course of true love never did run smooth.",
]  # 12 prompts x (8 heads + 2 layers + overview + knitting) = 144 figures, 240 files
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


# --------------------------------------------------------------------------- helpers


def latest(save: Path) -> dict[Any, dict[str, Any]]:
    """The newest row per output, without the fields that differ between two runs of the same work."""
    return {key: {k: v for k, v in row.items() if k not in ("created", "seconds")}
            for key, row in index.latest(index.read_rows(save, warn=lambda _: None)).items()}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_consistent(save: Path) -> None:
    """No temp file; every cache and figure file is named by its output's newest ok row with the
    file's size and sha256; every file such a row names is there; no error rows."""
    assert not [p for p in save.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".write-check")]
    recorded: dict[str, dict[str, Any]] = {}
    for row in latest(save).values():
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "ok":
            for entry in row.get("files") or [row]:
                recorded[entry["path"]] = entry
    present = {p.relative_to(save).as_posix() for top in ("caches", "figures") if (save / top).exists()
               for p in (save / top).rglob("*") if p.is_file()}
    assert present == set(recorded), (sorted(present - set(recorded))[:5], sorted(set(recorded) - present)[:5])
    for path, entry in recorded.items():
        data = (save / path).read_bytes()
        assert (len(data), index.sha256_bytes(data)) == (entry["bytes"], entry["sha256"]), path


def assert_same_result(save: Path, reference: Path, *folders: str) -> None:
    """The index's newest rows (times aside) and the files equal the uninterrupted run's, byte for byte."""
    assert latest(save) == latest(reference)
    for folder in folders:
        assert tree(save / folder) == tree(reference / folder), folder


def assert_one_error_line(stderr: str, save: Path) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(save) in errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def activations_cmd(prompts: Path, save: Path) -> list[str]:
    return python_cmd("-m", "lens_pipeline.activations", "--model", MODEL, "--random-weights",
                      "--prompts", str(prompts), "--save-path", str(save), "--batch-size", str(BATCH), "--quiet")


def figures_cmd(save: Path, *extra: str, figures: list[str] = FIGURES) -> list[str]:
    knit = [f"--param=knitting_pattern.{k}={v}" for k, v in KNIT.items()] if "knitting_pattern" in figures else []
    return python_cmd("-m", "lens_pipeline.figures", "--save-path", str(save), "--figures", ",".join(figures),
                      *knit, "--quiet", *extra)


def draw_all(save: Path, **options: Any) -> Any:
    """The figures stage from Python, as figures_cmd runs it."""
    return run_figures(save, figures=FIGURES, params={"knitting_pattern": dict(KNIT)}, progress=False, **options)


def run_cli(command: list[str], file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if file_size_limit else None)


@functools.cache
def mount_refused() -> str:
    """Why a small tmpfs cannot be mounted here ("" when it can: we run as root in CI)."""
    probe = Path(tempfile.mkdtemp(prefix="tmpfs-probe-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True, text=True)
    if done.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return "" if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def mount(target: Path, options: str, source: str = "tmpfs", kind: str | None = "tmpfs") -> None:
    if mount_refused():
        pytest.skip(f"mount not permitted here ({mount_refused()}); the RLIMIT_FSIZE variants cover a full disk")
    if not target.exists():  # a folder, or a file to bind-mount over
        target.mkdir(parents=True)
    command = ["mount", *(["-t", kind] if kind else []), "-o", options, source, str(target)]
    subprocess.run(command, check=True, capture_output=True)


@contextlib.contextmanager
def mounted(target: Path, options: str, source: str = "tmpfs", kind: str | None = "tmpfs") -> Iterator[Path]:
    mount(target, options, source, kind)
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)]).returncode != 0:  # still busy: detach it anyway
            subprocess.run(["umount", "-l", str(target)], check=True)


def disk_usage(folder: Path) -> int:
    """Bytes a folder takes on a tmpfs: whole 4 KiB pages per file."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def copy_caches(reference: Path, target: Path) -> Path:
    shutil.copytree(reference, target, ignore=shutil.ignore_patterns("figures", "*.lock"), dirs_exist_ok=True)
    return target


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("fault_prompts") / "p.jsonl", [{"text": t} for t in TEXTS])


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, prompts: Path) -> dict[str, Path]:
    """Uninterrupted runs: "caches" (activations only) and "figures" (then the figures stage)."""
    root = tmp_path_factory.mktemp("clean")
    summary = run_activations(MODEL, prompts, root / "caches", random_weights=True, batch_size=BATCH, progress=False)
    assert summary.written == len(TEXTS)
    copy_caches(root / "caches", root / "figures")
    drawn = draw_all(root / "figures")
    assert drawn.written == len(TEXTS) * 12 and drawn.failed == 0
    assert_consistent(root / "caches")
    assert_consistent(root / "figures")
    return {"caches": root / "caches", "figures": root / "figures"}


# --------------------------------------------------------------------------- disk full


def small_index(stack: contextlib.ExitStack, tmp_path: Path, save: Path, room: int) -> Path:
    """Bind-mount save/index.jsonl from a tmpfs with `room` bytes (whole pages) of which the index,
    as it is now, takes its share: the index fills up; every other file has room. Returns the tmpfs."""
    small = tmp_path / "small"
    stack.enter_context(mounted(small, f"size={-(-room // 4096) * 4}k"))
    save.mkdir(parents=True, exist_ok=True)
    index.index_path(save).touch()
    shutil.copy(index.index_path(save), small / "index.jsonl")
    stack.enter_context(mounted(index.index_path(save), "bind", source=str(small / "index.jsonl"), kind=None))
    return small


@pytest.mark.parametrize("how", ["cache-write", "index-append", "rlimit"])
def test_disk_full_while_writing_caches(tmp_path: Path, prompts: Path, clean: dict[str, Path], how: str) -> None:
    """cache-write: caches/ is a 40k tmpfs (the CLI); index-append: index.jsonl is bind-mounted
    from an 8k tmpfs (from Python); rlimit: RLIMIT_FSIZE, the fallback where mount is refused (CLI)."""
    if how == "rlimit" and not mount_refused():
        pytest.skip("tmpfs can be mounted here: RLIMIT_FSIZE is only the fallback where mount is refused")
    save = tmp_path / "save"
    with contextlib.ExitStack() as stack:
        if how == "cache-write":
            full = stack.enter_context(mounted(save / "caches", "size=40k"))
            done = run_cli(activations_cmd(prompts, save))
            assert done.returncode == 1
            assert f"error: cannot write caches to {save}: No space left on device (" in assert_one_error_line(done.stderr, save)
        elif how == "index-append":
            full = small_index(stack, tmp_path, save, room=8192)
            with pytest.raises(SavePathError) as error:
                run_activations(MODEL, prompts, save, random_weights=True, batch_size=BATCH, progress=False)
            message = str(error.value)
            assert f"cannot append to {save}/index.jsonl: No space left on device" in message and "\n" not in message
        else:  # the smaller half of the caches fit, the larger half do not
            sizes = sorted(row["bytes"] for row in latest(clean["caches"]).values())
            done = run_cli(activations_cmd(prompts, save), file_size_limit=sizes[len(sizes) // 2])
            assert done.returncode == 1
            assert "File too large" in assert_one_error_line(done.stderr, save)
        assert_consistent(save)
        written = [row for row in latest(save).values() if row["kind"] == "cache"]
        assert 0 < len(written) < len(TEXTS)  # it failed part way, keeping what it finished
        if how != "rlimit":  # space freed
            subprocess.run(["mount", "-o", "remount,size=64m", str(full)], check=True)
        summary = run_activations(MODEL, prompts, save, random_weights=True, batch_size=BATCH, progress=False)
        assert (summary.written, summary.skipped) == (len(TEXTS) - len(written), len(written))
        assert_consistent(save)
        assert_same_result(save, clean["caches"], "caches")


@pytest.mark.parametrize("how", ["figure-write", "index-append", "rlimit"])
def test_disk_full_while_writing_figures(tmp_path: Path, clean: dict[str, Path], how: str) -> None:
    """figure-write: figures/ is a tmpfs with room for a third of them; index-append: index.jsonl is
    bind-mounted from a tmpfs with room for a few prompts' rows; rlimit: RLIMIT_FSIZE of 8 KiB (the
    index is already larger, and so are some knitting files): EFBIG, the fallback's errno. The CLI."""
    save = tmp_path / "save"
    with contextlib.ExitStack() as stack:
        if how == "figure-write":
            full = stack.enter_context(mounted(save / "figures", f"size={disk_usage(clean['figures'] / 'figures') // 3072}k"))
        elif how == "index-append":
            full = small_index(stack, tmp_path, save, room=index.index_path(clean["caches"]).stat().st_size + 40_000)
        copy_caches(clean["caches"], save)
        done = run_cli(figures_cmd(save), file_size_limit=8192 if how == "rlimit" else None)
        assert done.returncode == 1
        reason = "File too large" if how == "rlimit" else "No space left on device"
        assert reason in assert_one_error_line(done.stderr, save)
        if how == "index-append":
            assert f"cannot append to {save}/index.jsonl" in done.stderr
        assert_consistent(save)
        if how != "rlimit":
            assert 0 < len(latest(save)) - len(TEXTS) < len(TEXTS) * 12  # it failed part way
            subprocess.run(["mount", "-o", "remount,size=64m", str(full)], check=True)
        summary = draw_all(save)
        assert summary.failed == 0 and summary.written > 0
        assert_consistent(save)
        assert_same_result(save, clean["figures"], "figures", "caches")


# --------------------------------------------------------------------------- read-only save path


def test_read_only_save_path_fails_in_one_line_before_loading(tmp_path: Path, prompts: Path, clean: dict[str, Path]) -> None:
    with mounted(tmp_path / "ro", "ro"):
        started = time.perf_counter()
        done = run_cli(activations_cmd(prompts, tmp_path / "ro" / "save"))
        seconds = time.perf_counter() - started
    assert done.returncode == 1 and "Read-only file system" in assert_one_error_line(done.stderr, tmp_path / "ro" / "save")
    assert "loading model" not in done.stderr
    assert seconds < 3, seconds  # a run that loads tiny-llama takes about 6 s on 2 cores
    # The figures stage over a read-only copy of finished caches: one line too, nothing changed.
    source = copy_caches(clean["caches"], tmp_path / "caches")
    before = tree(source)
    with mounted(tmp_path / "bound", "bind", source=str(source), kind=None) as bound:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(bound)], check=True)
        done = run_cli(figures_cmd(bound))
    assert done.returncode == 1 and "Read-only file system" in assert_one_error_line(done.stderr, bound)
    assert tree(source) == before


# --------------------------------------------------------------------------- corrupt caches


def test_truncated_and_flipped_caches_are_reported_and_recomputed(tmp_path: Path, prompts: Path, clean: dict[str, Path]) -> None:
    save = copy_caches(clean["caches"], tmp_path / "save")
    rows = [row for row in index.latest(index.read_rows(save)).values() if row["kind"] == "cache"]
    truncated, flipped = save / rows[2]["path"], save / rows[5]["path"]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    data = bytearray(flipped.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])  # same size
    flipped.write_bytes(bytes(data))
    bad = {rows[2]["prompt_hash"]: rows[2]["path"], rows[5]["prompt_hash"]: rows[5]["path"]}

    drawn = draw_all(save)
    figure_rows = [row for row in drawn.rows if row["kind"] == "figure"]
    for prompt, path in bad.items():
        errors = [row for row in figure_rows if row["prompt_hash"] == prompt]
        assert errors and all(row["status"] == "error" and path in row["error"] for row in errors), errors
    good = [row for row in figure_rows if row["prompt_hash"] not in bad]
    assert len(good) == (len(TEXTS) - 2) * 12 and all(row["status"] == "ok" for row in good)
    for row in good:
        for entry in row["files"]:
            assert (save / entry["path"]).read_bytes() == (clean["figures"] / entry["path"]).read_bytes()

    messages: list[str] = []
    summary = run_activations(MODEL, prompts, save, random_weights=True, batch_size=BATCH, progress=False, log=messages.append)
    warnings = [m for m in messages if m.startswith("warning:") and "sha256" in m]
    assert sorted(warnings) == sorted(f"warning: {save / path} does not match its recorded sha256 (corrupt or "
                                      f"changed); marked corrupt in the index and not used" for path in bad.values())
    assert (summary.written, summary.skipped) == (2, len(TEXTS) - 2)
    newest = index.latest(index.read_rows(save))
    for path in bad.values():
        (row,) = [r for r in newest.values() if r.get("path") == path and r["kind"] == "cache"]
        assert index.sha256_file(save / path) == row["sha256"] and index.is_complete(row, save, verify=True)
    # The figures of the two prompts are drawn now, and everything equals the clean run.
    again = draw_all(save)
    assert again.failed == 0 and again.written == 2 * 12
    assert_consistent(save)
    assert_same_result(save, clean["figures"], "figures", "caches")


# --------------------------------------------------------------------------- garbage in the index


def test_torn_and_garbage_lines_in_the_middle_of_the_index(tmp_path: Path, prompts: Path, clean: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from lens_pipeline.viewer.live_index import LiveIndex

    save = tmp_path / "save"
    shutil.copytree(clean["figures"], save)
    lines = index.index_path(save).read_bytes().split(b"\n")
    assert lines[-1] == b""
    a_row = json.loads(lines[40])
    garbage = {
        3: lines[3][: len(lines[3]) // 2],  # half a row (a writer that died mid-line)
        11: bytes(range(256)).replace(b"\n", b""),  # binary junk
        25: b'["kind", "cache"]',  # valid JSON, not a row
        60: json.dumps(dict(a_row, layer=[0, 1])).encode(),  # a row whose layer is a list
    }
    for number in sorted(garbage):  # numbered as the file reads afterwards (1-based)
        lines.insert(number - 1, garbage[number])
    index.index_path(save).write_bytes(b"\n".join(lines))
    damaged = index.index_path(save).read_bytes()

    warnings: list[str] = []
    rows = index.read_rows(save, warn=warnings.append)
    assert len(rows) == len(index.read_rows(clean["figures"]))
    assert [w.split(":")[0:2] for w in warnings] == [["index.jsonl", str(n)] for n in sorted(garbage)]
    index.read_rows(save)  # the default warning goes to stderr, naming the file and the line
    assert [line for line in capsys.readouterr().err.splitlines() if "index.jsonl:" in line] == [
        f"warning: {save}/index.jsonl:{n}: {w.split(': ', 1)[1]}" for n, w in zip(sorted(garbage), warnings)]

    view = LiveIndex(save).view()  # the viewer only reads: it skips them
    assert view.bad_lines == len(garbage)
    assert len(view.caches) == len(TEXTS) and len(view.figures) == len(TEXTS) * 12

    # Rows after the garbage still count: nothing is recomputed or redrawn. The stage takes the
    # lines that are not rows out of the index (into index.jsonl.torn), so strict readers can read it.
    messages: list[str] = []
    summary = run_activations(MODEL, prompts, save, random_weights=True, batch_size=BATCH, progress=False,
                              log=messages.append)
    assert (summary.written, summary.skipped, summary.models_loaded) == (0, len(TEXTS), [])
    assert [m.split(": ")[1] for m in messages if "took out" in m] == [f"{save}/index.jsonl:{n}" for n in sorted(garbage)]
    assert index.index_path(save).read_bytes() == index.index_path(clean["figures"]).read_bytes()
    assert (save / index.TORN_NAME).read_bytes() == b"".join(garbage[n] + b"\n" for n in sorted(garbage))
    assert len(damaged) == len(index.index_path(save).read_bytes()) + len((save / index.TORN_NAME).read_bytes())
    drawn = draw_all(save)
    assert (drawn.written, drawn.failed, drawn.skipped) == (0, 0, len(TEXTS) * 12)
    assert LiveIndex(save).view().bad_lines == 0


# --------------------------------------------------------------------------- concurrent runs


def start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_one_row_per_output(save: Path) -> None:
    raw = index.index_path(save).read_bytes()
    assert raw.endswith(b"\n")
    rows = [json.loads(line) for line in raw.splitlines()]  # a torn line would raise here
    keys = [index.row_key(row) for row in rows]
    assert len(keys) == len(set(keys)), "a row was recorded twice"


def finish_together(runs: list[subprocess.Popen[str]], what: str) -> int:
    """Wait for every run; returns how many outputs they wrote between them (per their last line)."""
    written = 0
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        written += int(re.search(rf"done: (\d+) {what}\(s\) written", stderr).group(1))
    return written


def test_two_runs_of_each_stage_at_once(tmp_path: Path, prompts: Path, clean: dict[str, Path]) -> None:
    save = tmp_path / "save"
    written = finish_together([start(activations_cmd(prompts, save)) for _ in range(2)], "cache")
    assert written > len(TEXTS)  # they overlapped: both wrote caches of the same prompts
    assert_one_row_per_output(save)
    assert_consistent(save)
    assert_same_result(save, clean["caches"], "caches")

    fast = [name for name in FIGURES if name != "knitting_pattern"]  # knitting: 0.4 s a prompt
    caches_only = index.index_path(save).read_bytes()
    for _attempt in range(3):  # on a busy machine one run may start after the other has finished: retry
        written = finish_together([start(figures_cmd(save, figures=fast)) for _ in range(2)], "figure")
        if written > len(TEXTS) * 11:
            break
        shutil.rmtree(save / "figures")
        index.index_path(save).write_bytes(caches_only)
    assert written > len(TEXTS) * 11  # they overlapped
    assert_one_row_per_output(save)
    assert_consistent(save)
    expected = {key: row for key, row in latest(clean["figures"]).items() if row.get("function") != "knitting_pattern"}
    assert latest(save) == expected
    assert tree(save / "figures") == {path: data for path, data in tree(clean["figures"] / "figures").items()
                                      if "/knitting_pattern/" not in path}


# --------------------------------------------------------------------------- kill -9


def figure_lines(save: Path) -> int:
    path = index.index_path(save)
    return path.read_bytes().count(b'"kind": "figure"') if path.exists() else 0


@pytest.mark.parametrize("kill_after", [0, 30, 90], ids=lambda n: f"after{n}rows")
def test_kill_9_of_the_figures_stage_then_rerun(tmp_path: Path, clean: dict[str, Path], kill_after: int) -> None:
    """Killed at 0.5 s (before any row), or once N figure rows are in the index (mid-run, with
    files written for rows not yet recorded): the rerun equals an uninterrupted run."""
    save = copy_caches(clean["caches"], tmp_path / "save")
    run = start(figures_cmd(save, "--workers", "1"))
    if kill_after == 0:
        time.sleep(0.5)
    else:
        deadline = time.time() + 120
        while figure_lines(save) < kill_after and run.poll() is None and time.time() < deadline:
            time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL, "the run ended before it was killed"
    recorded = figure_lines(save)
    assert kill_after <= recorded < len(TEXTS) * 12
    # What a kill inside write_atomic leaves: a temp file named after the dead process.
    orphan = save / "figures" / f".attention_overview.png.{run.pid}.tmp"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half a png")
    summary = draw_all(save, workers=1)
    assert summary.failed == 0 and summary.written == len(TEXTS) * 12 - recorded
    assert_consistent(save)
    assert_same_result(save, clean["figures"], "figures", "caches")


def test_matplotlib_svg_and_pdf_render_to_the_same_bytes_twice() -> None:
    """figures.render strips the PDF/SVG dates; SVG clip-path ids are salted with a random uuid
    unless svg.hashsalt is set (a figure with axes has them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lens_pipeline.figures import render

    def figure() -> Any:
        fig, axes = plt.subplots(figsize=(2, 2))
        axes.imshow([[0.0, 1.0], [1.0, 0.0]])
        axes.plot([0, 1], [1, 0])
        return fig

    for fmt in ("svg", "pdf", "png"):
        assert render(figure(), fmt) == render(figure(), fmt), fmt
