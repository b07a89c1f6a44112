"""One device run that proves the accelerator layer (issue 15). On a lent GPU machine, from the
repository root (bench/gpu_check.sh sets up the environment first):

    bash bench/gpu_check.sh                        # everything, about 8 minutes, results under $OUT
    python bench/gpu_check.py --smoke --out DIR    # CPU, tiny sizes: every step's code path (tests)

The steps, cheapest and most decisive first. Each runs in its own process under its own time
limit (`--budget`), so a failure or a hang costs that step's minutes only, and the report says
which step failed and why:

1. tests    `pytest -m gpu tests`: the compiled Triton kernels against their references at model
            shapes (no interpreter), the plan against a measured GPU peak;
2. kernels  bench/gpu_kernels.py part 1: each fused op against torch eager and torch.compile at
            BERT shapes, forward + backward time and peak memory;
3. steps    bench/gpu_kernels.py part 2: a training step at sequence 128, bf16, base and large,
            ours (kernels torch / triton) against HF BertForMaskedLM with SDPA: tokens/s, MFU;
4. memory   huge (pre-LN, 1.26B) with full activation checkpointing, bf16, sequence 128: the
            largest micro-batch that fits, searched from what `ckbert plan` predicts, and its
            measured peak (torch.cuda.max_memory_allocated) against the predicted one;
5. starter  the starter recipe (configs/pretrain/starter.yaml) from scratch on the carried demo
            data, then LMLM + CMRM (configs/pretrain/demo.yaml) continued from it; held-out MLM
            through plain transformers (`ckbert eval`, random-token masks, the unigram beside it)
            for the GPU starter, its continuation and the committed CPU starter (models/starter).

Before any step, a preflight checks what the steps import and read (packages, CUDA, the prepared
data) and stops with one line naming what is missing: no device minute goes to a broken setup.
Writes OUT/gpu_check.json (every number), OUT/gpu_check.md (the report) and OUT/<step>.log for
each step: 7 files. The prepared data is the demo's (`./run_pretrain.sh` builds runs/demo/prepared
with the starter's tokenizer); the device run carries it (docs/kernels.md, "The GPU check").
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STEPS = ("tests", "kernels", "steps", "memory", "starter")
# seconds per step on the GPU (about 8 minutes in all, the bound)
BUDGET = {"tests": 60, "kernels": 90, "steps": 80, "memory": 55, "starter": 170}
SMOKE_BUDGET = {"tests": 300, "kernels": 300, "steps": 300, "memory": 120, "starter": 300}
# what the steps import; the device image lacks `datasets` (carried as wheels by gpu_check.sh)
NEEDS = ("torch", "transformers", "datasets", "pyarrow", "safetensors", "tokenizers", "yaml", "numpy", "pytest")
NEEDS_GPU = ("triton",)


# ---- preflight ------------------------------------------------------------------------------
def preflight(prepared: Path, smoke: bool) -> list[str]:
    """What would make a step fail for a reason visible before it starts (one line each)."""
    problems = []
    for module in NEEDS + (() if smoke else NEEDS_GPU) + ("ckbert.data_prep.dataset",):
        try:  # imported, not only found: a wheel that does not fit the image fails here, not in a step
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or whatever a package raises at import
            problems.append(f"python package {module!r} does not import ({type(exc).__name__}: {exc}); "
                            "bench/gpu_check.sh installs the carried .whl/ wheels and this checkout")
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device (torch.cuda.is_available() is False)")
    if not (prepared / "manifest.json").is_file():
        problems.append(f"{prepared}/manifest.json: no prepared dataset (run ./run_pretrain.sh here first, then "
                        f"carry {prepared.relative_to(REPO) if prepared.is_relative_to(REPO) else prepared})")
    if not (REPO / "models" / "starter" / "model.safetensors").is_file():
        problems.append("models/starter/model.safetensors is missing (the committed CPU starter)")
    return problems


# ---- the steps (each in its own process) ----------------------------------------------------
def run_cmd(cmd: list[str], log, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run `cmd` with its output appended to `log`; -> exit status (124 past `timeout`)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout, 1.0), cwd=REPO,
                              env={**os.environ, **(env or {})}).returncode
    except subprocess.TimeoutExpired:
        log.write(f"\n[gpu_check] timed out after {timeout:.0f} s\n")
        return 124


def pytest_counts(text: str) -> dict[str, int]:
    """The last pytest summary line of `text` -> {"passed": n, "failed": n, ...}."""
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error|deselected)", ln)]
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", lines[-1])} \
        if lines else {}


def step_tests(a: argparse.Namespace, out: Path, log) -> dict[str, Any]:
    """`pytest -m gpu tests`: the compiled kernels against their references at model shapes
    (tests/kernels/test_gpu_run.py; the rest of tests/kernels runs the Triton interpreter, which
    is the CPU suite's job) and the plan against a measured GPU peak. Test modules that cannot be
    imported there (they need jieba or pyahocorasick, absent on the device) are collection errors:
    listed, not counted as failures; an error inside a test (`ERROR file::test`) is a failure."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-rfE",
           "-m", "gpu", "tests"]
    start = log.tell()
    rc = run_cmd(cmd, log, a.deadline - time.time())
    log.flush()
    text = Path(log.name).read_bytes()[start:].decode("utf-8", errors="replace")
    errors = re.findall(r"^ERROR (\S+)", text, flags=re.M)
    res = {"rc": rc, **pytest_counts(text), "collection_errors": sorted({e for e in errors if "::" not in e}),
           "test_errors": sorted({e for e in errors if "::" in e})}
    res["ok"] = (not res.get("failed") and not res["test_errors"] and rc != 124
                 and res.get("passed", 0) + res.get("skipped", 0) > 0)
    return res


def step_kernels(a: argparse.Namespace, out: Path, log) -> dict[str, Any]:
    return _gpu_kernels(a, out, log, ["--skip-models"])


def step_steps(a: argparse.Namespace, out: Path, log) -> dict[str, Any]:
    return _gpu_kernels(a, out, log, ["--skip-kernels", "--sizes", "base", "large", "--seqs", "128"])


def _gpu_kernels(a: argparse.Namespace, out: Path, log, extra: list[str]) -> dict[str, Any]:
    target = a.work / f"gpu_kernels{extra[0]}.json"
    target.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "bench" / "gpu_kernels.py"), *extra, "--json", str(target)]
    rc = run_cmd(cmd + (["--smoke"] if a.smoke else []), log, a.deadline - time.time())
    rows = json.loads(target.read_text(encoding="utf-8"))["rows"] if target.is_file() else []
    return {"rc": rc, "ok": rc == 0, "rows": rows}


def step_memory(a: argparse.Namespace, out: Path, log) -> dict[str, Any]:
    """Largest micro-batch of huge (or, smoke, a 2-layer pre-LN model) around the plan's prediction."""
    import torch

    from ckbert import plan
    from ckbert.model import CKBertForPreTraining
    from ckbert.model_config import load_model_config
    from ckbert.parallel import ParallelConfig, apply_activation_checkpointing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seq = 128
    smoke = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
             "vocab_size": 512}  # a multiple of huge's vocab_multiple, as its own 21,248
    config = load_model_config("huge", smoke if a.smoke else None)
    targets = math.ceil(0.15 * seq)
    work = plan.Workload(seq_len=seq, cmrm_tokens=0, mlm_targets=targets, precision="bf16",
                         dropout=config.hidden_dropout_prob > 0)
    setup = plan.Setup(checkpointing="full", device_overhead=False)  # measured: tensors only
    gib = (torch.cuda.get_device_properties(device).total_memory / plan.GIB) if device.type == "cuda" else 4.0
    predicted_max = plan.max_micro_batch(config, work, plan.Setup(checkpointing="full"), gib)
    torch.manual_seed(0)
    with device:
        model = CKBertForPreTraining(config).train()
    apply_activation_checkpointing(model, ParallelConfig(activation_checkpointing="full"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    print(f"[memory] {config.num_hidden_layers}x{config.hidden_size} {config.layout}, {gib:.1f} GiB card, plan's "
          f"max micro-batch {predicted_max}", file=log, flush=True)

    def peak_at(batch: int) -> int | None:
        """Peak bytes of one AdamW training step at `batch` sequences; None when it runs out of memory."""
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(5, config.vocab_size, (batch, seq), generator=g).to(device)
        pos = torch.cat([i * seq + torch.randperm(seq, generator=g)[:targets] for i in range(batch)]).to(device)
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.mlm_loss(model.encode(ids, torch.ones_like(ids)), pos, ids.view(-1)[pos])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            return None

    tried: dict[int, int | None] = {}
    lo, hi = 0, None  # largest batch known to fit, smallest known not to
    batch = max(1, predicted_max)
    while time.time() < a.deadline - 10 and (hi is None or hi - lo > max(1, lo // 50)):
        tried[batch] = peak_at(batch)
        print(f"[memory] micro-batch {batch}: " + ("out of memory" if tried[batch] is None else
                                                    f"peak {tried[batch] / plan.GIB:.2f} GiB"), file=log, flush=True)
        if tried[batch] is None:
            hi = batch
        else:
            lo = batch
        if a.smoke and len(tried) >= 2:
            break
        batch = (lo + hi) // 2 if hi is not None else max(lo + 1, int(lo * 1.25))
    res: dict[str, Any] = {"model": f"{config.num_hidden_layers}x{config.hidden_size} {config.layout}",
                           "gpu_gib": gib, "seq_len": seq, "plan_max_micro_batch": predicted_max,
                           "measured_max_micro_batch": lo, "first_oom": hi,
                           "tried": {str(k): v for k, v in tried.items()}}
    if lo and tried.get(lo):
        predicted = plan.estimate(config, work, setup, lo).peak
        res.update(measured_peak_gib=tried[lo] / plan.GIB, predicted_peak_gib=predicted / plan.GIB,
                   predicted_over_measured=predicted / tried[lo])
    res["ok"] = bool(lo)
    return res


def step_starter(a: argparse.Namespace, out: Path, log) -> dict[str, Any]:
    """The starter recipe from scratch, then a continuation with the demo's recipe; held-out MLM."""
    work = a.work
    cli = [sys.executable, "-m", "ckbert.cli"]
    device = "cuda" if not a.smoke else "cpu"
    rows = 16 if a.smoke else 1024  # held-out rows: the committed starter's (neither starter trains on them)
    common = [f"data.prepared={a.prepared}", f"data.eval_rows={rows}", f"train.device={device}", "train.save_every=0"]
    starter_min, continue_min = (0.15, 0.1) if a.smoke else (a.starter_minutes, a.continue_minutes)
    gpu = [] if a.smoke else ["train.precision=bf16", f"train.batch_size={a.batch_size}",
                              f"data.num_workers={a.workers}", "train.eval_every=500", "train.log_every=100"]
    runs = {"starter": [*common, *gpu, f"out={work / 'starter'}", f"train.max_minutes={starter_min}"],
            "continued": [*common, *gpu, f"out={work / 'continued'}", f"train.max_minutes={continue_min}",
                          f"init_from={work / 'starter_hf'}"]}
    res: dict[str, Any] = {"ok": False}
    recipes = {"starter": "configs/pretrain/starter.yaml", "continued": "configs/pretrain/demo.yaml"}
    for name, overrides in runs.items():
        t0 = time.time()
        rc = run_cmd(cli + ["pretrain", "--config", recipes[name], *overrides], log, a.deadline - time.time() - 30)
        rc = rc or run_cmd(cli + ["export", str(work / name), "--out", str(work / f"{name}_hf"), "--overwrite"], log,
                           a.deadline - time.time())
        metrics = work / name / "metrics.jsonl"
        lines = [json.loads(ln) for ln in metrics.read_text(encoding="utf-8").splitlines()] if metrics.is_file() else []
        res[name] = {"rc": rc, "wall_s": time.time() - t0, "overrides": overrides,
                     "evals": [r for r in lines if "eval_rand_mlm" in r],
                     "last": next((r for r in reversed(lines) if "loss" in r), None)}
        if rc:
            return res
    models = {"gpu_starter": work / "starter_hf", "gpu_continued": work / "continued_hf"}
    cpu_starter = REPO / "models" / "starter"
    if (cpu_starter / "tokenizer.json").read_bytes() == (a.prepared / "tokenizer" / "tokenizer.json").read_bytes():
        models["cpu_starter"] = cpu_starter  # the committed starter, on the same rows (same tokenizer)
    eval_json = work / "eval.jsonl"
    with open(eval_json, "w", encoding="utf-8") as f:
        rc = subprocess.run(cli + ["eval", "--model", *map(str, models.values()), "--name", *models, "--prepared",
                                   str(a.prepared), "--eval-rows", str(rows), "--split", "all", "--json"],
                            stdout=f, stderr=log, cwd=REPO, timeout=max(a.deadline - time.time(), 1)).returncode
    res["eval_rc"] = rc
    res["heldout"] = [{"name": name, **json.loads(ln)} for name, ln in
                      zip(models, [ln for ln in eval_json.read_text(encoding="utf-8").splitlines() if ln.strip()],
                          strict=False)]  # a failed eval leaves fewer lines
    res["ok"] = rc == 0 and len(res["heldout"]) == len(models)
    return res


STEP_FUNCS = {"tests": step_tests, "kernels": step_kernels, "steps": step_steps, "memory": step_memory,
              "starter": step_starter}


# ---- the report -----------------------------------------------------------------------------
def report(record: dict[str, Any]) -> str:
    from gpu_kernels import fmt as _f  # bench/ is on sys.path (main)

    lines = [f"# GPU check, {record['date_utc']}", "", f"device: {record['device']}; torch {record['torch']}; "
             f"command: `{record['command']}`", "", "| step | status | seconds |", "| --- | --- | --- |"]
    for name in record["steps"]:
        r = record["results"].get(name, {})
        lines.append(f"| {name} | {r.get('status', 'not run')} | {r.get('seconds', 0):.0f} |")
    res = record["results"]
    t = res.get("tests", {}).get("result", {})
    if t:
        lines += ["", "## Tests (`pytest -m gpu tests`)", ""] + [f"- {k}: {v}" for k, v in t.items() if k != "ok"]
    for name, title in (("kernels", "Kernels (forward + backward, speed-up vs torch eager)"),
                        ("steps", "Training steps (bf16, speed-up vs HF BertForMaskedLM + SDPA)")):
        rows = res.get(name, {}).get("result", {}).get("rows", [])
        if rows:
            lines += ["", f"## {title}", "", "| case | impl | ms | peak MiB | speed-up | tokens/s | MFU % | note |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in rows:
                lines.append("| " + " | ".join([r["case"], r["impl"], _f(r["ms"], ".3f"), _f(r["peak_mib"], ".0f"),
                                               _f(r["speedup"], ".2f"), _f(r["tokens_per_s"], ".0f"),
                                               _f(None if r["mfu"] is None else 100 * r["mfu"], ".1f"),
                                               r["note"]]) + " |")
    m = res.get("memory", {}).get("result", {})
    if m:
        lines += ["", "## Memory: huge, full activation checkpointing, bf16, sequence 128", "",
                  f"- {m['model']}, card {m['gpu_gib']:.1f} GiB: plan's max micro-batch {m['plan_max_micro_batch']}, "
                  f"measured largest that fits {m['measured_max_micro_batch']} (first out of memory: {m['first_oom']})"]
        if "measured_peak_gib" in m:
            lines.append(f"- at micro-batch {m['measured_max_micro_batch']}: measured peak {m['measured_peak_gib']:.2f} "
                         f"GiB, predicted {m['predicted_peak_gib']:.2f} GiB (predicted / measured "
                         f"{m['predicted_over_measured']:.3f}; target within 10%)")
    s = res.get("starter", {}).get("result", {})
    if s.get("heldout"):
        lines += ["", "## Starter at GPU speed (held-out rows, random-token masks, plain transformers)", "",
                  "| model | MLM loss | top-1 % | unigram loss |", "| --- | --- | --- | --- |"]
        for h in s["heldout"]:
            lines.append(f"| {h.get('name')} | {_f(h.get('eval_rand_mlm'), '.3f')} | "
                         f"{_f(100 * h['eval_rand_top1'] if 'eval_rand_top1' in h else None, '.1f')} | "
                         f"{_f(h.get('eval_rand_unigram_mlm'), '.3f')} |")
        for name in ("starter", "continued"):
            last = (s.get(name) or {}).get("last") or {}
            lines.append(f"\n{name}: {last.get('step', '?')} steps, {last.get('tokens', '?')} tokens, "
                         f"{(s.get(name) or {}).get('wall_s', 0):.0f} s wall")
    return "\n".join(lines) + "\n"


# ---- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    p.add_argument("--prepared", type=Path, default=REPO / "runs" / "demo" / "prepared")
    p.add_argument("--work", type=Path, default=Path("/tmp/ckbert_gpu_check"),
                   help="checkpoints and step results (kept out of --out, whose files come back)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the code path of every step")
    p.add_argument("--starter-minutes", type=float, default=1.5)
    p.add_argument("--continue-minutes", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128, help="starter and continuation on the GPU")
    p.add_argument("--workers", type=int, default=6, help="DataLoader workers on the GPU machine")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # internal: run one step in this process
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.out = a.out.resolve()
    a.prepared = a.prepared.resolve()
    a.work = a.work.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.step:  # one step, in its own process: its result as JSON next to its log
        with open(a.out / f"{a.step}.log", "a", encoding="utf-8") as log:
            result = STEP_FUNCS[a.step](a, a.out, log)
        (a.work / f"{a.step}.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        return 0 if result.get("ok") else 1

    problems = preflight(a.prepared, a.smoke)
    if problems:
        for line in problems:
            print(f"gpu_check: error: {line}", file=sys.stderr)
        return 2
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from _util import machine

    record = {**machine(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)",
              "steps": a.steps, "smoke": a.smoke, "results": {}}
    budget = SMOKE_BUDGET if a.smoke else BUDGET
    for name in a.steps:
        t0 = time.time()
        deadline = t0 + budget[name]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--deadline", str(deadline),
               "--out", str(a.out), "--work", str(a.work), "--prepared", str(a.prepared), "--starter-minutes", str(a.starter_minutes),
               "--continue-minutes", str(a.continue_minutes), "--batch-size", str(a.batch_size),
               "--workers", str(a.workers)] + (["--smoke"] if a.smoke else [])
        print(f"== {name} (at most {budget[name]} s)", flush=True)
        result_file = a.work / f"{name}.json"
        result_file.unlink(missing_ok=True)  # never report an earlier run's result
        try:
            rc = subprocess.run(cmd, cwd=REPO, timeout=budget[name] + 15).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc}; see {name}.log)"
        except subprocess.TimeoutExpired:
            status = f"timed out after {budget[name] + 15} s (see {name}.log)"
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        record["results"][name] = {"status": status, "seconds": time.time() - t0, "result": result}
        print(f"   {status}, {time.time() - t0:.0f} s", flush=True)
        (a.out / "gpu_check.json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
        (a.out / "gpu_check.md").write_text(report(record), encoding="utf-8")
    print((a.out / "gpu_check.md").read_text(encoding="utf-8"))
    return 0 if all(r["status"] == "ok" for r in record["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
