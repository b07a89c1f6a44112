"""LTP 4.2 annotator (optional extra `ltp`): words, POS, NER, DEP and SDP through `LTP.pipeline`.

LTP 4.2.x predates transformers 5, so the wrapper fixes three things without touching the install:
- `LTP.pipeline` calls `tokenizer.batch_encode_plus`, which transformers 5 removed: the loaded
  tokenizer is wrapped so that `batch_encode_plus(...)` forwards to `tokenizer(...)`, which takes the
  same arguments and returns the same `BatchEncoding` (with `.encodings`, which LTP reads).
- `LTP(dir)` silently goes to the Hugging Face hub when `dir` has no `config.json`: checked first.
- `LTP(dir)` loads weights with `strict=False`, so a mismatched checkpoint would run with random
  layers: the state-dict keys are compared with the model's own keys and any difference is an error.
The config's `_ltp_target_` entries name the classes LTP instantiates; only `ltp_core.*` targets are
accepted, so a config file cannot make LTP call an arbitrary function.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from ckbert.config import read_json
from ckbert.data_prep.annotate import Annotation
from ckbert.data_prep.readers import Sentence
from ckbert.errors import UserError

TASKS = ("cws", "pos", "ner", "dep", "sdp")


class _BatchEncodeCompat:
    """A tokenizer proxy that gives transformers-5 tokenizers LTP's `batch_encode_plus` call."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def batch_encode_plus(self, inputs, **kwargs):
        return self._tokenizer(inputs, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _check_targets(node, where: Path) -> None:
    if isinstance(node, dict):
        target = node.get("_ltp_target_")
        if target is not None and not str(target).startswith("ltp_core."):
            raise UserError(f"config.json names a non-LTP class {target!r}; refusing to instantiate it", path=where)
        for v in node.values():
            _check_targets(v, where)
    elif isinstance(node, list):
        for v in node:
            _check_targets(v, where)


def check_model_folder(path: Path) -> dict:
    """Validate a local LTP model folder; returns its config."""
    if not path.is_dir():
        raise UserError("LTP model folder not found", path=path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError("LTP model folder has no config.json (LTP would try the Hugging Face hub instead)", path=path)
    config = read_json(cfg_file, "LTP config.json")
    if not config.get("nerual", False):
        raise UserError("config.json is not an LTP 4.2 neural model config (needs \"nerual\": true)", path=cfg_file)
    _check_targets(config, cfg_file)
    if not (path / "pytorch_model.bin").is_file():
        raise UserError("LTP model folder has no pytorch_model.bin", path=path)
    return config


def _check_state_dict(ltp, weights: Path) -> None:
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    expected = set(ltp.model.state_dict())
    got = set(state)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError("LTP weights do not match the model its config.json builds: " + ", ".join(parts), path=weights)


class LTPAnnotator:
    name = "ltp"

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32):
        try:
            from ltp import LTP
        except ImportError:
            raise UserError("the ltp annotator needs the `ltp` extra: pip install 'ckbert[ltp]'") from None
        path = Path(model)
        local = path.exists()
        if local:
            check_model_folder(path)
        with contextlib.redirect_stdout(io.StringIO()):  # LTP prints "Loading weights ..."
            try:
                self.ltp = LTP(str(model))
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot load the LTP model: {str(exc).splitlines()[0]}", path=model) from None
        if local:
            _check_state_dict(self.ltp, path / "pytorch_model.bin")
        self.ltp.tokenizer = _BatchEncodeCompat(self.ltp.tokenizer)
        self.ltp.to(device)
        self.batch_size = batch_size
        tasks = [t for t in TASKS if t in self.ltp.supported_tasks]
        if "cws" not in tasks or "pos" not in tasks:
            raise UserError("the LTP model must support cws and pos", path=model)
        self.tasks = tasks
        self.provides = ("words",) + tuple(t for t in ("pos", "ner", "dep", "sdp") if t in tasks)
        self.pos_tags = list(self.ltp.pos_vocab)
        self.dep_labels = list(self.ltp.dep_vocab) if "dep" in tasks else []
        self.sdp_labels = list(self.ltp.sdp_vocab) if "sdp" in tasks else []
        self.version = f"ltp {self.ltp.version} ({model})"

    def annotate(self, sentences: list[Sentence]) -> list[Annotation]:
        out: list[Annotation] = []
        for b in range(0, len(sentences), self.batch_size):
            texts = [s.text for s in sentences[b : b + self.batch_size]]
            res = self.ltp.pipeline(texts, tasks=self.tasks)
            for k in range(len(texts)):
                ann = Annotation(words=list(res.cws[k]), pos=list(res.pos[k]))
                if "ner" in self.tasks:
                    # LTP gives (tag, text, first word, last word) with an inclusive end
                    ann.ner = [(int(s), int(e) + 1, str(tag)) for tag, _, s, e in res.ner[k]]
                if "dep" in self.tasks:
                    ann.dep_head, ann.dep_label = list(res.dep[k]["head"]), list(res.dep[k]["label"])
                if "sdp" in self.tasks:
                    ann.sdp_head, ann.sdp_label = list(res.sdp[k]["head"]), list(res.sdp[k]["label"])
                out.append(ann)
        return out
