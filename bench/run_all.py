"""Run every benchmark question of bench/ in turn, from a fresh clone.

    python bench/run_all.py --out runs/bench                 # default sizes: about half an hour on 2 free cores
    python bench/run_all.py --out runs/bench --smoke         # CI sizes, a few minutes
    python bench/run_all.py --out runs/bench --only collator gpu

The demo data (`ckbert demo-data`, then `ckbert prepare` of People's Daily + CMeKG) is built under
OUT/ when absent. Each section runs its entry point in a fresh process, with its output in
OUT/<section>.log; the GPU section runs bench/gpu_kernels.py only when CUDA is available and
otherwise prints, and records, that it was not run. OUT/run_all.json lists every section with its
command, exit status and wall time; OUT/throughput.png plots the throughput numbers found.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, finish, machine  # noqa: E402

BENCH = REPO / "bench"


def sections(out: Path, prepared: Path, smoke: bool, starter_prepared: Path | None = None) -> dict[str, list[str] | None]:
    """Section name -> argv after `python` (None: nothing to run on this machine)."""
    import torch

    py = [sys.executable]
    s = {
        "collator": py + [str(BENCH / "collator_speed.py"), "--prepared", str(prepared),
                          "--out", str(out / "collator_speed.json")]
        + (["--batches", "4", "--warmup", "1", "--batch-size", "8"] if smoke else []),
        "neg_sampling": py + [str(BENCH / "neg_sampling.py"), "--prepared", str(prepared),
                              "--out", str(out / "neg_sampling.json")] + (["--rows", "200"] if smoke else []),
        "train_step": py + [str(BENCH / "train_step.py"), "--prepared", str(prepared),
                            "--out", str(out / "train_step.json")]
        # the variant matrix (MLM / MLM + CMRM x fp32 / bf16 x torch / triton kernels, HF at both
        # precisions). HF's bf16 steps dominate on this 2-core CPU (about 28 s tiny at batch 8, 10-70 s
        # base at batch 2): train_step.py's own defaults (batch 32, 8 steps) would take hours here
        + (["--sizes", "tiny", "--steps", "1", "--warmup", "0", "--batch-size", "2",
            "--layers", "1", "--threads", "1"] if smoke
           else ["--sizes", "tiny", "base", "--steps", "1", "--warmup", "1", "--batch-size", "8", "--threads", "1"])
        + ["--matrix"],
        "prepare": py + [str(BENCH / "prepare_speed.py"), "--demo", str(out / "demo")]
        + (["--max-chars", "20000"] if smoke else []),
        "kg_scale": py + [str(BENCH / "kg_scale.py")] + (["--sizes", "100000"] if smoke else []),
        "gpu": (py + [str(BENCH / "gpu_kernels.py"), "--json", str(out / "gpu_kernels.json")]
                + (["--smoke"] if smoke else []))
        if torch.cuda.is_available() else None,
        # continued from the starter: on the demo data prepared with the starter's tokenizer (as
        # run_pretrain.sh does); the smoke test trains from scratch on the small dataset instead
        "ablation": py + [str(BENCH / "ablation.py"), "--out", str(out / "ablation")]
        + (["--prepared", str(prepared), "--smoke", "--jobs", "1", "--arms", "c", "d", "--seeds", "0"] if smoke
           else ["--prepared", str(starter_prepared or prepared)]),
    }
    return s


def foreign_packages() -> list[str]:
    """The ckbert packages this interpreter imports from outside this checkout (e.g. the editable
    install of another clone's venv): benchmarking them would silently measure other code."""
    import importlib

    out = []
    # one module of each package (the packages are namespace packages: no __file__ of their own)
    for name in ("ckbert.cli", "ckbert.data_prep.prepare", "ckbert.finetune.run", "ckbert.kernels.ops"):
        path = Path(importlib.import_module(name).__file__).resolve()
        if REPO not in path.parents:
            out.append(f"{name.rpartition('.')[0]} from {path.parent}")
    return out


def ensure_demo(out: Path) -> Path:
    """OUT/demo (`ckbert demo-data`), built when absent."""
    demo = out / "demo"
    if not (demo / "demo_data.json").is_file():
        subprocess.run([sys.executable, "-m", "ckbert.cli", "demo-data", "--out", str(demo)], check=True)
    return demo


def ensure_starter_data(out: Path) -> Path:
    """OUT/prepared-starter: the demo corpus and both demo graphs with the starter's tokenizer
    (run_pretrain.sh's recipe), for the ablation that continues models/starter."""
    demo = ensure_demo(out)
    prepared = out / "prepared-starter"
    if not (prepared / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "ckbert.cli", "prepare", "--corpus", str(demo / "people_daily.txt"),
                        "--format", "pretagged", "--annotator", "pretagged", "--kg", str(demo / "cmekg.tsv"),
                        str(demo / "location.tsv"), "--kg-inverse-edges", "--tokenizer", str(REPO / "models" / "starter"), "--seq-len", "126",
                        "--out", str(prepared), "--quiet"], check=True)
    return prepared


def ensure_demo_data(out: Path, seq_len: int) -> Path:
    """OUT/demo (ckbert demo-data) and OUT/prepared-<seq_len> (ckbert prepare), each built when absent.

    The KG store gets CMeKG's inverse edges (`--kg-inverse-edges`): the People's Daily words that
    link to CMeKG are mostly objects of its triples, which have no out-edges, so without them CMRM
    finds a positive for about 1 mention in 500 rows and arm (d) of the ablation would be arm (c)."""
    demo = ensure_demo(out)
    prepared = out / f"prepared-{seq_len}"
    ckbert = [sys.executable, "-m", "ckbert.cli"]
    if not (prepared / "manifest.json").is_file():
        subprocess.run(ckbert + ["prepare", "--corpus", str(demo / "people_daily.txt"), "--format", "pretagged",
                                 "--annotator", "pretagged", "--kg", str(demo / "cmekg.tsv"), "--kg-inverse-edges", "--out", str(prepared),
                                 "--build-vocab", "--vocab-size", "8000", "--seq-len", str(seq_len), "--quiet"],
                       check=True)
    return prepared


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prepared", type=Path, help="an existing prepared dataset (default: build the demo one)")
    p.add_argument("--seq-len", type=int, default=62, help="rows of the demo dataset built when --prepared is absent")
    p.add_argument("--smoke", action="store_true", help="CI sizes")
    p.add_argument("--only", nargs="+", help="run only these sections")
    args = p.parse_args(argv)
    foreign = foreign_packages()
    if foreign:
        print(f"error: {sys.executable} imports {'; '.join(foreign)}, not this checkout ({REPO}); "
              "give this checkout its own environment (scripts/setup_env.sh)", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "bench": "run_all", "smoke": args.smoke, "sections": []}
    names = list(sections(out, Path("."), args.smoke))
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"unknown section(s) {unknown}; choose from {names}")
        names = [n for n in names if n in args.only]
    if args.prepared is None and any(n in ("collator", "neg_sampling", "train_step") or (n == "ablation" and args.smoke)
                                     for n in names):
        prepared = ensure_demo_data(out, args.seq_len)
    else:
        prepared = args.prepared or Path(".")
        if "prepare" in names:
            ensure_demo(out)
    starter_prepared = None
    if "ablation" in names and not args.smoke:
        starter_prepared = args.prepared or ensure_starter_data(out)
    plan = sections(out, prepared.resolve(), args.smoke, starter_prepared and starter_prepared.resolve())
    failed = []
    for name in names:
        cmd = plan[name]
        entry = {"section": name, "command": None if cmd is None else " ".join(cmd)}
        if cmd is None:
            print(f"== {name}: NOT RUN: no CUDA device on this machine (torch.cuda.is_available() is False); "
                  "GPU numbers are not measured here", flush=True)
            entry["status"] = "not run: no CUDA device"
        elif not Path(cmd[1]).is_file():
            print(f"== {name}: NOT RUN: {cmd[1]} does not exist in this checkout", flush=True)
            entry["status"] = "not run: entry point missing"
            failed.append(name)
        else:
            print(f"== {name}: {' '.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            with open(out / f"{name}.log", "w", encoding="utf-8") as log:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            entry.update({"returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
                          "log": str(out / f"{name}.log")})
            entry["status"] = "ok" if proc.returncode == 0 else "failed"
            tail = (out / f"{name}.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            print("\n".join("   " + line for line in tail), flush=True)
            print(f"== {name}: {entry['status']} in {entry['wall_s']} s", flush=True)
            if proc.returncode != 0:
                failed.append(name)
        record["sections"].append(entry)
    found = [json.loads(f.read_text(encoding="utf-8")) for f in (out / "collator_speed.json", out / "train_step.json")
             if f.is_file()]
    if found:
        from plots import plot_throughput

        print(f"wrote {plot_throughput(found, out / 'throughput.png')}")
    record["failed"] = failed
    finish(record, out / "run_all.json")
    if failed:
        print(f"failed or missing: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
