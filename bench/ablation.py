"""Ablation of the pretraining objectives, continued from the starter at equal wall time (issue 12).

    python bench/ablation.py --prepared runs/demo/prepared --out runs/ablation [--minutes 5] [--seeds 0 1 2]
    python bench/ablation.py --prepared DIR --out DIR --smoke      # CI: from scratch, a few steps, tiny caps

Every arm continues `--init-from` (default models/starter, the checkpoint the demo continues) with
the demo's recipe (`--recipe`, configs/pretrain/demo.yaml: random-token masks at 30%, multi-hop CMRM)
for the same wall time, on a budget-aware schedule (so what CMRM costs per step is charged to it),
one torch thread per run; an arm changes the masking strategy (same budget) or CMRM:

    a  random-token MLM            masking.strategy=random_token, CMRM off
    b  whole-word MLM              masking.strategy=whole_word,   CMRM off
    c  LMLM                        masking.strategy=lmlm,         CMRM off
    d  LMLM + CMRM                 masking.strategy=lmlm,         CMRM on
    k  random-token MLM + CMRM     the demo recipe as it is
    k_shuffled                     k on the graph with tails shuffled within each relation (the control)
    s  the starter itself          no continued pretraining (from scratch: the initial weights of seed s)

CMRM holds out `--heldout-heads` of the KG's heads (never trained on: the probes' held-out heads).
Variants of d with one CMRM setting changed: d_ref (the reference's CMRM: K = 4 hop-2..3 negatives,
texts "mention + tail", no in-batch negatives), d_inbatch (in-batch negatives only, K = 0),
d_t0.5 / d_t0.05 (temperature; the recipe's is 0.1), d_unmasked (mentions never MLM targets, so
the anchor sees them), d_shuffled (d on the shuffled graph). `--finetune 0` skips fine-tuning (a
quick screen).

Seed s gives every arm the same batch order and masks draw. Each (arm, seed) is exported with
`ckbert export`'s function and measured through plain transformers on rows no run trained on:
- held-out MLM loss and top-1 on random-token masks (the same masks for every arm), and on LMLM
  masks (`ckbert.evaluation.mlm.evaluate_hf`, i.e. `ckbert eval`);
- the relation probe (`ckbert probe --kind relation`): held-out and seen heads, the true
  neighbour against hop-2..3 and against random entities, acc@1 beside chance, overall and per
  graph of a merged store;
- the cloze probe (`ckbert probe --kind cloze`, frequency-matched distractors): seen / held-out,
  per graph;
- People's Daily NER F1 (overall and per entity type) and review sentiment accuracy (test) after
  fine-tuning with the task recipes of configs/finetune (fine-tuning seed = the pretraining seed).
Probe numbers carry 95% intervals: every arm and seed answers the same items, and the bootstrap
resamples seeds and, independently, head entities (all items of a head together); differences between
arms are paired per seed and item. The other numbers get mean, sample std and range over seeds.
The probe item sets are built once for all arms. Writes OUT/runs/<arm>-seed<s>/ (training run, hf/,
result.json, log.txt), OUT/results.json, OUT/results.md, OUT/loss_curves.png and
OUT/ablation_metrics.png. A finished (arm, seed) is reused when OUT is run again with the same
settings. `--jobs` runs at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, finish, machine  # noqa: E402

ARMS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "a": ("random-token MLM", {"strategy": "random_token", "cmrm": False}),
    "b": ("whole-word MLM", {"strategy": "whole_word", "cmrm": False}),
    "c": ("LMLM", {"strategy": "lmlm", "cmrm": False}),
    "d": ("LMLM + CMRM", {"strategy": "lmlm", "cmrm": True}),
    "k": ("random-token MLM + CMRM (the demo recipe)", {"strategy": "random_token", "cmrm": True}),
    # The control of a knowledge claim (issue 24): the recipe on the same data with the graph's tails
    # shuffled within each relation (`ckbert kg-shuffle`: same degrees and relations, wrong facts).
    # Probed on the true graph's items, it must be at chance on true neighbours if the probe measures
    # knowledge rather than what contrastive training on any graph of that shape teaches.
    "k_shuffled": ("the recipe on the shuffled graph (wrong facts)", {"strategy": "random_token", "cmrm": True,
                                                                     "graph": "shuffled"}),
    "s": ("starter (no continued pretraining)", None),
    # CMRM variants, each arm d with one change (the recipe's CMRM: in-batch and K = 4 hop-2..3
    # negatives, texts of the tail alone, temperature 0.1)
    "d_ref": ("LMLM + CMRM as the reference: K = 4 hop-2..3 negatives, texts 'mention + tail'",
              {"strategy": "lmlm", "cmrm": True, "set": ["cmrm.in_batch_negatives=false", "cmrm.negatives=4",
                                                         "cmrm.render=mention_tail"]}),
    "d_inbatch": ("LMLM + CMRM, in-batch negatives only (K = 0)", {"strategy": "lmlm", "cmrm": True,
                                                                   "set": ["cmrm.negatives=0"]}),
    "d_t0.5": ("LMLM + CMRM, temperature 0.5", {"strategy": "lmlm", "cmrm": True, "set": ["cmrm.temperature=0.5"]}),
    "d_t0.05": ("LMLM + CMRM, temperature 0.05", {"strategy": "lmlm", "cmrm": True,
                                                 "set": ["cmrm.temperature=0.05"]}),
    "d_unmasked": ("LMLM + CMRM, mentions never masked", {"strategy": "lmlm", "cmrm": True,
                                                         "set": ["cmrm.anchor=unmasked"]}),
    "d_shuffled": ("LMLM + CMRM on the shuffled graph (wrong facts)", {"strategy": "lmlm", "cmrm": True,
                                                                       "graph": "shuffled"}),
}
MAIN_ARMS = ["a", "b", "c", "d", "k", "k_shuffled", "s"]
# pairs of the differences table (second minus first), where both arms ran
PAIRS = [("a", "b"), ("a", "c"), ("c", "d"), ("a", "k"), ("d", "k"), ("k_shuffled", "k"), ("d_shuffled", "d"),
         ("s", "a"), ("s", "k"), ("s", "d")]
# relation probe groups reported (`relation_probe.report`; every arm is scored with the probe's fixed
# protocol, both renderings), overall and, in a store merged from several graphs, per graph
REL_GROUPS = {"seen_hop_mt": "seen, mention+tail texts, vs hop 2-3", "seen_hop_tail": "seen, tail texts, vs hop 2-3",
              "held_out_hop_mt": "held_out, mention+tail texts, vs hop 2-3",
              "held_out_hop_tail": "held_out, tail texts, vs hop 2-3"}
REL_OVERALL_ONLY = {"seen_random_tail": "seen, tail texts, vs random",
                    "held_out_random_tail": "held_out, tail texts, vs random"}
NER_TYPES = ("LOC", "PER", "ORG")


def metrics(graphs: list[str]) -> list[tuple[str, str, bool]]:
    """(key in a run's result, row title, higher is better) for a prepared KG of these graphs (none:
    one file); probe keys ("rel_*", "cloze_*") also have per-item accuracies in the result."""
    out = [("heldout_mlm", "held-out MLM loss, random-token masks", False),
           ("heldout_top1", "held-out top-1, random-token masks (%)", True),
           ("heldout_mlm_lmlm", "held-out MLM loss, LMLM masks", False)]
    for g in [None, *graphs]:
        where = f" [{g}]" if g else ""
        groups = {**REL_GROUPS, **({} if g else REL_OVERALL_ONLY)}
        out += [(rel_key(g, short), f"relation probe{where}, {group}: acc@1 (%)", True)
                for short, group in groups.items()]
    for g in graphs or [None]:
        where = f" [{g}]" if g else ""
        out += [(cloze_key(g, grp), f"cloze probe{where}, {grp} heads: acc@1 (%)", True) for grp in ("seen", "held_out")]
    out += [("ner_f1", "PD NER test F1 (%)", True), *((f"ner_f1_{t}", f"PD NER test F1, {t} (%)", True)
                                                     for t in NER_TYPES),
            ("sentiment_acc", "sentiment test acc (%)", True), ("steps", "optimizer steps in the time box", True),
            ("pretrain_s", "pretrain wall s", False)]
    return out


NOT_COMPARED = ("steps", "pretrain_s")  # bookkeeping rows: no differences between arms


def rel_key(graph: str | None, short: str) -> str:
    return f"rel_{graph}_{short}_acc" if graph else f"rel_{short}_acc"


def cloze_key(graph: str | None, group: str) -> str:
    return f"cloze_{graph}_{group}_acc" if graph else f"cloze_{group}_acc"


@dataclass
class Settings:
    prepared: str
    init_from: str = "models/starter"  # "" = from scratch (the CI smoke test)
    recipe: str = "configs/pretrain/demo.yaml"
    model: str = "tiny"  # from scratch only
    minutes: float = 5.0  # wall time of continued pretraining per arm (the budget of its lr schedule)
    max_steps: int = 0  # 0 = the time box alone; > 0 also caps steps (smoke)
    eval_rows: int = 1024  # the held-out rows: at most the starter's data.eval_rows, so that neither saw them
    heldout_heads: float = 0.3  # CMRM arms: share of KG heads CMRM never trains on (the demo recipe's)
    ft_train: int = 0  # fine-tuning caps; 0 = the task recipe's (configs/finetune)
    ft_eval: int = 0
    ft_epochs: float = 0.0
    probe_triples: int = 300  # cloze items per group (seen / held_out)
    rel_per_mention: int = 2  # relation probe: true neighbours per held-out mention
    finetune: int = 1  # 0 = skip NER and sentiment (a quick screen of CMRM variants)
    # which half of the held-out rows and heads the probes and the held-out MLM are reported on:
    # "validation" for screens and recipe choices, "test" once per recipe (ckbert.evaluation.heldout.split_rows)
    split: str = "test"
    threads: int = 1  # torch threads per process
    precision: str = "fp32"
    device: str = "auto"

    def key(self, arm: str) -> str:
        """What a finished (arm, seed) depends on: these settings, the arm's spec and the recipe's text."""
        recipe = (REPO / self.recipe).read_text(encoding="utf-8")
        blob = json.dumps([asdict(self), ARMS[arm], recipe], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SMOKE = dict(init_from="", max_steps=2, minutes=5.0, eval_rows=32, ft_train=16, ft_eval=16, ft_epochs=1.0,
             probe_triples=4, rel_per_mention=1)


# ---- one (arm, seed) ------------------------------------------------------------------------
def pretrain(arm: str, seed: int, s: Settings, run_dir: Path) -> dict[str, Any]:
    """Continue (or start) arm `arm` with `ckbert.train.run` and export it; -> the run's summary."""
    from ckbert.export import export_checkpoint
    from ckbert.train import run
    from ckbert.train_config import load_pretrain_config

    spec = ARMS[arm][1]
    overrides = [f"data.prepared={s.prepared}", f"data.eval_rows={s.eval_rows}", f"out={run_dir}", f"seed={seed}",
                 f"masking.strategy={spec['strategy']}", f"cmrm.enabled={str(spec['cmrm']).lower()}",
                 f"cmrm.heldout_heads={s.heldout_heads}", f"train.max_minutes={s.minutes}",
                 f"train.max_steps={s.max_steps or 10**9}", f"train.device={s.device}",
                 f"train.precision={s.precision}", "train.eval_every=0", "train.save_every=0",
                 "train.keep_checkpoints=1", *spec.get("set", [])]
    overrides += [f"init_from={REPO / s.init_from}"] if s.init_from else ["init_from=null", f"model={s.model}"]
    if spec.get("graph") == "shuffled":
        overrides.append(f"data.prepared={shuffled_prepared(run_dir.parent.parent)}")
    cfg = load_pretrain_config(REPO / s.recipe, overrides)
    t0 = time.perf_counter()
    summary = run(cfg)
    seconds = time.perf_counter() - t0
    export_checkpoint(run_dir, run_dir / "hf", metrics={"ablation arm": ARMS[arm][0]})
    return {"pretrain_s": seconds, "steps": summary["step"]}


def shuffled_prepared(out: Path) -> Path:
    """OUT/prepared-shuffled: the wrong-facts copy of the prepared dataset (`main` builds it once)."""
    return out / "prepared-shuffled"


def initial_weights(seed: int, s: Settings, run_dir: Path) -> dict[str, Any]:
    """From scratch (smoke), the reference arm: the weights every arm starts from with this seed."""
    import torch

    from ckbert.checkpoint import model_state_for_saving
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.hf_io import CardInfo, export_hf_folder
    from ckbert.model import CKBertForPreTraining
    from ckbert.model_config import load_model_config, resolve_vocab_size

    _, _, _, tok = open_prepared(s.prepared)
    mcfg = resolve_vocab_size(load_model_config(s.model), len(tok))
    torch.manual_seed(seed)
    model = CKBertForPreTraining(mcfg)
    export_hf_folder(model_state_for_saving(model), mcfg, Path(s.prepared) / "tokenizer", run_dir / "hf",
                     CardInfo(data=s.prepared, objectives="none (initial weights)", steps=0))
    return {"pretrain_s": 0.0, "steps": 0}


def heldout_scores(hf_dir: Path, s: Settings) -> dict[str, float]:
    """`ckbert eval`'s numbers: random-token and LMLM masks on the held-out rows, fixed seed."""
    from transformers import AutoModelForMaskedLM

    from ckbert.data_prep.dataset import open_prepared
    from ckbert.evaluation.mlm import evaluate_hf
    from ckbert.hf_load import load_model

    model, prepared = load_model(AutoModelForMaskedLM, hf_dir), open_prepared(s.prepared)
    r = evaluate_hf(model, prepared, s.eval_rows, split=s.split)  # reported: the test half, or validation in a screen
    v = evaluate_hf(model, prepared, s.eval_rows, split="validation")  # what runs evaluate themselves on
    return {"heldout_mlm": r["eval_rand_mlm"], "heldout_top1": 100 * r["eval_rand_top1"],
            "heldout_unigram_mlm": r["eval_rand_unigram_mlm"], "heldout_mlm_lmlm": r["eval_mlm"],
            "heldout_mlm_validation": v["eval_rand_mlm"]}


def finetune_scores(hf_dir: Path, seed: int, s: Settings, run_dir: Path) -> dict[str, float]:
    from ckbert.finetune.hparams import load_config
    from ckbert.finetune.train import finetune

    out = {}
    caps = [f"max_train_examples={s.ft_train}"] if s.ft_train else []
    caps += [f"max_eval_examples={s.ft_eval}"] if s.ft_eval else []
    caps += [f"epochs={s.ft_epochs}"] if s.ft_epochs else []
    for task, key in (("sentiment", "sentiment_acc"), ("pd_ner", "ner_f1")):
        cfg = load_config(task, None, [*caps, f"seeds=[{seed}]", "predict_test=true", "eval_steps=0",
                                       f"precision={s.precision}"])
        res = finetune(task, hf_dir, None, run_dir / f"ft-{task}", cfg)
        split = "test" if "test" in res else "dev"
        value = float(res[split][res["metric"]])
        out[key] = value * 100.0 if value <= 1.0 else value  # percent, whatever scale the task reports
        out[f"{key}_split"] = split
        if task == "pd_ner":  # per entity type (already in percent, like the task's F1)
            out.update({f"ner_f1_{t}": float(res[split][f"f1_{t}"]) for t in NER_TYPES if f"f1_{t}" in res[split]})
    return out


def probe_scores(hf_dir: Path, out: Path, s: Settings) -> dict[str, Any]:
    """Both probes on the item sets built once by `build_probe_items`: per reported group its
    acc@1 and chance, and under "items" the per-item accuracies (%) that the intervals resample."""
    from transformers import AutoModelForMaskedLM

    from ckbert.data_prep.dataset import open_prepared
    from ckbert.evaluation import relation_probe as rp
    from ckbert.evaluation.probe import (
        DEFAULT_TEMPLATE,
        ProbeItem,
        graph_group,
        item_rank,
        score_candidates,
        summarise,
    )
    from ckbert.hf_load import load_model, load_tokenizer

    model = load_model(AutoModelForMaskedLM, hf_dir)
    res: dict[str, Any] = {"items": {}}
    cloze = [ProbeItem(**d) for d in json.loads((out / "cloze_items.json").read_text(encoding="utf-8"))]
    scores = score_candidates(model, load_tokenizer(hf_dir), cloze, DEFAULT_TEMPLATE, "mean", 64)
    for group, r in summarise([it.group for it in cloze], scores).items():
        graph, _, kind = group.rpartition(": ")
        key = cloze_key(graph or None, kind)
        res[key], res[key.replace("_acc", "_chance_acc")] = r["accuracy@1"], r["chance_accuracy@1"]
        res["items"][key] = [100.0 * item_rank(row)[0] for it, row in zip(cloze, scores, strict=True)
                             if it.group == group]
    _, dataset, kg, tok = open_prepared(s.prepared)
    rel = [rp.RelationItem(**d) for d in json.loads((out / "relation_items.json").read_text(encoding="utf-8"))]
    by_protocol = rp.score_protocols(model, tok, dataset, kg, rel)
    report = rp.report(rel, by_protocol)
    for graph in [None, *sorted({it.graph for it in rel if it.graph})]:
        for short, group in {**REL_GROUPS, **({} if graph else REL_OVERALL_ONLY)}.items():
            r = report.get(graph_group(graph, group))
            if r is None:  # no item of that group (tiny smoke data)
                continue
            key = rel_key(graph, short)
            res[key], res[key.replace("_acc", "_chance_acc")] = r["accuracy@1"], r["chance_accuracy@1"]
            kind, protocol, negatives = (x.strip() for x in group.split(","))
            rows = by_protocol[protocol.removesuffix(" texts")][negatives.removeprefix("vs ")]
            res["items"][key] = [100.0 * item_rank(row)[0] for it, row in zip(rel, rows, strict=True)
                                 if it.group == kind and graph in (None, it.graph)]
    return res


def item_heads(out: Path) -> dict[str, list]:
    """Per probe key, the head of each item in the order of a run's "items" (the clusters of the intervals)."""
    heads: dict[str, list] = {}
    for d in json.loads((out / "cloze_items.json").read_text(encoding="utf-8")):
        graph, _, kind = d["group"].rpartition(": ")
        heads.setdefault(cloze_key(graph or None, kind), []).append(d["head"])
    rel = json.loads((out / "relation_items.json").read_text(encoding="utf-8"))
    for graph in [None, *sorted({d["graph"] for d in rel if d["graph"]})]:
        for short, group in {**REL_GROUPS, **({} if graph else REL_OVERALL_ONLY)}.items():
            kind = group.split(",")[0]
            heads[rel_key(graph, short)] = [d["head"] for d in rel if d["group"] == kind
                                            and graph in (None, d["graph"])]
    return heads


def run_one(task: tuple[str, int, dict[str, Any], str]) -> dict[str, Any]:
    """One (arm, seed), from pretraining to the last score; output goes to the run's log.txt."""
    arm, seed, settings, out = task
    import torch

    s = Settings(**settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _run_one(arm, seed, s, Path(out))
    finally:  # --jobs 1 runs in the caller's process (and in the tests): leave its setting as it was
        torch.set_num_threads(threads)


def _run_one(arm: str, seed: int, s: Settings, out: Path) -> dict[str, Any]:
    run_dir = Path(out) / "runs" / f"{arm}-seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        prev = json.loads(done.read_text(encoding="utf-8"))
        if prev.get("settings_key") == s.key(arm):
            return prev
    if run_dir.exists():  # an unfinished or differently configured run of this harness: start it again
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        result: dict[str, Any] = {"arm": arm, "name": ARMS[arm][0], "seed": seed, "phase_s": {}}
        if arm != "s":
            hf_dir = run_dir / "hf"
            first = ("pretrain+export", lambda: pretrain(arm, seed, s, run_dir))
        elif s.init_from:
            hf_dir = REPO / s.init_from
            first = ("starter", lambda: {"pretrain_s": 0.0, "steps": 0})
        else:
            hf_dir = run_dir / "hf"
            first = ("initial weights", lambda: initial_weights(seed, s, run_dir))
        phases = [first, ("heldout", lambda: heldout_scores(hf_dir, s)),
                  ("probes", lambda: probe_scores(hf_dir, Path(out), s))]
        if s.finetune:
            phases.append(("finetune", lambda: finetune_scores(hf_dir, seed, s, run_dir)))
        for name, phase in phases:
            t = time.perf_counter()
            result.update(phase())
            result["phase_s"][name] = round(time.perf_counter() - t, 1)
    result["total_s"] = time.perf_counter() - t0
    result["settings_key"] = s.key(arm)
    done.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


# ---- the whole ablation ---------------------------------------------------------------------
def build_probe_items(s: Settings, out: Path, seed: int = 0) -> dict[str, Any]:
    """The probe item sets every arm is scored on: cloze triples of the prepared KG (heads split by
    the corpus) and relation items on the held-out rows (heads split by `heldout_heads`)."""
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.evaluation import probe, relation_probe
    from ckbert.evaluation.heldout import heldout_start, split_rows

    _, dataset, kg, tok = open_prepared(s.prepared)
    seen, excluded = probe.seen_heads_from_prepared(kg, Path(s.prepared), heldout_start(len(dataset), s.eval_rows),
                                                    s.heldout_heads)
    cloze_stats: dict[str, int] = {}
    cloze = probe.build_items(kg, tok, seen, 9, s.probe_triples, 8, seed, cloze_stats, excluded)
    rel_stats: dict[str, int] = {}
    rel = relation_probe.build_items(dataset, split_rows(len(dataset), s.eval_rows, s.split), kg, relation_probe.BUILD,
                                     s.heldout_heads, 4, s.rel_per_mention, seed, rel_stats, tokenizer=tok,
                                     split=s.split)
    for name, items in (("cloze_items.json", cloze), ("relation_items.json", rel)):
        (out / name).write_text(json.dumps([asdict(i) for i in items], ensure_ascii=False), encoding="utf-8")
    return {"cloze": cloze_stats, "relation": rel_stats,
            "relation_items": {g: sum(it.group == g for it in rel) for g in ("seen", "held_out")}}


def spread(values: list[float]) -> dict[str, float]:
    n = len(values)
    return {"n": n, "mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else float("nan"),
            "min": min(values), "max": max(values)}


def seed_items(results: list[dict[str, Any]], arm: str, key: str) -> np.ndarray | None:
    """[seeds, items]: the per-item accuracy of `key` in each of the arm's runs, in seed order (None
    unless every seed has it). Every arm and seed answers the same items."""
    runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
    per_seed = [r.get("items", {}).get(key) for r in runs]
    if not per_seed or any(x is None for x in per_seed) or len({len(x) for x in per_seed}) != 1 or not per_seed[0]:
        return None
    return np.array(per_seed, dtype=np.float64)


def seeds_and_heads_ci(values: np.ndarray, clusters: list, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """values [S, n] (per seed, per item) -> the 95% percentile interval of the mean, resampling seeds
    and, independently, head entities (all the items of a head together) with replacement."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = np.fromiter((ids[c] for c in clusters), dtype=np.int64, count=len(clusters))
    sums = np.zeros((values.shape[0], len(ids)))
    for s_i in range(values.shape[0]):
        np.add.at(sums[s_i], index, values[s_i])
    counts = np.bincount(index, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draw_s = rng.integers(values.shape[0], size=(samples, values.shape[0]))  # [B, S]
    draw_h = rng.integers(len(ids), size=(samples, len(ids)))  # [B, H]
    per_seed = np.take_along_axis(sums[draw_s], draw_h[:, None, :], axis=2).sum(2)  # [B, S]
    means = per_seed.mean(1) / counts[draw_h].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def aggregate(results: list[dict[str, Any]], arms: list[str], metric_list: list[tuple[str, str, bool]] | None = None,
              heads: dict[str, list] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and metric: spread over seeds, and for a probe metric with `heads` the 95% interval of
    its mean resampling seeds and heads (`ci95`, `seeds_and_heads_ci`)."""
    agg: dict[str, dict[str, dict[str, float]]] = {}
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        agg[arm] = {}
        for key, _, _ in metric_list or metrics([]):
            vals = [float(r[key]) for r in runs if r.get(key) is not None]
            if not vals:
                continue
            agg[arm][key] = spread(vals)
            items = seed_items(results, arm, key)
            if heads and key in heads and items is not None and items.shape[1] == len(heads[key]):
                agg[arm][key].update({"ci95": list(seeds_and_heads_ci(items, heads[key])), "items": items.shape[1],
                                      "heads": len(set(heads[key]))})
    return agg


def compare(agg: dict, a: str, b: str, key: str) -> tuple[float, float] | None:
    """(mean of b - mean of a, 2 standard errors of that difference) from the seed spread."""
    if key not in agg.get(a, {}) or key not in agg.get(b, {}):
        return None
    x, y = agg[a][key], agg[b][key]
    if x["n"] < 2 or y["n"] < 2:
        return None
    return y["mean"] - x["mean"], 2.0 * math.sqrt(x["std"] ** 2 / x["n"] + y["std"] ** 2 / y["n"])


def paired(results: list[dict[str, Any]], a: str, b: str, key: str, heads: list) -> tuple[float, float, float] | None:
    """(b - a, 95% interval) of a probe metric, paired: per seed and item, b's accuracy minus a's (seed
    s gives every arm the same batches; every arm answers the same items), seeds and heads resampled.
    An arm with one run (the starter) is paired with each seed of the other."""
    x, y = seed_items(results, a, key), seed_items(results, b, key)
    if x is None or y is None or x.shape[1] != y.shape[1] or x.shape[1] != len(heads):
        return None
    if x.shape[0] != y.shape[0]:
        if 1 not in (x.shape[0], y.shape[0]):
            return None
        x, y = np.broadcast_arrays(x, y)
    lo, hi = seeds_and_heads_ci(y - x, heads)
    return float((y - x).mean()), lo, hi


def markdown(agg: dict, arms: list[str], seeds: list[int], metric_list: list[tuple[str, str, bool]] | None = None,
             results: list[dict[str, Any]] | None = None, heads: dict[str, list] | None = None) -> str:
    metric_list = metric_list or metrics([])

    def fmt(st: dict[str, float]) -> str:
        digits = 3 if abs(st["mean"]) < 10 else 1
        sd = "n/a" if math.isnan(st["std"]) else f"{st['std']:.{digits}f}"
        if "ci95" in st:
            return f"{st['mean']:.1f} [{st['ci95'][0]:.1f}, {st['ci95'][1]:.1f}] (sd {sd})"
        return f"{st['mean']:.{digits}f} ± {sd} [{st['min']:.{digits}f}, {st['max']:.{digits}f}]"

    lines = [f"Seeds {seeds}. Probe rows: mean acc@1 [95% interval, bootstrap resampling seeds and head "
             "entities] (sample std of the seeds' means); other rows: mean ± sample std [min, max] over seeds.", "",
             "| metric | " + " | ".join(f"({a}) {ARMS[a][0]}" for a in arms) + " |",
             "| --- | " + " | ".join("---" for _ in arms) + " |"]
    for key, title, _ in metric_list:
        cells = [fmt(agg[a][key]) if key in agg[a] else "—" for a in arms]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    pairs = [(x, y) for x, y in PAIRS if x in arms and y in arms]
    if pairs and len(seeds) > 1:
        lines += ["", "Differences (second minus first). Probe rows: the difference of accuracy, paired per "
                      "seed and item, with its 95% interval resampling seeds and heads; `no effect` = the "
                      "interval holds 0. Other rows: difference of seed means against 2 standard errors of "
                      "the seed spread; `noise` = |difference| < 2 SE (a rough screen).", "",
                  "| metric | " + " | ".join(f"{y} − {x}" for x, y in pairs) + " |",
                  "| --- | " + " | ".join("---" for _ in pairs) + " |"]
        for key, title, higher in (m for m in metric_list if m[0] not in NOT_COMPARED):
            cells = []
            for x, y in pairs:
                d = paired(results, x, y, key, heads[key]) if results and heads and key in heads else None
                if d is not None:
                    diff, lo, hi = d
                    verdict = "no effect" if lo <= 0 <= hi else ("better" if (diff > 0) == higher else "worse")
                    cells.append(f"{diff:+.1f} [{lo:+.1f}, {hi:+.1f}] {verdict}")
                    continue
                c = compare(agg, x, y, key)
                if c is None:
                    cells.append("—")
                    continue
                diff, se2 = c
                if se2 == 0:  # every seed gave the same value on both sides: the screen cannot say
                    verdict = "equal" if diff == 0 else "no seed spread"
                else:
                    verdict = "noise" if abs(diff) < se2 else ("better" if (diff > 0) == higher else "worse")
                cells.append(f"{diff:+.3f} (2SE {se2:.3f}, {verdict})")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", type=Path, required=True, help="prepared dataset (ckbert prepare --out)")
    p.add_argument("--out", type=Path, required=True, help="output folder (runs, results.json/.md, loss_curves.png)")
    p.add_argument("--arms", nargs="+", default=MAIN_ARMS, choices=list(ARMS),
                   help="default: the main arms " + " ".join(MAIN_ARMS) + "; the d_* variants on request")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (one (arm, seed) each)")
    p.add_argument("--smoke", action="store_true", help="CI size: from scratch, 2 steps, tiny fine-tuning and "
                   "probe caps")
    for field, default in asdict(Settings(prepared="")).items():
        if field != "prepared":
            p.add_argument("--" + field.replace("_", "-"), type=type(default), default=None,
                           help=f"default {default} (smoke: {SMOKE.get(field, default)})")
    args = p.parse_args(argv)
    base = {**(SMOKE if args.smoke else {})}
    base.update({f: getattr(args, f) for f in asdict(Settings(prepared="")) if f != "prepared"
                 and getattr(args, f) is not None})
    s = Settings(prepared=str(args.prepared.resolve()), **base)
    if s.init_from and not (REPO / s.init_from).is_dir():
        raise SystemExit(f"--init-from {s.init_from}: no such model folder")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"machine": machine(), "bench": "ablation", "settings": asdict(s),
                              "arms": {a: ARMS[a][0] for a in args.arms}, "seeds": args.seeds}
    t0 = time.perf_counter()
    if s.split not in ("validation", "test"):
        raise SystemExit(f"--split {s.split}: validation or test")
    record["probe_item_stats"] = build_probe_items(s, out)
    if any(ARMS[a][1] and ARMS[a][1].get("graph") == "shuffled" for a in args.arms) \
            and not (shuffled_prepared(out) / "manifest.json").is_file():
        from ckbert.data_prep.kg_control import write_shuffled_prepared

        record["shuffled_graph"] = write_shuffled_prepared(Path(s.prepared), shuffled_prepared(out), seed=0)
    # the starter arm (s) skips pretraining: its runs go last, so that the parallel jobs end together
    tasks = sorted([(arm, seed, asdict(s), str(out)) for seed in args.seeds for arm in args.arms],
                   key=lambda t: (t[0] == "s", args.seeds.index(t[1])))
    print(f"ablation: {len(tasks)} runs ({len(args.arms)} arms x {len(args.seeds)} seeds), {args.jobs} process(es), "
          f"{s.minutes} min of pretraining each" + (f" (at most {s.max_steps} steps)" if s.max_steps else "")
          + f", from {s.init_from or 'scratch'}", flush=True)
    results = []
    if args.jobs == 1:
        for t in tasks:
            results.append(run_one(t))
            print(f"  done {t[0]}-seed{t[1]} ({results[-1]['total_s']:.0f} s)", flush=True)
    else:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for r in pool.imap_unordered(run_one, tasks):
                results.append(r)
                print(f"  done {r['arm']}-seed{r['seed']} ({r['total_s']:.0f} s)", flush=True)
    results.sort(key=lambda r: (r["arm"], r["seed"]))
    from ckbert.data_prep.dataset import open_prepared

    metric_list = metrics(sorted(open_prepared(s.prepared)[2].meta.get("graphs") or []))
    heads = item_heads(out)
    agg = aggregate(results, args.arms, metric_list, heads)
    record.update({"runs": results, "summary": agg, "wall_s": time.perf_counter() - t0})
    md = markdown(agg, args.arms, args.seeds, metric_list, results, heads)
    (out / "results.md").write_text(md, encoding="utf-8")
    from plots import plot_ablation_metrics, plot_loss_curves

    plot_loss_curves({a: [out / "runs" / f"{a}-seed{sd}" / "metrics.jsonl" for sd in args.seeds]
                      for a in args.arms if a != "s"}, {a: ARMS[a][0] for a in args.arms}, out / "loss_curves.png")
    plot_ablation_metrics(agg, {a: ARMS[a][0] for a in args.arms}, [(k, t) for k, t, _ in metric_list if k not in NOT_COMPARED],
                          out / "ablation_metrics.png")
    print(md)
    print(f"wall {record['wall_s']:.0f} s; wrote {out / 'results.md'}, {out / 'loss_curves.png'}, "
          f"{out / 'ablation_metrics.png'}")
    finish(record, out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
