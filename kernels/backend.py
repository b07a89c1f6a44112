"""Backend selection for the fused ops: decided once per process, logged, overridable.

Rules (style.md item 11): "triton" when CUDA and Triton are usable (or when the Triton
interpreter is on, TRITON_INTERPRET=1, so CPU tests exercise the Triton path), "torch"
otherwise. An explicit request for "triton" where it cannot run is a RuntimeError, never a
silent fallback.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

BACKENDS = ("triton", "torch")
REQUESTS = ("auto", *BACKENDS)
ENV_VAR = "CKBERT_KERNELS"

_selected: str | None = None


def interpreter_on() -> bool:
    """True when Triton runs its CPU interpreter (must be set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason() -> str | None:
    """None when Triton kernels can run in this process, else a one-line reason."""
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install 'ckbert[triton]')"
    if interpreter_on():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device is available (set TRITON_INTERPRET=1 to run the kernels on CPU)"
    return None


def _check_request(requested: str, source: str) -> str:
    if requested not in REQUESTS:
        raise ValueError(f"{source}: kernel backend must be one of {REQUESTS}, got {requested!r}")
    return requested


def select_backend(requested: str | None = None) -> str:
    """Return "triton" or "torch"; the first call decides for the whole process.

    `requested` comes from the config ("auto", "triton", "torch"); None reads the environment
    variable CKBERT_KERNELS (default "auto"). A later call asking for a different backend than the
    one already chosen raises, so that two parts of a program cannot silently disagree; tests call
    `reset_backend()` between cases.
    """
    global _selected
    if requested is None:
        requested = _check_request(os.environ.get(ENV_VAR, "auto"), f"environment {ENV_VAR}")
        source = f"environment {ENV_VAR}" if ENV_VAR in os.environ else "default"
    else:
        requested = _check_request(requested, "requested")
        source = "config"
    if _selected is not None:
        if source == "config" and requested != "auto" and requested != _selected:
            raise RuntimeError(
                f"kernel backend already set to {_selected!r} in this process; cannot switch to "
                f"{requested!r} (call ckbert.kernels.reset_backend() first)"
            )
        return _selected
    reason = triton_unavailable_reason()
    if requested == "triton" and reason is not None:
        raise RuntimeError(f"kernel backend 'triton' was requested ({source}) but cannot run: {reason}")
    if requested == "auto":
        chosen = "triton" if reason is None else "torch"
        why = "Triton usable" if reason is None else reason
    else:
        chosen, why = requested, f"requested by {source}"
    suffix = " (Triton interpreter, CPU)" if chosen == "triton" and interpreter_on() else ""
    log.info("ckbert.kernels: backend %s%s: %s", chosen, suffix, why)
    _selected = chosen
    return chosen


def reset_backend() -> None:
    """Forget the process-wide decision (for tests)."""
    global _selected
    _selected = None


def resolve(backend: str | None) -> str:
    """The backend an op call uses: its own `backend` argument, else the process decision."""
    if backend is None:
        return select_backend()
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        reason = triton_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"kernel backend 'triton' cannot run: {reason}")
    return backend


def check_device(*tensors: torch.Tensor) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter."""
    want_cuda = not interpreter_on()
    for t in tensors:
        if t is not None and t.is_cuda != want_cuda:
            where = "CUDA" if want_cuda else "CPU (TRITON_INTERPRET=1)"
            raise RuntimeError(f"triton backend needs {where} tensors, got a tensor on {t.device}")


def tile_elements() -> int:
    """Elements one Triton program handles in a row-tiled kernel.

    On a GPU a tile of ~4K elements keeps registers in budget. The interpreter pays ~20-40 ms per
    program instance (measured on this project's 2-core CI machine) and runs a tile as one numpy
    operation, so it gets large tiles and few programs.
    """
    return 65536 if interpreter_on() else 4096
