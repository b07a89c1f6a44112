"""Training checkpoints, written atomically (docs/contracts.md, "Checkpoints and export").

Layout: `OUT/checkpoints/step-000100/` with `model.safetensors`, `optimizer.pt`, `scheduler.pt`,
`rng.pt` (tensors and plain containers only: read back with `torch.load(weights_only=True)`) and
`trainer_state.json` (step, epoch, data position, configs). A checkpoint is written into a
temporary folder and renamed into place, then `OUT/checkpoints/latest` (a one-line file naming
it) is replaced atomically; a crash at any point leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ckbert.config import read_json
from ckbert.errors import UserError

FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")
MODEL_FILES = ("model.safetensors", "trainer_state.json")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def step_folders(root: Path) -> list[Path]:
    """The finished `step-N` folders of `root`, oldest first by step number (not by name: past
    step 999,999 the zero-padded names no longer sort as numbers)."""
    done = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers on CPU, contiguous (safetensors needs both)."""
    return {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}


def save_checkpoint(out_dir: str | Path, step: int, model_state: dict[str, torch.Tensor],
                    optimizer: dict, scheduler: dict, rng: dict, trainer_state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write `step-NNNNNN` atomically, point `latest` at it, and keep the newest `keep` ones."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(scheduler, tmp / "scheduler.pt")
    torch.save(rng, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    if final.exists():  # re-saving the same step (e.g. a resumed run that stops at once)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name + "\n")
    for old in step_folders(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_complete(ckpt: Path, files: tuple[str, ...] = FILES) -> None:
    """A one-line error for a folder that is not a complete checkpoint."""
    if not ckpt.is_dir():
        raise UserError("checkpoint folder not found", path=ckpt)
    missing = [f for f in files if not (ckpt / f).is_file()]
    if missing:
        raise UserError(f"checkpoint is incomplete (half written?): missing {', '.join(missing)}", path=ckpt)
    read_json(ckpt / "trainer_state.json", "trainer state")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names under OUT/checkpoints (None when there is none)."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        if any(root.glob("step-*")):
            raise UserError("checkpoints exist but `latest` is missing; pass the folder explicitly", path=root)
        return None
    ckpt = root / pointer.read_text(encoding="utf-8").strip()
    # FSDP runs write sharded DCP checkpoints (ckbert.dist_checkpoint): shards under sharded/
    check_complete(ckpt, ("trainer_state.json",) if (ckpt / "sharded").is_dir() else FILES)
    return ckpt


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return read_json(ckpt / "trainer_state.json", "trainer state")


def _reason(path: Path, exc: Exception) -> str:
    """Why a checkpoint file could not be read, never an empty string (an empty file makes
    torch.load raise EOFError with no message)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes; half written?)"
    except OSError:
        pass
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (truncated or not a torch file?)"


def load_model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise UserError(f"model.safetensors is unreadable: {_reason(ckpt / 'model.safetensors', exc)}",
                        path=ckpt) from None


def load_torch_file(ckpt: Path, name: str) -> Any:
    """optimizer.pt / scheduler.pt / rng.pt, never unpickling arbitrary objects."""
    try:
        return torch.load(ckpt / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{name} is unreadable: {_reason(ckpt / name, exc)}", path=ckpt) from None
