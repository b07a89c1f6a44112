"""From-scratch recipes side by side: held-out MLM loss (random-token masks) against tokens seen.

    python bench/starter_recipe.py --prepared runs/demo/prepared --out runs/recipe \
        --tokens 1500000 --jobs 2 [--arms base pre_ln ...]

Every arm is `configs/pretrain/starter.yaml` with a few overrides, trained from scratch for the
same token budget (its lr schedule runs over that budget), with one torch thread per run and
`--jobs` runs at a time, so that arms running together share the machine equally. Each run's own
held-out evaluation (ckbert.evaluation.heldout: random-token masks, every target [MASK], beside the unigram
baseline) is read from its metrics.jsonl. Writes OUT/recipe.json, OUT/recipe.md (a table) and
OUT/recipe.png (curves); the wall time per arm is reported beside the tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, finish, machine  # noqa: E402

BASE = REPO / "configs" / "pretrain" / "starter.yaml"
# arm -> (what it changes, overrides of the starter recipe)
ARMS: dict[str, tuple[str, list[str]]] = {
    "base": ("the starter recipe as committed", []),
    "pre_ln": ("pre-LN layout (MegatronBert)", ["model=configs/model/tiny_pre_ln.yaml"]),
    "lr_2e-3": ("peak lr 2e-3", ["optim.lr=2e-3"]),
    "lr_5e-4": ("peak lr 5e-4", ["optim.lr=5e-4"]),
    "warmup_10": ("warm-up 10% of the budget", ["optim.warmup_ratio=0.1"]),
    "dropout_0.1": ("dropout 0.1 in pretraining", ["train.dropout=0.1"]),
    "zero_bias": ("decoder bias started at 0, not at log unigram", ["train.unigram_decoder_bias=false"]),
    "mask_30": ("30% of the tokens masked", ["masking.rate=0.3"]),
    "whole_word": ("whole-word masks (15%)", ["masking.strategy=whole_word"]),
    "lmlm": ("LMLM masks (words mode, 15%)", ["masking.strategy=lmlm"]),
    "batch_64": ("batch 64", ["train.batch_size=64"]),
    "batch_16": ("batch 16", ["train.batch_size=16"]),
    "clip_1": ("clip 1.0", ["optim.clip_norm=1.0"]),
    "mask_20": ("20% of the tokens masked", ["masking.rate=0.2"]),
    "batch_ramp": ("batch ramped from 16 to 64 over the first half of the budget",
                   ["train.batch_size=16", "train.grad_accum=4", "train.batch_ramp=0.5"]),
}


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    out = args.out / arm
    if (out / "done.json").is_file():
        return json.loads((out / "done.json").read_text(encoding="utf-8"))
    overrides = [f"data.prepared={args.prepared}", f"out={out}", f"train.max_tokens={args.tokens}",
                 f"train.eval_every={args.eval_every}", f"train.log_every={args.eval_every}",
                 f"train.save_every={args.eval_every * 5}", *ARMS[arm][1]]
    resume = ["--resume"] if (out / "checkpoints" / "latest").is_file() else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(args.out / f"{arm}.log", "a", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "ckbert.cli", "pretrain", "--config", str(BASE), *resume,
                               *overrides], env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {proc.returncode}); see {args.out / f'{arm}.log'}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    tokens = {r["step"]: r["tokens"] for r in rows if "tokens" in r}
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r}
    curve = [{"step": r["step"], "tokens": r.get("tokens", tokens.get(r["step"], 0)),
              "elapsed_s": r.get("elapsed_s", elapsed.get(r["step"], 0.0)),
              **{k: r[k] for k in ("eval_rand_mlm", "eval_rand_top1", "eval_rand_unigram_mlm",
                                   "eval_rand_unigram_top1", "eval_cosine")}}
             for r in rows if "eval_rand_mlm" in r]
    result = {"arm": arm, "what": ARMS[arm][0], "overrides": ARMS[arm][1], "curve": curve,
              "wall_s": round(time.perf_counter() - t0, 1), "final": curve[-1]}
    (out / "done.json").write_text(json.dumps(result), encoding="utf-8")
    return result


def markdown(results: list[dict], tokens: int) -> str:
    lines = ["| arm | what | held-out MLM (random-token masks) | top-1 | unigram MLM / top-1 | cosine | train time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: r["final"]["eval_rand_mlm"]):
        f = r["final"]
        lines.append(f"| {r['arm']} | {r['what']} | {f['eval_rand_mlm']:.3f} | {100 * f['eval_rand_top1']:.1f}% | "
                     f"{f['eval_rand_unigram_mlm']:.3f} / {100 * f['eval_rand_unigram_top1']:.1f}% | "
                     f"{f['eval_cosine']:.2f} | {f['elapsed_s'] / 60:.1f} min |")
    return f"Every arm: {tokens:,} training tokens.\n\n" + "\n".join(lines) + "\n"


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for r in sorted(results, key=lambda r: r["final"]["eval_rand_mlm"]):
        c = r["curve"]
        ax.plot([p["tokens"] / 1e6 for p in c], [p["eval_rand_mlm"] for p in c], marker=".", label=r["arm"])
    if results:
        ax.axhline(results[0]["final"]["eval_rand_unigram_mlm"], color="k", ls="--", lw=1, label="unigram")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("held-out MLM loss, random-token masks (nats)")
    ax.set_title("From scratch: tiny model, recipes side by side")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/recipe"))
    p.add_argument("--tokens", type=int, default=1_500_000, help="training tokens per arm")
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "tokens": args.tokens, "threads": args.threads, "jobs": args.jobs}
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda arm: run_arm(arm, args), args.arms))
    record["results"] = results
    table = markdown(results, args.tokens)
    print(table)
    (args.out / "recipe.md").write_text(table, encoding="utf-8")
    plot(results, args.out / "recipe.png")
    finish(record, args.out / "recipe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
