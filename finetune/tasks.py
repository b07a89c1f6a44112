"""Every task by name: the eleven CLUE tasks (clue.md) and the two offline demo tasks.

A task object reads its split (`load`), encodes it (`encode`), builds its Hugging Face model
(`model`), maps the model outputs back to predictions (`decode`), scores them (`score`) and
writes the submission file content (`submission`). Task names are also the config file names
in `configs/finetune/`.
"""

from __future__ import annotations

from typing import Any

from ckbert.errors import UserError
from ckbert.finetune.classification import ClassificationTask, read_csl, read_pair, read_sentence, read_wsc
from ckbert.finetune.multiple_choice import C3Task, ChidTask
from ckbert.finetune.offline import load_pd_ner, load_sentiment
from ckbert.finetune.span import SpanTask
from ckbert.finetune.tokens import CLUENER_TYPES, TokenTask

NLI_LABELS = ["entailment", "neutral", "contradiction"]
TNEWS_LABELS = [str(i) for i in range(100, 117) if i not in (105, 111)]

TASKS: dict[str, Any] = {
    "afqmc": ClassificationTask("afqmc", ["0", "1"], read_pair, "afqmc_predict.json"),
    "tnews": ClassificationTask("tnews", TNEWS_LABELS, read_sentence, "tnews11_predict.json"),
    "iflytek": ClassificationTask("iflytek", [str(i) for i in range(119)], read_sentence, "iflytek_predict.json"),
    "ocnli": ClassificationTask("ocnli", NLI_LABELS, read_pair, "ocnli_50k_predict.json", drop_labels=("-",)),
    "cmnli": ClassificationTask("cmnli", NLI_LABELS, read_pair, "cmnli_predict.json", drop_labels=("-",)),
    "cluewsc2020": ClassificationTask("cluewsc2020", ["true", "false"], read_wsc, "cluewsc11_predict.json"),
    "csl": ClassificationTask("csl", ["0", "1"], read_csl, "csl_predict.json"),
    "cmrc2018": SpanTask(),
    "chid": ChidTask(),
    "c3": C3Task(),
    "cluener": TokenTask("cluener", CLUENER_TYPES, "cluener_predict.json"),
    "sentiment": ClassificationTask("sentiment", ["0", "1"], None, None, loader=load_sentiment),
    "pd_ner": TokenTask("pd_ner", ["PER", "LOC", "ORG"], None, loader=load_pd_ner),
}
CLUE_TASKS = [name for name, task in TASKS.items() if task.submission_name is not None]
OFFLINE_TASKS = ["sentiment", "pd_ner"]


def get_task(name: str) -> Any:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]
