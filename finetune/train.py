"""Fine-tune one task: several seeds, the best dev weights of each seed (see `trainer.py`).

For each seed the model is evaluated on dev every `eval_steps` (or every epoch) and the best dev
weights are restored at the end. The seed with the best dev score writes the test predictions.
Everything the user should know about the data (dropped labels, truncated inputs, context
windows) is counted in `stats`, printed, and saved in results.json.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ckbert.config import to_dict
from ckbert.errors import UserError
from ckbert.finetune.hparams import FinetuneConfig
from ckbert.finetune.submission import write_text, write_zip
from ckbert.finetune.tasks import get_task
from ckbert.finetune.trainer import device_name, fit, predict, set_seed
from ckbert.hf_load import load_tokenizer, max_positions
from ckbert.outputs import write_json


def load_splits(task: Any, data_dir: Path | None, cfg: FinetuneConfig, stats: dict[str, int]) -> dict[str, list]:
    """Train, dev and (when predicted) test examples, capped by the config; empty splits are errors."""
    if data_dir is not None and not data_dir.is_dir():
        raise UserError("data folder not found", path=data_dir)
    splits = {"train": task.load(data_dir, "train", stats), "dev": task.load(data_dir, "dev", stats)}
    if cfg.predict_test:
        splits["test"] = task.load(data_dir, "test", stats)
    for split, examples in splits.items():
        if not examples:
            raise UserError(f"empty {split} set for task {task.name}", path=data_dir)
        cap = cfg.max_train_examples if split == "train" else cfg.max_eval_examples
        if cap and (split != "test" or task.test_has_labels) and len(examples) > cap:
            stats[f"{split}_capped_from"] = len(examples)
            splits[split] = examples[:cap]
        stats[f"{split}_examples"] = len(splits[split])
    return splits


def majority_baseline(splits: dict[str, list], test_has_labels: bool) -> dict[str, Any]:
    """Accuracy (%) of always predicting the most frequent training label: the floor to beat."""
    labels = Counter(ex.label for ex in splits["train"])
    top = labels.most_common(1)[0][0]
    out: dict[str, Any] = {"label": top}
    for split in ("dev", "test") if test_has_labels and "test" in splits else ("dev",):
        out[split] = 100.0 * sum(ex.label == top for ex in splits[split]) / len(splits[split])
    return out


def finetune(
    task_name: str,
    model_dir: Path,
    data_dir: Path | None,
    out_dir: Path,
    cfg: FinetuneConfig,
    submission_name: str | None = None,
    save_model: bool = False,
    random_init: bool = False,
) -> dict[str, Any]:
    """Train and evaluate `task_name`; write results.json (and the submission file) into `out_dir`."""
    task = get_task(task_name)
    limit = max_positions(model_dir)
    if cfg.max_length > limit:
        raise UserError(
            f"max_length {cfg.max_length} exceeds the model's max_position_embeddings {limit}; "
            f"set max_length={limit}",
            path=model_dir,
        )
    tokenizer = load_tokenizer(model_dir)
    stats: dict[str, int] = {}
    splits = load_splits(task, data_dir, cfg, stats)
    encoded = {split: task.encode(ex, tokenizer, cfg, split) for split, ex in splits.items()}
    for enc in encoded.values():
        stats.update(enc.stats)
    print(f"[{task_name}] " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items())), flush=True)

    collator = task.collator(tokenizer)
    print(f"[{task_name}] device {device_name()}, precision {cfg.precision}, seeds {cfg.seeds}", flush=True)

    def dev_scores(logits: Any) -> dict[str, float]:
        return task.score(splits["dev"], task.decode(splits["dev"], encoded["dev"], logits, cfg))

    runs = []
    started = time.time()
    for seed in cfg.seeds:
        set_seed(seed)  # before the model: the new task head is drawn from this seed
        trainer, history = fit(
            task.model(model_dir, random_init), encoded["train"].dataset, encoded["dev"].dataset, collator, cfg, seed, dev_scores,
            task.metric, out_dir / f".checkpoints-seed-{seed}",
        )
        run: dict[str, Any] = {
            "seed": seed,
            "steps": history.steps,
            "best_step": history.best_step,
            "dev": dev_scores(predict(trainer, encoded["dev"].dataset)),  # the restored best weights
            "evals": history.evals,
        }
        if "test" in splits:
            test_logits = predict(trainer, encoded["test"].dataset)
            run["test_predictions"] = task.decode(splits["test"], encoded["test"], test_logits, cfg)
            if task.test_has_labels:
                run["test"] = task.score(splits["test"], run["test_predictions"])
        if save_model:
            trainer.model.save_pretrained(str(out_dir / f"seed-{seed}" / "model"))
            tokenizer.save_pretrained(str(out_dir / f"seed-{seed}" / "model"))
        print(f"[{task_name}] seed {seed}: dev {run['dev']}" + (f" test {run['test']}" if "test" in run else ""))
        runs.append(run)
        del trainer

    best = max(runs, key=lambda r: r["dev"][task.metric])
    main = [r["dev"][task.metric] for r in runs]
    results: dict[str, Any] = {
        "task": task_name,
        "model": str(model_dir),
        "random_init": random_init,
        "metric": task.metric,
        "dev": best["dev"],
        "dev_mean": statistics.fmean(main),
        "dev_std": statistics.pstdev(main),
        "best_seed": best["seed"],
        "runs": [{k: v for k, v in r.items() if k != "test_predictions"} for r in runs],
        "stats": stats,
        "config": to_dict(cfg),
        "seconds": round(time.time() - started, 1),
    }
    if "test" in best:
        results["test"] = best["test"]
    if task.kind == "classification":
        results["majority_baseline"] = majority_baseline(splits, task.test_has_labels)
    if "test_predictions" in best and task.submission_name is not None:
        predict_file = out_dir / task.submission_name
        write_text(predict_file, task.submission(splits["test"], best["test_predictions"]))
        results["submission_file"] = predict_file.name
        if submission_name is not None:
            results["submission_zip"] = write_zip([predict_file], out_dir, submission_name).name
    write_json(out_dir / "results.json", results)
    return results
