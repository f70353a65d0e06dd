"""Running shards of work on a Ray cluster: one worker per GPU (else per CPU slot), set up once.

    for result in run_shards(setup, work, shards, address="auto"):
        record(result)

`setup()` runs once per worker (load a model); `work(state, shard)` runs per shard in a worker
and returns a picklable result, which comes back to the caller as each shard finishes (any
order). The caller records results, so nothing is half-recorded when a worker dies mid-shard:
Ray restarts the worker and retries the shard (up to `max_retries`), and every shard's result
arrives exactly once.

Ray is an optional dependency (`pip install ray`); workers import this package, so on a remote
cluster it must be installed there too. `address`: "auto" joins the cluster that RAY_ADDRESS or
a local `ray start` names, else starts one on this machine; anything else is a cluster address.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, TypeVar

Shard = TypeVar("Shard")
Result = TypeVar("Result")


class DistributedError(Exception):
    """Ray is missing, the cluster cannot be reached, or a shard's worker kept dying; the
    message says what to do."""


def chunks(items: Sequence[Shard], size: int) -> list[Sequence[Shard]]:
    """Consecutive slices of at most `size` items."""
    return [items[start : start + size] for start in range(0, len(items), max(1, size))]


def connect(address: str = "auto") -> bool:
    """Join (or start) the Ray cluster; True when this call started Ray (so should shut it down)."""
    try:
        import ray
    except ImportError:
        raise DistributedError("--ray needs Ray: pip install 'lens_pipeline[ray]' (or ray)") from None
    if ray.is_initialized():
        return False
    try:
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise DistributedError(f"--ray {address}: cannot reach a Ray cluster ({error})") from None
    return True


class _ShardWorker:
    """One Ray actor: runs `setup` once (on its first shard, so that a failing setup is an
    ordinary task error carrying the original exception) and `work` on every shard."""

    def __init__(self, setup: Callable[[], Any], work: Callable[[Any, Any], Any]):
        self.setup, self.work, self.state, self.ready = setup, work, None, False

    def run(self, shard: Any) -> Any:
        if not self.ready:
            self.state, self.ready = self.setup(), True
        return self.work(self.state, shard)


def worker_options(use_gpus: bool = True) -> tuple[int, dict[str, float]]:
    """(how many workers the cluster fits, resources each asks for): a GPU each when there are
    GPUs (and `use_gpus`), else one CPU each."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if use_gpus else 0
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


def run_shards(
    setup: Callable[[], Any],
    work: Callable[[Any, Shard], Result],
    shards: Sequence[Shard],
    *,
    address: str = "auto",
    workers: int | None = None,
    use_gpus: bool = True,
    max_retries: int = 3,
) -> Iterator[Result]:
    """Run `work(setup(), shard)` for every shard on Ray workers; yield results as they finish.

    A worker process that dies is restarted and its shard retried up to `max_retries` times;
    an exception raised by `work` or `setup` is not retried (it would fail again) and is
    re-raised here as the original exception.
    """
    if not shards:
        return
    started_ray = connect(address)
    import ray
    from ray.util import ActorPool

    fits, options = worker_options(use_gpus)
    count = min(workers or fits, len(shards))
    actor_class = ray.remote(max_restarts=max_retries, max_task_retries=max_retries, **options)(_ShardWorker)
    actors = [actor_class.remote(setup, work) for _ in range(count)]
    try:
        pool = ActorPool(actors)
        yield from pool.map_unordered(lambda actor, shard: actor.run.remote(shard), shards)
    except ray.exceptions.RayTaskError as error:  # the worker's own exception, not Ray's wrapper
        raise (error.cause if isinstance(error.cause, Exception) else error) from error
    except ray.exceptions.RayActorError as error:
        raise DistributedError(
            f"a Ray worker died {max_retries + 1} times on one shard (out of memory? see the Ray logs); "
            "finished shards are kept: rerun to resume"
        ) from error
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
