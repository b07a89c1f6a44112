"""KG store build, lookup, CSR adjacency, sampling, bad triples, kg-stats; on a real CMeKG slice."""

from __future__ import annotations

import json
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


def test_several_files_merge_into_one_graph_with_named_parts(tmp_path, cmekg_triples):
    """Two files build the same arrays as their concatenation; meta.json names each file's relations,
    and `relation_graph` labels every relation (inverse ones too) by its file, "a+b" where shared."""
    rels = sorted({r for _, r, _ in cmekg_triples})
    first = [x for x in cmekg_triples if x[1] in rels[: len(rels) // 2]]
    second = [x for x in cmekg_triples if x[1] not in rels[: len(rels) // 2]] + first[:3]  # 3 repeats
    shared = {r for _, r, _ in first[:3]}
    files = []
    for name, rows in (("med", first), ("loc", second)):
        files.append(tmp_path / f"{name}.tsv")
        files[-1].write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in rows), encoding="utf-8")
    (tmp_path / "both.tsv").write_text(files[0].read_text("utf-8") + files[1].read_text("utf-8"), encoding="utf-8")
    tally = Tally()
    merged = build_store_from_file(files, None, tmp_path / "kg", tally=tally, inverse_edges=True)
    one = build_store_from_file(tmp_path / "both.tsv", None, tmp_path / "kg1", tally=Tally(), inverse_edges=True)
    assert merged.fingerprint == one.fingerprint and tally.skipped["kg_duplicate"] == 3
    assert "graphs" not in one.meta and one.relation_graph(0) is None
    assert set(merged.meta["graphs"]) == {"med", "loc"}
    labels = {merged.relation_name(r): merged.relation_graph(r) for r in range(merged.num_relations)}
    for r in rels[: len(rels) // 2]:
        assert labels[r] == labels[r + "_inv"] == ("loc+med" if r in shared else "med")
    for r in rels[len(rels) // 2 :]:
        assert labels[r] == labels[r + "_inv"] == "loc"
    with pytest.raises(UserError, match="two KG files named 'med'"):
        build_store_from_file([files[0], files[0]], None, tmp_path / "kg2", tally=Tally())


@pytest.mark.parametrize("codec, suffix", [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_triple_files(tmp_path, kg_tsv, codec, suffix):
    """`.tsv.gz` / `.csv.zst`: the same store as the plain file; the format and the graph name come
    from the name without the compression suffix."""
    import pyarrow as pa

    def compress(src, name):
        path = tmp_path / (name + suffix)
        with pa.output_stream(str(path), compression=codec) as out:
            out.write(src.read_bytes())
        return path

    plain = build_store_from_file(kg_tsv, None, tmp_path / "plain", tally=Tally())
    assert build_store_from_file(compress(kg_tsv, "g.tsv"), None, tmp_path / "z", tally=Tally()).fingerprint \
        == plain.fingerprint
    csv_file = tmp_path / "g.csv"
    csv_file.write_text("实体,属性,值\n" + "".join(",".join(f'"{x}"' for x in ln.split("\t")) + "\n"
                                                for ln in kg_tsv.read_text("utf-8").splitlines()), encoding="utf-8")
    assert build_store_from_file(compress(csv_file, "g.csv"), None, tmp_path / "c", tally=Tally()).fingerprint \
        == plain.fingerprint
    other = tmp_path / "other.tsv"
    other.write_text("甲\t乙\t丙\n", encoding="utf-8")
    merged = build_store_from_file([compress(kg_tsv, "cmekg.tsv"), other], None, tmp_path / "m", tally=Tally())
    assert set(merged.meta["graphs"]) == {"cmekg", "other"}


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


@pytest.fixture(scope="module")
def inv_store(tmp_path_factory, kg_tsv):
    return build_store_from_file(kg_tsv, None, tmp_path_factory.mktemp("inv") / "kg", tally=Tally(), inverse_edges=True)


def test_inverse_edges_give_tail_only_entities_facts(store, inv_store, cmekg_triples):
    rng = np.random.default_rng(0)
    heads_of = defaultdict(set)
    for h, r, t in cmekg_triples:
        heads_of[t].add((f"{r}_inv", h))
    tail_only = [n for n in heads_of if store.lookup(n) is not None and len(store.neighbors(store.lookup(n))[1]) == 0]
    assert len(tail_only) > 50, "the CMeKG slice should have many tail-only entities"
    for name in tail_only[:100]:
        i, j = store.lookup(name), inv_store.lookup(name)
        assert sample_positive(store, i, rng) is None
        rel, tail = inv_store.neighbors(j)
        got = {(inv_store.relation_name(int(r)), inv_store.entity_name(int(t))) for r, t in zip(rel, tail, strict=True)}
        assert got == heads_of[name]
        r, t = sample_positive(inv_store, j, rng)
        assert (inv_store.relation_name(r), inv_store.entity_name(t)) in heads_of[name]
    # forward facts are all still there, entity ids unchanged
    assert inv_store.num_entities == store.num_entities
    for i in range(0, store.num_entities, 97):
        fwd = {(store.relation_name(int(r)), int(t)) for r, t in zip(*store.neighbors(i), strict=True)}
        both = {(inv_store.relation_name(int(r)), int(t)) for r, t in zip(*inv_store.neighbors(i), strict=True)}
        assert fwd <= both and all(n.endswith("_inv") for n, _ in both - fwd)


def test_inverse_edges_counted_and_fingerprinted(tmp_path, store, inv_store, kg_tsv):
    meta = inv_store.meta
    assert meta["inverse_edges"] is True and store.meta["inverse_edges"] is False
    assert inv_store.inverse_edges and not store.inverse_edges
    assert meta["inverse"]["triples_before"] == store.num_triples
    assert meta["inverse"]["triples_after"] == inv_store.num_triples == 2 * store.num_triples - meta["inverse"]["merged"]
    names = {inv_store.relation_name(r) for r in range(inv_store.num_relations)}
    assert names == {store.relation_name(r) for r in range(store.num_relations)} | {
        store.relation_name(r) + "_inv" for r in range(store.num_relations)}
    assert inv_store.fingerprint != store.fingerprint
    assert KGStore.open(inv_store.path).fingerprint == inv_store.fingerprint
    tally = Tally()
    slow = build_store(iter_triples(kg_tsv, None, tally), tmp_path / "kg", source=str(kg_tsv), tally=tally,
                       inverse_edges=True)
    assert slow.fingerprint == inv_store.fingerprint


def test_inverse_negatives_exclude_hop1(inv_store):
    rng = np.random.default_rng(1)
    checked = 0
    for i in range(0, inv_store.num_entities, 7):
        hop1, far = _hops(inv_store, i)
        if not far:
            continue
        negs = sample_negatives(inv_store, i, 8, rng)
        assert negs and set(negs) <= far and not set(negs) & hop1 and i not in negs
        checked += 1
        if checked == 40:
            break
    assert checked == 40


def test_inverse_edges_bad_input_and_merge(tmp_path, cmekg_triples):
    (h, r, t), (h2, r2, t2) = cmekg_triples[0], cmekg_triples[1]
    path = tmp_path / "kg.tsv"
    path.write_text(
        f"{h}\t{r}\t{t}\n{h}\t{r}\t{t}\n"  # duplicate
        f"{h2}\t{r2}\n"  # wrong number of columns
        f"\t{r2}\t{t2}\n"  # empty name
        f"{h2}\t{r2}\t{h2}\n"  # self-loop
        f"{t}\t{r}_inv\t{h}\n",  # the input already holds the reverse of the first triple
        encoding="utf-8",
    )
    for fast in (False, True):
        tally = Tally()
        if fast:
            s = build_store_from_file(path, None, tmp_path / "kg", tally=tally, inverse_edges=True)
        else:
            s = build_store(iter_triples(path, None, tally), tmp_path / "kg", source=str(path), tally=tally,
                            inverse_edges=True)
        assert dict(tally.skipped) == {"kg_bad_columns": 1, "kg_empty_name": 1, "kg_self_loop": 1, "kg_duplicate": 1}
        # 2 kept triples -> 4 edges, of which (t, r_inv, h) twice and (h, r_inv_inv, t) once
        assert s.meta["inverse"] == {"suffix": "_inv", "triples_before": 2, "triples_after": 3, "merged": 1}
        assert s.num_triples == 3
        assert {s.relation_name(x) for x in range(s.num_relations)} == {r, f"{r}_inv", f"{r}_inv_inv"}


def test_kg_stats_reports_inverse(store, inv_store, kg_tsv, capsys):
    assert kg_stats.main([str(inv_store.path)]) == 0
    out = capsys.readouterr().out
    assert f"inverse edges: yes ({store.num_triples} triples before, {inv_store.num_triples} after)" in out
    assert kg_stats.main([str(store.path)]) == 0
    assert "inverse edges: no" in capsys.readouterr().out
    assert kg_stats.main([str(kg_tsv), "--kg-inverse-edges", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["inverse_edges"] and stats["triples"] == inv_store.num_triples
    assert stats["entities_with_out_edges"] == inv_store.num_entities
    with pytest.raises(UserError, match="built without inverse edges"):
        kg_stats.main([str(store.path), "--kg-inverse-edges"])
