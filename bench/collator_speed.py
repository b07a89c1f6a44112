"""Collator and DataLoader throughput: ckbert's PretrainCollator vs Hugging Face whole-word masking.

    python bench/collator_speed.py --prepared DIR [--batch-size 32] [--batches 40] [--out FILE.json]

Both sides mask the same rows of a prepared dataset (`ckbert prepare`), segmented the same way.
transformers 5.x has no `DataCollatorForWholeWordMask` (and no `chinese_ref`): whole-word masking is
`DataCollatorForLanguageModeling(whole_word_mask=True)`, which finds word starts from
`offset_mapping` gaps. Chinese characters have no gaps, so the features handed to it carry offsets
built from the prepared rows' own `word_ids` (one character of gap between words): the HF collator
then sees exactly the words our collator sees. Building those features is timed separately and not
charged to the HF collator.

Measured per collator: batches/s, tokens/s (real tokens of the output batch) and the share of real
tokens that became prediction targets (the two sides draw the 15% differently: ours fills a per-row
budget of whole words; HF draws each word start with p=0.15). Then the same batches through a
`torch.utils.data.DataLoader` with 0 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import finish, machine, table, time_calls  # noqa: E402


def hf_features(rows: list[dict[str, Any]], cls_id: int, sep_id: int, batch_size: int) -> list[dict[str, list]]:
    """[CLS] ids [SEP] with special_tokens_mask and offsets whose gaps mark the rows' word starts.

    `tokenizer.pad` pads input_ids and special_tokens_mask but not offset_mapping, so the offsets
    are padded here, with (0, 0), to the longest row of each batch of `batch_size` rows (rounded
    up to a multiple of 8, as both collators pad), i.e. for batches cut in order.
    """
    feats = []
    for row in rows:
        wid = np.asarray(row["word_ids"], dtype=np.int64)
        start = np.arange(wid.size) + wid  # token t of word w spans [t + w, t + w + 1): a gap per new word
        offsets = [(0, 0)] + list(zip(start.tolist(), (start + 1).tolist(), strict=True)) + [(0, 0)]
        ids = [cls_id, *row["input_ids"], sep_id]
        feats.append({"input_ids": ids, "special_tokens_mask": [1] + [0] * wid.size + [1],
                      "offset_mapping": offsets})
    for b in range(0, len(feats), batch_size):
        group = feats[b : b + batch_size]
        length = -(-max(len(f["input_ids"]) for f in group) // 8) * 8
        for f in group:
            f["offset_mapping"] = f["offset_mapping"] + [(0, 0)] * (length - len(f["offset_mapping"]))
    return feats


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def loader_rate(dataset, batches: list[list[Any]], collate, workers: int) -> dict[str, float]:
    """Wall time of one pass (worker start-up included) and the steady rate after the first batch."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                         num_workers=workers, persistent_workers=False)
    t0 = time.perf_counter()
    t_first = None
    n = 0
    for _ in loader:
        n += 1
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    steady = (n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else float("nan")
    return {"workers": workers, "batches": n, "wall_s": t_end - t0, "first_batch_s": t_first - t0,
            "steady_batches_per_s": steady}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", type=Path, required=True, help="prepared dataset (ckbert prepare --out)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=40, help="timed batches per collator")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-length", type=int, default=0, help="0 = manifest seq_len + 2")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    p.add_argument("--out", type=Path, help="write the results as JSON here (and the bars as the same name .png)")
    args = p.parse_args(argv)

    from transformers import DataCollatorForLanguageModeling

    from ckbert.collator import PretrainCollator
    from ckbert.data_prep.dataset import open_prepared
    from ckbert.train import KeyedRows
    from ckbert.train_config import CMRMConfig, MaskingConfig

    record: dict[str, Any] = {"machine": machine(), "bench": "collator_speed"}
    manifest, dataset, kg, tok = open_prepared(args.prepared)
    n_rows = args.batch_size * (args.batches + args.warmup)
    if len(dataset) < n_rows:
        raise SystemExit(f"{args.prepared}: {len(dataset)} rows, fewer than the {n_rows} this run needs")
    cols = dataset[:n_rows]
    rows = [{k: cols[k][i] for k in cols} for i in range(n_rows)]
    max_length = args.max_length or int(manifest["seq_len"]) + 2
    bs = args.batch_size

    def items(i: int) -> list[tuple[int, int, dict]]:
        return [(0, r, rows[r]) for r in range(i * bs, (i + 1) * bs)]

    ours = {
        "ckbert LMLM (CMRM off)": PretrainCollator(tok, manifest, None, MaskingConfig(), CMRMConfig(enabled=False),
                                                   max_length, seed=0, pad_to_multiple_of=8),
        "ckbert LMLM + CMRM samples": PretrainCollator(tok, manifest, kg, MaskingConfig(), CMRMConfig(), max_length,
                                                       seed=0, pad_to_multiple_of=8),
    }
    if hasattr(MaskingConfig(), "strategy"):  # the ablation's baselines, when this collator has them
        for strategy in ("random_token", "whole_word"):
            ours[f"ckbert {strategy} (CMRM off)"] = PretrainCollator(
                tok, manifest, None, MaskingConfig(strategy=strategy), CMRMConfig(enabled=False), max_length,
                seed=0, pad_to_multiple_of=8)

    t0 = time.perf_counter()
    feats = hf_features(rows, tok.cls_token_id, tok.sep_token_id, bs)
    feat_s = time.perf_counter() - t0
    hf = {
        # HF's whole-word path supports only [MASK] replacement (it warns and forces 1.0 otherwise)
        "HF whole_word_mask=True": DataCollatorForLanguageModeling(tok, whole_word_mask=True, mlm_probability=0.15,
                                                                   mask_replace_prob=1.0, random_replace_prob=0.0,
                                                                   pad_to_multiple_of=8, seed=0),
        "HF token-level MLM": DataCollatorForLanguageModeling(tok, mlm_probability=0.15, pad_to_multiple_of=8, seed=0),
    }

    results = []
    for name, coll in ours.items():
        secs, out = time_calls(lambda i, c=coll: c(items(i)), args.batches, args.warmup)
        real = sum(int(b["attention_mask"].sum()) for b in out)
        targets = sum(int(b["mlm_labels"].numel()) for b in out)
        results.append({"collator": name, "seconds": secs, "batches_per_s": args.batches / secs,
                        "tokens_per_s": real / secs, "target_share": targets / real})
    for name, coll in hf.items():
        # special_tokens_mask/offset_mapping are popped by the collator: hand it fresh dicts each call
        def call(i: int, c=coll):
            return c([dict(f) for f in feats[i * bs : (i + 1) * bs]])

        secs, out = time_calls(call, args.batches, args.warmup)
        real = sum(int((b["input_ids"] != tok.pad_token_id).sum()) for b in out)
        targets = sum(int((b["labels"] != -100).sum()) for b in out)
        results.append({"collator": name, "seconds": secs, "batches_per_s": args.batches / secs,
                        "tokens_per_s": real / secs, "target_share": targets / real})
    base = next(r for r in results if r["collator"] == "HF whole_word_mask=True")
    for r in results:
        r["speed_vs_hf_wwm"] = r["batches_per_s"] / base["batches_per_s"]
    record["collators"] = results
    record["hf_feature_build_s_per_batch"] = feat_s / (args.batches + args.warmup)

    # DataLoader: ours reads rows from Arrow through KeyedRows (as training does); HF gets prebuilt features.
    timed = args.batches
    key_batches = [[(0, r) for r in range(i * bs, (i + 1) * bs)] for i in range(timed)]
    idx_batches = [list(range(i * bs, (i + 1) * bs)) for i in range(timed)]
    loaders = []
    lmlm = ours["ckbert LMLM (CMRM off)"]
    cmrm = ours["ckbert LMLM + CMRM samples"]
    hf_wwm = hf["HF whole_word_mask=True"]
    for w in args.workers:
        loaders.append({"collator": "ckbert LMLM (CMRM off)", **loader_rate(KeyedRows(dataset), key_batches, lmlm, w)})
        loaders.append({"collator": "ckbert LMLM + CMRM samples",
                        **loader_rate(KeyedRows(dataset), key_batches, cmrm, w)})
        loaders.append({"collator": "HF whole_word_mask=True",
                        **loader_rate(ListDataset(feats), idx_batches, lambda b: hf_wwm([dict(f) for f in b]), w)})
    record["dataloader"] = loaders
    record["config"] = {"prepared": str(args.prepared), "rows": len(dataset), "batch_size": bs,
                        "batches": args.batches, "warmup": args.warmup, "max_length": max_length,
                        "masking_mode": manifest["masking_mode"]}

    print(f"collators, batch {bs}, {args.batches} timed batches ({manifest['masking_mode']} mode, "
          f"max_length {max_length}); HF feature building (not charged): "
          f"{1000 * record['hf_feature_build_s_per_batch']:.1f} ms/batch")
    print(table(["collator", "batches/s", "tokens/s", "target share", "x HF WWM"],
                [[r["collator"], r["batches_per_s"], r["tokens_per_s"], r["target_share"], r["speed_vs_hf_wwm"]]
                 for r in results]))
    print("\nDataLoader, one pass (wall includes worker start-up)")
    print(table(["collator", "workers", "batches", "wall s", "first batch s", "steady batches/s"],
                [[r["collator"], r["workers"], r["batches"], r["wall_s"], r["first_batch_s"],
                  r["steady_batches_per_s"]] for r in loaders]))
    finish(record, args.out)
    if args.out is not None:
        from plots import plot_throughput

        print(f"wrote {plot_throughput([record], args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
