"""Fixtures for the distributed tests: run `tests/dist/worker.py` on 1 or 2 CPU processes (gloo).

Two launchers, both real multi-process runs with their own process group:
- `fork`: the test process forks one child per rank with torchrun's variables (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set, and each child calls `worker.main`. The children
  inherit the imported torch, which saves ~5-10 s of imports per process on this 2-core machine.
- `torchrun`: `python -m torch.distributed.run --nproc_per_node N worker.py`, exactly as
  `run_pretrain.sh` launches (used where torchrun's own behaviour matters: a rank killed by SIGKILL).
Every launch gets a free port, so tests never collide with another job on the machine.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _load_worker():
    spec = importlib.util.spec_from_file_location("ckbert_dist_test_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(rank: int, nproc: int, port: int, args: dict) -> None:
    for var in RANK_VARS:
        os.environ.pop(var, None)
    if nproc > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    try:
        _load_worker().main(args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def launch_fork(nproc: int, args: dict, timeout: float = 120.0) -> list[int]:
    """Exit codes of the ranks (negative: killed by that signal)."""
    _load_worker()  # imported once here, inherited by every forked rank
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, nproc, port, args)) for r in range(nproc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():  # a rank hung (e.g. its peer died in a collective): stop it
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def launch_torchrun(nproc: int, args: dict, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), json.dumps(args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_worker():
    def run(nproc: int, args: dict) -> None:
        codes = launch_fork(nproc, args)
        if any(c != 0 for c in codes):
            pytest.fail(f"worker ranks exited with {codes} (tracebacks on stderr)")

    return run


@pytest.fixture(scope="session")
def torchrun():
    return launch_torchrun


@pytest.fixture(scope="session")
def worker_module():
    """tests/dist/worker.py as a module (its config, text rows and batch builder)."""
    return _load_worker()
