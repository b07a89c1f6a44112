"""`ckbert clue --model DIR --data-root DIR --tasks all|afqmc,tnews,... --out DIR [key=value ...]`.

Runs several CLUE tasks one after another, each with its own recipe from `configs/finetune/`,
then prints and saves one results table (results.md, results.json) next to the published
reference scores, and zips every submission file as `submit_<name>_<date>.zip`.
Overrides apply to every task (``max_steps=100``) or to one (``afqmc.max_steps=100``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from ckbert.errors import UserError
from ckbert.finetune.hparams import load_config
from ckbert.finetune.submission import write_text, write_zip
from ckbert.finetune.tasks import CLUE_TASKS, TASKS
from ckbert.hf_load import load_tokenizer, max_positions
from ckbert.outputs import check_out_dir, output_dir, write_json

# Published test-set scores from clue.md: (BERT-base, RoBERTa-wwm-ext). Ours are dev scores.
REFERENCE: dict[str, tuple[float, float]] = {
    "afqmc": (73.70, 74.04),
    "tnews": (56.58, 56.94),
    "iflytek": (60.29, 60.31),
    "cmnli": (79.69, 80.51),
    "cluewsc2020": (62.0, 67.8),
    "csl": (80.36, 81.0),
    "cmrc2018": (71.60, 75.20),
    "chid": (82.04, 83.62),
    "c3": (64.50, 66.50),
}
CLASSIFICATION_AVG = ["afqmc", "tnews", "iflytek", "cmnli", "cluewsc2020", "csl"]
# Folder names a user may have unpacked each `<name>_public.zip` into, under --data-root.
FOLDERS = {name: (name, f"{name}_public") for name in CLUE_TASKS}
FOLDERS["cluewsc2020"] = ("cluewsc2020", "cluewsc2020_public", "cluewsc", "wsc")
FOLDERS["cmrc2018"] = ("cmrc2018", "cmrc2018_public", "cmrc")


def parse_tasks(spec: str) -> list[str]:
    if spec == "all":
        return list(CLUE_TASKS)
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError(f"--tasks {spec!r} names no task (known: {', '.join(CLUE_TASKS)}, or 'all')")
    for name in names:
        if name not in CLUE_TASKS:
            raise UserError(f"unknown CLUE task {name!r} (known: {', '.join(CLUE_TASKS)}, or 'all')")
    return names


def task_folder(root: Path, task: str) -> Path:
    for name in FOLDERS[task]:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"no data folder for {task} (looked for {', '.join(FOLDERS[task])})", path=root)


def split_overrides(overrides: list[str], task: str) -> list[str]:
    """Global ``key=value`` plus this task's ``task.key=value`` (prefix removed)."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        head, _, rest = key.partition(".")
        if head in TASKS:
            if head == task:
                out.append(item[len(head) + 1 :])
        else:
            out.append(item)
    return out


def results_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | metric | dev (this model) | BERT-base test | RoBERTa-wwm-ext test | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ref = REFERENCE.get(r["task"])
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['dev'][r['metric']]:.2f} | "
            f"{f'{ref[0]:.2f}' if ref else '-'} | {f'{ref[1]:.2f}' if ref else '-'} | {r['notes']} |"
        )
    done = {r["task"]: r["dev"][r["metric"]] for r in rows}
    if all(t in done for t in CLASSIFICATION_AVG):
        avg = sum(done[t] for t in CLASSIFICATION_AVG) / len(CLASSIFICATION_AVG)
        lines.append(f"| classification avg | accuracy | {avg:.2f} | 68.77 | 70.10 | 6 tasks of clue.md |")
    lines.append("")
    lines.append("Dev scores of this run; the references are the CLUE test leaderboard (clue.md).")
    return "\n".join(lines) + "\n"


def _notes(stats: dict[str, int]) -> str:
    keys = ("truncated", "windowed", "chunked", "dropped", "skipped", "cut")
    return ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if v and any(w in k for w in keys)) or "-"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckbert clue", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="Hugging Face model folder (BERT family)")
    p.add_argument("--data-root", required=True, type=Path, help="folder holding one unpacked folder per task")
    p.add_argument("--tasks", default="all", help=f"'all' or a comma list of: {', '.join(CLUE_TASKS)}")
    p.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per task); must be "
                   "new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (when the run succeeds)")
    p.add_argument("--name", help="model name in the submission zip (default: the model folder name)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (task.key=value for one task)")
    args = p.parse_args(argv)
    from ckbert.finetune.train import finetune

    if not args.data_root.is_dir():
        raise UserError("data root not found", path=args.data_root)
    tasks = parse_tasks(args.tasks)
    folders = {t: task_folder(args.data_root, t) for t in tasks}  # fail before hours of training
    configs = {t: load_config(t, None, split_overrides(args.overrides, t)) for t in tasks}
    limit = max_positions(args.model)
    load_tokenizer(args.model)  # a folder without (or with a wrong) tokenizer fails here, not after a task
    for t, cfg in configs.items():
        if cfg.max_length > limit:
            raise UserError(f"{t}: max_length {cfg.max_length} exceeds the model's max_position_embeddings "
                            f"{limit}; set {t}.max_length={limit}", path=args.model)
    check_out_dir(args.out, args.overwrite)
    name = args.name or args.model.resolve().name
    rows, submissions = [], []
    # Built in a hidden sibling and moved to --out when every task has finished; a failed run keeps
    # its finished tasks there (named on stderr) and leaves --out as it was.
    with output_dir(args.out, args.overwrite, keep_partial=True) as staging:
        try:
            for t in tasks:
                results = finetune(t, args.model, folders[t], staging / t, configs[t])
                rows.append({**{k: results[k] for k in ("task", "metric", "dev", "dev_mean", "dev_std", "best_seed",
                                                        "stats")}, "notes": _notes(results["stats"])})
                if "submission_file" in results:
                    submissions.append(staging / t / results["submission_file"])
                table = results_table(rows)  # rewritten after every task: a crash keeps the finished rows
                write_text(staging / "results.md", table)
                write_json(staging / "results.json", {"model": str(args.model), "tasks": rows})
            zip_name = write_zip(submissions, staging, name).name if submissions else None
        except BaseException:
            if rows:
                print(f"ckbert clue: the {len(rows)} finished task(s) of this run are kept in {staging}",
                      file=sys.stderr)
            else:
                shutil.rmtree(staging, ignore_errors=True)
            raise
    if zip_name is not None:
        print(f"submission: {args.out / zip_name} ({', '.join(s.name for s in submissions)})")
    print(table, end="")
    return 0
