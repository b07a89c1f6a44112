"""Open a prepared dataset directory with validation (docs/contracts.md).

`open_prepared(DIR)` checks the manifest (present, format version), every shard it lists (folder and
`.done` present, row counts equal), the tokenizer fingerprint and the KG store fingerprint, and
returns `(manifest, dataset, kg, tokenizer)`. Every failure is a one-line `UserError`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ckbert.data_prep.kg_store import KGStore
from ckbert.data_prep.shards import shard_is_done
from ckbert.data_prep.tokenizer import fingerprint, load_tokenizer
from ckbert.errors import UserError

FORMAT_VERSION = 1


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise UserError("prepared dataset folder not found", path=path)
    if not mf.is_file():
        hint = " (unfinished run: rerun the same `ckbert prepare` command)" if (path / "state").is_dir() else ""
        raise UserError(f"no manifest.json: not a complete prepared dataset{hint}", path=path)
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"manifest.json is not valid JSON ({exc})", path=mf) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"format_version {manifest.get('format_version')!r}, this ckbert reads {FORMAT_VERSION}", path=mf)
    return manifest


def open_prepared(path: str | Path, expect_tokenizer: str | None = None):
    """-> (manifest, datasets.Dataset of all shards in order, KGStore, tokenizer).

    `expect_tokenizer`: a tokenizer fingerprint (sha256 of tokenizer.json) the caller requires, e.g.
    the one of a checkpoint being continued.
    """
    from datasets import concatenate_datasets, load_from_disk

    path = Path(path)
    manifest = read_manifest(path)
    shards_dir = path / "shards"
    parts = []
    for shard in manifest["shards"]:
        rec = shard_is_done(shards_dir, shard["name"])
        if rec is None:
            raise UserError(f"shard {shard['name']} is unfinished or missing (no .done)", path=shards_dir)
        if rec["rows"] != shard["rows"]:
            raise UserError(f"shard {shard['name']} has {rec['rows']} rows, manifest says {shard['rows']}", path=shards_dir)
        if shard["rows"] == 0:
            continue  # every line of the shard was skipped: save_to_disk writes no data file to load
        ds = load_from_disk(str(shards_dir / shard["name"]))
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
    kg = KGStore.open(path / "kg")
    if kg.fingerprint != manifest["kg"]["fingerprint"]:
        raise UserError("kg/ does not match the manifest's KG fingerprint", path=path)
    return manifest, dataset, kg, tokenizer
