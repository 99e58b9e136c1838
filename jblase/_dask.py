"""A Dask distributed client the jblase way: the engine under ``fit-many`` and ``clone --workers``.

A local cluster of N worker processes (spawned, never forked from a process that has
initialised JAX; one thread each, as jblase's programs use the cores through XLA; not daemonic,
so a worker may start processes of its own) or an existing cluster by its scheduler address.
Every worker gets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (workers sharing a GPU must not each
claim all of its memory) and, on a machine with n GPUs, worker i sees only GPU ``i mod n``.
Dask is an optional dependency: ``pip install "jblase[survey]"``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

try:  # the plugin base class only where Dask is installed
    from distributed.diagnostics.plugin import WorkerPlugin as _PluginBase
except ImportError:  # pragma: no cover - exercised without the extra
    _PluginBase = object

__all__ = ["dask_client", "require_dask", "run_tasks"]


def require_dask(what: str, without: str):
    """Import ``distributed`` or raise an ImportError that says how to install it.

    ``what`` names the job (``"jblase fit-many with workers"``), ``without`` how to run it
    without Dask (``"--workers 0 fits in this process"``)."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as err:
        raise ImportError(
            f'{what} needs Dask distributed: pip install "jblase[survey]" (or '
            f"dask[distributed]); {without} without it"
        ) from err
    return distributed


class _DevicePlugin(_PluginBase):
    """Before a worker's first task: no GPU memory preallocation, and worker i sees GPU
    i mod n when the machine has n GPUs (``CUDA_VISIBLE_DEVICES`` as the client saw it)."""

    name = "jblase-devices"

    def __init__(self, gpus: Sequence[str]):
        self.gpus = list(gpus)

    def setup(self, worker):
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if self.gpus:
            try:
                index = int(worker.name)
            except (TypeError, ValueError):
                index = abs(hash(worker.name))
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]

    def teardown(self, worker):
        pass


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    # Without importing JAX here (the client may never need it): count NVIDIA device files.
    return sorted(p.name[len("nvidia") :] for p in Path("/dev").glob("nvidia[0-9]*"))


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None, what: str, without: str) -> Iterator[object]:
    """A ``distributed.Client`` on a local cluster of ``workers`` processes, or on the cluster
    of ``scheduler``; closed (and the local cluster shut down) on exit. ``what`` and
    ``without`` word the error when Dask is missing (:func:`require_dask`)."""
    distributed = require_dask(what, without)
    import dask

    cluster = None
    with dask.config.set(
        {
            "distributed.worker.multiprocessing-method": "spawn",
            "distributed.worker.daemon": False,
            "distributed.scheduler.allowed-failures": 2,
        }
    ):
        if scheduler is not None:
            client = distributed.Client(scheduler)
        else:
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
            )
            client = distributed.Client(cluster)
        try:
            client.register_plugin(_DevicePlugin(_visible_gpus()))
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def run_tasks(client, fn, tasks, *args):
    """Submit ``fn(task, *args)`` for every task and yield ``(task, result, error)`` as each
    finishes (``error`` is the exception of a task that raised or whose worker was lost, and
    ``result`` is then None), so one failed task never stops the others."""
    import distributed

    futures = {client.submit(fn, task, *args, pure=False): i for i, task in enumerate(tasks)}
    for future in distributed.as_completed(futures):
        task = tasks[futures.pop(future)]
        try:
            yield task, future.result(), None
        except Exception as err:  # a bad input or a lost worker: the rest go on
            yield task, None, err
