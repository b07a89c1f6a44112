"""`ckbert eval`: judge any Hugging Face masked-LM folder as a user would, on held-out rows.

    ckbert eval --model HF_DIR [HF_DIR ...] --prepared DIR [--eval-rows 256] [--examples 5] [--json]

The model is loaded with plain `transformers.AutoModelForMaskedLM` (no ckbert model code). On the
rows a pretraining run with the same `data.eval_rows` never trains on (`ckbert.evaluation.heldout`), it
reports, beside the unigram baseline of the training rows:

- MLM loss and top-1 accuracy on random-token masks (15% single tokens, all [MASK]);
- the same on the objective's masks (LMLM, 80/10/10 corruption, as in training);
- CMRM: how often a mention's positive sample text scores above its K negatives (cosine of the
  mention's mean last-layer state and the sample's masked mean; a tie is a loss), beside chance,
  and the loss at `--temperature`;
- the mean cosine between last-layer states of different positions (1.0 = collapsed);
- with `--examples N`, fill-mask answers for N held-out rows.

`--untrained` scores the same architecture with fresh (seeded) weights. Several `--model`
folders are printed side by side; `--json` prints one JSON object per model instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ckbert.collator import PretrainCollator
from ckbert.config import check_number
from ckbert.errors import UserError
from ckbert.evaluation import heldout
from ckbert.export import cmrm_of_export
from ckbert.objectives import cmrm_scores, masked_mean_pool, mention_anchors
from ckbert.train import KeyedRows
from ckbert.train_config import CMRMConfig, MaskingConfig


@torch.no_grad()
def evaluate_hf(model, prepared: tuple, eval_rows: int, seed: int = 0, temperature: float = 0.5,
                batch_size: int = 32, split: str = "all") -> dict[str, Any]:
    """Every number of the module docstring for one loaded HF masked-LM model, on the held-out rows
    of `split` (`ckbert.evaluation.heldout.split_rows`); the unigram baseline counts the training rows."""
    manifest, ds, kg, tok = prepared
    n_train = heldout.heldout_start(len(ds), eval_rows)
    keys = [(0, r) for r in heldout.split_rows(len(ds), eval_rows, split)]
    vocab = model.config.vocab_size
    if len(tok) > vocab:
        raise UserError(f"the model's vocabulary ({vocab}) is smaller than the dataset's tokenizer ({len(tok)})")
    unigram = heldout.unigram_log_probs(ds, n_train, vocab)
    max_length = int(manifest["seq_len"]) + 2
    # samples rendered and pooled as the model was trained (config.json `ckbert_cmrm`), each mention
    # scored against its own K = 4 hop-2..3 negatives (no in-batch texts), every head included
    cmrm = dataclasses.replace(cmrm_of_export(model.config), enabled=kg is not None, temperature=temperature,
                               negatives=4, in_batch_negatives=False, heldout_heads=0.0)
    collators = {"eval_rand": PretrainCollator(tok, manifest, None, heldout.RANDOM_TOKEN_EVAL,
                                               CMRMConfig(enabled=False), max_length, seed),
                 "eval": PretrainCollator(tok, manifest, kg if cmrm.enabled else None, MaskingConfig(), cmrm,
                                          max_length, seed)}
    model.eval()
    encoder = model.base_model
    rows = KeyedRows(ds)
    result: dict[str, Any] = {"heldout_rows": len(keys)}
    probe = collators["eval_rand"](rows.__getitems__(keys[: heldout.COSINE_ROWS]))
    hidden = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
                   output_hidden_states=True).hidden_states[-1]
    result["eval_cosine"] = float(heldout.mean_pairwise_cosine(hidden, probe["attention_mask"]))
    for name, collator in collators.items():
        sums: dict[str, float] = {}
        for i in range(0, len(keys), batch_size):
            batch = collator(rows.__getitems__(keys[i : i + batch_size]))
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
            logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, batch["mlm_positions"])
            heldout.add(sums, heldout.mlm_counts(logits, batch["mlm_labels"], unigram))
            hidden = out.hidden_states[-1]
            if batch["sample_index"].shape[0]:
                samples = encoder(input_ids=batch["sample_input_ids"],
                                  attention_mask=batch["sample_attention_mask"]).last_hidden_state
                anchor = mention_anchors(hidden, batch["mention_index"], batch["mention_start"], batch["mention_end"])
                scores = cmrm_scores(anchor, masked_mean_pool(samples, batch["sample_pool_mask"]),
                                     batch["sample_index"], temperature)
                heldout.add(sums, heldout.cmrm_counts(scores))
        result.update(heldout.summarise(sums, name))
        result.update({f"{name}_{k}": v for k, v in heldout.summarise_cmrm(sums).items()})
        result[f"{name}_targets"] = int(sums.get("n", 0))
    return result


def fill_mask_examples(model_dir: str, dataset, tokenizer, start: int, n: int) -> list[dict]:
    """Mask the first linked mention (else a middle word) of held-out rows and ask the pipeline."""
    from transformers import pipeline

    fill = pipeline("fill-mask", model=model_dir, tokenizer=model_dir, device=-1)
    out = []
    for r in range(start, len(dataset)):
        if len(out) == n:
            break
        row = dataset[r]
        ids, wids = row["input_ids"][:60], row["word_ids"][:60]
        if row["ent_start"] and row["ent_end"][0] <= len(ids):
            s = row["ent_start"][0]
        else:
            w = wids[len(wids) // 2]
            s = wids.index(w)
        masked = list(ids)
        answer = tokenizer.decode([masked[s]])
        masked[s] = tokenizer.mask_token_id
        text = tokenizer.decode(masked).replace(" ", "")
        guesses = fill(text, top_k=3)
        out.append({"text": text, "answer": answer, "top3": [g["token_str"].replace(" ", "") for g in guesses]})
    return out


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown: one column per model, then the unigram baseline."""
    first = results[0]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    rows = [("MLM loss, random-token masks (nats)", "eval_rand_mlm", "eval_rand_unigram_mlm", "{:.3f}".format),
            ("top-1, random-token masks", "eval_rand_top1", "eval_rand_unigram_top1", pct),
            ("MLM loss, LMLM masks (nats)", "eval_mlm", "eval_unigram_mlm", "{:.3f}".format),
            ("top-1, LMLM masks", "eval_top1", "eval_unigram_top1", pct),
            ("CMRM: positive ranked first", "eval_cmrm_acc", "eval_cmrm_chance", pct),
            ("CMRM loss", "eval_cmrm", None, "{:.3f}".format),
            ("cosine between positions", "eval_cosine", None, "{:.2f}".format)]
    lines = ["| held-out | " + " | ".join(names) + " | unigram baseline / chance |",
             "| --- |" + " --- |" * (len(names) + 1)]
    for label, key, base, fmt in rows:
        if key not in first:
            continue
        cells = [fmt(r[key]) if key in r else "-" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(first[base]) if base else ''} |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], names: list[str]) -> str:
    """What `ckbert eval` prints (and run_pretrain.sh from its --json output): a header line, the
    table, then each model's fill-mask examples."""
    lines = [f"{results[0]['heldout_rows']} held-out rows never trained on, {results[0]['eval_rand_targets']} "
             "random-token targets (plain transformers AutoModelForMaskedLM):", table(results, names)]
    for name, r in zip(names, results, strict=True):
        for ex in r.get("fill_mask", []):
            i = ex["text"].index("[MASK]")
            lines.append(f"  {name}: ...{ex['text'][max(0, i - 20) : i + 26]}...  {ex['answer']} -> {' '.join(ex['top3'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoConfig, AutoModelForMaskedLM

    from ckbert.data_prep.dataset import open_prepared

    p = argparse.ArgumentParser(prog="ckbert eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, nargs="+", help="Hugging Face model folder(s), e.g. from `ckbert export`")
    p.add_argument("--name", nargs="+", help="a column name per model (default: the folder)")
    p.add_argument("--prepared", required=True, help="prepared dataset folder (the same tokenizer as the models)")
    p.add_argument("--eval-rows", type=int, help="the held-out rows (default: those each model recorded in config.json "
                   "ckbert_split, else 256); refused when they take in rows a model trained on")
    p.add_argument("--split", choices=heldout.SPLITS, default="validation",
                   help="which half of the held-out rows (default validation; report test once per recipe)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (and init seed with --untrained)")
    p.add_argument("--temperature", type=float, default=0.5, help="CMRM temperature for the loss")
    p.add_argument("--untrained", action="store_true", help="fresh weights, same architecture")
    p.add_argument("--examples", type=int, default=0, help="fill-mask examples per model")
    p.add_argument("--json", action="store_true", help="one JSON object per model instead of the table")
    args = p.parse_args(argv)
    if args.eval_rows is not None:
        check_number("--eval-rows", args.eval_rows, low=1)
    check_number("--examples", args.examples, low=0)
    check_number("--temperature", args.temperature, low=1e-4)
    if args.name and len(args.name) != len(args.model):
        raise UserError(f"--name gives {len(args.name)} names for {len(args.model)} models")
    prepared = open_prepared(args.prepared)
    results = []
    for folder in args.model:
        if not (Path(folder) / "config.json").is_file():
            raise UserError("not a Hugging Face model folder (no config.json)", path=folder)
        try:
            if args.untrained:
                torch.manual_seed(args.seed)
                model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(folder))
            else:
                model = AutoModelForMaskedLM.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the model: {str(exc).splitlines()[0]}", path=folder) from None
        eval_rows = heldout.eval_rows_for(model.config, len(prepared[1]), args.eval_rows, folder)
        result = {"model": folder, "untrained": args.untrained, "eval_rows": eval_rows, "split": args.split,
                  **evaluate_hf(model.float(), prepared, eval_rows, args.seed, args.temperature, split=args.split)}
        if args.examples:
            start = heldout.split_rows(len(prepared[1]), eval_rows, args.split).start
            result["fill_mask"] = fill_mask_examples(folder, prepared[1], prepared[3], start, args.examples)
        results.append(result)
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
    if not args.json:
        print(report(results, args.name or args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
