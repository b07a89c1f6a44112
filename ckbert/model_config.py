"""Model configuration: the `ModelConfig` dataclass and the size presets in `configs/model/`.

A config is YAML data parsed by `ckbert.config.load_dataclass` (unknown keys and wrong types are
one-line `UserError`s). `vocab_size: null` means "take it from the tokenizer of the prepared
dataset"; `resolve_vocab_size` fills it in (rounded up to `vocab_multiple`, e.g. 128 for huge,
as the released CKBERT-huge pads 21,130 to 21,248) before the model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ckbert.config import load_dataclass, read_yaml
from ckbert.errors import UserError

# configs/model/<name>.yaml at the repository root (the package is installed editable).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "model"
SIZES = ("tiny", "base", "large", "huge")

# layout -> (HF model_type, HF masked-LM class); the export writes these into config.json.
HF_NAMES: dict[str, tuple[str, str]] = {
    "post_ln": ("bert", "BertForMaskedLM"),
    "pre_ln": ("megatron-bert", "MegatronBertForMaskedLM"),
}


@dataclass
class ModelConfig:
    """Hyper-parameters of the encoder; field names follow HF `BertConfig` where they exist."""

    vocab_size: int | None = None  # null: from the tokenizer (see resolve_vocab_size)
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: Literal["gelu", "gelu_new"] = "gelu"  # exact erf GELU / tanh approximation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    layout: Literal["post_ln", "pre_ln"] = "post_ln"  # post_ln = HF bert, pre_ln = HF megatron-bert
    vocab_multiple: int = 1  # vocab_size is padded up to a multiple of this
    # Which implementation of the fused ops (ckbert.kernels) to use; changes no parameter or file.
    kernels: Literal["auto", "torch", "triton"] = "auto"

    def validate(self) -> None:
        positive = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "vocab_multiple")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError("layer_norm_eps and initializer_range must be > 0")
        if self.vocab_size is not None:
            if self.vocab_size < 1:
                raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
            if self.vocab_size % self.vocab_multiple:
                raise ValueError(
                    f"vocab_size {self.vocab_size} is not a multiple of vocab_multiple {self.vocab_multiple}"
                )
            if not 0 <= self.pad_token_id < self.vocab_size:
                raise ValueError(f"pad_token_id {self.pad_token_id} outside the vocabulary")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def hf_model_type(self) -> str:
        return HF_NAMES[self.layout][0]

    @property
    def hf_architecture(self) -> str:
        return HF_NAMES[self.layout][1]


def load_model_config(name_or_path: str | Path, overrides: dict | None = None) -> ModelConfig:
    """`tiny`/`base`/`large`/`huge` or a YAML path -> validated `ModelConfig`."""
    text = str(name_or_path)
    path = CONFIG_DIR / f"{text}.yaml" if text in SIZES else Path(text)
    if text not in SIZES and not path.exists() and path.suffix not in (".yaml", ".yml") and "/" not in text:
        raise UserError(f"unknown model size {text!r} (known sizes: {', '.join(SIZES)}; or a model YAML path)")
    data = read_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return load_dataclass(ModelConfig, data, source=path)


def model_config_from_dict(data: dict, source: str | Path | None = None) -> ModelConfig:
    """A `ModelConfig` from plain data (e.g. the `model` section of a trainer state)."""
    return load_dataclass(ModelConfig, dict(data), source=source)


def resolve_vocab_size(config: ModelConfig, tokenizer_size: int) -> ModelConfig:
    """Fill in `vocab_size: null` from the tokenizer (padded to `vocab_multiple`), or check that an
    explicit size holds every token id of the tokenizer."""
    if config.vocab_size is None:
        m = config.vocab_multiple
        return dataclasses.replace(config, vocab_size=-(-tokenizer_size // m) * m)
    if config.vocab_size < tokenizer_size:
        raise UserError(
            f"model vocab_size {config.vocab_size} is smaller than the tokenizer's {tokenizer_size} tokens"
        )
    return config


def count_parameters(config: ModelConfig) -> int:
    """Unique parameters of `CKBertForPreTraining(config)` (decoder weight tied to the embeddings)."""
    if config.vocab_size is None:
        raise ValueError("vocab_size is not resolved")
    h, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    emb = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h  # attn, ffn, two LayerNorms
    final_ln = 2 * h  # post-LN: embeddings LayerNorm; pre-LN: bert.encoder.ln
    head = (h * h + h) + 2 * h + config.vocab_size  # transform dense + LayerNorm + output bias
    return emb + n * per_layer + final_ln + head
