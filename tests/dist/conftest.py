"""Fixtures for the distributed tests: run `tests/dist/worker.py` on 1 or 2 CPU processes (gloo).

Two launchers, both real multi-process runs with their own process group:
- `fork`: the test process forks one child per rank with torchrun's variables (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set, and each child calls `worker.main` (or `ckbert.cli`).
  The children inherit the imported torch, which saves ~5-10 s of imports per process on this
  2-core machine. When a rank dies, the others are killed, as torchrun does.
- `torchrun`: `python -m torch.distributed.run --nproc_per_node N ...`, as `run_pretrain.sh`
  launches (the end-to-end `ckbert pretrain` test).
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
import time
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


def _child(rank: int, nproc: int, port: int, args: dict | list) -> None:
    for var in RANK_VARS:
        os.environ.pop(var, None)
    if nproc > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    try:
        if isinstance(args, list):  # a `ckbert` command line
            from ckbert.cli import main as cli

            code = cli(args)
        else:
            _load_worker().main(args)
            code = 0
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(code)


def launch_fork(nproc: int, args: dict | list, timeout: float = 120.0) -> list[int]:
    """Run the worker (`args` a dict) or `ckbert ARGS` (a list) on `nproc` forked ranks; returns
    their exit codes (negative: killed by that signal)."""
    _load_worker()  # imported once here, inherited by every forked rank
    if isinstance(args, list):
        import ckbert.cli  # noqa: F401
        import ckbert.train  # noqa: F401
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, nproc, port, args)) for r in range(nproc)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    # As torchrun does: once a rank has failed (or time is up), stop the others, which would
    # otherwise wait forever in their next collective.
    while any(p.is_alive() for p in procs):
        failed = any(p.exitcode not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.is_alive():
                    p.kill()
        time.sleep(0.05)
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def launch_torchrun(nproc: int, args: dict | list, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """`torchrun` on the worker (`args` a dict) or on `ckbert ARGS` (a list)."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    target = ["-m", "ckbert.cli", *args] if isinstance(args, list) else [str(WORKER), json.dumps(args)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *target]
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
def fork_ranks():
    """launch_fork itself: exit codes per rank, for tests that expect a rank to die."""
    return launch_fork


@pytest.fixture(scope="session")
def worker_module():
    """tests/dist/worker.py as a module (its config, text rows and batch builder)."""
    return _load_worker()
