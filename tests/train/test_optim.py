"""Optimizer groups, LAMB and the schedule."""

from __future__ import annotations

import pytest
import torch

from ckbert.optim import Lamb, build_scheduler, param_groups


def test_no_decay_on_bias_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.01)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_lamb_step_by_hand_and_converges():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    p.grad = torch.tensor([1.0, -2.0])
    opt.step()
    # step 1: m_hat = g, v_hat = g^2 -> update = sign(g); trust = ||w|| / ||update|| = 5 / sqrt(2)
    want = torch.tensor([3.0, 4.0]) - 0.1 * (5 / 2**0.5) * torch.tensor([1.0, -1.0])
    assert torch.allclose(p.detach(), want, atol=1e-6)
    # minimises a quadratic
    w = torch.nn.Parameter(torch.tensor([2.0, -3.0, 1.0]))
    opt = Lamb([w], lr=0.05, weight_decay=0.0)
    for _ in range(300):
        opt.zero_grad()
        ((w - 0.5) ** 2).sum().backward()
        opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 0.5), atol=0.05)


def test_warmup_then_linear_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, 0.2, 10)  # 2 warm-up steps
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_adamw_uses_the_fused_implementation_with_the_plain_update():
    from ckbert.optim import adamw_impl, build_optimizer
    from ckbert.train_config import OptimConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    ref.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    fast = build_optimizer(model, cfg)
    assert fast.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups(ref, 0.1), lr=1e-2, betas=tuple(cfg.betas), eps=cfg.eps,
                              foreach=False, fused=False)
    x = torch.randn(8, 6)
    for _ in range(4):
        for m, opt in ((model, fast), (ref, plain)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert adamw_impl([{"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)]}]) == {"foreach": True}


def test_batch_ramp_grows_the_step_from_one_micro_batch_to_grad_accum():
    from ckbert.optim import ramped_accum

    assert [ramped_accum(4, 0.0, p) for p in (0.0, 0.5, 1.0)] == [4, 4, 4]  # no ramp: the full batch
    assert [ramped_accum(4, 0.5, p) for p in (0.0, 0.1, 0.2, 0.34, 0.49, 0.5, 0.9)] == [1, 1, 2, 3, 3, 4, 4]
