"""Shared plumbing of the bench/ entry points I own: machine record, JSON output, timing.

Every result file records the machine, the date, the exact command and the CPU load average at
the start and the end, because the numbers on a shared 2-core machine mean little without them.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU count, load, library versions, GPU (or its absence)."""
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": gpu,
    }


def finish(record: dict[str, Any], out: Path | None) -> None:
    """Stamp the end load average and write `record` as JSON (tmp + rename) when `out` is given."""
    record["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")


def time_calls(fn: Callable[[int], Any], n: int, warmup: int) -> tuple[float, list[Any]]:
    """Call fn(0..warmup-1) untimed, then fn(0..n-1) timed; -> (seconds, results of the timed calls)."""
    for i in range(warmup):
        fn(i)
    results = []
    t0 = time.perf_counter()
    for i in range(n):
        results.append(fn(i))
    return time.perf_counter() - t0, results


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (printed to the terminal and pasted into docs/results.md)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
