"""Token classification over characters: CLUENER and People's Daily NER.

Entities are (type, start, end) with `end` inclusive, 0-based character offsets (the CLUENER
convention). Tags are BIO per character; a text longer than `max_length - 2` characters is cut
into consecutive chunks, each one feature, and the chunk predictions are joined back (an entity
that straddles a chunk border is cut in two; the chunk count is reported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbert.errors import UserError
from ckbert.finetune.classification import Encoded
from ckbert.finetune.jsonfiles import field, find_file, read_jsonl
from ckbert.finetune.metrics import Entity, entity_f1

CLUENER_TYPES = [
    "address", "book", "company", "game", "government", "movie", "name", "organization", "position", "scene",
]


@dataclass
class NerExample:
    id: Any
    text: str
    entities: list[Entity] | None  # None on unlabelled test lines


def bio_tags(text: str, entities: list[Entity]) -> tuple[list[str], int]:
    """Per-character BIO tags and the number of entities dropped because they overlap an earlier one."""
    tags = ["O"] * len(text)
    dropped = 0
    for etype, start, end in sorted(entities, key=lambda e: (e[1], e[2])):
        if any(t != "O" for t in tags[start : end + 1]):
            dropped += 1
            continue
        tags[start] = f"B-{etype}"
        for i in range(start + 1, end + 1):
            tags[i] = f"I-{etype}"
    return tags, dropped


def spans_from_tags(tags: list[str]) -> list[Entity]:
    """BIO tags -> entities; an I- tag without a matching open entity starts one (lenient decoding)."""
    out: list[Entity] = []
    current: list[Any] | None = None
    for i, tag in enumerate([*tags, "O"]):
        inside = current is not None and tag == f"I-{current[0]}"
        if inside:
            current[2] = i
            continue
        if current is not None:
            out.append((current[0], current[1], current[2]))
            current = None
        if tag != "O":
            current = [tag[2:], i, i]
    return out


class TokenTask:
    kind = "token"
    metric = "f1"

    def __init__(
        self,
        name: str,
        types: list[str],
        submission_name: str | None,
        loader: Callable[[Path | None, str, dict[str, int]], list[NerExample]] | None = None,
    ):
        self.name = name
        self.types = types
        self.labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        self.submission_name = submission_name
        self.loader = loader
        self.test_has_labels = loader is not None

    def load(self, data_dir: Path | None, split: str, stats: dict[str, int]) -> list[NerExample]:
        if self.loader is not None:
            return self.loader(data_dir, split, stats)
        assert data_dir is not None
        path = find_file(data_dir, (f"{split}.json",), f"{self.name} {split}")
        out = []
        for index, (line, obj) in enumerate(read_jsonl(path)):
            text = field(obj, "text", str, path, line)
            entities = None
            if split != "test":
                entities = self._entities(field(obj, "label", dict, path, line), text, path, line)
            out.append(NerExample(obj.get("id", index), text, entities))
        return out

    def _entities(self, label: dict[str, Any], text: str, path: Path, line: int) -> list[Entity]:
        out = []
        for etype, mentions in label.items():
            if etype not in self.types:
                raise UserError(f"entity type {etype!r} is not in the {self.name} label set", path=path, line=line)
            if not isinstance(mentions, dict):
                raise UserError(f"label.{etype} must map entity text to spans", path=path, line=line)
            for entity, spans in mentions.items():
                for span in spans:
                    ok = isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)
                    if not ok or text[span[0] : span[1] + 1] != entity or span[0] < 0:
                        raise UserError(
                            f"span {span} of {entity!r} does not match the text (end is inclusive)",
                            path=path,
                            line=line,
                        )
                    out.append((etype, span[0], span[1]))
        return out

    def model(self, model_dir: Path, random_init: bool = False) -> Any:
        from transformers import AutoModelForTokenClassification

        from ckbert.hf_load import load_model

        return load_model(
            AutoModelForTokenClassification,
            model_dir,
            random_init,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={k: i for i, k in enumerate(self.labels)},
        )

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def encode(self, examples: list[NerExample], tokenizer: Any, cfg: Any, split: str) -> Encoded:
        from datasets import Dataset

        chunk = cfg.max_length - 2
        label_id = {k: i for i, k in enumerate(self.labels)}
        columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "labels": []}
        meta = []  # per feature: (example index, first character, word_ids)
        chunked = lost = dropped = 0
        for n, ex in enumerate(examples):
            tags = ["O"] * len(ex.text)
            if ex.entities is not None:
                tags, d = bio_tags(ex.text, ex.entities)
                dropped += d
            chunked += len(ex.text) > chunk
            for begin in range(0, max(len(ex.text), 1), chunk):
                chars = list(ex.text[begin : begin + chunk])
                enc = tokenizer(chars, is_split_into_words=True, truncation=True, max_length=cfg.max_length)
                word_ids = enc.word_ids()
                seen = {w for w in word_ids if w is not None}
                lost += sum(1 for i, c in enumerate(chars) if i not in seen and not c.isspace())
                labels, prev = [], None
                for w in word_ids:
                    first = w is not None and w != prev
                    labels.append(label_id[tags[begin + w]] if first else -100)
                    prev = w
                for key in ("input_ids", "attention_mask", "token_type_ids"):
                    columns[key].append(enc[key])
                columns["labels"].append(labels)
                meta.append((n, begin, word_ids))
        stats = {
            f"{split}_texts_chunked": chunked,
            f"{split}_chars_truncated": lost,
            f"{split}_overlapping_entities_dropped": dropped,
        }
        return Encoded(Dataset.from_dict(columns), stats, meta=meta)

    def decode(self, examples: list[NerExample], encoded: Encoded, logits: Any, cfg: Any) -> list[list[Entity]]:
        tags = [["O"] * len(ex.text) for ex in examples]
        for f, (n, begin, word_ids) in enumerate(encoded.meta):
            pred = np.asarray(logits[f]).argmax(-1)  # [L] (padded to the batch's longest)
            prev = None
            for t, w in enumerate(word_ids):
                if w is not None and w != prev:
                    tags[n][begin + w] = self.labels[int(pred[t])]
                prev = w
        return [spans_from_tags(t) for t in tags]

    def score(self, examples: list[NerExample], predictions: list[list[Entity]]) -> dict[str, float]:
        scores = entity_f1(predictions, [ex.entities or [] for ex in examples])
        return {k: 100.0 * v for k, v in scores.items()}

    def submission(self, examples: list[NerExample], predictions: list[list[Entity]]) -> str:
        lines = []
        for ex, entities in zip(examples, predictions, strict=True):
            label: dict[str, dict[str, list[list[int]]]] = {}
            for etype, start, end in entities:
                label.setdefault(etype, {}).setdefault(ex.text[start : end + 1], []).append([start, end])
            lines.append(json.dumps({"id": ex.id, "label": label}, ensure_ascii=False))
        return "\n".join(lines) + "\n"
