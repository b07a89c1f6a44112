"""The knowledge probe on the tiny model and a tiny KG store."""

import json

import numpy as np
import pytest
import torch

from ckbert.data_prep.kg_store import KGStore
from ckbert.evaluation.probe import ProbeItem, build_items, main, score_candidates, summarise
from ckbert.hf_load import load_tokenizer


def test_probe_cli_splits_seen_and_held_out(tiny_model, tiny_kg, tmp_path, capsys):
    heads = tmp_path / "heads.txt"
    heads.write_text("感冒\n肺炎\n不在图谱里\n", encoding="utf-8")
    out = tmp_path / "probe.json"
    rc = main(["--model", str(tiny_model), "--kg", str(tiny_kg), "--seen-heads", str(heads), "--k", "3",
               "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["stats"]["seen_heads_not_in_kg"] == 1
    groups = report["groups"]
    assert groups["seen"]["triples"] == 5 and groups["held_out"]["triples"] == 6  # 感冒 3 + 肺炎 2
    for g in groups.values():
        assert g["mean_candidates"] == 4  # each relation has at least 3 other tails
        assert g["chance_accuracy@1"] == pytest.approx(25.0)
        assert g["chance_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
        assert 0.0 <= g["accuracy@1"] <= 100.0 and 0.25 <= g["mrr"] <= 1.0
    assert "| seen | 5 |" in capsys.readouterr().out


def test_distractors_share_the_relation_and_exclude_true_tails(tiny_model, tiny_kg):
    store = KGStore.open(tiny_kg)
    tok = load_tokenizer(tiny_model)
    items = build_items(store, tok, None, k=9, max_triples=100, max_tail_tokens=8, seed=0, stats={})
    symptoms = {"发热", "咳嗽", "胸痛", "腹痛", "多尿", "头晕"}
    for it in items:
        if it.head == "感冒" and it.relation == "症状":
            assert set(it.candidates[1:]) == symptoms - {"发热", "咳嗽"}  # the other true tail is no distractor
        pool = symptoms if it.relation == "症状" else {"布洛芬", "阿莫西林", "奥美拉唑", "二甲双胍", "硝苯地平"}
        assert set(it.candidates) <= pool
    assert build_items(store, tok, None, 9, 100, 8, 0, {}) == items  # seeded: the same items
    assert len(build_items(store, tok, None, 9, 4, 8, 0, {})) == 4  # --max-triples caps


def test_scores_are_masked_log_likelihoods(tiny_model):
    from transformers import AutoModelForMaskedLM

    tok = load_tokenizer(tiny_model)
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_model)).eval()
    item = ProbeItem("感冒", "症状", ["发热", "阿莫西林"], "all")
    mean = score_candidates(model, tok, [item], "{head}的{relation}是{tail}。", "mean", batch_size=8)[0]
    total = score_candidates(model, tok, [item], "{head}的{relation}是{tail}。", "sum", batch_size=1)[0]
    for cand, m, s in zip(item.candidates, mean, total, strict=True):
        ids = tok(cand, add_special_tokens=False)["input_ids"]
        enc = tok("感冒的症状是" + tok.mask_token * len(ids) + "。", return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0], -1)  # [L, V]
        pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
        expected = sum(float(logp[p, t]) for p, t in zip(pos.tolist(), ids, strict=True))
        assert s == pytest.approx(expected, abs=1e-4)
        assert m == pytest.approx(expected / len(ids), abs=1e-4)


def test_ties_are_broken_at_random_in_expectation():
    groups = ["all"] * 3
    report = summarise(groups, [[0.0, -1.0, -2.0], [0.0, 0.0, -2.0], [-3.0, -1.0, -2.0]])["all"]
    assert report["accuracy@1"] == pytest.approx(100 * (1 + 1 / 2 + 0) / 3)
    assert report["mrr"] == pytest.approx((1 + (1 + 1 / 2) / 2 + 1 / 3) / 3)
    flat = summarise(["all"], [[0.5, 0.5, 0.5]])["all"]  # cannot tell them apart: exactly chance
    assert flat["accuracy@1"] == pytest.approx(flat["chance_accuracy@1"]) and flat["mrr"] == pytest.approx(flat["chance_mrr"])


def test_a_frequency_only_scorer_gets_chance_and_inverse_relations_are_not_asked(tiny_model, tmp_path):
    """Popular tails come up as true tails more often than rare ones; distractors as common as the
    true tail (in that relation) make knowing tail frequencies worth exactly chance."""
    from collections import Counter

    from ckbert.data_prep.kg_store import INVERSE_SUFFIX, build_store
    from ckbert.data_prep.readers import Tally

    rng = np.random.default_rng(0)
    tails = ["发热", "咳嗽", "胸痛", "腹痛", "多尿", "头晕", "布洛芬", "阿莫西林"]
    weights = np.array([12, 12, 5, 5, 2, 2, 1, 1], dtype=float)
    triples = set()
    for h in range(40):
        for t in rng.choice(len(tails), size=2, replace=False, p=weights / weights.sum()):
            triples.add((f"病{h}", "症状", tails[t]))
    build_store(sorted(triples), tmp_path / "kg", source="test", tally=Tally(), inverse_edges=True)
    store = KGStore.open(tmp_path / "kg")
    freq = Counter(t for _, _, t in triples)
    stats: dict[str, int] = {}
    items = build_items(store, load_tokenizer(tiny_model), None, k=3, max_triples=1000, max_tail_tokens=8,
                        seed=0, stats=stats)
    assert items and stats["inverse_triples_not_asked"] == len(triples)
    assert not any(it.relation.endswith(INVERSE_SUFFIX) for it in items)
    for it in items:
        assert {freq[c] for c in it.candidates} == {freq[it.candidates[0]]}  # distractors as common as the truth
    assert max(freq[it.candidates[0]] for it in items) > 1  # common tails are asked too, each per triple
    unmatched = sum(n for n in freq.values() if list(freq.values()).count(n) == 1)
    assert stats.get("skipped_no_frequency_match", 0) == unmatched  # a tail without an equally common peer
    report = summarise(["all"] * len(items), [[freq[c] for c in it.candidates] for it in items])["all"]
    assert report["accuracy@1"] == pytest.approx(report["chance_accuracy@1"])
    assert report["mrr"] == pytest.approx(report["chance_mrr"])


def test_prepared_dataset_mentions_are_the_seen_heads(tiny_model, kg_triples, tmp_path, capsys):
    """`--prepared`: the heads linked in a prepared dataset (built by `ckbert prepare`) are `seen`."""
    from ckbert.cli import main as cli_main
    from ckbert.data_prep.kg_store import build_store
    from ckbert.data_prep.readers import Tally

    (tmp_path / "kg.tsv").write_text("".join("\t".join(t) + "\n" for t in kg_triples), encoding="utf-8")
    (tmp_path / "corpus.txt").write_text(
        "感冒/n  和/c  肺炎/n  是/v  常见/a  的/u  病/n  。/w\n医生/n  说/v  感冒/n  要/v  多/a  喝水/v  。/w\n",
        encoding="utf-8",
    )
    prepared = tmp_path / "prepared"
    assert cli_main(["prepare", "--corpus", str(tmp_path / "corpus.txt"), "--format", "pretagged",
                     "--annotator", "pretagged", "--kg", str(tmp_path / "kg.tsv"), "--out", str(prepared),
                     "--build-vocab", "--quiet"]) == 0
    out = tmp_path / "probe.json"
    assert main(["--model", str(tiny_model), "--kg", str(prepared / "kg"), "--prepared", str(prepared),
                 "--k", "3", "--out", str(out)]) == 0
    groups = json.loads(out.read_text())["groups"]
    assert groups["seen"]["triples"] == 5 and groups["held_out"]["triples"] == 6  # 感冒 (3) and 肺炎 (2)
    capsys.readouterr()
    other_kg = tmp_path / "other-kg"
    build_store(kg_triples[:5], other_kg, source="test", tally=Tally())
    assert cli_main(["probe", "--model", str(tiny_model), "--kg", str(other_kg), "--prepared", str(prepared)]) == 2
    assert "built with a different KG" in capsys.readouterr().err


def test_cloze_seen_heads_count_only_training_rows_and_leave_cmrm_held_out_heads_out(kg_triples, tmp_path):
    """A head linked only in held-out rows is not `seen`; a head CMRM held out is in neither group."""
    from ckbert.cli import main as cli_main
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.data_prep.kg_store import KGStore, heldout_entity
    from ckbert.evaluation.probe import seen_heads_from_prepared

    (tmp_path / "kg.tsv").write_text("".join("\t".join(t) + "\n" for t in kg_triples), encoding="utf-8")
    lines = ["医生/n  说/v  感冒/n  要/v  多/a  喝水/v  。/w"] * 11 + ["肺炎/n  是/v  常见/a  的/u  病/n  。/w"]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepared = tmp_path / "prepared"
    assert cli_main(["prepare", "--corpus", str(tmp_path / "corpus.txt"), "--format", "pretagged", "--annotator",
                     "pretagged", "--kg", str(tmp_path / "kg.tsv"), "--out", str(prepared), "--build-vocab",
                     "--seq-len", "14", "--quiet"]) == 0
    _, dataset, _, _ = open_prepared(prepared)
    assert len(dataset) == 12  # one row per line: the last row is the only one naming 肺炎
    store = KGStore.open(prepared / "kg")
    cold, pneumonia = store.lookup("感冒"), store.lookup("肺炎")
    assert cold is not None and pneumonia is not None
    seen, excluded = seen_heads_from_prepared(store, prepared)
    assert {cold, pneumonia} <= seen and not excluded  # every row counts when no split is given
    seen, excluded = seen_heads_from_prepared(store, prepared, train_rows=11)
    assert cold in seen and pneumonia not in seen
    share = next(s for s in (0.1 * i for i in range(1, 10)) if heldout_entity("感冒", s))  # 感冒 held out by CMRM
    seen, excluded = seen_heads_from_prepared(store, prepared, train_rows=11, heldout_share=share)
    assert cold in excluded and cold not in seen


def test_cloze_groups_a_merged_graph_per_graph(tiny_model, tmp_path):
    """A store merged from two files: cloze items are grouped "<graph>: <group>", each graph filled
    up to max_triples on its own (a small graph is not crowded out by a large one)."""
    from ckbert.data_prep.kg_store import build_store_from_file
    from ckbert.data_prep.readers import Tally

    tails = ("发热", "咳嗽", "头晕", "胸痛")
    big = [f"病{h}\t症状\t{tails[(h + j) % 4]}" for h in range(60) for j in (0, 1)]
    small = [f"县{h}\t位于\t{c}" for h in range(12) for c in (("北京", "上海", "广州")[h % 3],)]
    (tmp_path / "med.tsv").write_text("\n".join(big) + "\n", encoding="utf-8")
    (tmp_path / "loc.tsv").write_text("\n".join(small) + "\n", encoding="utf-8")
    store = build_store_from_file([tmp_path / "med.tsv", tmp_path / "loc.tsv"], None, tmp_path / "kg", tally=Tally())
    seen = {store.lookup("病0"), store.lookup("县0"), store.lookup("县1")}
    items = build_items(store, load_tokenizer(tiny_model), seen, k=2, max_triples=5, max_tail_tokens=8, seed=0,
                        stats={})
    groups = {}
    for it in items:
        groups[it.group] = groups.get(it.group, 0) + 1
        assert it.group.split(": ")[0] == ("med" if it.relation == "症状" else "loc")
    assert groups["med: held_out"] == 5 and groups["loc: held_out"] == 5
    assert groups["med: seen"] == 2 and groups["loc: seen"] == 2  # all that the graph has
