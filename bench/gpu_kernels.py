"""GPU benchmark of ckbert.kernels and of full training steps (issue 4). One command, < 5 minutes:

    python bench/gpu_kernels.py                 # on a CUDA GPU (H100/H200: bf16 dense peak 989 TFLOP/s)
    python bench/gpu_kernels.py --smoke         # tiny shapes, a few iterations: CPU check of the code path

Part 1, kernels: each fused op (Triton) against its PyTorch reference run eagerly and the same
reference under torch.compile; forward + backward time per call (CUDA events, median of --iters
timed calls after --warmup), and peak memory above the inputs (torch.cuda.max_memory_allocated).

Part 2, training steps (bf16 autocast, fused AdamW, 15% of positions predicted): base and large at
sequence 128 and 512 for `transformers.BertForMaskedLM` with SDPA attention and for the project
model `ckbert.model.CKBertForPreTraining` with kernels "torch" and "triton"; tokens/s and model FLOPs
utilisation (MFU = model FLOPs per second / peak).

Model FLOPs per training step (forward + backward = 3x forward; a matmul of an [n, a] by an [a, b]
operand costs 2nab in the forward), the same formula for every model:

    FLOPs = 6 * N_enc * T  +  12 * L * H * S * T  +  6 * (H*H + H*V) * T_mlm

    T      tokens in the batch (B * S);  T_mlm = rows predicted by the MLM head (15% of T)
    N_enc  parameters of the L encoder layers (the embeddings are lookups, not matmuls)
    12 L H S T   attention scores and weighted sum: 2 matmuls of 2*S*H FLOPs per token per layer
           forward, x3 for forward + backward (bidirectional: no causal halving)
    6 (H*H + H*V) T_mlm   MLM head transform and tied decoder on the predicted rows only

A model that decodes every position (BertForMaskedLM) does more work than this, which is not
counted: MFU measures useful work. On CPU (--smoke) timings use time.perf_counter, memory and MFU
are not reported; the Triton rows run in the Triton interpreter (TRITON_INTERPRET=1 is set by
--smoke when no GPU is present), torch.compile uses the "aot_eager" backend (no code generation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # bf16 dense, SXM
VOCAB = 21128  # bert-base-chinese
HEAD_VOCAB = 21248  # the released huge checkpoint's vocabulary, padded to a multiple of 128
MLM_FRACTION = 0.15


@dataclass
class Row:
    section: str
    case: str
    impl: str
    ms: float
    peak_mib: float | None = None
    speedup: float | None = None  # eager time / this time
    mem_ratio: float | None = None  # this peak / eager peak
    tokens_per_s: float | None = None
    mfu: float | None = None
    note: str = ""


# ----------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], None], device: torch.device, iters: int, warmup: int) -> tuple[float, float | None]:
    """-> (median ms per call, peak MiB allocated above what was allocated before the call)."""
    for _ in range(warmup):
        step()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), peak


# ----------------------------------------------------------------------------------------------
# part 1: kernels


@dataclass
class KernelCase:
    name: str
    shape: str
    make: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]]  # -> (leaves, grad outputs)
    triton_fn: Callable
    ref_fn: Callable


def _leaf(*shape, device, dtype, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device=device, dtype=torch.float32) * scale + shift).to(dtype).requires_grad_()


def kernel_cases(smoke: bool, device: torch.device, dtype: torch.dtype) -> list[KernelCase]:
    from ckbert.kernels import ops

    tokens = 48 if smoke else 16384  # 32 sequences x 512
    widths = [(24, 64)] if smoke else [(768, 3072), (1024, 4096), (2048, 8192)]  # base, large, huge
    vocab, mlm_rows = (97, 7) if smoke else (HEAD_VOCAB, round(tokens * MLM_FRACTION))
    n_anchor, k_cand = (5, 4) if smoke else (512, 16)
    cases = []
    for d, ffn in widths:
        def make_ln(d=d):
            x, r = _leaf(tokens, d, device=device, dtype=dtype), _leaf(tokens, d, device=device, dtype=dtype)
            b = _leaf(d, device=device, dtype=dtype, scale=0.1)
            w, lb = _leaf(d, device=device, dtype=dtype, scale=0.1, shift=1.0), _leaf(d, device=device, dtype=dtype, scale=0.1)
            return [x, b, r, w, lb], [torch.randn(tokens, d, device=device, dtype=dtype)]

        cases.append(KernelCase(
            "bias+dropout+add+LayerNorm (post-LN, p=0.1)", f"{tokens}x{d}", make_ln,
            lambda x, b, r, w, lb: (ops.bias_dropout_add_layernorm(x, b, r, w, lb, 1e-12, 0.1, True, backend="triton"),),
            lambda x, b, r, w, lb: (ops.add_layernorm_reference(x, b, r, w, lb, 1e-12, 0.1, True)[0],),
        ))

        def make_pre(d=d):
            x, r = _leaf(tokens, d, device=device, dtype=dtype), _leaf(tokens, d, device=device, dtype=dtype)
            w, lb = _leaf(d, device=device, dtype=dtype, scale=0.1, shift=1.0), _leaf(d, device=device, dtype=dtype, scale=0.1)
            g = [torch.randn(tokens, d, device=device, dtype=dtype) for _ in range(2)]
            return [x, r, w, lb], g

        cases.append(KernelCase(
            "add+LayerNorm (pre-LN, returns residual)", f"{tokens}x{d}", make_pre,
            lambda x, r, w, lb: ops.add_layernorm(x, r, w, lb, 1e-12, backend="triton"),
            lambda x, r, w, lb: ops.add_layernorm_reference(x, None, r, w, lb, 1e-12),
        ))

        def make_gelu(ffn=ffn):
            x, b = _leaf(tokens, ffn, device=device, dtype=dtype), _leaf(ffn, device=device, dtype=dtype, scale=0.1)
            return [x, b], [torch.randn(tokens, ffn, device=device, dtype=dtype)]

        cases.append(KernelCase(
            "bias+GELU (erf)", f"{tokens}x{ffn}", make_gelu,
            lambda x, b: (ops.bias_gelu(x, b, "none", backend="triton"),),
            lambda x, b: (ops.bias_gelu_reference(x, b, "none"),),
        ))
    h = widths[0][0]
    labels = torch.randint(0, vocab, (mlm_rows,), device=device)

    def make_mlm():
        hid = _leaf(mlm_rows, h, device=device, dtype=dtype)
        w = _leaf(vocab, h, device=device, dtype=dtype, scale=0.02)
        b = _leaf(vocab, device=device, dtype=dtype, scale=0.02)
        return [hid, w, b], [None]

    cases.append(KernelCase(
        "MLM head linear+cross-entropy", f"{mlm_rows}x{h} @ {vocab}x{h}", make_mlm,
        lambda hid, w, b: (ops.linear_cross_entropy(hid, w, b, labels, backend="triton"),),
        lambda hid, w, b: (ops.linear_cross_entropy_reference(hid, w, b, labels),),
    ))

    def make_con():
        a = _leaf(n_anchor, h, device=device, dtype=dtype)
        c = _leaf(n_anchor, k_cand, h, device=device, dtype=dtype)
        return [a, c], [None]

    cases.append(KernelCase(
        "contrastive (normalise, cosine, CE)", f"{n_anchor}x{k_cand}x{h}", make_con,
        lambda a, c: (ops.contrastive_loss(a, c, 0.07, backend="triton"),),
        lambda a, c: (ops.contrastive_loss_reference(a, c, 0.07),),
    ))
    return cases


def bench_kernels(args, device: torch.device, dtype: torch.dtype, triton_ok: str | None) -> list[Row]:
    rows = []
    compile_backend = "aot_eager" if device.type != "cuda" else "inductor"
    for case in kernel_cases(args.smoke, device, dtype):
        leaves, grads = case.make()
        impls = {"eager": case.ref_fn, f"compile({compile_backend})": torch.compile(case.ref_fn, backend=compile_backend)}
        if triton_ok is None:
            impls["triton"] = case.triton_fn
        results = {}
        for impl, fn in impls.items():
            def step(fn=fn, leaves=leaves, grads=grads):
                for t in leaves:
                    t.grad = None
                outs = fn(*leaves)
                torch.autograd.backward(outs, grads if grads[0] is not None else None)

            results[impl] = measure(step, device, args.iters, args.warmup)
        eager_ms, eager_peak = results["eager"]
        for impl, (ms, peak) in results.items():
            rows.append(Row("kernels", f"{case.name} [{case.shape}]", impl, ms, peak, eager_ms / ms,
                            (peak / eager_peak) if peak is not None and eager_peak else None))
        if triton_ok is not None:
            rows.append(Row("kernels", f"{case.name} [{case.shape}]", "triton", math.nan, note=f"skipped: {triton_ok}"))
        del leaves, grads
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------
# part 2: training steps


@dataclass
class Size:
    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int


SIZES = {"base": Size("base", 768, 12, 12, 3072), "large": Size("large", 1024, 24, 16, 4096)}
SMOKE_SIZE = Size("smoke", 64, 2, 4, 128)


def train_flops(size: Size, batch: int, seq: int, mlm_rows: int, vocab: int) -> float:
    """Model FLOPs of one training step (formula in the module docstring)."""
    h, f, n_layers = size.hidden, size.ffn, size.layers
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h  # attention, FFN, 2 LayerNorms
    tokens = batch * seq
    return 6 * n_layers * per_layer * tokens + 12 * n_layers * h * seq * tokens + 6 * (h * h + h * vocab) * mlm_rows


def _batch(batch: int, seq: int, vocab: int, device: torch.device, gen: torch.Generator):
    ids = torch.randint(5, vocab, (batch, seq), generator=gen).to(device)
    masked = torch.rand(batch, seq, generator=gen) < MLM_FRACTION
    masked[:, 0] = True  # at least one predicted row per sequence
    masked = masked.to(device)
    labels = torch.where(masked, ids, -100)
    return ids, torch.ones_like(ids), masked, labels


def _hf_model(size: Size, vocab: int, seq: int):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                     num_attention_heads=size.heads, intermediate_size=size.ffn,
                     max_position_embeddings=max(512, seq), attn_implementation="sdpa")
    model = BertForMaskedLM(cfg)

    def loss_fn(ids, attn, masked, labels):
        return model(input_ids=ids, attention_mask=attn, labels=labels).loss

    return model, loss_fn


def _ckbert_model(size: Size, vocab: int, seq: int, backend: str):
    from ckbert.kernels.ops import reset_backend
    from ckbert.model import CKBertForPreTraining
    from ckbert.model_config import ModelConfig

    reset_backend()  # each row chooses its own backend; the benchmark is one process
    cfg = ModelConfig(vocab_size=vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                      num_attention_heads=size.heads, intermediate_size=size.ffn,
                      max_position_embeddings=max(512, seq), kernels=backend)
    cfg.validate()
    model = CKBertForPreTraining(cfg)

    def loss_fn(ids, attn, masked, labels):
        hidden = model.encode(ids, attn)
        positions = masked.flatten().nonzero().squeeze(1)
        return model.mlm_loss(hidden, positions, labels.flatten()[positions])

    return model, loss_fn


def bench_models(args, device: torch.device, triton_ok: str | None, peak_tflops: float | None) -> list[Row]:
    rows = []
    if args.smoke:
        plan = [(SMOKE_SIZE, 32, 2)]
        vocab = 500
    else:
        # ~16K tokens per step at both lengths.
        plan = [(SIZES[s], seq, 16384 // seq) for s in args.sizes for seq in args.seqs]
        vocab = VOCAB
    try:
        import ckbert.model  # noqa: F401

        have_ckbert = None
    except ImportError as exc:
        have_ckbert = f"ckbert.model not importable: {exc}"
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    for size, seq, batch in plan:
        builders = {"HF BertForMaskedLM (sdpa)": lambda size=size, seq=seq: _hf_model(size, vocab, seq)}
        if have_ckbert is None:
            builders["ckbert (kernels=torch)"] = lambda size=size, seq=seq: _ckbert_model(size, vocab, seq, "torch")
            if triton_ok is None:
                builders["ckbert (kernels=triton)"] = (
                    lambda size=size, seq=seq: _ckbert_model(size, vocab, seq, "triton"))
        case = f"{size.name} seq {seq} batch {batch}"
        results = {}
        for name, build in builders.items():
            torch.manual_seed(0)
            with device:  # parameters are created on the device: no slow CPU init of large
                model, loss_fn = build()
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
            gen = torch.Generator().manual_seed(0)
            data = [_batch(batch, seq, vocab, device, gen) for _ in range(2)]
            state = {"i": 0}

            def step(model=model, opt=opt, loss_fn=loss_fn, data=data, state=state):
                b = data[state["i"] % len(data)]
                state["i"] += 1
                with amp:
                    loss = loss_fn(*b)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            ms, peak = measure(step, device, args.model_iters, args.warmup)
            mlm_rows = int(data[0][2].sum())
            flops = train_flops(size, batch, seq, mlm_rows, vocab)
            mfu = flops / (ms / 1e3) / (peak_tflops * 1e12) if peak_tflops else None
            results[name] = (ms, peak, batch * seq / (ms / 1e3), mfu)
            del model, opt, data
            if device.type == "cuda":
                torch.cuda.empty_cache()
        hf_ms = results["HF BertForMaskedLM (sdpa)"][0]
        for name, (ms, peak, tps, mfu) in results.items():
            rows.append(Row("training", case, name, ms, peak, hf_ms / ms, tokens_per_s=tps, mfu=mfu))
        if have_ckbert is not None:
            rows.append(Row("training", case, "ckbert", math.nan, note=f"skipped: {have_ckbert}"))
        elif triton_ok is not None:
            rows.append(Row("training", case, "ckbert (kernels=triton)", math.nan, note=f"skipped: {triton_ok}"))
    return rows


# ----------------------------------------------------------------------------------------------
# output


def fmt(v: float | None, spec: str) -> str:
    """A table cell: `v` formatted with `spec`, "-" for a missing or NaN value (bench/gpu_check.py uses it too)."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(rows: list[Row]) -> None:
    print("\n== kernels: forward + backward per call; speed-up and memory relative to PyTorch eager ==")
    print(f"{'op [shape]':<62} {'impl':<20} {'ms':>9} {'peak MiB':>9} {'speed-up':>9} {'mem/eager':>9}")
    for r in rows:
        if r.section == "kernels":
            print(f"{r.case:<62} {r.impl:<20} {fmt(r.ms, '.3f'):>9} {fmt(r.peak_mib, '.1f'):>9} "
                  f"{fmt(r.speedup, '.2f'):>9} {fmt(r.mem_ratio, '.2f'):>9} {r.note}")
    print("\n== training steps (bf16 autocast, AdamW): speed-up relative to HF BertForMaskedLM + SDPA ==")
    print(f"{'case':<26} {'model':<28} {'ms/step':>9} {'tokens/s':>10} {'MFU':>7} {'peak MiB':>9} {'speed-up':>9}")
    for r in rows:
        if r.section == "training":
            print(f"{r.case:<26} {r.impl:<28} {fmt(r.ms, '.2f'):>9} {fmt(r.tokens_per_s, '.0f'):>10} "
                  f"{fmt(None if r.mfu is None else 100 * r.mfu, '.1f'):>7} {fmt(r.peak_mib, '.0f'):>9} "
                  f"{fmt(r.speedup, '.2f'):>9} {r.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few iterations (runs on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per kernel (default 20; smoke 1)")
    parser.add_argument("--model-iters", type=int, default=None, help="timed training steps (default 10; smoke 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; smoke 0)")
    parser.add_argument("--sizes", nargs="+", default=["base", "large"], choices=sorted(SIZES))
    parser.add_argument("--seqs", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine to this JSON file")
    args = parser.parse_args(argv)
    # Smoke: one call of each, compilation included; it keeps the code path alive, it measures nothing.
    args.iters = args.iters or (1 if args.smoke else 20)
    args.model_iters = args.model_iters or (1 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 3)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("bench/gpu_kernels.py: no CUDA device here; this benchmark measures GPU kernels. Run it on a "
              "GPU machine, or pass --smoke for a quick CPU check of the code path.", file=sys.stderr)
        return 2
    if not cuda:
        # Before any kernel module is imported: triton.jit reads it when a kernel is defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from ckbert.kernels.backend import triton_unavailable_reason

    device = torch.device("cuda" if cuda else "cpu")
    triton_ok = triton_unavailable_reason()
    gpu = torch.cuda.get_device_name(device) if cuda else None
    peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if gpu and k in gpu), None)
    print(f"device: {gpu or 'CPU (smoke: timings are not GPU numbers)'}; torch {torch.__version__}; "
          f"triton: {'ok' if triton_ok is None else triton_ok}"
          f"{'' if cuda else ' [interpreter]' if os.environ.get('TRITON_INTERPRET') == '1' else ''}; "
          f"MFU peak: {f'{peak_tflops:.0f} TFLOP/s bf16' if peak_tflops else 'unknown card, MFU not reported'}")
    dtype = torch.bfloat16 if cuda else torch.float32  # the interpreter has no bf16 matmul
    t0 = time.perf_counter()
    rows: list[Row] = []
    if not args.skip_kernels:
        rows += bench_kernels(args, device, dtype, triton_ok)
    if not args.skip_models:
        rows += bench_models(args, device, triton_ok, peak_tflops)
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        record = {"device": gpu or "cpu", "argv": sys.argv, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
