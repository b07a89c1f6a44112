"""DDP on 2 gloo ranks with per-rank batch b == one process with batch 2b (fp32)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


def test_ddp_two_ranks_match_one_process_with_double_batch(run_worker, tmp_path):
    base = {"strategy": "ddp", "grad_accum": 1, "steps": 3}
    run_worker(1, {**base, "micro_batch": 4, "out": str(tmp_path / "single")})
    run_worker(2, {**base, "micro_batch": 2, "out": str(tmp_path / "ddp")})
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 3
    # The loss moves by ~1e-1 over these steps; the two runs differ only in reduction order.
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-5, atol=1e-5)
    a, b = load_file(str(tmp_path / "single" / "final.safetensors")), load_file(str(tmp_path / "ddp" / "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        # AdamW's first steps move every weight by ~lr = 3e-3; fp32 reduction-order noise is ~1e-7.
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-6, msg=k)
    # The same rows were read: the global stream, split over ranks.
    assert json.loads((tmp_path / "single" / "rows_seen.json").read_text()) == \
        json.loads((tmp_path / "ddp" / "rows_seen.json").read_text())
