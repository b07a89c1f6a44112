"""The shuffled-graph control keeps the graph's shape and loses its facts (data_prep/kg_control.py)."""

from collections import Counter

import numpy as np
import pytest

from ckbert.cli import main as cli
from ckbert.data_prep.kg_control import shuffle_tails, shuffled_tails
from ckbert.data_prep.kg_store import KGStore, build_store
from ckbert.data_prep.readers import Tally


def edges(store: KGStore) -> list[tuple[int, int, int]]:
    head = np.repeat(np.arange(store.num_entities), store.degrees())
    return list(zip(head.tolist(), np.asarray(store.rel).tolist(), np.asarray(store.tail).tolist(), strict=True))


def test_the_shuffled_cmekg_slice_keeps_degrees_relations_and_tails_but_not_facts(store, tmp_path):
    control = shuffle_tails(store, tmp_path / "kg", seed=0)
    true, wrong = edges(store), edges(control)
    assert control.meta["control"]["dropped_edges"] == 0
    assert control.num_entities == store.num_entities and control.num_relations == store.num_relations
    assert [control.entity_name(i) for i in range(0, store.num_entities, 97)] == \
        [store.entity_name(i) for i in range(0, store.num_entities, 97)]
    assert [control.relation_name(r) for r in range(store.num_relations)] == \
        [store.relation_name(r) for r in range(store.num_relations)]
    # out-degree per (head, relation) and in-degree per (relation, tail): the same counters
    assert Counter((h, r) for h, r, _ in wrong) == Counter((h, r) for h, r, _ in true)
    assert Counter((r, t) for _, r, t in wrong) == Counter((r, t) for _, r, t in true)
    assert np.array_equal(control.degrees(), store.degrees())
    # no self-loop, no repeated edge, the CSR order (head, relation, tail) kept
    assert all(h != t for h, _, t in wrong) and len(set(wrong)) == len(wrong)
    assert wrong == sorted(wrong)
    # the facts are gone: only edges that a popular tail makes likely by chance survive
    kept = len(set(true) & set(wrong))
    assert kept == control.meta["control"]["true_edges_kept"]
    assert kept / len(true) < 0.15, kept / len(true)
    assert control.fingerprint != store.fingerprint
    assert control.meta["control"]["shuffled_from"] == store.fingerprint


def test_the_shuffle_is_seeded(store, tmp_path):
    a = shuffle_tails(store, tmp_path / "a", seed=3)
    b = shuffle_tails(store, tmp_path / "b", seed=3)
    c = shuffle_tails(store, tmp_path / "c", seed=4)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_a_relation_with_one_possible_arrangement_cannot_be_shuffled_into_a_self_loop():
    # relation 0: a->b, b->a. The only other arrangement of its tails is a->a, b->b (two self-loops),
    # which the repair swaps back: the edges stay, and stay true.
    head = np.array([0, 1, 2, 2], dtype=np.int32)
    rel = np.array([0, 0, 1, 1], dtype=np.int32)
    tail = np.array([1, 0, 3, 4], dtype=np.int32)
    for seed in range(20):
        new, keep, _ = shuffled_tails(head, rel, tail, seed)
        assert keep.all()
        assert sorted(zip(head.tolist(), new.tolist(), strict=True)) == [(0, 1), (1, 0), (2, 3), (2, 4)]


def test_a_graph_whose_only_valid_arrangement_is_the_true_one_comes_back_whole(tmp_path):
    # tails of r: {乙, 甲, 甲} for heads 甲, 乙, 丙; 甲 cannot take 甲 (a self-loop), so the true
    # arrangement is the only one without a self-loop, and every seed's repair must find it
    store = build_store([("甲", "r", "乙"), ("乙", "r", "甲"), ("丙", "r", "甲")], tmp_path / "kg", source="t",
                        tally=Tally())
    for seed in range(10):
        control = shuffle_tails(store, tmp_path / f"c{seed}", seed=seed)
        assert control.meta["control"]["dropped_edges"] == 0
        assert edges(control) == edges(store)


@pytest.mark.slow
def test_kg_shuffle_writes_a_prepared_copy_that_opens(tmp_path, build_small_prepared):
    from ckbert.data_prep.dataset import open_prepared

    src = build_small_prepared(tmp_path, n_lines=60, n_subjects=40, seq_len=62, vocab_size=1200)
    out = tmp_path / "control"
    assert cli(["kg-shuffle", "--prepared", str(src), "--out", str(out), "--seed", "1"]) == 0
    manifest, dataset, kg, _ = open_prepared(out)
    m0, d0, kg0, _ = open_prepared(src)
    assert len(dataset) == len(d0) and dataset[0]["ent_id"] == d0[0]["ent_id"]  # the same linked ids
    assert manifest["kg"]["control"]["seed"] == 1 and kg.fingerprint != kg0.fingerprint
    assert np.array_equal(kg.degrees(), kg0.degrees())
    assert cli(["kg-shuffle", "--prepared", str(src), "--out", str(out)]) == 2  # refuses a non-empty --out
