"""Training-step throughput: ckbert variants vs HF BertForMaskedLM (plain MLM) on identical batches.

    python bench/train_step.py --prepared DIR [--sizes tiny base] [--steps 6] [--out FILE.json]
    python bench/train_step.py --prepared DIR --matrix          # every variant below, side by side
    python bench/train_step.py --prepared DIR --variants mlm/fp32/torch mlm+cmrm/bf16/torch

A variant of ours is OBJECTIVE/PRECISION/KERNELS: `mlm` (LMLM targets, CMRM off: no second
encoder pass) or `mlm+cmrm` (both objectives); `fp32` or `bf16` (autocast); `torch` or `triton`
(`model.kernels`; Triton rows run only on a CUDA GPU, elsewhere they are printed as not run: the
Triton interpreter is no timing reference). The default is the one variant `mlm+cmrm/bf16/torch`
(with its ratio line, as before); `--matrix` runs all eight. HF `BertForMaskedLM` runs at every
precision that a variant uses, and each ratio is against HF at the same precision.

All variants train on identical batches from a prepared dataset (`ckbert prepare`): the same
input_ids and attention masks, the same 15% targets (HF gets them as a [B, L] label tensor with
-100 elsewhere and computes full-vocabulary logits at every position, as `BertForMaskedLM` does).
With CMRM, ours also runs the second pass over the batch's sample texts and the contrastive loss,
with the masking and CMRM settings of `--recipe` (default configs/pretrain/demo.yaml: in-batch
negatives only, texts of the tail alone; `--recipe configs/pretrain/base.yaml` for another).
AdamW for all, dropout on, the same model shapes (vocabulary 21,130 as the released CKBERT unless
`--vocab-size`). Within each round every variant (and HF at each precision) takes one step on the
same batch, in an order rotated by one each round, so that load from other processes hits all of
them alike; the median step time is reported. tokens/s counts the real tokens of the main batch
(the same number for every variant). Variants with the same kernels share one model and its AdamW
state (the weights drift between their steps; step times do not depend on the values), and HF's
two precisions share one HF model, so that base fits in memory.

Each side runs its own model code as a user would: HF `BertForMaskedLM` computes on every padded
position (its MLM head on all B*L of them); ours runs its encoder on the real tokens only (the
unpadded path, docs/model.md) and, on a CPU without oneDNN bf16, its linear layers in the GEMM
layouts PyTorch's fallback bf16 matmul runs fastest (same bf16 precision). The padding of both
batches is printed (real tokens / padded positions), since it decides much of the difference.
On a CUDA GPU everything runs there; otherwise on the CPU.

Also measured: the collator's time per batch as a share of our tiny training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

from ckbert.collator import PretrainCollator
from ckbert.data_prep.dataset import open_prepared
from ckbert.kernels import ops
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import load_model_config
from ckbert.optim import build_optimizer
from ckbert.train import KeyedRows, PretrainForward, StepContext, autocast_factory, to_device, train_step
from ckbert.train_config import CMRMConfig, OptimConfig, load_pretrain_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import finish, machine  # noqa: E402

VOCAB = 21130
OBJECTIVES = ("mlm", "mlm+cmrm")
PRECISIONS = ("fp32", "bf16")
KERNELS = ("torch", "triton")
NO_GPU = "not run: no CUDA GPU"


@dataclasses.dataclass(frozen=True)
class Variant:
    objective: str  # "mlm" (CMRM off) or "mlm+cmrm"
    precision: str  # "fp32" or "bf16" (autocast)
    kernels: str  # "torch" or "triton"

    @property
    def name(self) -> str:
        return f"{self.objective}/{self.precision}/{self.kernels}"


DEFAULT = Variant("mlm+cmrm", "bf16", "torch")
MATRIX = [Variant(o, p, k) for k in KERNELS for p in PRECISIONS for o in OBJECTIVES]


def parse_variant(text: str) -> Variant:
    parts = text.split("/")
    if len(parts) != 3 or parts[0] not in OBJECTIVES or parts[1] not in PRECISIONS or parts[2] not in KERNELS:
        raise argparse.ArgumentTypeError(
            f"variant {text!r}: expected OBJECTIVE/PRECISION/KERNELS with OBJECTIVE in {OBJECTIVES}, "
            f"PRECISION in {PRECISIONS}, KERNELS in {KERNELS} (e.g. mlm+cmrm/bf16/torch)")
    return Variant(*parts)


def hf_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = torch.full_like(batch["input_ids"], -100)
    labels.view(-1)[batch["mlm_positions"]] = batch["mlm_labels"]
    return labels


def bench_size(size: str, batches: list[dict], steps: int, warmup: int, variants: list[Variant] | None = None,
               vocab: int = VOCAB, device: torch.device | None = None, layers: int | None = None,
               cmrm: CMRMConfig | None = None) -> dict:
    """Time each variant (and HF at each precision used) on `batches`; one row per variant."""
    variants = variants or [DEFAULT]
    cmrm = cmrm or CMRMConfig()
    device = device or torch.device("cpu")
    runnable = [v for v in variants if v.kernels == "torch" or device.type == "cuda"]
    overrides = {"vocab_size": vocab} | ({"num_hidden_layers": layers} if layers else {})
    models: dict[str, CKBertForPreTraining] = {}
    for k in dict.fromkeys(v.kernels for v in runnable):
        ops.reset_backend()  # the backend is decided once per process; each model keeps its own
        torch.manual_seed(0)
        models[k] = CKBertForPreTraining(load_model_config(size, overrides | {"kernels": k})).to(device)
    mcfg = load_model_config(size, overrides | {"kernels": "torch"})
    hf = BertForMaskedLM(BertConfig(
        vocab_size=vocab, hidden_size=mcfg.hidden_size, num_hidden_layers=mcfg.num_hidden_layers,
        num_attention_heads=mcfg.num_attention_heads, intermediate_size=mcfg.intermediate_size,
        max_position_embeddings=mcfg.max_position_embeddings, attn_implementation="sdpa")).to(device)
    if models:  # same initial weights (HF also holds the tied decoder)
        hf.load_state_dict(next(iter(models.values())).state_dict(), strict=False)
    ocfg = OptimConfig(lr=1e-4)
    base_ctx = {}
    for k, model in models.items():
        opt = build_optimizer(model, ocfg)
        base_ctx[k] = StepContext(None, opt, torch.amp.GradScaler(device.type, enabled=False), None, cmrm.weight,
                                  1.0, list(model.parameters()))
        model.train()
    hf_opt = build_optimizer(hf, ocfg)
    hf.train()

    def ours_step(v: Variant) -> Callable[[dict], None]:
        forward = PretrainForward(models[v.kernels], v.objective == "mlm+cmrm", cmrm.temperature,
                                  cmrm.in_batch_negatives)
        ctx = dataclasses.replace(base_ctx[v.kernels], forward=forward, autocast=autocast_factory(v.precision, device))
        return lambda batch: train_step(ctx, [batch])

    def hf_step(precision: str) -> Callable[[dict], None]:
        autocast = autocast_factory(precision, device)

        def step(batch: dict) -> None:
            hf_opt.zero_grad(set_to_none=True)
            with autocast():
                loss = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=hf_labels(batch)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_opt.step()
            loss.item()

        return step

    hf_precisions = list(dict.fromkeys(v.precision for v in runnable))
    entries = [(v.name, ours_step(v)) for v in runnable] + [(f"HF/{p}", hf_step(p)) for p in hf_precisions]
    times: dict[str, list[float]] = {name: [] for name, _ in entries}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + steps if entries else 0):  # no entries: only Triton variants, without a GPU
        batch = batches[i % len(batches)]
        shift = i % len(entries)  # rotate the order each round
        took = []
        for name, step in entries[shift:] + entries[:shift]:
            sync()
            t0 = time.perf_counter()
            step(batch)
            sync()
            dt = time.perf_counter() - t0
            took.append(f"{name} {dt:.2f}")
            if i >= warmup:
                times[name].append(dt)
        print(f"  {size} step {i} ({'timed' if i >= warmup else 'warm-up'}), s: {', '.join(took)}", flush=True)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    hf_rows = {p: {"variant": f"HF BertForMaskedLM/{p}", "model": "hf", "objective": "mlm", "precision": p,
                   "kernels": "-", "step_s": statistics.median(times[f"HF/{p}"]),
                   "step_times_s": times[f"HF/{p}"]} for p in hf_precisions}
    for r in hf_rows.values():
        r["tokens_per_s"] = tokens / r["step_s"]
    rows = []
    for v in variants:
        row = {"variant": v.name, "model": "ckbert", "objective": v.objective, "precision": v.precision,
               "kernels": v.kernels}
        if v not in runnable:
            rows.append({**row, "status": NO_GPU})
            continue
        mo, mh = statistics.median(times[v.name]), hf_rows[v.precision]["step_s"]
        rows.append({**row, "status": "ok", "step_s": mo, "tokens_per_s": tokens / mo, "step_times_s": times[v.name],
                     "hf_step_s": mh, "hf_tokens_per_s": tokens / mh, "ratio_to_hf": mh / mo})
    out = {"size": size, "layers": mcfg.num_hidden_layers, "device": str(device), "batch": list(batches[0]["input_ids"].shape),
           "tokens_per_batch": tokens, "steps": steps, "rows": rows + list(hf_rows.values())}
    if DEFAULT in runnable:  # the summary keys of the single-variant benchmark (bench/plots.py reads them)
        d = next(r for r in rows if r["variant"] == DEFAULT.name)
        out.update({"ours_step_s": d["step_s"], "hf_step_s": d["hf_step_s"], "ours_tokens_per_s": d["tokens_per_s"],
                    "hf_tokens_per_s": d["hf_tokens_per_s"], "speedup": d["ratio_to_hf"]})
    return out


def variant_table(r: dict) -> str:
    """The rows of one size as a Markdown table (tokens/s and the ratio to HF at the same precision)."""
    lines = [f"{r['size']}, batch {r['batch']}, {r['tokens_per_batch']:.0f} real tokens per batch, "
             f"{r['device']}, median of {r['steps']} step(s):",
             "| variant | s/step | tokens/s | HF s/step (same precision) | HF tokens/s | ratio to HF |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        if row.get("status", "ok") != "ok":
            lines.append(f"| {row['variant']} | {row['status']} | | | | |")
        elif row["model"] == "hf":
            lines.append(f"| {row['variant']} | {row['step_s']:.3f} | {row['tokens_per_s']:.0f} | | | 1.00x |")
        else:
            lines.append(f"| {row['variant']} | {row['step_s']:.3f} | {row['tokens_per_s']:.0f} | "
                         f"{row['hf_step_s']:.3f} | {row['hf_tokens_per_s']:.0f} | {row['ratio_to_hf']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", required=True, type=Path)
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch-size", type=int, default=32, help="tiny; base uses a quarter of it")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--variants", nargs="+", type=parse_variant, metavar="OBJ/PREC/KERNELS",
                   help=f"variants of ours (default: {DEFAULT.name})")
    p.add_argument("--matrix", action="store_true",
                   help="all variants: {mlm, mlm+cmrm} x {fp32, bf16} x {torch, triton}")
    p.add_argument("--vocab-size", type=int, default=VOCAB,
                   help="model vocabulary (default 21,130 as the released CKBERT; smaller for smoke runs)")
    p.add_argument("--layers", type=int, help="encoder layers (default: the size's own; fewer for smoke runs)")
    p.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parent.parent / "configs/pretrain/demo.yaml",
                   help="pretraining recipe whose masking and cmrm settings the batches use (default: the demo's)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    if args.matrix and args.variants:
        p.error("--matrix and --variants exclude each other")
    variants = MATRIX if args.matrix else list(dict.fromkeys(args.variants or [DEFAULT]))
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args, variants)
    finally:  # an in-process caller (the smoke test) keeps its own thread setting
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, variants: list[Variant]) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    manifest, ds, kg, tok = open_prepared(args.prepared)
    if args.vocab_size < len(tok):
        raise SystemExit(f"error: --vocab-size {args.vocab_size} is smaller than the tokenizer of "
                         f"{args.prepared} ({len(tok)})")
    recipe = load_pretrain_config(args.recipe)
    collator = PretrainCollator(tok, manifest, kg, recipe.masking, recipe.cmrm, int(manifest["seq_len"]) + 2,
                                seed=0, pad_to_multiple_of=8)
    rows = KeyedRows(ds)
    # Rows with at least one mention whose entity has a 1-hop fact come first, so that CMRM (the
    # second encoder pass) runs in every benchmarked batch; the rest follow in dataset order.
    degree = kg.degrees()
    with_fact = [r for r, ents in enumerate(ds["ent_id"]) if any(degree[e] > 0 for e in ents)]
    order = with_fact + sorted(set(range(len(ds))) - set(with_fact))
    results = {"machine": machine(), "bench": "train_step", "device": str(device), "recipe": str(args.recipe),
               "cmrm": dataclasses.asdict(recipe.cmrm), "masking": dataclasses.asdict(recipe.masking),
               "torch_threads": torch.get_num_threads(), "variants": [v.name for v in variants], "sizes": []}

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
        r = bench_size(size, [to_device(b, device) for b in batches], args.steps, args.warmup, variants,
                       args.vocab_size, device, args.layers, recipe.cmrm)
        r["collate_s"] = statistics.median(collate_times)
        if "ours_step_s" in r:
            r["collate_share_of_step"] = r["collate_s"] / r["ours_step_s"]
        r["mentions_per_batch"] = statistics.mean(b["sample_index"].shape[0] for b in batches)
        r["real_of_padded"] = [sum(int(b["attention_mask"].sum()) for b in batches),
                               sum(b["attention_mask"].numel() for b in batches)]
        r["sample_real_of_padded"] = [sum(int(b["sample_attention_mask"].sum()) for b in batches),
                                      sum(b["sample_attention_mask"].numel() for b in batches)]
        r["sample_texts_per_batch"] = statistics.mean(b["sample_input_ids"].shape[0] for b in batches)
        results["sizes"].append(r)
        padding = (f"real/padded tokens: main {r['real_of_padded'][0]}/{r['real_of_padded'][1]}, CMRM samples "
                   f"{r['sample_real_of_padded'][0]}/{r['sample_real_of_padded'][1]} (all batches)")
        if "ours_step_s" in r:
            print(f"{size:5s} batch {r['batch']}: ours {r['ours_tokens_per_s']:8.0f} tok/s ({r['ours_step_s']:.3f} s/step, "
                  f"MLM+CMRM) | HF BertForMaskedLM {r['hf_tokens_per_s']:8.0f} tok/s ({r['hf_step_s']:.3f} s/step, MLM) | "
                  f"ratio {r['speedup']:.2f}x | collate {1000 * r['collate_s']:.1f} ms = "
                  f"{100 * r['collate_share_of_step']:.1f}% of our step | {padding}", flush=True)
        else:
            print(f"{size:5s} batch {r['batch']}: collate {1000 * r['collate_s']:.1f} ms | {padding}", flush=True)
        if len(variants) > 1:
            print(variant_table(r), flush=True)
    finish(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
