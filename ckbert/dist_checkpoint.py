"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), resumable on any world size.

Layout of one checkpoint (next to the single-file ones of `ckbert.checkpoint`):

    OUT/checkpoints/step-000100/
      sharded/shard-0000N-model-00001-of-00001.safetensors   one file per rank, written by DCP
      rng/rank-00000.safetensors                          torch (and CUDA) RNG state of each rank
      trainer_state.json                                  step, data position, optimizer param
                                                          groups, scheduler, config (rank 0)

DCP writes through `HuggingFaceStorageWriter(save_distributed=True)`: every rank writes its own
shards as safetensors, with each shard's offsets in the file header, and
`HuggingFaceStorageReader` rebuilds any other sharding from those headers. Nothing in a checkpoint
is pickled (DCP's default format pickles its `.metadata` and every non-tensor value), so loading
one runs no code. The state is a flat dict of tensors: ``model.<HF name>`` and
``optim.<HF name>.<exp_avg|exp_avg_sq|step>``; the optimizer's param groups (floats) go to JSON.

A checkpoint is written to `step-000100.tmp/` and renamed by rank 0 after every rank has
finished; then `latest` (a text file naming the directory) is replaced atomically. A run killed at
any moment therefore leaves the previous checkpoint as `latest`; the half-written `.tmp` is removed
by the next save. Multi-node runs need OUT on a filesystem every node sees.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ckbert.checkpoint import step_folders
from ckbert.config import read_json
from ckbert.errors import UserError
from ckbert.parallel import DistEnv

FORMAT = "dcp-safetensors-1"
SHARDED_DIR = "sharded"
STATE_FILE = "trainer_state.json"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def is_sharded_checkpoint(path: str | Path) -> bool:
    """True for a complete DCP checkpoint written by `save_sharded`."""
    state = Path(path) / STATE_FILE
    if not state.is_file():
        return False
    try:
        return json.loads(state.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The checkpoint `latest` names, or None when the run has none yet."""
    pointer = Path(ckpt_root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(ckpt_root) / pointer.read_text(encoding="utf-8").strip()
    if not (path / STATE_FILE).is_file():
        raise UserError("names a checkpoint that is missing or half written", path=pointer)
    return path


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def _flat_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], list]:
    """Flat {key: tensor or DTensor} for DCP, and the optimizer's param groups (JSON)."""
    opts = StateDictOptions()
    flat: dict[str, Any] = {f"model.{k}": v for k, v in get_model_state_dict(model, options=opts).items()}
    groups: list = []
    if optimizer is not None:
        osd = get_optimizer_state_dict(model, optimizer, options=opts)
        for fqn, entry in osd["state"].items():
            for name, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"optimizer state {fqn}.{name} is not a tensor: {type(value).__name__}")
                flat[f"optim.{fqn}.{name}"] = value
        groups = osd["param_groups"]
    return flat, groups


def save_sharded(
    ckpt_root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    env: DistEnv,
    keep: int = 0,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory.

    `trainer_state` (JSON-serialisable: data position, scheduler state, config, ...) is written by
    rank 0 together with `format`, `step`, `world_size` and the optimizer's param groups. `keep` > 0
    deletes all but the newest `keep` checkpoints afterwards."""
    root = Path(ckpt_root)
    final = root / checkpoint_name(step)
    tmp = root / (final.name + ".tmp")
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("step-*.tmp"):  # left by a run killed while saving
            shutil.rmtree(stale)
        if final.exists():  # saved again at the same step (e.g. final save after a periodic one)
            shutil.rmtree(final)
        (tmp / "rng").mkdir(parents=True)
    _barrier(env)

    flat, groups = _flat_state(model, optimizer)
    writer = HuggingFaceStorageWriter(str(tmp / SHARDED_DIR), save_distributed=True)
    dcp.save(flat, storage_writer=writer)
    rng = {"torch": torch.get_rng_state()}
    if env.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(env.device)
    save_file(rng, str(tmp / "rng" / f"rank-{env.rank:05d}.safetensors"))
    _barrier(env)

    if env.is_main:
        state = {**trainer_state, "format": FORMAT, "step": step, "world_size": env.world_size,
                 "param_groups": groups}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, default=_json_default), encoding="utf-8")
        os.replace(tmp, final)
        pointer_tmp = root / (LATEST + ".tmp")
        pointer_tmp.write_text(final.name + "\n", encoding="utf-8")
        os.replace(pointer_tmp, root / LATEST)
        if keep > 0:
            for old in step_folders(root)[:-keep]:
                shutil.rmtree(old)
    _barrier(env)
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"not JSON-serialisable in trainer state: {type(value).__name__}")


def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise UserError("not a complete checkpoint (no trainer_state.json)", path=ckpt)
    state = read_json(path, "trainer state")
    if state.get("format") != FORMAT:
        raise UserError(f"not a sharded checkpoint of format {FORMAT} (format: {state.get('format')})", path=path)
    return state


def load_sharded(
    ckpt: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    env: DistEnv,
) -> dict[str, Any]:
    """Collective: load a checkpoint saved on any world size into the (sharded) model and optimizer
    in place; returns the trainer state. RNG states are restored when this rank saved one."""
    ckpt = Path(ckpt)
    state = read_trainer_state(ckpt)
    flat, _ = _flat_state(model, optimizer)
    dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(ckpt / SHARDED_DIR)))
    prefix = "model."
    set_model_state_dict(model, {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)})
    if optimizer is not None:
        osd_state: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            if key.startswith("optim."):
                fqn, name = key[len("optim."):].rsplit(".", 1)
                osd_state.setdefault(fqn, {})[name] = value
        groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in state["param_groups"]]
        set_optimizer_state_dict(model, optimizer, {"state": osd_state, "param_groups": groups})
    rng_file = ckpt / "rng" / f"rank-{env.rank:05d}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        if env.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], env.device)
    return state


def load_full_model_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """One process, no process group: the whole model state dict (HF names, fp32 CPU tensors)
    reassembled from the shards of every rank; used by `ckbert export`."""
    reader = HuggingFaceStorageReader(str(Path(ckpt) / SHARDED_DIR))
    meta = reader.read_metadata()
    full: dict[str, torch.Tensor] = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model."):
            full[key] = torch.empty(md.size, dtype=md.properties.dtype)
    if not full:
        raise UserError("checkpoint holds no model tensors", path=ckpt)
    with warnings.catch_warnings():
        # DCP warns that it loads "in a single process" even with no_dist=True: that is the intent here.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(full, storage_reader=HuggingFaceStorageReader(str(Path(ckpt) / SHARDED_DIR)), no_dist=True)
    return {k[len("model."):]: v for k, v in full.items()}
