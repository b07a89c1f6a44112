"""KG store build, lookup, CSR adjacency, sampling, bad triples, kg-stats; on a real CMeKG slice."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from ckbert.data_prep import kg_stats
from ckbert.data_prep.kg_store import (
    KGStore,
    build_store,
    build_store_from_file,
    iter_triples,
    sample_negatives,
    sample_positive,
)
from ckbert.data_prep.readers import Tally

from ckbert.errors import UserError


@pytest.fixture(scope="module")
def store(tmp_path_factory, kg_tsv):
    return build_store_from_file(kg_tsv, None, tmp_path_factory.mktemp("s") / "kg", tally=Tally())


def test_python_and_arrow_paths_agree(tmp_path, store, kg_tsv):
    tally = Tally()
    slow = build_store(iter_triples(kg_tsv, None, tally), tmp_path / "kg", source=str(kg_tsv), tally=tally)
    assert slow.fingerprint == store.fingerprint


def test_store_matches_source(store, cmekg_triples):
    facts = defaultdict(set)
    for h, r, t in cmekg_triples:
        facts[h].add((r, t))
    assert store.num_triples == len(set(cmekg_triples))
    assert store.num_entities == len({x for h, _, t in cmekg_triples for x in (h, t)})
    for h in list(facts)[:200]:
        i = store.lookup(h)
        assert i is not None and store.entity_name(i) == h
        rel, tail = store.neighbors(i)
        got = {(store.relation_name(int(r)), store.entity_name(int(t))) for r, t in zip(rel, tail, strict=True)}
        assert got == facts[h]
    assert store.lookup("不存在的实体名称") is None
    assert isinstance(store.tail, np.memmap) and isinstance(store.indptr, np.memmap)
    assert store.description(0) == ""


def test_reopen_and_fingerprint(store):
    again = KGStore.open(store.path)
    assert again.fingerprint == store.fingerprint and again.num_triples == store.num_triples


def _hops(store, i):
    hop1 = set(store.neighbors(i)[1].tolist())
    frontier, far = hop1, set()
    for _ in range(2):
        nxt = set()
        for n in frontier:
            nxt |= set(store.neighbors(n)[1].tolist())
        far |= nxt
        frontier = nxt
    return hop1, far - hop1 - {i}


def test_sampling_respects_hops(store):
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(store.num_entities):
        hop1, far = _hops(store, i)
        if not far:
            continue
        pos = sample_positive(store, i, rng)
        rel, tail = store.neighbors(i)
        assert pos is not None and pos[1] in set(tail.tolist())
        negs = sample_negatives(store, i, 4, rng)
        assert len(negs) == min(4, len(far)) and len(set(negs)) == len(negs)
        assert set(negs) <= far
        checked += 1
        if checked == 30:
            break
    assert checked == 30
    # the hub path: frontiers larger than `cap` edges are sampled, results stay within hops 2..3
    for i in range(store.num_entities):
        hop1, far = _hops(store, i)
        if len(far) > 20:
            negs = sample_negatives(store, i, 8, rng, cap=5)
            assert 0 < len(negs) <= 8 and set(negs) <= far
            break
    else:
        raise AssertionError("the CMeKG slice has no entity with more than 20 hop-2/3 entities")
    leaf = int(np.flatnonzero(store.degrees() == 0)[0])
    assert sample_positive(store, leaf, rng) is None and sample_negatives(store, leaf, 4, rng) == []


def test_csv_with_header_and_bad_rows(tmp_path, cmekg_triples):
    (h, r, t), (h2, r2, t2) = cmekg_triples[0], cmekg_triples[1]
    path = tmp_path / "ownthink.csv"
    path.write_text(
        "实体,属性,值\n"
        f"{h},{r},{t}\n"
        f"{h},{r},{t}\n"  # duplicate
        f"{h2},{r2}\n"  # wrong number of columns
        f",{r2},{t2}\n"  # empty name
        f"{h2},{r2},{h2}\n"  # self-loop
        f'"{h2}",{r2},"{t2}"\n',
        encoding="utf-8",
    )
    fingerprints = set()
    for fast in (False, True):
        tally = Tally()
        if fast:
            s = build_store_from_file(path, None, tmp_path / "kg", tally=tally)
        else:
            s = build_store(iter_triples(path, None, tally), tmp_path / "kg", source=str(path), tally=tally)
        assert s.num_triples == 2
        assert dict(tally.skipped) == {"kg_bad_columns": 1, "kg_empty_name": 1, "kg_self_loop": 1, "kg_duplicate": 1}
        assert tally.first["kg_bad_columns"] == "ownthink.csv:4"
        assert s.meta["skipped"]["kg_duplicate"] == 1
        fingerprints.add(s.fingerprint)
    assert len(fingerprints) == 1


def test_tsv_without_valid_rows_is_an_error(tmp_path):
    path = tmp_path / "kg.csv.txt"
    path.write_text("实体,属性,值\n头,关系,尾\n", encoding="utf-8")
    tally = Tally()
    with pytest.raises(UserError, match="no valid triples"):
        build_store(iter_triples(path, "tsv", tally), tmp_path / "kg", source=str(path), tally=tally)
    assert tally.skipped["kg_bad_columns"] == 2
    tally = Tally()
    with pytest.raises(UserError, match="no valid triples"):
        build_store_from_file(path, "tsv", tmp_path / "kg", tally=tally)
    assert tally.skipped["kg_bad_columns"] == 2


def test_invalid_utf8_in_kg(tmp_path, cmekg_triples):
    h, r, t = cmekg_triples[0]
    path = tmp_path / "kg.tsv"
    path.write_bytes(f"{h}\t{r}\t{t}\n".encode() + b"\xff\tx\ty\n")
    with pytest.raises(UserError, match="kg.tsv:2: invalid UTF-8"):
        build_store_from_file(path, None, tmp_path / "kg", tally=Tally())


def test_descriptions(tmp_path, cmekg_triples):
    h, r, t = cmekg_triples[0]
    path = tmp_path / "kg.tsv"
    path.write_text(f"{h}\t{r}\t{t}\n{h}\t描述\t{h}是一种药品\n", encoding="utf-8")
    tally = Tally()
    s = build_store(iter_triples(path, None, tally), tmp_path / "kg", source="x", tally=tally, desc_relation="描述")
    assert s.num_triples == 1 and s.description(s.lookup(h)) == f"{h}是一种药品"
    s2 = build_store_from_file(path, None, tmp_path / "kg2", tally=Tally(), desc_relation="描述")
    assert s2.fingerprint == s.fingerprint


def test_kg_stats_cli(store, capsys):
    assert kg_stats.main([str(store.path)]) == 0
    out = capsys.readouterr().out
    assert f"triples {store.num_triples}" in out and "bytes per triple" in out


def test_damaged_store(tmp_path, store):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(store.path, bad)
    (bad / "tail.npy").unlink()
    with pytest.raises(UserError, match="missing tail.npy"):
        KGStore.open(bad)
