"""`ckbert export CKPT --out DIR`: a training checkpoint -> a Hugging Face model folder.

CKPT is a checkpoint folder (`OUT/checkpoints/step-000100`), or a run folder / checkpoints folder
whose `latest` names one (docs/contracts.md, "Checkpoints and export"); its weights are
`model.safetensors` or, for a sharded run, the DCP shards of `ckbert.dist_checkpoint`. The model
config comes from `trainer_state.json` (`model_config`, else the recipe's `config.model`); the
tokenizer from `--tokenizer`, else `CKPT/tokenizer/`, else the state's `tokenizer_dir` (relative
to CKPT), else the prepared dataset the recipe names. The model card
states the data, the objectives, the step and the measured numbers: those the run logged in
`OUT/metrics.jsonl` up to the checkpoint's step, `trainer_state.json`'s `metrics`, and
`--metrics FILE.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ckbert.config import read_json, to_dict
from ckbert.errors import UserError
from ckbert.hf_io import CardInfo, export_hf_folder
from ckbert.model_config import ModelConfig, load_model_config, model_config_from_dict
from ckbert.outputs import check_out_dir
from ckbert.train_config import CMRMConfig

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
SHARDED_FORMAT = "dcp-safetensors-1"  # ckbert.dist_checkpoint: weights under sharded/
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def resolve_checkpoint(path: str | Path) -> Path:
    """Follow a `latest` pointer (a one-line file or a symlink) in `path` or `path/checkpoints`,
    then check that the folder is a complete checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise UserError("checkpoint folder not found", path=path)
    for root in (path, path / "checkpoints"):
        pointer = root / "latest"
        if pointer.is_symlink() or pointer.is_dir():
            path = pointer.resolve()
            break
        if pointer.is_file():
            path = root / pointer.read_text(encoding="utf-8", errors="replace").strip()
            break
    if not path.is_dir():
        raise UserError("`latest` names a checkpoint that does not exist", path=path)
    if ".tmp" in path.name:
        raise UserError("checkpoint is a temporary folder (half written)", path=path)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"not a complete training checkpoint (half written?): missing {STATE_FILE}", path=path)
    return path


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return read_json(ckpt / STATE_FILE, "trainer state")


def checkpoint_model_config(state: dict[str, Any], weights: dict, source: Path) -> ModelConfig:
    """The resolved model config: `model_config` (a ModelConfig mapping), else the recipe's
    `config.model` (a size name, a YAML path or a mapping); a null vocab_size is read off the
    word-embedding rows."""
    recipe = state.get("config") if isinstance(state.get("config"), dict) else {}
    spec = state.get("model_config", recipe.get("model"))
    if isinstance(spec, dict):
        config = model_config_from_dict(spec, source=source)
    elif isinstance(spec, str):
        config = load_model_config(spec)
    else:
        raise UserError("trainer_state.json names no model config (model_config or config.model)", path=source)
    if config.vocab_size is None and WORD_EMBEDDINGS in weights:
        config = model_config_from_dict({**to_dict(config), "vocab_size": weights[WORD_EMBEDDINGS].shape[0]},
                                        source=source)
    return config


def find_tokenizer(ckpt: Path, state: dict[str, Any], explicit: str | None) -> Path:
    recipe = state.get("config") if isinstance(state.get("config"), dict) else {}
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    # tokenizer_dir is relative to the checkpoint folder (the trainer writes "../../tokenizer")
    recorded = ckpt / state["tokenizer_dir"] if isinstance(state.get("tokenizer_dir"), str) else None
    candidates = [explicit, ckpt / "tokenizer", recorded,
                  Path(data["prepared"]) / "tokenizer" if data.get("prepared") else None]
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_dir():
            return Path(candidate)
    if explicit is not None:
        raise UserError("tokenizer folder not found", path=explicit)
    raise UserError("no tokenizer found (checked CKPT/tokenizer, trainer_state tokenizer_dir and the "
                    "prepared dataset); pass --tokenizer DIR", path=ckpt)


def run_metrics(ckpt: Path, step: int) -> dict[str, Any]:
    """Measured numbers from the run's `metrics.jsonl` (OUT/checkpoints/step-N -> OUT), as logged at
    or before `step`: the eval losses at step 0 (untrained) and at the last evaluation, and the last
    logged training losses and throughput. Lines that are not JSON objects are counted, not used."""
    path = ckpt.parent.parent / "metrics.jsonl"
    if not path.is_file():
        return {}
    first_eval: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    last_train: dict[str, Any] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
            bad += not isinstance(record, dict)
            continue
        if "eval_mlm" in record:
            last_eval = record
            if record["step"] == 0:
                first_eval = record
        elif "loss" in record:
            last_train = record
    out: dict[str, Any] = {}
    for key in ("eval_mlm", "eval_cmrm"):
        if key in first_eval:
            out[f"{key} loss, step 0 (untrained)"] = first_eval[key]
        if key in last_eval and last_eval is not first_eval:
            out[f"{key} loss, step {last_eval['step']}"] = last_eval[key]
    for key in ("loss", "mlm", "cmrm", "tokens_per_s", "mfu"):
        if key in last_train:
            out[f"train {key}, step {last_train['step']}"] = last_train[key]
    if bad:
        out["metrics.jsonl lines skipped (unreadable)"] = bad
    return out


def card_info(state: dict[str, Any], run: dict[str, Any], extra_metrics: dict[str, Any]) -> CardInfo:
    """Model-card facts from the trainer state (and its recipe); nothing is invented."""
    recipe = state.get("config") if isinstance(state.get("config"), dict) else {}
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    prepared = data.get("prepared")
    data_text = f"Prepared dataset `{prepared}`." if prepared else "Not recorded in the checkpoint."
    manifest = Path(prepared) / "manifest.json" if prepared else None
    if manifest is not None and manifest.is_file():
        try:
            m = read_json(manifest, "manifest")
        except UserError:  # the export itself does not need the dataset; the card says so
            m = None
            data_text += " Its manifest.json is unreadable."

        def section(key: str) -> dict:
            return m[key] if isinstance(m.get(key), dict) else {}

        counts, kg = (section("counts"), section("kg")) if m is not None else ({}, {})
        data_text += "" if m is None else (f" {counts.get('documents', '?')} documents, {counts.get('tokens', '?')} tokens, "
                      f"annotator {section('annotator').get('name', '?')} (masking mode "
                      f"{m.get('masking_mode', '?')}); knowledge graph with {kg.get('entities', '?')} "
                      f"entities and {kg.get('triples', '?')} triples.")
    masking = recipe.get("masking") if isinstance(recipe.get("masking"), dict) else {}
    cmrm = recipe.get("cmrm") if isinstance(recipe.get("cmrm"), dict) else {}
    mode = state.get("masking_mode")
    how = {"arcs": "DEP/SDP arcs with [dep]/[sdp] markers, then random whole words",
           "words": "entity- and POS-aware whole words (no dependency annotation)"}.get(mode, "mode not recorded")
    objectives = (f"Linguistic-aware masked language modelling (LMLM, masking rate "
                  f"{masking.get('rate', 'default')}: {how}).")
    if cmrm.get("enabled", True) and recipe:
        objectives += (f" Contrastive multi-hop relation modelling (CMRM, weight {cmrm.get('weight', 'default')}, "
                       f"temperature {cmrm.get('temperature', 'default')}, {cmrm.get('negatives', 'default')} "
                       "negatives from hops 2-3 of the knowledge graph).")
    metrics = dict(run)
    if isinstance(state.get("metrics"), dict):
        metrics.update(state["metrics"])
    metrics.update(extra_metrics)
    return CardInfo(data=data_text, objectives=objectives, steps=int(state.get("step", 0)), metrics=metrics)


def read_weights(ckpt: Path, state: dict[str, Any]) -> dict[str, Any]:
    """model.safetensors, or the reassembled shards of a DCP checkpoint (`ckbert.dist_checkpoint`)."""
    if state.get("format") == SHARDED_FORMAT:
        from ckbert.dist_checkpoint import load_full_model_state

        try:
            return load_full_model_state(ckpt)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"sharded weights are unreadable (half written?): {str(exc).splitlines()[0]}",
                            path=ckpt) from None
    if not (ckpt / WEIGHTS_FILE).is_file():
        raise UserError(f"not a complete training checkpoint (half written?): missing {WEIGHTS_FILE}", path=ckpt)
    try:
        return load_file(str(ckpt / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{WEIGHTS_FILE} is unreadable (half written?): {exc}", path=ckpt) from None


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def export_checkpoint(ckpt: str | Path, out: str | Path, tokenizer: str | None = None,
                      metrics: dict[str, Any] | None = None, overwrite: bool = False, dtype: str = "fp32") -> Path:
    """`dtype` bf16 halves the folder (floating-point tensors only; HF loads it as bf16 and
    `.float()` restores fp32 compute)."""
    check_out_dir(Path(out), overwrite)  # before reading the weights
    ckpt = resolve_checkpoint(ckpt)
    state = read_trainer_state(ckpt)
    weights = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in read_weights(ckpt, state).items()}
    config = checkpoint_model_config(state, weights, ckpt / STATE_FILE)
    step = int(state.get("step", 0))
    card = card_info(state, run_metrics(ckpt, step), metrics or {})
    return export_hf_folder(weights, config, find_tokenizer(ckpt, state, tokenizer), out, card, overwrite,
                            {**recorded_cmrm(state), **recorded_split(state)})


# CMRM settings an export records in config.json under "ckbert_cmrm" (the relation probe reads them:
# which heads were held out, how sample texts were rendered); plain transformers ignores the key.
RECORDED_CMRM_KEYS = ("heldout_heads", "sample_chars", "relation_in_text", "max_hop", "negatives", "temperature",
                      "pool", "anchor", "render", "in_batch_negatives")


def recorded_cmrm(state: dict[str, Any]) -> dict[str, Any]:
    """The `ckbert_cmrm` entry of config.json, from a trainer state ({} when CMRM was off)."""
    cmrm = state.get("config", {}).get("cmrm", {})
    if not isinstance(cmrm, dict) or not cmrm.get("enabled"):
        return {}
    return {"ckbert_cmrm": {k: cmrm[k] for k in RECORDED_CMRM_KEYS if k in cmrm}}


def recorded_split(state: dict[str, Any]) -> dict[str, Any]:
    """The `ckbert_split` entry of config.json: which rows of which dataset the run trained on and
    which share of heads CMRM held out, so that `ckbert eval` / `probe` score only unseen data."""
    held = state.get("heldout")
    if not isinstance(held, dict):
        return {}
    cmrm = state.get("config", {}).get("cmrm", {})
    share = cmrm.get("heldout_heads", 0.0) if isinstance(cmrm, dict) and cmrm.get("enabled") else 0.0
    return {"ckbert_split": {"rows": held["rows"], "train_rows": held["train_rows"], "heldout_heads": share,
                             "kg_fingerprint": state.get("kg_fingerprint"),
                             "halves": "validation = first half of the held-out rows and heads with hash below "
                                       "share / 2; test = the rest"}}


def cmrm_of_export(hf_config: Any) -> CMRMConfig:
    """The CMRM settings an exported model was trained with (config.json `ckbert_cmrm`), else the
    defaults: how to render and pool sample texts when probing it."""
    value = getattr(hf_config, "ckbert_cmrm", None)
    recorded = dict(value) if isinstance(value, dict) else {}
    return CMRMConfig(**{k: v for k, v in recorded.items() if k in RECORDED_CMRM_KEYS})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ckbert export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder whose checkpoints/latest names one")
    parser.add_argument("--out", required=True, help="new Hugging Face model folder (must not exist or be empty "
                        "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (when the export succeeds)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: from the checkpoint or its dataset)")
    parser.add_argument("--metrics", help="JSON file {name: value} of measured numbers for the model card")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights in the exported folder")
    args = parser.parse_args(argv)
    check_out_dir(Path(args.out), args.overwrite)
    extra: dict[str, Any] = read_json(args.metrics, "metrics file") if args.metrics else {}
    out = export_checkpoint(args.checkpoint, args.out, args.tokenizer, extra, args.overwrite, args.dtype)
    print(f"exported {out}")
    return 0
