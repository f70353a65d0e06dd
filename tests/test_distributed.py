"""The Ray backend: generic shards on workers, and the activations stage run through it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import SHORT_TEXTS, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.capture.models import ModelLoadError
from lens_pipeline.distributed import DistributedError, chunks, run_shards
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install ray): the --ray backend cannot run")

TEXTS = SHORT_TEXTS


@pytest.fixture(scope="module", autouse=True)
def local_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_chunks_cover_everything_in_order() -> None:
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks([], 3) == []


def test_each_shard_runs_once_on_workers_set_up_once(tmp_path: Path) -> None:
    setups = tmp_path / "setups"

    def setup() -> int:
        with open(setups, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return 1000

    def work(offset: int, shard: list[int]) -> tuple[int, int]:
        return offset + sum(shard), os.getpid()

    shards = chunks(list(range(20)), 2)
    results = list(run_shards(setup, work, shards))
    assert sorted(total for total, _ in results) == sorted(1000 + sum(s) for s in shards)
    pids = setups.read_text().split()
    assert len(pids) == 2 and {pid for _, pid in results} == {int(p) for p in pids}  # two CPU slots, two workers


def test_a_killed_worker_is_restarted_and_its_shard_retried(tmp_path: Path) -> None:
    killed = tmp_path / "killed"

    def setup() -> None:
        return None

    def work(state: None, shard: list[int]) -> int:
        if shard == [6, 7] and not killed.exists():
            killed.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-shard, as a killed or OOM-killed one does
        return sum(shard)

    shards = chunks(list(range(12)), 2)
    results = list(run_shards(setup, work, shards, max_retries=2))
    assert killed.exists()
    assert sorted(results) == sorted(sum(s) for s in shards)  # every shard exactly once


def test_an_error_in_work_is_raised_with_its_own_type() -> None:
    def work(state: None, shard: list[int]) -> int:
        if 3 in shard:
            raise ValueError(f"bad shard {shard}")
        return 0

    with pytest.raises(ValueError, match=r"bad shard \[3\]"):
        list(run_shards(lambda: None, work, chunks(list(range(5)), 1)))


def test_a_failing_setup_is_raised_as_itself_and_a_worker_that_keeps_dying_as_one_error(tmp_path: Path) -> None:
    def setup() -> None:
        raise ModelLoadError("model 'x' failed to load: no such file")

    with pytest.raises(ModelLoadError, match="no such file"):
        list(run_shards(setup, lambda state, shard: shard, chunks(list(range(4)), 1)))

    def work(state: None, shard: list[int]) -> int:
        os._exit(1)

    with pytest.raises(DistributedError, match="died 2 times on one shard"):
        list(run_shards(lambda: None, work, chunks(list(range(2)), 1), max_retries=1))


def test_activations_on_ray_report_worker_errors_like_a_local_run(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS[:2]])
    with pytest.raises(ModelLoadError, match="'blocks.0.no_such_hook' is not a hook of tiny-llama-random"):
        run_activations("tiny-llama", prompts, tmp_path, random_weights=True, ray="auto", hooks=["blocks.0.no_such_hook"],
                        progress=False)
    assert index.read_rows(tmp_path) == []


def test_activations_on_ray_equal_a_single_process_run(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t, "n": i} for i, t in enumerate(TEXTS)])
    kwargs = dict(random_weights=True, progress=False, batch_size=1, logit_lens=True)
    single = run_activations("tiny-llama", prompts, tmp_path / "single", **kwargs)
    on_ray = run_activations("tiny-llama", prompts, tmp_path / "ray", ray="auto", **kwargs)
    assert (on_ray.written, on_ray.failed) == (single.written, single.failed) == (len(TEXTS), 0)

    def rows(save_path: Path) -> list[dict]:
        # Everything but when a row was written and how long it took; equal sha256 means byte-identical caches.
        return sorted(({k: v for k, v in r.items() if k not in index.VOLATILE_FIELDS} for r in index.read_rows(save_path)),
                      key=lambda r: r["prompt_hash"])

    assert rows(tmp_path / "ray") == rows(tmp_path / "single")  # one row per prompt, no more, same content
    for row in (r for r in rows(tmp_path / "single") if r["kind"] == "cache"):  # (the model card's row compared above)
        with Cache(tmp_path / "single" / row["path"]) as a, Cache(tmp_path / "ray" / row["path"]) as b:
            assert a.meta == b.meta and a.names() == b.names()
            for name in a.names():
                np.testing.assert_array_equal(a.array(name), b.array(name))
    # Resume works the same: nothing left to do, no worker started.
    again = run_activations("tiny-llama", prompts, tmp_path / "ray", ray="auto", **kwargs)
    assert (again.written, again.skipped) == (0, len(TEXTS))


def test_figures_on_ray_equal_a_single_process_run_including_a_notebook_figure(tmp_path: Path) -> None:
    import shutil

    from lens_pipeline.draw.registry import REGISTRY, register_figure
    from lens_pipeline.figures import run_figures

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS[:3]])
    run_activations("tiny-llama", prompts, tmp_path / "single", random_weights=True, progress=False)
    shutil.copytree(tmp_path / "single", tmp_path / "ray")

    # Defined here, as in a notebook: not importable by a worker, so it must travel with the work.
    @register_figure(scope="layer", formats="json")
    def ray_test_first_token_share(cache, layer, scale=1.0):
        return {"share": [float(scale * cache.pattern(layer, h)[:, 0].mean()) for h in range(cache.n_heads)]}

    try:
        kwargs = dict(figures=["attention_heatmap", "token_values", "ray_test_*"], layers="0-1", progress=False)
        single = run_figures(tmp_path / "single", **kwargs)
        on_ray = run_figures(tmp_path / "ray", ray="auto", **kwargs)
        again = run_figures(tmp_path / "ray", ray="auto", **kwargs)  # resumes: nothing left to draw
    finally:
        REGISTRY.pop("ray_test_first_token_share")
    assert (on_ray.written, on_ray.failed) == (single.written, single.failed)
    assert single.failed == 0 and single.written == 3 * (2 * 4 + 1 + 2)  # per prompt: 2 layers x 4 heads, 1, 2 layers

    def rows(save_path: Path) -> list[dict]:  # all but when and how fast; sha256 pins every file's bytes
        drop = {"created", "seconds"}
        figure_rows = [{k: v for k, v in r.items() if k not in drop} for r in index.read_rows(save_path) if r["kind"] == "figure"]
        return sorted(figure_rows, key=lambda r: (r["prompt_hash"], r["function"], r["layer"] or 0, r["head"] or 0))

    assert rows(tmp_path / "ray") == rows(tmp_path / "single")
    assert (again.written, again.skipped) == (0, single.written)


def test_patching_and_mean_ablation_on_ray_equal_a_single_process_run(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t, "corrupt": {"noise": [0, 1], "seed": i}}
                                                 for i, t in enumerate(TEXTS[:4])])
    kwargs = dict(random_weights=True, progress=False, batch_size=1, patch="resid_pre,heads", ablate="heads,mlp",
                  ablation="mean", attribution_patching=True)
    single = run_activations("tiny-llama", prompts, tmp_path / "single", **kwargs)
    on_ray = run_activations("tiny-llama", prompts, tmp_path / "ray", ray="auto", **kwargs)
    assert (on_ray.written, on_ray.failed) == (single.written, single.failed) == (4, 0)
    for row in (r for r in index.read_rows(tmp_path / "single") if r["kind"] == "cache"):
        with Cache(tmp_path / "single" / row["path"]) as a, Cache(tmp_path / "ray" / row["path"]) as b:
            assert a.has("patch_heads") and a.has("ablate_mlp") and a.names() == b.names()
            for name in (n for n in a.names() if n.startswith(("patch_", "attrpatch_", "ablate_"))):
                # a worker's torch may use other thread counts than this process: float32 sums to rounding
                np.testing.assert_allclose(a.array(name), b.array(name), atol=1e-5, err_msg=name)
