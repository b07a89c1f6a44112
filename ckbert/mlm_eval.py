"""MLM loss of a plain Hugging Face checkpoint on the held-out rows of a prepared dataset, and
fill-mask examples (used by run_pretrain.sh to compare the exported model with its untrained twin).

    python -m ckbert.mlm_eval --model HF_DIR --prepared DIR [--eval-rows 128] [--untrained] [--examples 5]

The model is loaded with `AutoModelForMaskedLM` (no ckbert code involved); `--untrained` builds
the same architecture from its config.json with fresh weights (seeded). The held-out rows and their
masks are those of the training run's evaluation (`ckbert.train.heldout_start`, collator epoch 0,
CMRM off): rows the run never trained on.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ckbert.collator import PretrainCollator
from ckbert.train import KeyedRows, heldout_start
from ckbert.train_config import CMRMConfig, MaskingConfig


def heldout_loss(model, collator: PretrainCollator, rows: KeyedRows, keys: list[tuple[int, int]],
                 batch_size: int = 32) -> tuple[float, int]:
    """Mean cross-entropy over all targets of the held-out rows (full-vocabulary HF logits)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(keys), batch_size):
            batch = collator(rows.__getitems__(keys[i : i + batch_size]))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            flat = logits.reshape(-1, logits.shape[-1]).index_select(0, batch["mlm_positions"])
            total += torch.nn.functional.cross_entropy(flat.float(), batch["mlm_labels"], reduction="sum").item()
            count += batch["mlm_labels"].numel()
    return total / max(count, 1), count


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


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoConfig, AutoModelForMaskedLM

    from ckbert.data_prep.dataset import open_prepared

    p = argparse.ArgumentParser(prog="python -m ckbert.mlm_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face model folder (e.g. from `ckbert export`)")
    p.add_argument("--prepared", required=True, help="prepared dataset folder the model was trained on")
    p.add_argument("--eval-rows", type=int, default=128, help="as data.eval_rows of the training recipe")
    p.add_argument("--seed", type=int, default=0, help="collator seed (as the recipe's) and init seed")
    p.add_argument("--untrained", action="store_true", help="fresh weights, same architecture")
    p.add_argument("--examples", type=int, default=0, help="print this many fill-mask examples")
    args = p.parse_args(argv)
    manifest, ds, kg, tok = open_prepared(args.prepared)
    if args.untrained:
        torch.manual_seed(args.seed)
        model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(args.model))
    else:
        model = AutoModelForMaskedLM.from_pretrained(args.model)
    collator = PretrainCollator(tok, manifest, None, MaskingConfig(), CMRMConfig(enabled=False),
                                int(manifest["seq_len"]) + 2, args.seed)
    start = heldout_start(len(ds), args.eval_rows)
    loss, count = heldout_loss(model, collator, KeyedRows(ds), [(0, r) for r in range(start, len(ds))])
    result = {"model": args.model, "untrained": args.untrained, "heldout_rows": len(ds) - start,
              "targets": count, "mlm_loss": round(loss, 4)}
    if args.examples:
        result["fill_mask"] = fill_mask_examples(args.model, ds, tok, start, args.examples)
    json.dump(result, sys.stdout, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
