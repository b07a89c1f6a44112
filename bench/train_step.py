"""Training-step throughput: ckbert (LMLM + CMRM, both objectives) vs HF BertForMaskedLM (plain MLM).

    python bench/train_step.py --prepared DIR [--sizes tiny base] [--steps 6] [--out FILE.json]

Both sides train on identical batches from a prepared dataset (`ckbert prepare`): the same
input_ids and attention masks, the same 15% targets (HF gets them as a [B, L] label tensor with
-100 elsewhere and computes full-vocabulary logits at every position, as `BertForMaskedLM` does).
Ours also runs the CMRM second pass over the batch's sample texts and the contrastive loss. Same
precision (bf16 autocast for both), AdamW for both, dropout on, the same model shapes
(vocabulary 21,130 as the released CKBERT). Steps alternate between the two models so that load
from other processes hits both alike; the median step time is reported. tokens/s counts the real
tokens of the main batch (the same number for both sides).

Each side runs its own model code as a user would: HF `BertForMaskedLM` computes on every padded
position (its MLM head on all B*L of them); ours runs its encoder on the real tokens only (the
unpadded path, docs/model.md) and, on a CPU without oneDNN bf16, its linear layers in the GEMM
layouts PyTorch's fallback bf16 matmul runs fastest (same bf16 precision). The padding of both
batches is printed (real tokens / padded positions), since it decides much of the difference.

Also measured: the collator's time per batch as a share of our tiny training step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

from ckbert.collator import PretrainCollator
from ckbert.data_prep.dataset import open_prepared
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import load_model_config
from ckbert.optim import build_optimizer, build_scheduler
from ckbert.train import KeyedRows, PretrainForward, StepContext, train_step
from ckbert.train_config import CMRMConfig, MaskingConfig, OptimConfig

VOCAB = 21130


def hf_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = torch.full_like(batch["input_ids"], -100)
    labels.view(-1)[batch["mlm_positions"]] = batch["mlm_labels"]
    return labels


def bench_size(size: str, batches: list[dict], steps: int, warmup: int) -> dict:
    mcfg = load_model_config(size, {"vocab_size": VOCAB, "kernels": "torch"})
    torch.manual_seed(0)
    ours = CKBertForPreTraining(mcfg)
    hf = BertForMaskedLM(BertConfig(
        vocab_size=VOCAB, hidden_size=mcfg.hidden_size, num_hidden_layers=mcfg.num_hidden_layers,
        num_attention_heads=mcfg.num_attention_heads, intermediate_size=mcfg.intermediate_size,
        max_position_embeddings=mcfg.max_position_embeddings, attn_implementation="sdpa"))
    hf.load_state_dict(ours.state_dict(), strict=False)  # same weights (HF also holds the tied decoder)
    ocfg = OptimConfig(lr=1e-4)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    opt = build_optimizer(ours, ocfg)
    ctx = StepContext(PretrainForward(ours, True, 0.5), opt, build_scheduler(opt, 0.0, 1000),
                      torch.amp.GradScaler("cpu", enabled=False), autocast, 0.09, 1.0, list(ours.parameters()))
    hf_opt = build_optimizer(hf, ocfg)
    ours.train()
    hf.train()

    def hf_step(batch):
        hf_opt.zero_grad(set_to_none=True)
        with autocast():
            loss = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=hf_labels(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        return loss.item()

    t_ours, t_hf = [], []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        train_step(ctx, [batch])
        t1 = time.perf_counter()
        hf_step(batch)
        t2 = time.perf_counter()
        if i >= warmup:
            t_ours.append(t1 - t0)
            t_hf.append(t2 - t1)
        print(f"  {size} step {i} ({'timed' if i >= warmup else 'warm-up'}): ours {t1 - t0:.2f} s, HF {t2 - t1:.2f} s",
              flush=True)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
    return {"size": size, "batch": list(batches[0]["input_ids"].shape), "tokens_per_batch": tokens,
            "ours_step_s": mo, "hf_step_s": mh, "ours_tokens_per_s": tokens / mo, "hf_tokens_per_s": tokens / mh,
            "speedup": mh / mo, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", required=True, type=Path)
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch-size", type=int, default=32, help="tiny; base uses a quarter of it")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest, ds, kg, tok = open_prepared(args.prepared)
    collator = PretrainCollator(tok, manifest, kg, MaskingConfig(), CMRMConfig(), int(manifest["seq_len"]) + 2,
                                seed=0, pad_to_multiple_of=8)
    rows = KeyedRows(ds)
    # Rows with at least one mention whose entity has a 1-hop fact come first, so that CMRM (the
    # second encoder pass) runs in every benchmarked batch; the rest follow in dataset order.
    degree = kg.degrees()
    with_fact = [r for r, ents in enumerate(ds["ent_id"]) if any(degree[e] > 0 for e in ents)]
    order = with_fact + sorted(set(range(len(ds))) - set(with_fact))
    results = {"torch_threads": torch.get_num_threads(), "sizes": []}

    def make_batches(bs: int, n: int) -> tuple[list[dict], list[float]]:
        out, times = [], []
        for i in range(n):
            items = rows.__getitems__([(0, r) for r in order[i * bs : (i + 1) * bs]])
            t0 = time.perf_counter()
            b = collator(items)
            times.append(time.perf_counter() - t0)
            b.pop("cmrm_stats")
            b.pop("mlm_sources")
            out.append(b)
        return out, times

    for size in args.sizes:
        bs = args.batch_size if size == "tiny" else max(1, args.batch_size // 4)
        batches, collate_times = make_batches(bs, max(2, min(8, args.steps + args.warmup)))
        r = bench_size(size, batches, args.steps, args.warmup)
        r["collate_s"] = statistics.median(collate_times)
        r["collate_share_of_step"] = r["collate_s"] / r["ours_step_s"]
        r["mentions_per_batch"] = statistics.mean(b["sample_index"].shape[0] for b in batches)
        r["real_of_padded"] = [sum(int(b["attention_mask"].sum()) for b in batches),
                               sum(b["attention_mask"].numel() for b in batches)]
        r["sample_real_of_padded"] = [sum(int(b["sample_attention_mask"].sum()) for b in batches),
                                      sum(b["sample_attention_mask"].numel() for b in batches)]
        r["sample_texts_per_batch"] = statistics.mean(b["sample_input_ids"].shape[0] for b in batches)
        results["sizes"].append(r)
        print(f"{size:5s} batch {r['batch']}: ours {r['ours_tokens_per_s']:8.0f} tok/s ({r['ours_step_s']:.3f} s/step, "
              f"MLM+CMRM) | HF BertForMaskedLM {r['hf_tokens_per_s']:8.0f} tok/s ({r['hf_step_s']:.3f} s/step, MLM) | "
              f"ratio {r['speedup']:.2f}x | collate {1000 * r['collate_s']:.1f} ms = "
              f"{100 * r['collate_share_of_step']:.1f}% of our step | real/padded tokens: main "
              f"{r['real_of_padded'][0]}/{r['real_of_padded'][1]}, CMRM samples "
              f"{r['sample_real_of_padded'][0]}/{r['sample_real_of_padded'][1]} (all batches)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
