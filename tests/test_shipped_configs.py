"""Every YAML shipped in configs/ parses into its dataclass (unknown keys and wrong types fail)."""

from pathlib import Path

import pytest

from ckbert.finetune.hparams import load_config
from ckbert.model_config import count_parameters, load_model_config, resolve_vocab_size
from ckbert.train_config import load_pretrain_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_pretrain_recipe_parses(path):
    cfg = load_pretrain_config(path)
    assert cfg.model in {"tiny", "base", "large", "huge"}
    model = load_model_config(cfg.model)
    if model.vocab_size is None:  # tiny takes its vocabulary from the prepared dataset's tokenizer
        model = resolve_vocab_size(model, 21130)
    assert count_parameters(model) > 0


@pytest.mark.parametrize("path", sorted((CONFIGS / "finetune").glob("*.yaml")), ids=lambda p: p.stem)
def test_finetune_recipe_parses(path):
    cfg = load_config(path.stem, path, [])
    assert cfg is not None
