"""Typed pretraining configuration (`ckbert pretrain --config FILE`).

YAML is data: `load_pretrain_config` parses it into these dataclasses with
`ckbert.config.load_dataclass`, so an unknown key or a wrong type is a one-line error naming the
file. Defaults follow the reference recipe (method.md, sections 1-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ckbert.config import apply_overrides, load_dataclass, read_yaml
from ckbert.parallel import ParallelConfig  # the `parallel:` section (docs/distributed.md)


@dataclass
class DataConfig:
    prepared: str  # prepared dataset directory (`ckbert prepare --out`)
    max_length: int = 0  # tokens per sequence incl. [CLS]/[SEP]/markers; 0 = manifest seq_len + 2
    eval_rows: int = 256  # last rows of the dataset, held out from training, for the eval MLM loss
    num_workers: int = 0  # DataLoader worker processes (each maps the KG store; nothing is copied)
    pad_to_multiple_of: int = 8

    def validate(self) -> None:
        if self.max_length < 0 or (0 < self.max_length < 8):
            raise ValueError(f"data.max_length must be 0 (auto) or at least 8, got {self.max_length}")
        if self.eval_rows < 0 or self.num_workers < 0 or self.pad_to_multiple_of < 1:
            raise ValueError("data.eval_rows and data.num_workers must be >= 0, pad_to_multiple_of >= 1")


@dataclass
class MaskingConfig:
    """LMLM (method.md, section 1)."""

    rate: float = 0.15  # share of a sequence's tokens that become prediction targets (markers extra)
    # "lmlm": the linguistic masking below; the ablation's baselines (bench/ablation.py), same budget:
    # "whole_word" = random whole words only, "random_token" = random single tokens (BERT); no markers
    strategy: Literal["lmlm", "whole_word", "random_token"] = "lmlm"
    dep_share: float = 0.3  # of the budget, for DEP arcs (mode "arcs")
    sdp_share: float = 0.3  # of the budget, for SDP arcs (mode "arcs"); the rest: random whole words
    # mode "words" (no parser): share of the budget for entity mentions and content words; the
    # rest goes to random whole words, as in mode "arcs" (method.md, sec. 1: 40% random)
    priority_share: float = 0.6
    markers: bool = True  # insert [dep]/[sdp] around whitelisted relations (mode "arcs")
    mask_prob: float = 0.8  # of the targets: [MASK]
    random_prob: float = 0.1  # of the targets: a random token (the rest stay unchanged)
    # mode "words": POS tags (by prefix) whose words are masked before random words
    content_pos_prefixes: list[str] = field(default_factory=lambda: ["n", "v", "a", "j"])

    def validate(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"masking.rate must be in (0, 1), got {self.rate}")
        if self.dep_share < 0 or self.sdp_share < 0 or self.dep_share + self.sdp_share > 1.0:
            raise ValueError("masking.dep_share and sdp_share must be >= 0 and sum to at most 1")
        if not 0.0 <= self.priority_share <= 1.0:
            raise ValueError(f"masking.priority_share must be in [0, 1], got {self.priority_share}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise ValueError("masking.mask_prob and random_prob must be >= 0 and sum to at most 1")


@dataclass
class CMRMConfig:
    """Contrastive multi-hop relation modeling (method.md, section 2)."""

    enabled: bool = True
    weight: float = 0.09  # lambda in L_mlm + lambda * L_cmrm
    temperature: float = 0.5
    negatives: int = 4  # K negatives per mention, entities at hop 2..3
    max_hop: int = 3
    mentions_per_sequence: int = 4  # cap: keeps the sample texts a bounded share of the encoder pass
    sample_chars: int = 16  # each sample text ("mention + tail") is cut to this many characters
    relation_in_text: bool = False  # render "mention relation tail" instead of "mention tail"
    # Also score every other sample text of the batch (texts whose tail is a 1-hop neighbour of the
    # mention's entity, e.g. another mention of the same entity's positive, are left out).
    in_batch_negatives: bool = False
    # Held-out heads (the relation probe's generalisation test): this share of KG entities, fixed by
    # name (ckbert.data_prep.kg_store.heldout_entity), is never an anchor nor a positive's tail, so
    # their triples stay unseen by CMRM. Recorded in the checkpoint and the exported config.json.
    heldout_heads: float = 0.0
    # What a sample text's embedding averages: "text" = every real token ([CLS] and [SEP] included,
    # the reference's choice), "tail" = the tokens after the mention's name (the part that differs
    # between a mention's samples).
    pool: Literal["text", "tail"] = "text"
    # Where the anchor comes from: "masked" = the mention's states in the MLM pass as masked (its
    # words may be [MASK]), "unmasked" = the mention's tokens are never MLM targets, so the anchor
    # always sees the mention.
    anchor: Literal["masked", "unmasked"] = "masked"
    # How a sample text reads: "mention_tail" = the mention's entity name, then the tail (the
    # reference); "tail" = the tail alone, so that a sample cannot be matched to its anchor by the
    # name it starts with (with in-batch negatives, every other mention's samples start otherwise).
    render: Literal["mention_tail", "tail"] = "mention_tail"

    def validate(self) -> None:
        if self.weight < 0 or self.temperature <= 0:
            raise ValueError("cmrm.weight must be >= 0 and cmrm.temperature > 0")
        if self.negatives < (0 if self.in_batch_negatives else 1) or self.mentions_per_sequence < 1 \
                or self.sample_chars < 2:
            raise ValueError("cmrm.negatives must be >= 1 (>= 0 with in_batch_negatives), mentions_per_sequence "
                             ">= 1, sample_chars >= 2")
        if self.max_hop not in (2, 3):
            raise ValueError("cmrm.max_hop must be 2 or 3")
        if not 0.0 <= self.heldout_heads < 1.0:
            raise ValueError(f"cmrm.heldout_heads must be in [0, 1), got {self.heldout_heads}")


@dataclass
class OptimConfig:
    name: Literal["adamw", "lamb"] = "adamw"
    lr: float = 5e-5
    weight_decay: float = 1e-4  # not applied to biases and LayerNorm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    warmup_ratio: float = 0.1  # linear warm-up over this share of the budget, then linear decay to 0
    clip_norm: float = 1.0  # 0 = no clipping

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("optim.lr and optim.eps must be > 0, weight_decay >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_ratio <= 1 or self.clip_norm < 0:
            raise ValueError("optim.warmup_ratio must be in [0, 1] and clip_norm >= 0")


@dataclass
class TrainConfig:
    batch_size: int = 32  # sequences per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    # Batch ramp: over this share of the budget the optimizer batch grows linearly from one
    # micro-batch to grad_accum of them (0 = the full batch from the first step; Cramming, 2022).
    batch_ramp: float = 0.0
    max_steps: int = 1000  # optimizer steps (epochs repeat with new masks until reached)
    # Budgets: the run stops (with a checkpoint) at whichever is spent first, and the lr schedule
    # runs over that budget (ckbert.optim.BudgetSchedule), so a time-boxed run ends annealed.
    max_minutes: float = 0.0  # wall time of the training loop (resumes add up); 0 = no limit
    max_tokens: int = 0  # real (non-pad) tokens of the main batches, all ranks; 0 = no limit
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile of the training step's forward module, in place (parameter names and the
    # checkpoint format do not change): "none", "inductor" (GPU speed), "aot_eager" (tracing only)
    compile: Literal["none", "inductor", "aot_eager"] = "none"
    # Dropout during pretraining only (null = the model config's); the exported config keeps the
    # model's own values for fine-tuning. Small-budget recipes train without it (Cramming).
    dropout: float | None = None
    # Start the MLM decoder bias at the log unigram frequencies of the training rows (from scratch
    # only): the model begins at the unigram baseline instead of at log(V).
    unigram_decoder_bias: bool = False
    log_every: int = 10
    eval_every: int = 100  # 0 = only at the end
    save_every: int = 200  # 0 = only at the end
    keep_checkpoints: int = 2
    max_bad_steps: int = 3  # abort after this many non-finite steps in a row

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "keep_checkpoints", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.save_every < 0 or self.max_minutes < 0 or self.max_tokens < 0:
            raise ValueError("train.eval_every, save_every, max_minutes and max_tokens must be >= 0")
        if not 0.0 <= self.batch_ramp <= 1.0:
            raise ValueError(f"train.batch_ramp must be in [0, 1], got {self.batch_ramp}")
        if self.batch_ramp > 0 and self.grad_accum < 2:
            raise ValueError("train.batch_ramp needs train.grad_accum >= 2 (the batch ramps up to grad_accum micro-batches)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"train.dropout must be null or in [0, 1), got {self.dropout}")


@dataclass
class PretrainConfig:
    data: DataConfig
    model: str = "tiny"  # a size name (configs/model/<size>.yaml) or a model YAML path
    init_from: str | None = None  # local Hugging Face BERT-family checkpoint folder
    out: str = "runs/pretrain"
    seed: int = 0
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    cmrm: CMRMConfig = field(default_factory=CMRMConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, and validate it."""
    data: dict[str, Any] = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    # Relative paths in a recipe (data.prepared, out, init_from) are relative to the working
    # directory, like the CLI's own paths.
    return load_dataclass(PretrainConfig, data, source=path)
