"""`ckbert plan`: predict per-GPU memory and the largest micro-batch before a run is tried.

    ckbert plan --config configs/model/huge.yaml --gpus 1 --gpu-mem 80
    ckbert plan --config configs/pretrain/base.yaml --gpus 8 --gpu-mem 40

`--config` is a model config (`configs/model/*.yaml`) or a pretraining recipe (then its model,
sequence length, CMRM sizes, micro-batch and precision are used). The model is analytic, counted
from what `ckbert.model` keeps alive during a step; every term is printed so a user can see
which one decides.

Per GPU, for P parameters (`ckbert.model_config.count_parameters`), world size N (FSDP shards by
N, DDP and a single GPU do not):
- parameters 4P, gradients 4P, AdamW exp_avg + exp_avg_sq 8P bytes (fp32 master weights; FSDP
  divides all three by N; `cpu_offload` moves them to host memory);
- weight copies: bf16 autocast caches a 2-byte copy of every linear weight until the end of the
  forward; each non-checkpointed layer also keeps its concatenated q/k/v weight ([3H, H]) for
  backward. FSDP in bf16 instead holds the gathered bf16 root, up to three gathered layers
  (current, prefetched, last) and one layer's unsharded gradients;
- activations per token and layer, the tensors autograd saves in `ckbert.model` (torch backend),
  bf16 autocast: 20H + 6F bytes (bf16 copies of the inputs of q/k/v and FFN-in, q/k/v, the SDPA
  output, the two fp32 LayerNorm inputs; the fp32 GELU input and its bf16 output), fp32: 32H + 8F;
  plus 4 bytes x heads (SDPA log-sum-exp), 16 (LayerNorm statistics) and, with dropout, 2H (masks).
  Fused attention (flash / memory-efficient SDPA) is assumed: no [L, L] term;
- activation checkpointing keeps only a checkpointed layer's inputs (post-LN: the fp32 hidden
  state, 4H; pre-LN: the pending sublayer output and the fp32 residual stream) and rebuilds one
  layer at a time in backward;
- tokens per sequence: the sequence plus the CMRM sample pass (mentions x (1 + negatives) x
  sample length), the MLM head on the predicted positions only;
- 1.5 GiB for the CUDA context, cuBLAS workspaces and NCCL buffers, and 5% of the card kept free
  for allocator fragmentation (assumptions, not measured here).
Gradients are freed after every step, so the peak is the larger of the start of backward (all saved
activations, the root's gradients, one layer's backward working set) and the optimizer step
(all gradients, one parameter-sized AdamW temporary).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ckbert.config import check_number, read_yaml
from ckbert.errors import UserError
from ckbert.model_config import ModelConfig, count_parameters, load_model_config

GIB = 1 << 30
CUDA_OVERHEAD = int(1.5 * GIB)
FRAGMENTATION = 0.05
DEFAULT_VOCAB = 21130  # Chinese BERT vocabulary + [dep] + [sdp], for configs whose vocab is null
# Sanity bounds of the command line (a typo, not a real cluster or card, beyond them).
MAX_GPUS = 100_000
MIN_GPU_MEM_GIB, MAX_GPU_MEM_GIB = 0.5, 16_384


@dataclass(frozen=True)
class Workload:
    """What one sequence of a micro-batch costs, besides the model itself."""

    seq_len: int = 512
    # tokens per sequence in the CMRM sample pass, an upper bound: the recipe defaults give
    # 4 mentions x (1 positive + 4 negatives) x (16 characters + [CLS]/[SEP]) = 360
    cmrm_tokens: int = 360
    mlm_targets: int = 77  # predicted positions per sequence (15% of 512)
    precision: Literal["fp32", "bf16"] = "bf16"
    dropout: bool = True


@dataclass(frozen=True)
class Setup:
    strategy: Literal["single", "ddp", "fsdp"] = "single"
    world_size: int = 1
    checkpointing: Literal["none", "full", "every_k"] = "none"
    checkpoint_every: int = 2
    cpu_offload: bool = False
    device_overhead: bool = True  # CUDA context + fragmentation margin (off for the CPU comparison)

    def checkpointed(self, layers: int) -> int:
        if self.checkpointing == "none":
            return 0
        if self.checkpointing == "full":
            return layers
        return len(range(0, layers, self.checkpoint_every))


@dataclass
class MemoryEstimate:
    """Bytes on one GPU; `per_sequence` is what each sequence of the micro-batch adds."""

    params: int
    grads: int
    optimizer: int
    weight_copies: int
    fsdp_buffers: int
    optimizer_temp: int
    overhead: int
    per_sequence: int
    first_grads: int = 0  # gradients allocated at the start of backward (tied decoder/embeddings, head)
    micro_batch: int = 1
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def static(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def activations(self) -> int:
        return self.per_sequence * self.micro_batch

    @property
    def peak(self) -> int:
        # Gradients are freed after each step (zero_grad(set_to_none=True)); in backward they grow as
        # activations are freed, so the step peaks at one of two ends:
        forward_backward = (self.params + self.optimizer + self.weight_copies + self.fsdp_buffers
                            + self.activations + self.first_grads)
        optimizer_step = self.static + self.optimizer_temp
        return self.overhead + max(forward_backward, optimizer_step)


@dataclass(frozen=True)
class ParamCounts:
    total: int
    per_layer: int
    linear_weights: int  # weights of the matmuls (autocast casts these), decoder included
    root: int  # embeddings, final/embedding LayerNorm, MLM head: the FSDP root group


def param_counts(config: ModelConfig) -> ParamCounts:
    h, f, n, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
    total = count_parameters(config)
    linear = n * (4 * h * h + 2 * h * f) + h * h + v * h  # layers, head transform, tied decoder
    return ParamCounts(total=total, per_layer=per_layer, linear_weights=linear, root=total - n * per_layer)


def layer_activation_bytes(config: ModelConfig, work: Workload) -> int:
    """Bytes autograd saves per token in one transformer layer (see the module docstring)."""
    h, f = config.hidden_size, config.intermediate_size
    per = (20 * h + 6 * f) if work.precision == "bf16" else (32 * h + 8 * f)
    per += 4 * config.num_attention_heads + 16
    if work.dropout:
        per += 2 * h  # two bool dropout masks (attention dropout stays inside the fused SDPA kernel)
    return per


def layer_input_bytes(config: ModelConfig, work: Workload) -> int:
    """Bytes per token a checkpointed layer keeps: its inputs only."""
    h = config.hidden_size
    if config.layout == "post_ln":
        return 4 * h  # the fp32 LayerNorm output of the previous layer
    return (2 if work.precision == "bf16" else 4) * h + 4 * h  # pending sublayer output + fp32 residual


def estimate(config: ModelConfig, work: Workload, setup: Setup, micro_batch: int = 1) -> MemoryEstimate:
    """Predicted per-GPU memory for one training step at `micro_batch` sequences per GPU."""
    if config.vocab_size is None:
        config = replace(config, vocab_size=DEFAULT_VOCAB)
    counts = param_counts(config)
    h, n, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    bf16 = work.precision == "bf16"
    shard = setup.world_size if setup.strategy == "fsdp" else 1
    on_gpu = 0 if setup.cpu_offload else 1
    p = math.ceil(counts.total / shard)
    params, grads, optim = 4 * p * on_gpu, 4 * p * on_gpu, 8 * p * on_gpu
    optimizer_temp = 4 * p * on_gpu  # foreach AdamW: sqrt(exp_avg_sq) for all parameters at once

    k = setup.checkpointed(n)
    kept_qkv_layers = (n - k) + (1 if k else 0)  # plus the one being recomputed
    weight_copies = fsdp_buffers = 0
    if setup.strategy == "fsdp":
        pb = 2 if bf16 else 4  # gathered parameter dtype (MixedPrecisionPolicy param_dtype)
        # gathered root + 3 gathered layers; unsharded grads of the root and of one layer (+ fp32 copy)
        fsdp_buffers = pb * counts.root + 3 * pb * counts.per_layer + (pb + 4) * (counts.root + counts.per_layer)
        weight_copies = kept_qkv_layers * 3 * h * h * pb
    elif bf16:
        weight_copies = 2 * (counts.linear_weights - n * 3 * h * h) + kept_qkv_layers * 3 * h * h * 2
    else:
        weight_copies = kept_qkv_layers * 3 * h * h * 4  # the fp32 concatenation of q/k/v weights

    tokens = work.seq_len + work.cmrm_tokens
    per_layer = layer_activation_bytes(config, work)
    stored = (n - k) * per_layer + k * layer_input_bytes(config, work)
    embed = (4 + (1 if work.dropout else 0) + 4) * h  # embedding LayerNorm input, mask, final hidden
    # backward: one rebuilt layer (checkpointing) and the gradients of one layer's activations
    backward_work = (per_layer if k else 0) + 16 * h
    head = work.mlm_targets * ((12 if bf16 else 16) * h + 4 * v + 4 * v)  # saved log-softmax + its grad
    per_seq = tokens * (stored + embed + backward_work) + head
    overhead = CUDA_OVERHEAD if setup.device_overhead else 0
    breakdown = {"encoder_stored": tokens * stored, "embeddings": tokens * embed,
                 "backward_working_set": tokens * backward_work, "mlm_head": head}
    return MemoryEstimate(params=params, grads=grads, optimizer=optim, weight_copies=weight_copies,
                          fsdp_buffers=fsdp_buffers, optimizer_temp=optimizer_temp, overhead=overhead,
                          per_sequence=per_seq, first_grads=4 * math.ceil(counts.root / shard) * on_gpu,
                          micro_batch=micro_batch, breakdown=breakdown)


def max_micro_batch(config: ModelConfig, work: Workload, setup: Setup, gpu_mem_gib: float) -> int:
    """The largest micro-batch whose predicted peak fits in `gpu_mem_gib` (0: not even one)."""
    budget = gpu_mem_gib * GIB * (1 - FRAGMENTATION if setup.device_overhead else 1)
    one = estimate(config, work, setup, 1)
    if one.peak > budget:
        return 0
    zero = replace(one, micro_batch=0)
    return int((budget - zero.peak) // one.per_sequence) if one.per_sequence else 10**9


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 per non-embedding parameter
    plus attention scores and values, 12 x layers x hidden x seq_len (Kaplan et al. 2020; the MFU
    convention of PaLM, appendix B). The MLM head runs on ~15% of tokens and is left out."""
    h, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = n * (4 * h * h + 2 * h * f)
    return 6.0 * dense + 12.0 * n * h * seq_len


# Dense bf16 peak FLOP/s of one GPU (vendor data sheets), matched against the device name in order.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H20", 148e12), ("A100", 312e12),
    ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a GPU name (`torch.cuda.get_device_name`); None when unknown (and on CPU)."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def mfu(tokens_per_s: float, config: ModelConfig, seq_len: int, world_size: int, peak: float) -> float:
    """Model FLOPs utilisation of the whole job: achieved training FLOP/s over world_size x peak."""
    return tokens_per_s * flops_per_token(config, seq_len) / (world_size * peak)


def _load(path: str) -> tuple[ModelConfig, Workload, int | None, str]:
    """A model config, or a pretraining recipe (model + workload + micro-batch)."""
    data = read_yaml(path)
    if "data" not in data and "train" not in data:
        config = load_model_config(path)
        seq = min(Workload.seq_len, config.max_position_embeddings)
        work = Workload(seq_len=seq, mlm_targets=math.ceil(0.15 * seq))
        return config, work, None, "model config; workload: defaults"
    from ckbert.train_config import load_pretrain_config

    recipe = load_pretrain_config(path)
    config = load_model_config(recipe.model)
    seq = recipe.data.max_length or config.max_position_embeddings
    cmrm = recipe.cmrm
    cmrm_tokens = cmrm.mentions_per_sequence * (1 + cmrm.negatives) * (cmrm.sample_chars + 2) if cmrm.enabled else 0
    precision = "fp32" if recipe.train.precision == "fp32" else "bf16"
    work = Workload(seq_len=seq, cmrm_tokens=cmrm_tokens, mlm_targets=math.ceil(recipe.masking.rate * seq),
                    precision=precision,
                    dropout=config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0)
    return config, work, recipe.train.batch_size, f"recipe (model {recipe.model})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ckbert plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="model config YAML or pretraining recipe")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs in the job (world size)")
    parser.add_argument("--gpu-mem", type=float, required=True, help="memory per GPU in GiB (an 80 GB card: 79)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: recipe or 512)")
    args = parser.parse_args(argv)
    check_number("--gpus", args.gpus, low=1, high=MAX_GPUS)
    check_number("--gpu-mem", args.gpu_mem, low=MIN_GPU_MEM_GIB, high=MAX_GPU_MEM_GIB)
    check_number("--seq-len", args.seq_len, low=1)
    if not Path(args.config).is_file():
        raise UserError("config file not found", path=args.config)
    config, work, recipe_batch, source = _load(args.config)
    if args.seq_len is not None:
        work = replace(work, seq_len=args.seq_len, mlm_targets=math.ceil(0.15 * args.seq_len))
    if work.seq_len > config.max_position_embeddings:
        given = "--seq-len" if args.seq_len is not None else "the recipe's data.max_length"
        raise UserError(f"{given} {work.seq_len} exceeds the model's max_position_embeddings "
                        f"{config.max_position_embeddings}", path=args.config)
    vocab_note = "" if config.vocab_size is not None else f" (vocab_size null: {DEFAULT_VOCAB} assumed)"
    counts = param_counts(replace(config, vocab_size=config.vocab_size or DEFAULT_VOCAB))
    print(f"{args.config}: {source}{vocab_note}")
    print(f"model: {config.num_hidden_layers} layers x {config.hidden_size} hidden, FFN {config.intermediate_size}, "
          f"{config.layout}, {counts.total / 1e6:.1f}M parameters")
    print(f"workload: seq_len {work.seq_len} + {work.cmrm_tokens} CMRM sample tokens per sequence, "
          f"{work.mlm_targets} MLM targets, {work.precision}, dropout {'on' if work.dropout else 'off'}")
    print(f"per GPU: {args.gpu_mem:g} GiB, {args.gpus} GPU(s); GiB below\n")
    strategies = ["single"] if args.gpus == 1 else ["ddp"]
    strategies.append("fsdp")
    setups = [Setup(strategy=s, world_size=args.gpus, checkpointing=ac) for s in strategies for ac in ("none", "full")]
    setups.append(Setup(strategy="fsdp", world_size=args.gpus, checkpointing="full", cpu_offload=True))
    rows = []
    for setup in setups:
        name = setup.strategy + ("+offload" if setup.cpu_offload else "")
        rows.append((name, setup.checkpointing, estimate(config, work, setup, 1),
                     max_micro_batch(config, work, setup, args.gpu_mem)))
    header = f"{'strategy':12} {'ckpt':5} {'params':>7} {'grads':>7} {'adamw':>7} {'copies':>7} {'act/seq':>8} {'max micro-batch':>16}"
    print(header)
    for strategy, ac, one, best in rows:
        print(f"{strategy:12} {ac:5} {one.params / GIB:7.2f} {one.grads / GIB:7.2f} {one.optimizer / GIB:7.2f} "
              f"{(one.weight_copies + one.fsdp_buffers) / GIB:7.2f} {one.per_sequence / GIB:8.3f} {best:16d}")
    print()
    fits = [(s, ac, b) for s, ac, _, b in rows if b >= 1]
    if not fits:
        print(f"verdict: does NOT fit on {args.gpus} x {args.gpu_mem:g} GiB even at micro-batch 1 "
              "(try more GPUs with fsdp, or parallel.cpu_offload)")
        return 0
    for s, ac, b in fits:
        print(f"verdict: fits with strategy {s}, activation checkpointing {ac}, up to micro-batch {b}")
    print("(+offload: parallel.cpu_offload, states in host memory: ~16 bytes x parameters / GPUs of host RAM per GPU)")
    if recipe_batch is not None:
        ok = any(b >= recipe_batch for _, _, b in fits)
        print(f"recipe micro-batch {recipe_batch}: {'fits' if ok else 'too large'} with at least one setting above")
    print("note: predictions; GPU peak memory has not been measured against them yet (docs/distributed.md)")
    return 0
