"""Smoke runs of the bench/ entry points (tiny sizes), so that they do not rot.

They run in-process (the scripts' `main(argv)`), on the small prepared dataset of conftest.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_collator_speed_smoke(bench_module, small_prepared, tmp_path, capsys):
    bench = bench_module("collator_speed")
    out = tmp_path / "collator_speed.json"
    assert bench.main(["--prepared", str(small_prepared), "--batch-size", "4", "--batches", "2", "--warmup", "1",
                       "--workers", "0", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text(encoding="utf-8"))
    names = {r["collator"] for r in rec["collators"]}
    assert {"ckbert LMLM (CMRM off)", "ckbert LMLM + CMRM samples", "HF whole_word_mask=True",
            "ckbert random_token (CMRM off)", "ckbert whole_word (CMRM off)"} <= names
    for r in rec["collators"]:
        assert r["batches_per_s"] > 0 and r["tokens_per_s"] > 0
        assert 0.05 < r["target_share"] < 0.3, r  # both sides mask about 15% of the real tokens
    assert [r["workers"] for r in rec["dataloader"]].count(2) == 3
    assert all(r["batches"] == 2 for r in rec["dataloader"])
    assert rec["machine"]["command"] and rec["machine"]["cpu_count"] >= 1
    assert is_png(out.with_suffix(".png"))
    assert "x HF WWM" in capsys.readouterr().out


def test_neg_sampling_smoke(bench_module, small_prepared, tmp_path, capsys):
    bench = bench_module("neg_sampling")
    out = tmp_path / "neg_sampling.json"
    assert bench.main(["--prepared", str(small_prepared), "--rows", "64", "--out", str(out)]) == 0
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["mentions"] > 0 and [r["sampler"] for r in rec["samplers"]] == [
        "walks first (sample_negatives)", "enumeration alone (enumerate_negatives)"]
    assert all(r["ms_per_mention"] > 0 for r in rec["samplers"])
    assert 0 <= rec["walks_alone_short"] <= rec["mentions"]
    assert "ms per mention" in capsys.readouterr().out


def test_hf_features_mark_the_same_words(bench_module, small_prepared):
    """The offsets handed to HF's whole-word masking make it see exactly the rows' word_ids."""
    from transformers import DataCollatorForLanguageModeling

    from ckbert.data_prep.dataset import open_prepared

    bench = bench_module("collator_speed")
    _, dataset, _, tok = open_prepared(small_prepared)
    cols = dataset[:4]
    rows = [{k: cols[k][i] for k in cols} for i in range(4)]
    feats = bench.hf_features(rows, tok.cls_token_id, tok.sep_token_id, 4)
    import numpy as np

    offsets = np.array([f["offset_mapping"] for f in feats])
    special = np.array([f["special_tokens_mask"] + [1] * (offsets.shape[1] - len(f["special_tokens_mask"]))
                        for f in feats])
    word_ids, _ = DataCollatorForLanguageModeling._calc_word_ids_and_prob_mask(offsets, special)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        assert (word_ids[b, 1 : n + 1] - 1 == np.asarray(row["word_ids"])).all()


def test_ablation_smoke(bench_module, small_prepared, tmp_path):
    bench = bench_module("ablation")
    out = tmp_path / "ablation"
    threads = torch.get_num_threads()
    assert bench.main(["--prepared", str(small_prepared), "--out", str(out), "--smoke", "--jobs", "1",
                       "--arms", "a", "k", "k_shuffled", "s", "--seeds", "0"]) == 0
    assert torch.get_num_threads() == threads  # in-process runs leave the caller's thread setting alone
    rec = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [(r["arm"], r["seed"]) for r in rec["runs"]] == [("a", 0), ("k", 0), ("k_shuffled", 0), ("s", 0)]
    # the control arm trained on the shuffled copy of the graph (the same rows, other facts)
    assert rec["shuffled_graph"]["dropped_edges"] == 0 and rec["settings"]["split"] == "test"
    state = json.loads(next((out / "runs" / "k_shuffled-seed0").glob("checkpoints/step-*/trainer_state.json"))
                       .read_text(encoding="utf-8"))
    assert state["kg_fingerprint"] == rec["shuffled_graph"]["fingerprint"] != \
        json.loads((small_prepared / "manifest.json").read_text(encoding="utf-8"))["kg"]["fingerprint"]
    assert rec["probe_item_stats"]["relation_items"]["seen"] > 0
    for r in rec["runs"]:
        assert 0 < r["heldout_mlm"] < 2 * math.log(8000) and 0 < r["heldout_mlm_lmlm"] < 2 * math.log(8000)
        assert 0 <= r["sentiment_acc"] <= 100 and 0 <= r["ner_f1"] <= 100 and r["ner_f1_split"] == "test"
        assert 0 <= r["cloze_seen_acc"] <= 100 and 0 <= r["rel_seen_hop_tail_acc"] <= 100
        assert r["rel_seen_hop_tail_chance_acc"] >= 20.0  # 1 + at most 4 candidates
        # the per-item accuracies the intervals resample: one per item, their mean the reported number
        items = r["items"]["rel_seen_hop_tail_acc"]
        assert len(items) == rec["probe_item_stats"]["relation_items"]["seen"]
        assert sum(items) / len(items) == pytest.approx(r["rel_seen_hop_tail_acc"])
    trained = {r["arm"]: r for r in rec["runs"]}
    assert rec["settings"]["precision"] == "fp32"
    log = (out / "runs" / "k-seed0" / "log.txt").read_text(encoding="utf-8")
    assert "precision fp32" in log and "[sentiment] device cpu, precision fp32" in log
    assert trained["a"]["steps"] == trained["k"]["steps"] == 2 and trained["s"]["steps"] == 0
    hf_config = json.loads((out / "runs" / "k-seed0" / "hf" / "config.json").read_text(encoding="utf-8"))
    assert hf_config["ckbert_cmrm"]["heldout_heads"] == 0.3  # arm k records the heads CMRM never saw
    # from scratch, the reference arm is seed 0's initial weights: what arm a evaluated at its step 0
    metrics = [json.loads(x) for x in (out / "runs" / "a-seed0" / "metrics.jsonl").read_text().splitlines()]
    step0 = next(m for m in metrics if m["step"] == 0 and "eval_rand_mlm" in m)
    assert step0["eval_rand_mlm"] == pytest.approx(trained["s"]["heldout_mlm_validation"], abs=2e-3)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "(a) random-token MLM" in md and "(k) random-token MLM + CMRM" in md
    assert "relation probe, seen, tail texts, vs hop 2-3: acc@1 (%) | " in md
    assert is_png(out / "loss_curves.png") and is_png(out / "ablation_metrics.png")
    # a second run with the same settings reuses every finished (arm, seed)
    before = (out / "runs" / "a-seed0" / "result.json").stat().st_mtime_ns
    assert bench.main(["--prepared", str(small_prepared), "--out", str(out), "--smoke", "--jobs", "1",
                       "--arms", "a", "--seeds", "0"]) == 0
    assert (out / "runs" / "a-seed0" / "result.json").stat().st_mtime_ns == before


def test_ablation_summary_and_noise_screen(bench_module):
    bench = bench_module("ablation")
    runs = [{"arm": arm, "seed": s, "sentiment_acc": base + d}
            for arm, base in (("a", 60.0), ("c", 70.0)) for s, d in enumerate((-1.0, 0.0, 1.0))]
    agg = bench.aggregate(runs, ["a", "c"])
    assert agg["a"]["sentiment_acc"]["mean"] == 60.0 and agg["a"]["sentiment_acc"]["std"] == 1.0
    assert agg["c"]["sentiment_acc"]["min"] == 69.0 and agg["c"]["sentiment_acc"]["max"] == 71.0
    diff, se2 = bench.compare(agg, "a", "c", "sentiment_acc")
    assert diff == 10.0 and se2 == pytest.approx(2 * math.sqrt(2 / 3))
    md = bench.markdown(agg, ["a", "c"], [0, 1, 2])
    assert "60.0 ± 1.0 [59.0, 61.0]" in md and "better" in md
    runs_close = [{"arm": arm, "seed": s, "sentiment_acc": 60.0 + d + (0.5 if arm == "c" else 0.0)}
                  for arm in ("a", "c") for s, d in enumerate((-3.0, 0.0, 3.0))]
    assert "noise" in bench.markdown(bench.aggregate(runs_close, ["a", "c"]), ["a", "c"], [0, 1, 2])


def test_ablation_probe_intervals_are_over_heads_and_paired(bench_module):
    """Probe metrics: intervals resample seeds and heads; arm differences are paired per seed and
    item. An arm right on every item beats a coin; identical arms differ by exactly 0."""
    bench = bench_module("ablation")
    key = "rel_seen_hop_tail_acc"
    heads = {key: [h for h in range(20) for _ in range(3)]}  # 20 heads, 3 items each

    def run(arm, seed, items):
        return {"arm": arm, "seed": seed, key: sum(items) / len(items), "items": {key: items}}

    rng = __import__("random").Random(0)
    noisy = [[100.0 * (rng.random() < 0.5) for _ in range(60)] for _ in range(2)]
    runs = [run("a", s, noisy[s]) for s in (0, 1)] + [run("k", s, [100.0] * 60) for s in (0, 1)]
    runs += [run("c", s, noisy[s]) for s in (0, 1)]
    agg = bench.aggregate(runs, ["a", "k", "c"], bench.metrics([]), heads)
    lo, hi = agg["a"][key]["ci95"]
    assert lo < agg["a"][key]["mean"] < hi and agg["k"][key]["ci95"] == [100.0, 100.0]
    assert agg["a"][key]["heads"] == 20 and agg["a"][key]["items"] == 60
    diff, lo, hi = bench.paired(runs, "a", "k", key, heads[key])
    assert diff == pytest.approx(100.0 - agg["a"][key]["mean"]) and 0 < lo <= diff <= hi
    assert bench.paired(runs, "a", "c", key, heads[key]) == (0.0, 0.0, 0.0)  # identical items: no spread
    # the seeds are resampled too: two seeds that disagree on every item give a wide interval,
    # where averaging over seeds first would give none
    split = [run("b", 0, [0.0] * 60), run("b", 1, [100.0] * 60)]
    lo, hi = bench.aggregate(split, ["b"], bench.metrics([]), heads)["b"][key]["ci95"]
    assert lo == 0.0 and hi == 100.0
    md = bench.markdown(agg, ["a", "k"], [0, 1], bench.metrics([]), runs, heads)
    assert "better" in md.split("relation probe, seen, tail texts, vs hop 2-3: acc@1 (%) |")[-1].splitlines()[0]


def test_metrics_plot_takes_an_arm_equal_on_every_seed(bench_module, tmp_path):
    """The starter arm scores the same on every seed; the float mean of three 0.7s is an ulp below
    0.7, which once made a negative error bar and failed the whole ablation after all its runs."""
    bench = bench_module("ablation")
    plots = bench_module("plots")
    runs = [{"arm": arm, "seed": s, "heldout_mlm": v} for s in range(3)
            for arm, v in (("s", 0.7), ("c", 0.6 + 0.01 * s))]
    agg = bench.aggregate(runs, ["s", "c"])
    assert agg["s"]["heldout_mlm"]["mean"] < agg["s"]["heldout_mlm"]["min"]  # the case itself
    out = plots.plot_ablation_metrics(agg, {"s": "starter", "c": "LMLM"}, [("heldout_mlm", "MLM")],
                                      tmp_path / "m.png")
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of run_all")
def test_run_all_says_the_gpu_section_was_not_run(bench_module, tmp_path, capsys):
    bench = bench_module("run_all")
    assert bench.main(["--out", str(tmp_path), "--only", "gpu"]) == 0
    assert "gpu: NOT RUN: no CUDA device" in capsys.readouterr().out
    rec = json.loads((tmp_path / "run_all.json").read_text(encoding="utf-8"))
    assert rec["sections"] == [{"section": "gpu", "command": None, "status": "not run: no CUDA device"}]
    assert rec["failed"] == [] and rec["machine"]["gpu"] is None


def test_run_all_refuses_code_from_another_checkout(bench_module, tmp_path, capsys, monkeypatch):
    bench = bench_module("run_all")
    assert bench.foreign_packages() == []  # this checkout's own environment
    monkeypatch.setattr(bench, "REPO", tmp_path / "other_clone")  # as if run from a clone with a borrowed venv
    assert len(bench.foreign_packages()) == 4
    assert bench.main(["--out", str(tmp_path / "out"), "--only", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "ckbert.data_prep from" in err and "not this checkout" in err
    assert not (tmp_path / "out").exists()
