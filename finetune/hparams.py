"""Per-task fine-tuning hyperparameters: `configs/finetune/<task>.yaml` parsed into a dataclass.

The YAML holds the CLUE baseline recipe for the task (clue.md); the command line changes any field
with ``key=value`` (for example ``max_steps=20 seeds=[1,2,3]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ckbert.config import apply_overrides, load_dataclass, read_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "finetune"


@dataclass
class FinetuneConfig:
    max_length: int = 128  # tokens per input, [CLS]/[SEP] included
    learning_rate: float = 2e-5
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs (smoke runs, tests)
    batch_size: int = 32
    eval_batch_size: int = 64
    gradient_accumulation: int = 1
    warmup: float = 0.0  # fraction of the optimisation steps
    weight_decay: float = 0.01
    seeds: list[int] = field(default_factory=lambda: [42])
    eval_steps: int = 0  # evaluate and keep the best dev checkpoint every N steps; 0 = every epoch
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    doc_stride: int = 128  # CMRC2018: tokens shared by consecutive windows of a long context
    max_answer_length: int = 50  # CMRC2018: longest predicted answer, in tokens
    max_train_examples: int = 0  # 0 = all; the first N examples in file order
    max_eval_examples: int = 0  # 0 = all (dev and labelled test)
    predict_test: bool = True  # write the submission file from the test split
    dataloader_workers: int = 0

    def validate(self) -> None:
        if self.max_length < 16:
            raise ValueError(f"max_length must be >= 16, got {self.max_length}")
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise ValueError("learning_rate and epochs must be positive")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.gradient_accumulation < 1:
            raise ValueError("batch sizes and gradient_accumulation must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if self.doc_stride < 1 or self.max_answer_length < 1:
            raise ValueError("doc_stride and max_answer_length must be >= 1")
        if self.max_train_examples < 0 or self.max_eval_examples < 0 or self.eval_steps < 0:
            raise ValueError("max_*_examples and eval_steps must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (train for `epochs`) or >= 1, got {self.max_steps}")
        if any(not 0 <= seed < 2**32 for seed in self.seeds):
            raise ValueError(f"seeds must be in [0, 2**32), got {self.seeds}")
        if self.weight_decay < 0 or self.dataloader_workers < 0:
            raise ValueError("weight_decay and dataloader_workers must be >= 0")


def load_config(task: str, config_file: Path | None, overrides: list[str]) -> FinetuneConfig:
    """The task's YAML (or `config_file`), then ``key=value`` overrides."""
    path = config_file if config_file is not None else CONFIG_DIR / f"{task}.yaml"
    data = apply_overrides(read_yaml(path), overrides)
    return load_dataclass(FinetuneConfig, data, source=path)
