"""The fine-tuning loop: AdamW + linear warm-up/decay, dev evaluation, best-dev weights kept.

A plain PyTorch loop over a Hugging Face `AutoModelFor*` model. (The HF Trainer needs the
`accelerate` package, which the project does not depend on.) Every `eval_every` optimisation
steps, and at the end, the model is scored on dev; the weights of the best dev score are kept
in CPU memory and restored when training ends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """CUDA when present, else CPU; decided once per run and printed by the caller."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def predict(model: Any, dataset: Any, collator: Callable, batch_size: int, precision: str = "fp32") -> Any:
    """Model outputs over `dataset` in order: logits [N, ...] or (start [N, L], end [N, L]) for spans.

    Token logits of different batches are padded to the longest batch with -100 along L.
    """
    device = next(model.parameters()).device
    model.eval()
    chunks: list[list[np.ndarray]] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v.to(device) for k, v in batch.items() if k not in _LABEL_KEYS}
            with _autocast(device, precision):
                out = model(**inputs)
            parts = [out.start_logits, out.end_logits] if hasattr(out, "start_logits") else [out.logits]
            chunks.append([p.float().cpu().numpy() for p in parts])
    columns = [_concat([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    return tuple(columns) if len(columns) > 1 else columns[0]


_LABEL_KEYS = ("labels", "start_positions", "end_positions")


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if arrays[0].ndim == 3:  # token logits [B, L, C]: L differs between batches
        width = max(a.shape[1] for a in arrays)
        arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=-100.0) for a in arrays]
    return np.concatenate(arrays, axis=0)


@dataclass
class History:
    steps: int = 0
    best_step: int = 0
    best_score: float = -math.inf
    evals: list[dict[str, Any]] = field(default_factory=list)  # {step, loss, dev metrics}


def train(
    model: Any,
    dataset: Any,
    collator: Callable,
    cfg: Any,
    seed: int,
    evaluate: Callable[[Any], dict[str, float]],
    metric: str,
) -> History:
    """Train `model` in place and leave it holding the best-dev weights."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=collator, generator=generator)
    steps_per_epoch = max(1, len(loader) // cfg.gradient_accumulation)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    eval_every = cfg.eval_steps or steps_per_epoch
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]  # no decay on biases and LayerNorm
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    warmup = int(cfg.warmup * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    running, since, micro = 0.0, 0, 0  # summed loss and optimisation steps since the last evaluation

    def checkpoint() -> None:
        nonlocal best_state, running, since
        scores = evaluate(model)
        history.evals.append({"step": history.steps, "train_loss": running / max(1, since), **scores})
        print(f"  step {history.steps}/{total}: train loss {history.evals[-1]['train_loss']:.4f}, "
              f"dev {metric} {scores[metric]:.2f}", flush=True)
        running, since = 0.0, 0
        if scores[metric] > history.best_score:
            history.best_score, history.best_step = scores[metric], history.steps
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        model.train()

    model.train()
    while history.steps < total:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with _autocast(device, cfg.precision):
                loss = model(**batch).loss / cfg.gradient_accumulation
            scaler.scale(loss).backward()
            running += loss.item()  # summed over the micro-batches: the step's mean loss
            micro += 1
            if micro % cfg.gradient_accumulation:
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            history.steps += 1
            since += 1
            if history.steps % eval_every == 0 or history.steps == total:
                checkpoint()
            if history.steps >= total:
                break
    assert best_state is not None  # the last step always evaluates
    model.load_state_dict(best_state)
    return history
