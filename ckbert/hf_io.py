"""Hugging Face import and export (design.md, section 5).

Export: a state dict with our (= HF) parameter names + `ModelConfig` + tokenizer -> a folder that
`AutoModelForMaskedLM.from_pretrained` and `AutoTokenizer.from_pretrained` load with no custom
code (config.json for `bert`/`megatron-bert`, `model.safetensors`, tokenizer files, README.md).

Import: any local HF BERT-family folder (BertForMaskedLM, BertForPreTraining, BertModel, the
BERT-format Chinese RoBERTa-wwm-ext/MacBERT, MegatronBert) -> `CKBertForPreTraining`, with the two
marker tokens [dep] and [sdp] added to the tokenizer and the vocabulary rows grown to fit. Every
renaming of checkpoint keys goes through `IMPORT_KEY_MAP`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ckbert.config import load_dataclass, read_json
from ckbert.data_prep.tokenizer import MARKERS, add_markers
from ckbert.errors import UserError
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import HF_NAMES, ModelConfig, count_parameters
from ckbert.outputs import check_out_dir, commit_dir, staging_dir

# Checkpoint key -> our key, applied in order; a replacement of None drops the key.
# - old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta
# - BertModel / MegatronBertModel checkpoints have no `bert.` prefix
# - the decoder is tied (its weight is the word embeddings, its bias cls.predictions.bias), the
#   pooler and the next-sentence head are not part of the masked-LM model
IMPORT_KEY_MAP: list[tuple[str, str | None]] = [
    (r"^(.*LayerNorm)\.gamma$", r"\1.weight"),
    (r"^(.*LayerNorm)\.beta$", r"\1.bias"),
    (r"^(embeddings|encoder|pooler)\.", r"bert.\1."),
    (r"^cls\.predictions\.decoder\.(weight|bias)$", None),
    (r"^bert\.pooler\..*$", None),
    (r"^cls\.seq_relationship\..*$", None),
    (r"^bert\.embeddings\.position_ids$", None),
]
# Keys whose first dimension is the vocabulary (grown when marker tokens are added).
VOCAB_KEYS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
HEAD_PREFIX = "cls.predictions."

# config.json field -> ModelConfig field (same names; these are the ones we read)
_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                  "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "initializer_range", "pad_token_id")


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The HF config.json content for `config` (model_type bert or megatron-bert)."""
    return {
        "architectures": [config.hf_architecture],
        "model_type": config.hf_model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": True,
    }


# ---------------------------------------------------------------------------------------------
# export


@dataclass
class CardInfo:
    """What the model card states; `metrics` are measured numbers (name -> value), as run."""

    data: str
    objectives: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def export_hf_folder(
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    tokenizer_dir: str | Path,
    out: str | Path,
    card: CardInfo,
    overwrite: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write an HF masked-LM folder to `out` (built in a temporary sibling, then renamed, so a
    crash never leaves a folder that looks complete; modes follow the umask). `out` must not exist
    or be empty, unless `overwrite` (then it is replaced whole). `extra_config` adds keys to
    config.json (e.g. `ckbert_cmrm`)."""
    from transformers import AutoTokenizer

    out = Path(out)
    check_out_dir(out, overwrite)
    _check_state_dict(state_dict, config, source="checkpoint")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer: {str(exc).splitlines()[0]}", path=tokenizer_dir) from None
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens, the model only {config.vocab_size}",
                        path=tokenizer_dir)

    tmp = staging_dir(out)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf = hf_config_dict(config)
        hf["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        hf.update(extra_config or {})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(config, card, tokenizer), encoding="utf-8")
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(config: ModelConfig, card: CardInfo, tokenizer: Any) -> str:
    """README.md for the exported folder: front matter, what was trained on what, and how far."""
    params = count_parameters(config)
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in card.metrics.items()) or "| (none measured) | |"
    markers = ", ".join(f"`{t}` = {tokenizer.convert_tokens_to_ids(t)}" for t in MARKERS
                        if t in tokenizer.get_vocab())
    return f"""---
language: zh
library_name: transformers
pipeline_tag: fill-mask
tags:
- ckbert
- {config.hf_model_type}
---

# CKBERT ({config.num_hidden_layers} layers, hidden {config.hidden_size})

A Chinese knowledge-enhanced BERT encoder pretrained with ckbert. It loads with plain
`transformers` (`{config.hf_architecture}`, no custom code).

| | |
| --- | --- |
| architecture | {config.hf_architecture} ({config.layout.replace("_", "-").upper()}) |
| layers x hidden, heads, FFN | {config.num_hidden_layers} x {config.hidden_size}, {config.num_attention_heads}, {config.intermediate_size} |
| parameters | {params:,} |
| vocabulary | {config.vocab_size} (tokenizer: {len(tokenizer)}; markers: {markers or "none"}) |
| training steps | {card.steps} |

## Data

{card.data}

## Objectives

{card.objectives}

## Measured numbers

| metric | value |
| --- | --- |
{rows}
{("" if not card.notes else chr(10) + card.notes + chr(10))}
## Usage

```python
from transformers import pipeline

fill = pipeline("fill-mask", model="PATH/TO/THIS/FOLDER")
print(fill("中国的首都是北[MASK]。"))
```
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _check_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig, source: object) -> None:
    """Keys and shapes must be exactly those of `CKBertForPreTraining(config)`."""
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"weights do not match the model config: {what}", path=source)
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise UserError(f"shape mismatch for {key}: weights {list(state_dict[key].shape)}, "
                            f"config {list(shape)}", path=source)


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = CKBertForPreTraining(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# import


@dataclass
class Imported:
    model: CKBertForPreTraining
    config: ModelConfig
    tokenizer: Any
    added_tokens: list[str]  # marker tokens that were not in the source tokenizer
    initialised: list[str]  # our keys not in the checkpoint (e.g. the MLM head of a BertModel)


def read_hf_config(folder: str | Path, **overrides: Any) -> ModelConfig:
    """config.json of a BERT-family folder -> `ModelConfig` (layout from model_type)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError("not a Hugging Face model folder (no config.json)", path=folder)
    hf = read_json(path, "config.json")
    layouts = {model_type: layout for layout, (model_type, _) in HF_NAMES.items()}
    model_type = hf.get("model_type")
    if model_type not in layouts:
        raise UserError(f"model_type {model_type!r} is not supported (expected one of {sorted(layouts)}; "
                        "Chinese RoBERTa-wwm-ext and MacBERT ship as model_type bert)", path=path)
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported "
                        "(absolute only)", path=path)
    data = {k: hf[k] for k in _CONFIG_FIELDS if k in hf and hf[k] is not None}
    data["layout"] = layouts[model_type]
    data.update(overrides)
    return load_dataclass(ModelConfig, data, source=path)


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Weights of an HF folder: model.safetensors, a sharded safetensors index, or
    pytorch_model.bin (loaded with weights_only=True)."""
    folder = Path(folder)
    single, index, legacy = folder / "model.safetensors", folder / "model.safetensors.index.json", \
        folder / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load_file(str(folder / shard)))
            return out
        if legacy.is_file():
            return torch.load(str(legacy), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        raise UserError(f"cannot read the weights: {str(exc).splitlines()[0]}", path=folder) from None
    raise UserError("no model.safetensors, model.safetensors.index.json or pytorch_model.bin", path=folder)


def map_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys through `IMPORT_KEY_MAP` (dropping those mapped to None)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in IMPORT_KEY_MAP:
            if re.match(pattern, key):
                if repl is None:
                    key = None
                    break
                key = re.sub(pattern, repl, key)
        if key is not None:
            out[key] = value
    return out


def grow_vocab_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """[V, ...] -> [rows, ...]; new rows are the mean of the existing ones, a neutral start that
    keeps the output distribution and the embedding scale as they were."""
    extra = rows - tensor.shape[0]
    if extra <= 0:
        return tensor
    fill = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype).expand(extra, *tensor.shape[1:])
    return torch.cat([tensor, fill], dim=0)


def import_hf(folder: str | Path, tokenizer: Any = None, **config_overrides: Any) -> Imported:
    """An HF BERT-family folder -> `CKBertForPreTraining` + a tokenizer with the marker tokens.

    Without `tokenizer`, the folder's own tokenizer gets [dep] and [sdp] appended. With one (e.g.
    a prepared dataset's, made from this checkpoint's vocabulary plus the markers), every token of
    the folder's tokenizer must keep its id in it. The vocabulary rows grow to the tokenizer size
    (padded to `vocab_multiple`). `config_overrides` set `ModelConfig` fields the checkpoint does
    not fix (dropout, kernels, vocab_multiple). A mismatch in any shape is a one-line `UserError`."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    config = read_hf_config(folder, **config_overrides)
    try:
        source_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        if tokenizer is None:
            raise UserError(f"cannot load the tokenizer: {str(exc).splitlines()[0]}", path=folder) from None
        source_tokenizer = None  # weights-only folder: the given tokenizer must fit the rows
    if tokenizer is None:
        tokenizer = source_tokenizer
        added = add_markers(tokenizer)
    else:
        added = [t for t in MARKERS if source_tokenizer is None or t not in source_tokenizer.get_vocab()]
        _check_extends(tokenizer, source_tokenizer, folder)
    weights = map_keys(read_hf_weights(folder))

    # vocabulary: at least the tokenizer (markers included), padded to vocab_multiple
    m = config.vocab_multiple
    vocab = max(config.vocab_size or 0, -(-len(tokenizer) // m) * m)
    for key in VOCAB_KEYS:
        if key in weights:
            if weights[key].shape[0] != config.vocab_size:
                raise UserError(f"shape mismatch for {key}: weights {list(weights[key].shape)}, "
                                f"config.json vocab_size {config.vocab_size}", path=folder)
            weights[key] = grow_vocab_rows(weights[key], vocab)
    config = load_dataclass(ModelConfig, {**_as_dict(config), "vocab_size": vocab}, source=folder)

    expected = _expected_shapes(config)
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise UserError(f"checkpoint has keys this model does not: {unexpected[:3]}", path=folder)
    missing = sorted(set(expected) - set(weights))
    # only the MLM head may be absent (BertModel checkpoints); it keeps its fresh initialisation
    not_head = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    if not_head:
        raise UserError(f"checkpoint lacks encoder weights: {not_head[:3]}", path=folder)
    for key, value in weights.items():
        if tuple(value.shape) != expected[key]:
            raise UserError(f"shape mismatch for {key}: checkpoint {list(value.shape)}, "
                            f"model {list(expected[key])}", path=folder)
    weights = {k: v.float() for k, v in weights.items()}  # fp32 master weights
    if missing:
        model = CKBertForPreTraining(config)
        model.load_state_dict(weights, strict=False)
    else:  # every tensor comes from the checkpoint: skip the random init (1.3B parameters for huge)
        with torch.device("meta"):
            model = CKBertForPreTraining(config)
        model.load_state_dict(weights, strict=True, assign=True)
    return Imported(model, config, tokenizer, added, missing)


def _check_extends(tokenizer: Any, source: Any, folder: Path) -> None:
    """Every token of the checkpoint's tokenizer keeps its id in `tokenizer`."""
    if source is None:
        return
    target = tokenizer.get_vocab()
    moved = [(tok, i) for tok, i in source.get_vocab().items() if target.get(tok) != i]
    if moved:
        tok, i = min(moved, key=lambda item: item[1])
        raise UserError(f"the tokenizer does not extend this checkpoint's vocabulary ({len(moved)} tokens "
                        f"differ, e.g. {tok!r}: id {i} here, {target.get(tok)} in the tokenizer); prepare "
                        "the dataset with this checkpoint's tokenizer", path=folder)


def load_hf_pretraining_model(folder: str | Path, tokenizer: Any, **config_overrides: Any) -> CKBertForPreTraining:
    """For `init_from` in the pretraining recipe: the model of `import_hf(folder, tokenizer)`."""
    return import_hf(folder, tokenizer, **config_overrides).model


def _as_dict(config: ModelConfig) -> dict[str, Any]:
    from ckbert.config import to_dict

    return to_dict(config)
