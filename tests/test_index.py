import multiprocessing
from pathlib import Path

from lens_pipeline.store import index


def _writer(save_path: str, worker: int, count: int) -> None:
    for i in range(count):
        index.append_rows(save_path, [index.make_row("figure", model="m", prompt_hash=f"{worker}-{i}",
                                                     function="f", path=f"p/{worker}/{i}", note="x" * 500)])


def test_concurrent_writers_lose_and_tear_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w, 150)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    rows = index.read_rows(tmp_path)
    lines = index.index_path(tmp_path).read_text().splitlines()
    assert len(rows) == len(lines) == 600
    assert len({r["prompt_hash"] for r in rows}) == 600


def test_torn_last_line_is_skipped_and_latest_row_wins(tmp_path: Path) -> None:
    index.append_rows(tmp_path, [index.make_row("cache", model="m", prompt_hash="a", path="x", status="error")])
    index.append_rows(tmp_path, [index.make_row("cache", model="m", prompt_hash="a", path="x")])
    with open(index.index_path(tmp_path), "a") as handle:
        handle.write('{"kind": "cache", "model": "m", "prom')  # a writer killed mid-line
    rows = index.read_rows(tmp_path)
    assert len(rows) == 2
    newest = index.latest(rows)
    assert newest[("cache", "m", "a", "", None, None, "")]["status"] == "ok"
    assert not index.is_complete(newest[("cache", "m", "a", "", None, None, "")], tmp_path)  # file x absent


def test_append_after_a_torn_line_keeps_the_new_row(tmp_path: Path) -> None:
    index.index_path(tmp_path).write_text('{"kind": "cache", "mod')
    index.append_rows(tmp_path, [index.make_row("cache", model="m", prompt_hash="b", path="y")])
    assert [r["prompt_hash"] for r in index.read_rows(tmp_path)] == ["b"]
