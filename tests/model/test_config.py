"""Model configs: the presets load, sizes match the documented counts, bad input is one line."""

from __future__ import annotations

import pytest

from ckbert.errors import UserError
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import SIZES, count_parameters, load_model_config, resolve_vocab_size

# Unique parameter counts written in docs/model.md (tiny with a 21,130-token vocabulary).
EXPECTED = {"tiny": 8_787_850, "base": 102_291_850, "large": 325_547_658, "huge": 1_257_392_896}


@pytest.mark.parametrize("size", SIZES)
def test_presets_load_and_count(size):
    config = load_model_config(size)
    if config.vocab_size is None:
        config = resolve_vocab_size(config, 21130)
    assert count_parameters(config) == EXPECTED[size]


def test_count_parameters_matches_module(small_config, layout):
    config = small_config(layout)
    model = CKBertForPreTraining(config)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(config)


def test_huge_is_megatron_layout():
    config = load_model_config("huge")
    assert (config.layout, config.hf_architecture, config.hidden_act) == (
        "pre_ln", "MegatronBertForMaskedLM", "gelu_new")
    assert config.vocab_size == 21248 and config.vocab_size % 128 == 0


def test_vocab_from_tokenizer_is_padded(small_config):
    config = small_config(vocab_size=None, vocab_multiple=128)
    assert resolve_vocab_size(config, 21130).vocab_size == 21248
    with pytest.raises(UserError, match="smaller than the tokenizer"):
        resolve_vocab_size(small_config(vocab_size=97), 100)
    with pytest.raises(ValueError, match="vocab_size is null"):
        CKBertForPreTraining(config)


@pytest.mark.parametrize(
    "text, message",
    [
        ("hidden_size: 64\nnum_layers: 2\n", "unknown config key num_layers"),
        ("hidden_size: '64'\n", "hidden_size: expected an integer"),
        ("layout: sandwich\n", "layout: expected one of"),
        ("hidden_size: 60\nnum_attention_heads: 7\n", "not divisible"),
        ("vocab_size: 100\nvocab_multiple: 128\n", "not a multiple"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        load_model_config(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model_config(tmp_path / "nope.yaml")


def test_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads `1e-6` as a string (YAML 1.1); the loader takes it as the number it spells,
    # in files and in `key=value` overrides alike, and still refuses text that is not a number.
    path = tmp_path / "m.yaml"
    path.write_text("layer_norm_eps: 1e-6\n", encoding="utf-8")
    assert load_model_config(path).layer_norm_eps == 1e-6
    path.write_text("layer_norm_eps: small\n", encoding="utf-8")
    with pytest.raises(UserError, match="layer_norm_eps: expected a number, got 'small'"):
        load_model_config(path)
