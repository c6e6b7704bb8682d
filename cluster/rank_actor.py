"""The Ray actor of one rank: imports torch in its constructor, picks the rendezvous port (rank 0), runs
`rank_worker.run_rank`, and answers `progress()` while it runs (two threads: one runs, one answers).

Ray pickles an actor class by reference to this module, and the module references everything the
actor calls (DESIGN §4: cloudpickle sends only what is referenced), so a worker imports what it needs.
"""

from __future__ import annotations

import os
import socket
import time

import ray

from sharder.errors import SharderInputError


@ray.remote(max_concurrency=2)
class RankActor:
    """One rank. Create with `.options(num_cpus=..., num_gpus=..., scheduling_strategy=<placement bundle>)`."""

    def __init__(self, rank: int):
        t0 = time.perf_counter()
        self.rank = rank
        self.phase = "import"
        self.since = time.time()
        self.count = 0
        import torch  # noqa: F401  (the import is the slow part of starting a rank; do it here, timed)

        from sharder.cluster import rank_worker  # noqa: F401

        self.import_s = time.perf_counter() - t0
        self._set("ready")

    def _set(self, phase: str) -> None:
        self.phase, self.since, self.count = phase, time.time(), self.count + 1

    def ready(self) -> dict:
        """Where the actor landed (node, pid, visible devices) and how long its imports took."""
        return {"rank": self.rank, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "import_s": round(self.import_s, 3),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    def pick_port(self, port: int | None = None) -> tuple[str, int]:
        """(this node's IP, a port free on it): `port` if given and free, else one the kernel hands out.
        A given port that is taken is SharderInputError (one line)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", int(port or 0)))
            except OSError as exc:
                raise SharderInputError(f"port {port} on {ip} (rank 0's node) is in use ({exc.strerror}); "
                                        f"choose another master port or leave it unset") from None
            return ip, s.getsockname()[1]

    def progress(self) -> tuple[str, float, int]:
        """(phase, seconds in it, phases entered so far). Phases: 'import', 'ready', 'process group',
        'build', 'step N', 'timing steps', 'done'; every rank goes through the same ones, so the count
        says which rank is furthest behind when they hang."""
        return self.phase, round(time.time() - self.since, 3), self.count

    def run(self, plan: dict, world_size: int, master_addr: str, master_port: int, steps: int, device: str,
            timeout_s: float, inject_fault: dict | None) -> dict:
        from sharder.cluster.rank_worker import run_rank

        out = run_rank(plan, self.rank, world_size, master_addr, master_port, steps, device, timeout_s=timeout_s,
                       inject_fault=inject_fault, progress=self._set)
        out["import_s"] = round(self.import_s, 3)
        out["node_id"] = ray.get_runtime_context().get_node_id()
        return out
