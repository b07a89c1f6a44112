"""Ablation of the pretraining objectives: which masking / objective helps a tiny model, if any?

    python bench/ablation.py --prepared DIR --out DIR [--steps 50] [--seeds 0 1 2] [--jobs 2]
    python bench/ablation.py --prepared DIR --out DIR --smoke      # CI: a few steps, tiny caps

Arms (method.md), equal in everything but the objective: the same tiny model config, prepared
dataset, masking budget (masking.rate, 15% of the tokens), steps, batch, learning rate and seeds
(seed s gives every arm the same initial weights and the same batch order):

    a  random-token MLM     masking.strategy=random_token, CMRM off
    b  whole-word MLM       masking.strategy=whole_word,   CMRM off
    c  LMLM                 masking.strategy=lmlm,         CMRM off (the collator's own mode)
    d  LMLM + CMRM          masking.strategy=lmlm,         CMRM on
    r  no pretraining       the initial weights of seed s (reference: what pretraining adds)

Each (arm, seed) pretrains with `ckbert.train.run`, exports an HF folder with `ckbert export`'s
function, then measures on that folder:
- held-out MLM loss on the rows training never sees (the last `eval_rows` of the dataset) under two
  masks that are the same for every arm (random tokens, and random whole words; fixed seed), so
  the losses compare across arms (each arm's own in-training eval loss uses its own masks: it is
  reported, but it does not compare);
- the offline fine-tuning tasks (`ckbert.finetune`: review sentiment accuracy, People's Daily NER
  F1) with capped sizes, one fine-tuning seed = the pretraining seed, dev score after the last step;
- the knowledge probe (`ckbert.finetune.probe`: accuracy@1 / MRR on CMeKG triples, `seen` heads the
  corpus links vs `held_out`), on one item set built once for all arms.

Writes OUT/runs/<arm>-seed<s>/ (training run, hf/, result.json, log.txt), OUT/results.json,
OUT/results.md and OUT/loss_curves.png. A finished (arm, seed) is reused when OUT is run again
with the same settings. Seeds run in parallel processes (`--jobs`, one torch thread each).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import finish, machine  # noqa: E402

ARMS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "a": ("random-token MLM", {"strategy": "random_token", "cmrm": False}),
    "b": ("whole-word MLM", {"strategy": "whole_word", "cmrm": False}),
    "c": ("LMLM", {"strategy": "lmlm", "cmrm": False}),
    "d": ("LMLM + CMRM", {"strategy": "lmlm", "cmrm": True}),
    "r": ("no pretraining (initial weights)", None),
}

# (key in a run's result, column title, higher is better)
METRICS: list[tuple[str, str, bool]] = [
    ("heldout_mlm_random_token", "held-out MLM loss, random-token masks", False),
    ("heldout_mlm_whole_word", "held-out MLM loss, whole-word masks", False),
    ("heldout_mlm_lmlm", "held-out MLM loss, LMLM masks", False),
    ("sentiment_acc", "sentiment dev acc (%)", True),
    ("ner_f1", "PD NER dev F1 (%)", True),
    ("probe_seen_acc", "probe seen acc@1 (%)", True),
    ("probe_held_out_acc", "probe held-out acc@1 (%)", True),
    ("probe_seen_mrr", "probe seen MRR", True),
    ("probe_held_out_mrr", "probe held-out MRR", True),
    ("own_eval_mlm", "own-mask eval MLM loss (not comparable)", False),
    ("pretrain_s", "pretrain wall s", False),
]


@dataclass
class Settings:
    prepared: str
    model: str = "tiny"
    # Sized for a shared 2-core CPU (docs/results.md): ~16k training tokens per arm, far below what
    # separates objectives in the paper; raise --steps/--batch-size on a quieter or bigger machine.
    steps: int = 50
    batch_size: int = 8
    max_length: int = 64  # tokens per sequence incl. [CLS]/[SEP]; rows are cut at a word boundary
    lr: float = 1e-3  # from scratch, tiny model (configs/pretrain/demo.yaml)
    warmup_ratio: float = 0.1
    eval_rows: int = 96  # held out by training; the held-out MLM loss uses these rows
    ft_train: int = 300  # fine-tuning examples (train), per task
    ft_eval: int = 200  # dev examples, per task
    ft_max_length: int = 48
    ft_epochs: float = 1.0
    ft_batch_size: int = 16
    ft_lr: float = 2e-4
    probe_triples: int = 60  # per group (seen / held_out)
    probe_k: int = 9  # distractor tails per triple
    threads: int = 1  # torch threads per process
    # Pretraining and fine-tuning precision. fp32: on this CPU a bf16 matmul runs about 20x slower
    # than fp32, and the ablation compares objectives, not precisions (a GPU run may pass bf16).
    precision: str = "fp32"
    device: str = "auto"  # pretraining: CUDA when present (fine-tuning picks its device itself)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


SMOKE = dict(steps=2, batch_size=4, max_length=32, eval_rows=16, ft_train=16, ft_eval=16, ft_max_length=32,
             ft_batch_size=8, probe_triples=4, probe_k=3)


# ---- one (arm, seed) ------------------------------------------------------------------------
def pretrain(arm: str, seed: int, s: Settings, run_dir: Path) -> dict[str, Any]:
    """Train arm `arm` with `ckbert.train.run` and export it; -> the run's summary."""
    from ckbert.config import load_dataclass
    from ckbert.export import export_checkpoint
    from ckbert.train import run
    from ckbert.train_config import PretrainConfig

    spec = ARMS[arm][1]
    cfg = load_dataclass(PretrainConfig, {
        "data": {"prepared": s.prepared, "max_length": s.max_length, "eval_rows": s.eval_rows},
        "model": s.model, "out": str(run_dir), "seed": seed,
        "masking": {"strategy": spec["strategy"]},
        "cmrm": {"enabled": spec["cmrm"]},
        "optim": {"lr": s.lr, "warmup_ratio": s.warmup_ratio},
        "train": {"batch_size": s.batch_size, "max_steps": s.steps, "device": s.device, "precision": s.precision,
                  "log_every": max(1, s.steps // 20),
                  "eval_every": 0, "save_every": 0, "keep_checkpoints": 1},
    }, source="bench/ablation.py")
    t0 = time.perf_counter()
    summary = run(cfg)
    seconds = time.perf_counter() - t0
    export_checkpoint(run_dir, run_dir / "hf", metrics={"ablation arm": ARMS[arm][0]})
    return {"pretrain_s": seconds, "own_eval_mlm": summary["eval"].get("eval_mlm"),
            "own_eval_cmrm": summary["eval"].get("eval_cmrm") if spec["cmrm"] else None,
            "steps": summary["step"]}


def initial_weights(seed: int, s: Settings, run_dir: Path) -> dict[str, Any]:
    """The reference arm: the model every arm starts from with this seed (train.run seeds torch the
    same way before building the model), exported without any training."""
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
    return {"pretrain_s": 0.0, "own_eval_mlm": None, "own_eval_cmrm": None, "steps": 0}


HELDOUT_MASKS = ("random_token", "whole_word", "lmlm")


def heldout_mlm(hf_dir: Path, s: Settings) -> dict[str, float]:
    """MLM loss of the exported model on the held-out rows under masks shared by every arm: one
    mask set per strategy, so that no arm is only judged on the targets it was trained on."""
    import torch
    from transformers import AutoModelForMaskedLM

    from ckbert.collator import PretrainCollator
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.finetune.checkpoint import load_model
    from ckbert.train_config import CMRMConfig, MaskingConfig

    manifest, dataset, _, tok = open_prepared(s.prepared)
    n_eval = min(s.eval_rows, len(dataset) // 10)  # the rows train.run holds out (its own rule)
    rows = range(len(dataset) - n_eval, len(dataset))
    cols = dataset[list(rows)]
    items = [(0, r, {k: cols[k][i] for k in cols}) for i, r in enumerate(rows)]
    model = load_model(AutoModelForMaskedLM, hf_dir).eval()
    out = {}
    for strategy in HELDOUT_MASKS:
        coll = PretrainCollator(tok, manifest, None, MaskingConfig(strategy=strategy), CMRMConfig(enabled=False),
                                s.max_length, seed=20261128)
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(items), 32):
                b = coll(items[i : i + 32])
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # [B, L, V]
                rows_logits = logits.reshape(-1, logits.shape[-1])[b["mlm_positions"]]  # [M, V]
                loss = torch.nn.functional.cross_entropy(rows_logits, b["mlm_labels"], reduction="sum")
                total += float(loss)
                count += int(b["mlm_labels"].numel())
        out[f"heldout_mlm_{strategy}"] = total / max(count, 1)
    return out


def finetune_scores(hf_dir: Path, seed: int, s: Settings, run_dir: Path) -> dict[str, float]:
    from ckbert.finetune.hparams import load_config
    from ckbert.finetune.train import finetune

    out = {}
    for task, key in (("sentiment", "sentiment_acc"), ("pd_ner", "ner_f1")):
        cfg = load_config(task, None, [
            f"max_length={s.ft_max_length}", f"epochs={s.ft_epochs}", f"batch_size={s.ft_batch_size}",
            f"learning_rate={s.ft_lr}", f"max_train_examples={s.ft_train}", f"max_eval_examples={s.ft_eval}",
            f"seeds=[{seed}]", "predict_test=false", "eval_steps=0", f"precision={s.precision}"])
        res = finetune(task, hf_dir, None, run_dir / f"ft-{task}", cfg)
        value = float(res["dev"][res["metric"]])
        out[key] = value * 100.0 if value <= 1.0 else value  # percent, whatever scale the task reports
        out[f"{key}_metric"] = res["metric"]
    return out


def probe_scores(hf_dir: Path, items_file: Path) -> dict[str, float]:
    from transformers import AutoModelForMaskedLM

    from ckbert.finetune.checkpoint import load_model, load_tokenizer
    from ckbert.finetune.probe import DEFAULT_TEMPLATE, ProbeItem, score_candidates, summarise

    items = [ProbeItem(**d) for d in json.loads(items_file.read_text(encoding="utf-8"))]
    model = load_model(AutoModelForMaskedLM, hf_dir)
    report = summarise(items, score_candidates(model, load_tokenizer(hf_dir), items, DEFAULT_TEMPLATE, "mean", 64))
    out = {}
    for group, r in report.items():
        out[f"probe_{group}_acc"] = r["accuracy@1"]
        out[f"probe_{group}_mrr"] = r["mrr"]
        out[f"probe_{group}_chance_acc"] = r["chance_accuracy@1"]
        out[f"probe_{group}_triples"] = r["triples"]
    return out


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
        if prev.get("settings_key") == s.key():
            missing = [m for m in HELDOUT_MASKS if f"heldout_mlm_{m}" not in prev]
            if missing and (run_dir / "hf").is_dir():  # finished by an older harness: add the new masks only
                prev.update(heldout_mlm(run_dir / "hf", s))
                done.write_text(json.dumps(prev, indent=1) + "\n", encoding="utf-8")
            return prev
    if run_dir.exists():  # an unfinished or differently configured run of this harness: start it again
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        result: dict[str, Any] = {"arm": arm, "name": ARMS[arm][0], "seed": seed, "phase_s": {}}
        hf_dir = run_dir / "hf"
        phases = [("pretrain+export", lambda: initial_weights(seed, s, run_dir) if arm == "r"
                   else pretrain(arm, seed, s, run_dir)),
                  ("heldout_mlm", lambda: heldout_mlm(hf_dir, s)),
                  ("finetune", lambda: finetune_scores(hf_dir, seed, s, run_dir)),
                  ("probe", lambda: probe_scores(hf_dir, Path(out) / "probe_items.json"))]
        for name, phase in phases:
            t = time.perf_counter()
            result.update(phase())
            result["phase_s"][name] = round(time.perf_counter() - t, 1)
    result["total_s"] = time.perf_counter() - t0
    result["settings_key"] = s.key()
    done.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


# ---- the whole ablation ---------------------------------------------------------------------
def build_probe_items(s: Settings, out: Path, seed: int = 0) -> dict[str, int]:
    """One probe item set for every arm: triples of the prepared KG, heads split by the corpus."""
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.finetune.probe import build_items, seen_heads_from_prepared

    _, _, kg, tok = open_prepared(s.prepared)
    seen = seen_heads_from_prepared(kg, Path(s.prepared))
    stats: dict[str, int] = {}
    items = build_items(kg, tok, seen, s.probe_k, s.probe_triples, 8, seed, stats)
    (out / "probe_items.json").write_text(json.dumps([asdict(i) for i in items], ensure_ascii=False),
                                          encoding="utf-8")
    return stats


def spread(values: list[float]) -> dict[str, float]:
    n = len(values)
    return {"n": n, "mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else float("nan"),
            "min": min(values), "max": max(values)}


def aggregate(results: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    agg: dict[str, dict[str, dict[str, float]]] = {}
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        agg[arm] = {}
        for key, _, _ in METRICS:
            vals = [float(r[key]) for r in runs if r.get(key) is not None]
            if vals:
                agg[arm][key] = spread(vals)
    return agg


def compare(agg: dict, a: str, b: str, key: str) -> tuple[float, float] | None:
    """(mean of b - mean of a, 2 standard errors of that difference) from the seed spread."""
    if key not in agg.get(a, {}) or key not in agg.get(b, {}):
        return None
    x, y = agg[a][key], agg[b][key]
    if x["n"] < 2 or y["n"] < 2:
        return None
    return y["mean"] - x["mean"], 2.0 * math.sqrt(x["std"] ** 2 / x["n"] + y["std"] ** 2 / y["n"])


def markdown(agg: dict, arms: list[str], seeds: list[int]) -> str:
    def fmt(st: dict[str, float]) -> str:
        digits = 3 if abs(st["mean"]) < 10 else 1
        sd = "n/a" if math.isnan(st["std"]) else f"{st['std']:.{digits}f}"
        return f"{st['mean']:.{digits}f} ± {sd} [{st['min']:.{digits}f}, {st['max']:.{digits}f}]"

    lines = [f"Mean ± sample std [min, max] over seeds {seeds}.", "",
             "| metric | " + " | ".join(f"({a}) {ARMS[a][0]}" for a in arms) + " |",
             "| --- | " + " | ".join("---" for _ in arms) + " |"]
    for key, title, _ in METRICS:
        cells = [fmt(agg[a][key]) if key in agg[a] else "—" for a in arms]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    pairs = [(x, y) for x, y in (("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("r", "c"), ("r", "d"))
             if x in arms and y in arms]
    if pairs and len(seeds) > 1:
        lines += ["", "Differences of means (second minus first) against 2 standard errors from the seed "
                      "spread; `noise` = |difference| < 2 SE (a rough screen, not a significance test).", "",
                  "| metric | " + " | ".join(f"{y} − {x}" for x, y in pairs) + " |",
                  "| --- | " + " | ".join("---" for _ in pairs) + " |"]
        for key, title, higher in METRICS[:9]:
            cells = []
            for x, y in pairs:
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
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (one (arm, seed) each)")
    p.add_argument("--smoke", action="store_true", help="CI size: 2 steps, tiny fine-tuning and probe caps")
    for field, default in asdict(Settings(prepared="")).items():
        if field != "prepared":
            p.add_argument("--" + field.replace("_", "-"), type=type(default), default=None,
                           help=f"default {default} (smoke: {SMOKE.get(field, default)})")
    args = p.parse_args(argv)
    base = {**(SMOKE if args.smoke else {})}
    base.update({f: getattr(args, f) for f in asdict(Settings(prepared="")) if f != "prepared"
                 and getattr(args, f) is not None})
    s = Settings(prepared=str(args.prepared.resolve()), **base)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"machine": machine(), "bench": "ablation", "settings": asdict(s),
                              "arms": {a: ARMS[a][0] for a in args.arms}, "seeds": args.seeds}
    t0 = time.perf_counter()
    record["probe_item_stats"] = build_probe_items(s, out)
    # the untrained reference (r) skips pretraining: its runs go last, so that the parallel jobs end together
    tasks = sorted([(arm, seed, asdict(s), str(out)) for seed in args.seeds for arm in args.arms],
                   key=lambda t: (t[0] == "r", args.seeds.index(t[1])))
    print(f"ablation: {len(tasks)} runs ({len(args.arms)} arms x {len(args.seeds)} seeds), {args.jobs} process(es), "
          f"{s.steps} steps of batch {s.batch_size} x {s.max_length} tokens", flush=True)
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
    agg = aggregate(results, args.arms)
    record.update({"runs": results, "summary": agg, "wall_s": time.perf_counter() - t0})
    md = markdown(agg, args.arms, args.seeds)
    (out / "results.md").write_text(md, encoding="utf-8")
    from plots import plot_ablation_metrics, plot_loss_curves

    plot_loss_curves({a: [out / "runs" / f"{a}-seed{sd}" / "metrics.jsonl" for sd in args.seeds]
                      for a in args.arms if a != "r"}, {a: ARMS[a][0] for a in args.arms}, out / "loss_curves.png")
    plot_ablation_metrics(agg, {a: ARMS[a][0] for a in args.arms}, [(k, t) for k, t, _ in METRICS[:9]],
                          out / "ablation_metrics.png")
    print(md)
    print(f"wall {record['wall_s']:.0f} s; wrote {out / 'results.md'}, {out / 'loss_curves.png'}, "
          f"{out / 'ablation_metrics.png'}")
    finish(record, out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
