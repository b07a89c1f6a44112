"""The ablation's masking strategies (masking.strategy) on real prepared rows: equal budgets, the
right unit (single tokens vs whole words), markers only where LMLM puts them."""

from __future__ import annotations

import numpy as np
import pytest

from ckbert.collator import PretrainCollator
from ckbert.config import load_dataclass
from ckbert.data_prep.dataset import open_prepared
from ckbert.errors import UserError
from ckbert.train_config import CMRMConfig, MaskingConfig

STRATEGIES = ("random_token", "whole_word", "lmlm")


@pytest.fixture(scope="module")
def rows(small_prepared):
    manifest, dataset, kg, tok = open_prepared(small_prepared)
    n = min(64, len(dataset))
    cols = dataset[:n]
    return manifest, tok, [(0, i, {k: cols[k][i] for k in cols}) for i in range(n)]


def collate(rows, strategy: str, seed: int = 0):
    manifest, tok, items = rows
    coll = PretrainCollator(tok, manifest, None, MaskingConfig(strategy=strategy), CMRMConfig(enabled=False),
                            max_length=64, seed=seed)
    return coll(items), items


def per_row_targets(batch) -> np.ndarray:
    length = batch["input_ids"].shape[1]
    return np.bincount(batch["mlm_positions"].numpy() // length, minlength=batch["input_ids"].shape[0])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budget_is_the_same_for_every_strategy(rows, strategy):
    batch, items = collate(rows, strategy)
    budget = np.array([max(1, round(0.15 * len(r["input_ids"]))) for _, _, r in items])
    got = per_row_targets(batch)
    if strategy == "random_token":
        assert (got == budget).all()
    else:  # whole words fill the budget as far as word lengths allow, never beyond it (words mode: no markers)
        assert (got <= budget).all() and got.sum() >= 0.9 * budget.sum()


def test_random_token_ignores_word_boundaries(rows):
    batch, items = collate(rows, "random_token")
    length = batch["input_ids"].shape[1]
    partial = 0
    for pos in batch["mlm_positions"].numpy():
        b, t = divmod(int(pos), length)
        wid = np.asarray(items[b][2]["word_ids"])
        same = np.flatnonzero(wid == wid[t - 1])  # t - 1: [CLS] shifts the row by one
        targets = set((batch["mlm_positions"].numpy()[batch["mlm_positions"].numpy() // length == b] % length) - 1)
        partial += not set(same.tolist()) <= targets
    assert partial > 0  # some multi-token word is only partly masked: single tokens, not words


@pytest.mark.parametrize("strategy", ["whole_word", "lmlm"])
def test_word_strategies_mask_whole_words(rows, strategy):
    batch, items = collate(rows, strategy)
    length = batch["input_ids"].shape[1]
    pos = batch["mlm_positions"].numpy()
    for b, (_, _, row) in enumerate(items):
        wid = np.asarray(row["word_ids"])
        targets = pos[pos // length == b] % length - 1
        masked_words = set(wid[targets].tolist())
        assert set(np.flatnonzero(np.isin(wid, list(masked_words))).tolist()) == set(targets.tolist())


def test_strategies_draw_different_targets_from_the_same_seed(rows):
    a, _ = collate(rows, "whole_word")
    c, _ = collate(rows, "lmlm")
    assert not np.array_equal(a["mlm_positions"].numpy(), c["mlm_positions"].numpy())


def test_unknown_strategy_is_a_config_error():
    from ckbert.train_config import PretrainConfig

    with pytest.raises(UserError, match="strategy"):
        load_dataclass(PretrainConfig, {"data": {"prepared": "x"}, "masking": {"strategy": "span"}}, source="t.yaml")
