"""`ckbert plan`: parameter split, and predicted peak memory against a measured CPU peak.

What the CPU measurement can show: the PyTorch profiler (`profile_memory=True`) records every
allocation and free of PyTorch's CPU allocator, which does not cache, so the running sum of its
events is exactly the bytes held by live tensors; its maximum over two training steps is the peak
the plan predicts (without the CUDA context and fragmentation margin, which only a GPU has). It
checks the parameter/gradient/AdamW terms, the activations autograd saves with and without
checkpointing, and the weight copies of bf16 autocast, for the same model code a GPU runs. It
cannot check the CUDA kernels' own workspaces, flash attention's choice of saved tensors on a GPU,
the caching allocator's fragmentation or NCCL buffers: the `gpu` test does that where a GPU is.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ckbert import plan
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import ModelConfig, load_model_config
from ckbert.parallel import ParallelConfig, apply_activation_checkpointing

# Measured on this machine: predictions are 0-4% above the measured peak, and 20-22% above for
# pre-LN with full checkpointing (the plan keeps both checkpointed inputs of every layer alive for
# the whole backward). Under-prediction is what would make a run fail, so it is allowed only
# within the few percent of small tensors the plan leaves out (index/label tensors, LayerNorm
# statistics of the head); over-prediction up to 25%.
LOW, HIGH = 0.97, 1.25


@pytest.mark.parametrize("size", ["tiny", "base", "large", "huge"])
def test_parameter_split_matches_the_model(size):
    config = load_model_config(size)
    if config.vocab_size is None:
        config = ModelConfig(**{**config.__dict__, "vocab_size": plan.DEFAULT_VOCAB})
    with torch.device("meta"):
        model = CKBertForPreTraining(config)
    counts = plan.param_counts(config)
    layer0 = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    in_layers = sum(p.numel() for p in model.bert.encoder.layer.parameters())
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.per_layer == layer0
    assert counts.root == counts.total - in_layers
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert counts.linear_weights == linear + config.vocab_size * config.hidden_size  # + tied decoder


def _measured_peak(config: ModelConfig, ac: str, precision: str, batch: int, seq: int, targets: int) -> int:
    """Peak bytes of live tensors from model creation through two AdamW steps (profiler events)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    pos = torch.cat([i * seq + torch.randperm(seq, generator=g)[:targets] for i in range(batch)])
    labels = ids.view(-1)[pos]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = CKBertForPreTraining(config).train()
        apply_activation_checkpointing(model, ParallelConfig(activation_checkpointing=ac))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model.mlm_loss(model.encode(ids, mask), pos, labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize(("layout", "ac", "precision"), [
    ("post_ln", "none", "fp32"), ("post_ln", "full", "bf16"), ("pre_ln", "none", "bf16"), ("pre_ln", "full", "fp32"),
])
def test_predicted_peak_matches_measured_cpu_peak(layout, ac, precision):
    torch.manual_seed(0)
    batch, seq, targets = 4, 48, 8
    # Dropout off: CPU SDPA then takes its fused (flash) kernel, as a GPU does; with dropout the CPU
    # falls back to the math kernel, which stores [L, L] attention probabilities a GPU never keeps.
    config = ModelConfig(vocab_size=256, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=192, max_position_embeddings=seq, layout=layout,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, kernels="torch")
    measured = _measured_peak(config, ac, precision, batch, seq, targets)
    work = plan.Workload(seq_len=seq, cmrm_tokens=0, mlm_targets=targets, precision=precision, dropout=False)
    predicted = plan.estimate(config, work, plan.Setup(checkpointing=ac, device_overhead=False), batch).peak
    assert LOW <= predicted / measured <= HIGH, f"predicted {predicted} vs measured {measured}"


def test_huge_fits_one_80gb_gpu_with_checkpointing(capsys):
    from ckbert.plan import main

    assert main(["--config", "configs/model/huge.yaml", "--gpus", "1", "--gpu-mem", "79"]) == 0
    out = capsys.readouterr().out
    assert "1257.4M parameters" in out
    assert "verdict: fits with strategy single, activation checkpointing full" in out
    huge = load_model_config("huge")
    full = plan.max_micro_batch(huge, plan.Workload(), plan.Setup(checkpointing="full"), 79)
    none = plan.max_micro_batch(huge, plan.Workload(), plan.Setup(checkpointing="none"), 79)
    assert full > none >= 1
    # 16 GiB cannot hold 16 bytes x 1.26B of fp32 weights, gradients and AdamW states
    assert plan.max_micro_batch(huge, plan.Workload(), plan.Setup(checkpointing="full"), 16) == 0
    # FSDP over 8 GPUs divides those states by 8
    assert plan.max_micro_batch(huge, plan.Workload(), plan.Setup("fsdp", 8, "full"), 16) >= 1


def test_bad_config_path_is_a_user_error():
    from ckbert.errors import UserError
    from ckbert.plan import main

    with pytest.raises(UserError, match="config file not found"):
        main(["--config", "no/such.yaml", "--gpus", "1", "--gpu-mem", "80"])


@pytest.mark.gpu
def test_predicted_peak_matches_measured_gpu_peak():
    """On a GPU: a few bf16 steps of huge (>= 70 GiB cards) or base, full checkpointing."""
    device = torch.device("cuda")
    total_gib = torch.cuda.get_device_properties(device).total_memory / plan.GIB
    config = load_model_config("huge" if total_gib >= 70 else "base")
    batch, seq, targets = 8, 512, 77
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model = CKBertForPreTraining(config).to(device).train()
    apply_activation_checkpointing(model, ParallelConfig(activation_checkpointing="full"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, config.vocab_size, (batch, seq), device=device)
    pos = torch.cat([i * seq + torch.randperm(seq, device=device)[:targets] for i in range(batch)])
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.mlm_loss(model.encode(ids, torch.ones_like(ids)), pos, ids.view(-1)[pos])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated(device) - base
    work = plan.Workload(seq_len=seq, cmrm_tokens=0, mlm_targets=targets, precision="bf16", dropout=True)
    predicted = plan.estimate(config, work, plan.Setup(checkpointing="full", device_overhead=False), batch).peak
    print(f"GPU peak {measured / plan.GIB:.2f} GiB, predicted {predicted / plan.GIB:.2f} GiB ({config.num_hidden_layers} layers)")
    assert 0.9 <= predicted / measured <= 1.3


def test_flops_and_mfu_by_hand():
    base = load_model_config("base")
    dense = 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # 84,934,656 non-embedding matmul weights
    assert plan.flops_per_token(base, 512) == 6 * dense + 12 * 12 * 768 * 512
    # 1e5 tokens/s on 8 H100s at 566 MFLOP/token: 5.66e13 / (8 x 9.89e14) = 0.72%
    assert plan.mfu(1e5, base, 512, 8, plan.peak_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(
        1e5 * plan.flops_per_token(base, 512) / (8 * 989e12))
    assert plan.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert plan.peak_flops("cpu") is None
