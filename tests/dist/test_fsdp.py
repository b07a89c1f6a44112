"""FSDP2 on 2 gloo ranks: train, sharded DCP checkpoint, resume on 1 rank, consolidate, SIGKILL + resume on 2.

Dropout is off in the worker, so a run resumed from a checkpoint must land on the parameters of the
uninterrupted run up to fp32 reduction-order noise, whatever the world size it resumes on.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckbert.dist_checkpoint import latest_checkpoint, load_full_model_state, read_trainer_state
from ckbert.parallel import DataOrder

# AdamW moves every weight by ~lr = 3e-3 per step; reduction-order noise in fp32 is ~1e-7.
ATOL = 2e-6
STEPS, SAVE_EVERY = 4, 2
ROWS, SEED = 256, 11  # the worker's dataset size and data-order seed


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "losses.jsonl").read_text().splitlines())}


def _assert_same_params(out: Path, ref: Path) -> None:
    a, b = load_file(str(out / "final.safetensors")), load_file(str(ref / "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=ATOL, msg=k)


def _from_step(ref: Path, dest: Path, step: int) -> Path:
    """A copy of the reference run's checkpoints with `latest` at `step` and later ones removed."""
    shutil.copytree(ref / "checkpoints", dest / "checkpoints")
    for later in (dest / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    (dest / "checkpoints" / "latest").write_text(f"step-{step:06d}\n")
    return dest


@pytest.fixture(scope="module")
def reference(run_worker, tmp_path_factory) -> Path:
    """2 ranks, FSDP2, every 2nd layer checkpointed, 4 steps, a sharded checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("fsdp_ref")
    run_worker(2, {"strategy": "fsdp", "ac": "every_k", "ac_every": 2, "micro_batch": 2, "grad_accum": 2,
                   "steps": STEPS, "save_every": SAVE_EVERY, "out": str(out)})
    return out


def test_reference_run_reads_the_global_stream(reference):
    state = read_trainer_state(latest_checkpoint(reference / "checkpoints"))
    assert state["step"] == STEPS and state["world_size"] == 2 and state["global_batch"] == 8
    assert state["data_position"] == STEPS * 8
    seen = json.loads((reference / "rows_seen.json").read_text())
    assert seen == sorted(DataOrder(ROWS, SEED).rows(0, STEPS * 8).tolist())
    losses = _losses(reference)
    assert losses[STEPS] < losses[1]  # it trains


def test_resume_on_one_rank_matches_uninterrupted(run_worker, reference, tmp_path):
    """Saved on 2 ranks, resumed on 1 (resuming on 2 ranks: the SIGKILL test below)."""
    out = _from_step(reference, tmp_path, SAVE_EVERY)
    # Same global batch (8) on 1 rank: micro-batch 4; full activation checkpointing and CPU offload
    # (CPUOffloadPolicy(pin_memory=False): a host copy on a CPU-only machine) this time.
    run_worker(1, {"strategy": "fsdp", "ac": "full", "cpu_offload": True, "micro_batch": 4, "grad_accum": 2,
                       "steps": STEPS, "out": str(out), "resume": True})
    _assert_same_params(out, reference)
    ref_losses, losses = _losses(reference), _losses(out)
    assert sorted(losses) == list(range(SAVE_EVERY + 1, STEPS + 1))
    for step, loss in losses.items():
        assert loss == pytest.approx(ref_losses[step], rel=1e-5, abs=1e-6)
    # Neither repeated nor skipped: exactly the stream positions after the checkpoint.
    seen = json.loads((out / "rows_seen.json").read_text())
    assert seen == sorted(DataOrder(ROWS, SEED).rows(SAVE_EVERY * 8, (STEPS - SAVE_EVERY) * 8).tolist())


def test_sharded_checkpoint_consolidates_to_the_trained_weights(reference):
    """One process, no process group: the shards of both ranks reassemble into the full state dict
    (`ckbert export` reads it this way; the HF round trip is in test_pretrain_torchrun.py)."""
    state = load_full_model_state(reference / "checkpoints" / f"step-{STEPS:06d}")
    final = load_file(str(reference / "final.safetensors"))
    assert state.keys() == final.keys()
    for k in state:
        assert torch.equal(state[k], final[k]), k


def test_sigkill_mid_step_resumes_from_last_complete_checkpoint(run_worker, fork_ranks, reference, tmp_path):
    args = {"strategy": "fsdp", "ac": "every_k", "ac_every": 2, "micro_batch": 2, "grad_accum": 2,
            "steps": STEPS, "save_every": SAVE_EVERY, "out": str(tmp_path), "kill_at_step": 3}
    codes = fork_ranks(2, args)
    assert codes[0] == -signal.SIGKILL, codes  # rank 0 killed itself in step 3, after backward
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step-{SAVE_EVERY:06d}"
    assert not list((tmp_path / "checkpoints").glob("step-*.tmp"))
    assert sorted(_losses(tmp_path)) == [1, 2]  # step 3 never finished
    run_worker(2, {**{k: v for k, v in args.items() if k != "kill_at_step"}, "resume": True})
    _assert_same_params(tmp_path, reference)
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4]

