"""Open a prepared dataset directory with validation (docs/contracts.md).

`open_prepared(DIR)` checks the manifest (present, valid JSON, the keys and types below, format
version), every shard it lists (folder and `.done` present, row counts equal, each Arrow file the
size its `.done` records; with `verify=True` or `CKBERT_VERIFY_SHARDS=1` also its sha256), the
tokenizer (fingerprint and size) and the KG store fingerprint, and returns
`(manifest, dataset, kg, tokenizer)`. Every failure is a one-line `UserError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ckbert.config import read_json
from ckbert.data_prep.kg_store import KGStore
from ckbert.data_prep.shards import arrow_digest, shard_is_done
from ckbert.data_prep.tokenizer import fingerprint, load_tokenizer
from ckbert.errors import UserError

FORMAT_VERSION = 1
VERIFY_ENV = "CKBERT_VERIFY_SHARDS"  # "1": hash every shard on open (slow on big datasets)

# What a reader relies on: key -> type, or a nested schema for a section. Extra keys are allowed.
_SCHEMA: dict = {
    "format_version": int,
    "seq_len": int,
    "masking_mode": str,
    "pos_tags": list,
    "shards": list,
    "tokenizer": {"fingerprint": str, "vocab_size": int, "dep_token_id": int, "sdp_token_id": int},
    "kg": {"fingerprint": str},
    "annotator": dict,
    "counts": dict,
}
_OPTIONAL: dict = {"dep_labels": list, "sdp_labels": list}


def _check_shape(data: dict, schema: dict, where: str, mf: Path, optional: dict | None = None) -> None:
    for key, tp in {**schema, **(optional or {})}.items():
        name = f"{where}{key}"
        if key not in data:
            if optional and key in optional:
                continue
            raise UserError(f"manifest has no {name!r} (damaged, or not written by ckbert prepare)", path=mf)
        value = data[key]
        if isinstance(tp, dict):
            if not isinstance(value, dict):
                raise UserError(f"manifest {name!r} must be an object, got {value!r:.60}", path=mf)
            _check_shape(value, tp, f"{name}.", mf)
        elif not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UserError(f"manifest {name!r} must be {_TYPE_NAMES[tp]}, got {value!r:.60}", path=mf)


_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise UserError("prepared dataset folder not found", path=path)
    if not mf.is_file():
        hint = (" (an unfinished run: rerun its `ckbert prepare` command to finish it)"
                if (path / "state").is_dir() else "")
        raise UserError(f"no manifest.json: not a complete prepared dataset{hint}", path=path)
    manifest = read_json(mf, "manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"format_version {manifest.get('format_version')!r}, this ckbert reads {FORMAT_VERSION}", path=mf)
    _check_shape(manifest, _SCHEMA, "", mf, _OPTIONAL)
    if manifest["seq_len"] < 1:
        raise UserError(f"manifest 'seq_len' must be >= 1, got {manifest['seq_len']}", path=mf)
    if manifest["masking_mode"] not in ("arcs", "words"):
        raise UserError(f"manifest 'masking_mode' must be 'arcs' or 'words', got {manifest['masking_mode']!r}",
                        path=mf)
    for key in ("pos_tags", "dep_labels", "sdp_labels"):
        if not all(isinstance(tag, str) for tag in manifest.get(key, [])):
            raise UserError(f"manifest {key!r} must be a list of strings", path=mf)
    for i, shard in enumerate(manifest["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str) and "/" not in shard["name"]
                and isinstance(shard.get("rows"), int) and shard["rows"] >= 0):
            raise UserError(f"manifest 'shards[{i}]' must be {{\"name\": ..., \"rows\": >= 0}}, got {shard!r:.80}",
                            path=mf)
    return manifest


def _check_shard_files(folder: Path, rec: dict, verify: bool) -> None:
    """The shard's Arrow files against its `.done` record: names, sizes (when recorded) and, with
    `verify`, sha256. Catches a truncated or replaced file before datasets reads it."""
    done = folder.with_name(folder.name + ".done")
    digests = rec.get("sha256")
    if not isinstance(digests, dict):
        return  # nothing recorded to compare with
    present = sorted(f.name for f in folder.glob("*.arrow"))
    if present != sorted(digests):
        raise UserError(f"holds Arrow files {present}, its .done records {sorted(digests)}", path=folder)
    sizes = rec.get("bytes")
    for name in present:
        f = folder / name
        if isinstance(sizes, dict) and sizes.get(name) != f.stat().st_size:
            raise UserError(f"{f.stat().st_size} bytes, {done.name} records {sizes.get(name)} (truncated or "
                            "damaged; rebuild with `ckbert prepare ... --overwrite`)", path=f)
    if verify:
        actual = arrow_digest(folder)
        for name in present:
            if actual[name] != digests[name]:
                raise UserError(f"sha256 differs from the one {done.name} records (damaged; rebuild with "
                                "`ckbert prepare ... --overwrite`)", path=folder / name)


def open_prepared(path: str | Path, expect_tokenizer: str | None = None, verify: bool | None = None):
    """-> (manifest, datasets.Dataset of all shards in order, KGStore, tokenizer).

    `expect_tokenizer`: a tokenizer fingerprint (sha256 of tokenizer.json) the caller requires, e.g.
    the one of a checkpoint being continued. `verify`: hash every shard against its `.done` (default:
    the environment variable CKBERT_VERIFY_SHARDS=1); without it only the file sizes are compared.
    """
    from datasets import concatenate_datasets, load_from_disk

    if verify is None:
        verify = os.environ.get(VERIFY_ENV, "") not in ("", "0")
    path = Path(path)
    manifest = read_manifest(path)
    shards_dir = path / "shards"
    parts = []
    for shard in manifest["shards"]:
        rec = shard_is_done(shards_dir, shard["name"])
        if rec is None:
            raise UserError(f"shard {shard['name']} is unfinished or missing (no .done)", path=shards_dir)
        if not isinstance(rec, dict) or rec.get("rows") != shard["rows"]:
            rows = rec.get("rows") if isinstance(rec, dict) else None
            raise UserError(f"shard {shard['name']} has {rows} rows, manifest says {shard['rows']}", path=shards_dir)
        if shard["rows"] == 0:
            continue  # every line of the shard was skipped: save_to_disk writes no data file to load
        _check_shard_files(shards_dir / shard["name"], rec, verify)
        try:
            ds = load_from_disk(str(shards_dir / shard["name"]))
        except Exception as exc:  # pyarrow / datasets raise OSError, ArrowInvalid, ValueError, ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"shard {shard['name']} is unreadable ({reason}); rebuild with `ckbert prepare ... "
                            "--overwrite`", path=shards_dir / shard["name"]) from None
        if len(ds) != shard["rows"]:
            raise UserError(f"shard {shard['name']} holds {len(ds)} rows, .done says {shard['rows']}", path=shards_dir)
        parts.append(ds)
    if not parts:
        raise UserError("manifest lists no shards", path=path)
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    tok_dir = path / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError("tokenizer/tokenizer.json missing", path=path)
    fp = fingerprint(tok_dir)
    if fp != manifest["tokenizer"]["fingerprint"]:
        raise UserError("tokenizer/ does not match the manifest's tokenizer fingerprint", path=path)
    if expect_tokenizer is not None and fp != expect_tokenizer:
        raise UserError(f"tokenizer fingerprint {fp[:12]} differs from the expected {expect_tokenizer[:12]}", path=path)
    tokenizer = load_tokenizer(tok_dir)
    tok = manifest["tokenizer"]
    if len(tokenizer) != tok["vocab_size"]:
        raise UserError(f"tokenizer/ has {len(tokenizer)} tokens, the manifest's tokenizer.vocab_size is "
                        f"{tok['vocab_size']}", path=path)
    for key in ("dep_token_id", "sdp_token_id"):
        if not 0 <= tok[key] < len(tokenizer):
            raise UserError(f"manifest tokenizer.{key} {tok[key]} is outside the tokenizer's {len(tokenizer)} "
                            "tokens", path=path / "manifest.json")
    kg = KGStore.open(path / "kg")
    if kg.fingerprint != manifest["kg"]["fingerprint"]:
        raise UserError("kg/ does not match the manifest's KG fingerprint", path=path)
    return manifest, dataset, kg, tokenizer
