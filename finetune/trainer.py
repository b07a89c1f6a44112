"""Training with the Hugging Face `Trainer`: per-task arguments, dev evaluation, best-dev weights.

`TrainingArguments` come from the task's `FinetuneConfig` (configs/finetune/<task>.yaml). The
model is scored on dev every `eval_steps` optimisation steps (every epoch when 0) and at the last
step with the task's own metric; the Trainer keeps the best-scoring checkpoint
(`load_best_model_at_end`, `metric_for_best_model`) and restores it when training ends.

Checkpoints hold the model only (`save_only_model`: no optimizer, scheduler or RNG pickles), in
safetensors, at most the best and the latest, in a scratch folder that is deleted after training:
the Trainer also writes `training_args.bin`, a pickle, into every checkpoint, and nothing of it
is wanted once the best weights are back in the model.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckbert.errors import UserError

# Trainer log keys that describe the evaluation run itself, not the model's quality.
_EVAL_BOOKKEEPING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
_LABEL_COLUMNS = ("labels", "start_positions", "end_positions")


@dataclass
class History:
    steps: int = 0
    best_step: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)  # {step, train_loss, dev_loss, dev metrics}


def steps_per_epoch(n_examples: int, cfg: Any) -> int:
    """Optimisation steps in one pass over the training set, counted as the Trainer counts them."""
    batches = math.ceil(n_examples / cfg.batch_size)
    return max(1, math.ceil(batches / cfg.gradient_accumulation))


def set_seed(seed: int) -> None:
    """Python, NumPy and torch seeds (transformers.set_seed), set before the task head is drawn."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def device_name() -> str:
    """Where the Trainer will run: CUDA when present, else the CPU (`use_cpu`)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def training_arguments(cfg: Any, seed: int, work_dir: Path, eval_every: int, metric: str) -> Any:
    """`TrainingArguments` for one seed; CUDA when present, else the CPU, nothing reported anywhere."""
    from transformers import TrainingArguments

    cuda = device_name() == "cuda"
    if cfg.precision == "fp16" and not cuda:
        raise UserError("precision=fp16 needs a CUDA GPU; use precision=fp32 or bf16 on the CPU")
    return TrainingArguments(
        output_dir=str(work_dir),
        use_cpu=not cuda,
        seed=seed,
        data_seed=seed,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        warmup_steps=cfg.warmup,  # a float in [0, 1): fraction of the optimisation steps
        weight_decay=cfg.weight_decay,  # the Trainer exempts biases and LayerNorm weights
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        # "every epoch" is every steps_per_epoch steps, so that the last step is always evaluated too
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        logging_strategy="steps",
        logging_steps=eval_every,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        save_only_model=True,
        save_total_limit=1,  # the Trainer keeps the best checkpoint besides the latest
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_pin_memory=cuda,
    )


def _report_callback(total_hint: str, metric: str) -> Any:
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        """Logs the train loss at the last step too (it is evaluated there) and prints each evaluation."""

        def __init__(self) -> None:
            self.loss: float | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                        **kwargs: Any) -> None:
            loss = f"{self.loss:.4f}" if self.loss is not None else "-"
            score = (metrics or {}).get(f"eval_{metric}", float("nan"))
            print(f"  step {state.global_step}/{state.max_steps}{total_hint}: train loss {loss}, "
                  f"dev {metric} {score:.2f}", flush=True)

    return Report()


def history_from_log(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Trainer's log_history as one record per dev evaluation: {step, train_loss, dev_loss, metrics}."""
    loss_at = {entry["step"]: entry["loss"] for entry in log if "loss" in entry}
    evals = []
    for entry in log:
        if not any(k.startswith("eval_") for k in entry):
            continue
        record: dict[str, Any] = {"step": entry["step"], "train_loss": loss_at.get(entry["step"])}
        for key, value in entry.items():
            if key == "eval_loss":
                record["dev_loss"] = value
            elif key.startswith("eval_") and key not in _EVAL_BOOKKEEPING:
                record[key[len("eval_") :]] = value
        evals.append(record)
    return evals


def fit(
    model: Any,
    train_dataset: Any,
    dev_dataset: Any,
    collator: Callable,
    cfg: Any,
    seed: int,
    dev_metrics: Callable[[Any], dict[str, float]],
    metric: str,
    work_dir: Path,
) -> tuple[Any, History]:
    """Train `model` with the Trainer; returns the Trainer (for predictions) and the history.

    `dev_metrics` maps the model outputs on `dev_dataset` (logits, or (start, end) logits for
    spans, padded along L with -100 between batches) to the task's scores. On return the model
    holds the weights of the best dev evaluation and `work_dir` is gone.
    """
    from transformers import PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    eval_every = cfg.eval_steps or steps_per_epoch(len(train_dataset), cfg)
    shutil.rmtree(work_dir, ignore_errors=True)  # a crashed earlier run's checkpoints
    args = training_arguments(cfg, seed, work_dir, eval_every, metric)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=dev_dataset,
        data_collator=collator,
        compute_metrics=lambda prediction: dev_metrics(prediction.predictions),
        callbacks=[_report_callback("" if cfg.eval_steps else " (dev every epoch)", metric)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every raw log dict; Report prints one line
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint otherwise
    try:
        trainer.train()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    state = trainer.state
    history = History(steps=state.global_step, best_step=state.best_global_step or 0,
                      evals=history_from_log(state.log_history))
    return trainer, history


def predict(trainer: Any, dataset: Any) -> Any:
    """Model outputs over `dataset` in order: logits [N, ...] or (start [N, L], end [N, L]) for spans.

    Label columns are dropped first: with labels the Trainer would also compute a loss and run
    `compute_metrics`, whose decoding belongs to the dev set.
    """
    labels = [c for c in _LABEL_COLUMNS if c in dataset.column_names]
    return trainer.predict(dataset.remove_columns(labels)).predictions
