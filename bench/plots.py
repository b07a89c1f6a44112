"""PNG plots for the benchmarks (matplotlib, Agg backend: no display needed).

    python bench/plots.py throughput FILE.json [FILE.json ...] --out throughput.png
    python bench/plots.py heldout starter=runs/starter/metrics.jsonl --out starter_curve.png

`plot_loss_curves` and `plot_ablation_metrics` are called by bench/ablation.py; `plot_throughput`
by bench/collator_speed.py and bench/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, list[Path]], names: dict[str, str], out: Path) -> Path:
    """Training MLM loss per arm (mean over seeds, min-max band) and, in a second panel, the arm's
    own-mask eval MLM loss. Each arm predicts different targets, so the curves show convergence,
    not which arm is better (bench/ablation.py's held-out losses with shared masks do that)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, files in runs.items():
        per_seed = [[r for r in _read_jsonl(f) if "mlm" in r] for f in files if f.is_file()]
        per_seed = [s for s in per_seed if s]
        if not per_seed:
            continue
        steps = [r["step"] for r in per_seed[0]]
        n = min(len(s) for s in per_seed)
        vals = [[s[i]["mlm"] for s in per_seed] for i in range(n)]
        mean = [sum(v) / len(v) for v in vals]
        line, = ax.plot(steps[:n], mean, label=f"({arm}) {names[arm]}, seeds: {len(per_seed)}")
        ax.fill_between(steps[:n], [min(v) for v in vals], [max(v) for v in vals], alpha=0.2, color=line.get_color())
        evals = [[r for r in _read_jsonl(f) if "eval_mlm" in r] for f in files if f.is_file()]
        evals = [e for e in evals if e]
        if evals:
            m = min(len(e) for e in evals)
            ax2.plot([evals[0][i]["step"] for i in range(m)],
                     [sum(e[i]["eval_mlm"] for e in evals) / len(evals) for i in range(m)], "o-",
                     color=line.get_color(), label=f"({arm}) {names[arm]}")
    ax.set(title="training MLM loss (mean over seeds, min-max band)", xlabel="step", ylabel="loss")
    ax2.set(title="held-out MLM loss, each arm's own masks", xlabel="step", ylabel="loss")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_ablation_metrics(agg: dict[str, dict[str, dict[str, float]]], names: dict[str, str],
                          metrics: list[tuple[str, str]], out: Path) -> Path:
    """One small bar panel per metric: mean per arm with the seed min-max as an error bar."""
    cols = 4
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    arms = list(agg)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes.flat, metrics, strict=False):
        present = [a for a in arms if key in agg[a]]
        means = [agg[a][key]["mean"] for a in present]
        # clamped: equal values on every seed (the starter arm) can put the float mean an ulp outside
        lo = [max(0.0, agg[a][key]["mean"] - agg[a][key]["min"]) for a in present]
        hi = [max(0.0, agg[a][key]["max"] - agg[a][key]["mean"]) for a in present]
        ax.bar(range(len(present)), means, yerr=[lo, hi], capsize=3,
               color=[colors[arms.index(a) % len(colors)] for a in present])
        ax.set_xticks(range(len(present)), [f"({a})" for a in present])
        ax.set_title(title, fontsize=8)
        if means:
            bottom = min(agg[a][key]["min"] for a in present)
            top = max(agg[a][key]["max"] for a in present)
            pad = 0.3 * (top - bottom) or 0.05 * max(abs(top), 1.0)  # equal bars: a visible band
            ax.set_ylim(bottom - pad, top + pad)
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    legend = ", ".join(f"({a}) {names[a]}" for a in arms)
    fig.suptitle(f"ablation: mean per arm, bars = seed min-max (y axes do not start at 0)\n{legend}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput_series(record: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(group, label, value) bars from a benchmark's JSON; knows the result shapes of bench/."""
    bars: list[tuple[str, str, float]] = []
    if record.get("bench") == "collator_speed":
        for r in record["collators"]:
            bars.append(("collator batches/s", r["collator"], r["batches_per_s"]))
        for r in record["dataloader"]:
            bars.append(("DataLoader steady batches/s", f"{r['collator']}, {r['workers']} workers",
                         r["steady_batches_per_s"]))
    if isinstance(record.get("sizes"), list) and record["sizes"] and "ours_tokens_per_s" in record["sizes"][0]:
        for r in record["sizes"]:  # bench/train_step.py
            bars.append(("training step tokens/s", f"{r['size']}: ckbert LMLM + CMRM", r["ours_tokens_per_s"]))
            bars.append(("training step tokens/s", f"{r['size']}: HF BertForMaskedLM", r["hf_tokens_per_s"]))
    return bars


def plot_throughput(records: list[dict[str, Any]], out: Path) -> Path:
    """Horizontal bars, one panel per group, from the benchmarks' JSON outputs."""
    bars = [b for rec in records for b in throughput_series(rec)]
    groups = list(dict.fromkeys(g for g, _, _ in bars))
    if not groups:
        raise ValueError("no throughput numbers in these JSON files")
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.45 * len(bars) + 1.2 * len(groups)), squeeze=False)
    for ax, group in zip(axes.flat, groups, strict=True):
        mine = [(label, v) for g, label, v in bars if g == group]
        ax.barh(range(len(mine)), [v for _, v in mine], color="tab:blue")
        ax.set_yticks(range(len(mine)), [label for label, _ in mine], fontsize=8)
        ax.invert_yaxis()
        for i, (_, v) in enumerate(mine):
            ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
        ax.set_title(group, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, max(v for _, v in mine if not math.isnan(v)) * 1.2)
    machine = next((r["machine"] for r in records if "machine" in r), {})
    fig.suptitle(f"{machine.get('cpu_count')} CPUs, GPU: {machine.get('gpu') or 'none'}, "
                 f"{machine.get('date_utc', '')} UTC, load avg at start {machine.get('load_avg_start')}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_heldout(runs: dict[str, Path], out: Path, title: str) -> Path:
    """Held-out curves of pretraining runs (metrics.jsonl with ckbert.evaluation.heldout's eval records): MLM
    loss on random-token masks against training tokens (left) and top-1 (right), the unigram
    baseline dashed; CMRM accuracy against chance when the runs have it."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    unigram = None
    for name, path in runs.items():
        rows = _read_jsonl(path)
        tokens = {r["step"]: r["tokens"] for r in rows if "tokens" in r}
        # an eval record without a token count (runs logged before evals carried one) is left out
        evals = [r for r in rows if "eval_rand_mlm" in r and ("tokens" in r or r["step"] in tokens or r["step"] == 0)]
        xs = [r.get("tokens", tokens.get(r["step"], 0)) / 1e6 for r in evals]
        ax.plot(xs, [r["eval_rand_mlm"] for r in evals], marker=".", label=name)
        ax2.plot(xs, [100 * r["eval_rand_top1"] for r in evals], marker=".", label=name)
        if evals:
            unigram = evals[-1]
    if unigram is not None:
        ax.axhline(unigram["eval_rand_unigram_mlm"], color="k", ls="--", lw=1, label="unigram baseline")
        ax2.axhline(100 * unigram["eval_rand_unigram_top1"], color="k", ls="--", lw=1, label="unigram baseline")
    ax.set_ylabel("held-out MLM loss, random-token masks (nats)")
    ax2.set_ylabel("held-out top-1 accuracy, random-token masks (%)")
    for a in (ax, ax2):
        a.set_xlabel("training tokens (millions)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput", help="bars from benchmark JSON files")
    t.add_argument("files", type=Path, nargs="+")
    t.add_argument("--out", type=Path, required=True)
    h = sub.add_parser("heldout", help="held-out curves from pretraining runs' metrics.jsonl")
    h.add_argument("runs", nargs="+", help="NAME=OUT/metrics.jsonl")
    h.add_argument("--title", default="held-out evaluation")
    h.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.what == "heldout":
        runs = dict(item.split("=", 1) for item in args.runs)
        print(f"wrote {plot_heldout({k: Path(v) for k, v in runs.items()}, args.out, args.title)}")
        return 0
    records = [json.loads(f.read_text(encoding="utf-8")) for f in args.files]
    print(f"wrote {plot_throughput(records, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
