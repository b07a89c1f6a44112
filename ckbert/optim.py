"""Optimizers and the learning-rate schedule for pretraining (method.md, section 3).

AdamW (torch) or LAMB (below, for large batches), both without weight decay on biases and
LayerNorm weights; a linear warm-up followed by a linear decay to zero over the run's budget
(steps, wall time or tokens: `BudgetSchedule`).
"""

from __future__ import annotations

import torch
from torch import nn

from ckbert.train_config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases and LayerNorm weights (1-d) do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".ln.weight") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning", Algorithm 2).

    Adam moments with bias correction, decoupled weight decay inside the update, and a per-tensor
    trust ratio ||w|| / ||update|| (1 where either norm is 0) that scales the step of each layer.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                grad = p.grad.float()
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1**t)
                v_hat = state["exp_avg_sq"] / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p.float(), alpha=group["weight_decay"])
                w_norm, u_norm = p.float().norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **adamw_impl(groups))


def adamw_impl(groups: list[dict]) -> dict[str, bool]:
    """The fastest AdamW implementation the parameters allow: `fused` (one kernel over all tensors;
    measured 31 ms against 195 ms per tiny CPU step, issue 13) for plain CPU/CUDA float tensors,
    else `foreach` (e.g. FSDP2's DTensor parameters). Both give the plain loop's update (tested)."""
    params = [p for g in groups for p in g["params"]]
    plain = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in params)
    return {"fused": True} if plain else {"foreach": True}


class BudgetSchedule:
    """Linear warm-up, then linear decay to zero, over the run's budget (method.md, section 3).

    The budget is whichever limit the recipe sets: optimizer steps (`train.max_steps`), wall time
    (`train.max_minutes`) and tokens (`train.max_tokens`); progress p is the largest share used of
    any of them, so warm-up and decay are fractions of the budget and a run that stops on its time
    box or token budget still ends annealed (small-budget recipes schedule by elapsed time: Geiping
    and Goldstein, "Cramming", 2022; Izsak et al., 2021). A step-bounded run (no other budget) gets
    the plain step schedule. Before update s (0-based): p = max(s / S, t / T, n / N); the factor is
    min(1, p' / w) during warm-up (p' the same with s + 1, so the first update is not at lr 0) and
    (1 - p) / (1 - w) after it. The run stops when p reaches 1.

    `state_dict` holds the step, elapsed seconds and tokens (plain numbers), so a resumed run goes
    on where the schedule stood, wall time included.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_ratio: float, max_steps: int,
                 max_seconds: float = 0.0, max_tokens: int = 0):
        self.optimizer = optimizer
        self.warmup_ratio = warmup_ratio
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.max_tokens = max_tokens
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps, self.elapsed_s, self.tokens = 0, 0.0, 0
        self._apply()

    def progress(self, next_step: bool = False) -> float:
        shares = [(self.steps + int(next_step)) / self.max_steps]
        if self.max_seconds > 0:
            shares.append(self.elapsed_s / self.max_seconds)
        if self.max_tokens > 0:
            shares.append(self.tokens / self.max_tokens)
        return max(shares)

    def factor(self) -> float:
        w, p = self.warmup_ratio, self.progress()
        if p < w:
            return min(1.0, self.progress(next_step=True) / w)
        return max(0.0, (1.0 - p) / (1.0 - w)) if w < 1 else 0.0

    def done(self) -> bool:
        return self.progress() >= 1.0

    def _apply(self) -> None:
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def advance(self, elapsed_s: float, tokens: int = 0) -> None:
        """Account one optimizer step, the wall time and tokens since the last call; set the next lr."""
        self.steps += 1
        self.elapsed_s += elapsed_s
        self.tokens += tokens
        self._apply()

    def step(self) -> None:  # the LRScheduler interface (step-bounded use)
        self.advance(0.0)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "elapsed_s": self.elapsed_s, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.elapsed_s, self.tokens = int(state["steps"]), float(state["elapsed_s"]), int(state["tokens"])
        self._apply()


def ramped_accum(grad_accum: int, ramp: float, progress: float) -> int:
    """Micro-batches in the next optimizer step under a batch ramp: 1 at the start, rising linearly
    with the budget's progress to `grad_accum` at `ramp` (0 = `grad_accum` throughout)."""
    if ramp <= 0:
        return grad_accum
    return 1 + int((grad_accum - 1) * min(1.0, progress / ramp))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_ratio: float, max_steps: int,
                    max_seconds: float = 0.0, max_tokens: int = 0) -> BudgetSchedule:
    return BudgetSchedule(optimizer, warmup_ratio, max_steps, max_seconds, max_tokens)
