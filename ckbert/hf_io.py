"""Hugging Face import/export helpers (design.md, section 5)."""

from __future__ import annotations

from typing import Any

from ckbert.model_config import ModelConfig


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The HF config.json content for `config` (model_type bert or megatron-bert)."""
    return {
        "architectures": [config.hf_architecture],
        "model_type": config.hf_model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": True,
    }
