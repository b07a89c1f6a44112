"""Bad input to every command (issue 14): nothing a user feeds ckbert may crash it, lose a result or
silently produce garbage.

Each case runs the real command line (`ckbert.cli.main`, in process; a subprocess where a real
process matters) and checks the exit status, that no traceback reached the user, that the one-line
message names the offending file, key or argument, and, where an earlier good output exists, that
it is byte-identical afterwards. The fixtures are built once per module by the real commands: a
small prepared dataset (`ckbert prepare`), one pretraining step (`ckbert pretrain`), its export
(`ckbert export`) and one fine-tuning run (`ckbert finetune`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ckbert.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
CLUE = ROOT / "tests" / "finetune" / "fixtures"
TINY_YAML = ROOT / "configs" / "model" / "tiny.yaml"
FT_SMOKE = ["max_steps=1", "eval_steps=1", "max_length=32", "batch_size=4", "eval_batch_size=8"]


# ---- helpers -------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (or `root` itself) with its bytes."""
    if root.is_file():
        return {"": root.read_bytes()}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fails(capsys, argv: list, *names: object, code: int = 2) -> str:
    """Run `ckbert ARGV`; the exit status is `code`, nothing printed a traceback, and the last
    stderr line is the one-line error naming each of `names`. Returns that line."""
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    assert rc == code, (rc, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"ckbert {argv[0]}: error: "), err
    for name in names:
        assert str(name) in line, (name, line)
    return line


def succeeds(capsys, argv: list) -> tuple[str, str]:
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert rc == 0, err
    return out, err


def no_staging_left(out: Path) -> bool:
    """No hidden `.NAME.tmp-*` sibling (a half-written result) next to `out`."""
    return not any(p.name.startswith(f".{out.name}.tmp") for p in out.parent.iterdir())


# ---- fixtures: the real commands, once ---------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, build_small_prepared):
    """prepared dataset -> 1 pretraining step -> exported HF model -> one fine-tuning result."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: avoids OpenMP spinning against the other core
    root = tmp_path_factory.mktemp("bad_input")
    prepared = build_small_prepared(root, n_lines=80, n_subjects=40, seq_len=30, vocab_size=1500)
    micro = root / "micro.yaml"
    micro.write_text("vocab_size: null\nhidden_size: 32\nnum_hidden_layers: 1\nnum_attention_heads: 2\n"
                     "intermediate_size: 64\nmax_position_embeddings: 64\nkernels: torch\n", encoding="utf-8")
    config = root / "pretrain.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"prepared": str(prepared), "eval_rows": 8}, "model": str(micro), "out": str(root / "run"),
        "train": {"batch_size": 4, "max_steps": 1, "log_every": 1, "eval_every": 0, "save_every": 1,
                  "device": "cpu"},
    }), encoding="utf-8")
    assert cli(["pretrain", "--config", str(config)]) == 0
    model = root / "model"
    assert cli(["export", str(root / "run"), "--out", str(model)]) == 0
    ft = root / "ft"
    assert cli(["finetune", "--task", "afqmc", "--model", str(model), "--data", str(CLUE / "afqmc"),
                "--out", str(ft), "--name", "tiny", *FT_SMOKE]) == 0
    yield {"root": root, "prepared": prepared, "config": config, "run": root / "run", "model": model, "ft": ft,
           "corpus": root / "pd.txt", "kg": root / "kg.tsv"}
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_output(capsys):
    """Each case reads only its own output."""
    capsys.readouterr()
    yield


def prepare_args(world, out, *extra) -> list:
    return ["prepare", "--corpus", world["corpus"], "--kg", world["kg"], "--out", out, "--format", "pretagged",
            "--annotator", "pretagged", "--build-vocab", "--vocab-size", "1500", "--seq-len", "30", "--workers", "1",
            "--quiet", *extra]


def model_copy(world, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(world["model"], dest)
    for name in drop:
        (dest / name).unlink(missing_ok=True)
    return dest


# ---- corpus and KG (prepare) ---------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "empty", "binary", "bad_utf8", "no_chinese"])
def test_bad_corpus(world, tmp_path, capsys, case):
    corpus = tmp_path / "corpus.txt"
    if case == "empty":
        corpus.write_bytes(b"")
    elif case == "binary":
        corpus.write_bytes(b"\x00\x01\x02 not text")
    elif case == "bad_utf8":
        corpus.write_bytes("中文/n  第一行/n\n".encode() + b"\xc3\x28/n\n")
    elif case == "no_chinese":
        corpus.write_text("abc/n  def/n\nxyz/n\n", encoding="utf-8")
    argv = prepare_args(world, tmp_path / "out")
    argv[2] = corpus
    name = "corpus.txt:2" if case == "bad_utf8" else "corpus.txt"
    line = fails(capsys, argv, name)
    assert {"missing": "file not found", "empty": "empty file", "binary": "binary file", "bad_utf8": "invalid UTF-8",
            "no_chinese": "no usable sentence"}[case] in line


def test_missing_kg(world, tmp_path, capsys):
    argv = prepare_args(world, tmp_path / "out")
    argv[4] = tmp_path / "nokg.tsv"
    fails(capsys, argv, "nokg.tsv", "KG file not found")


def test_kg_without_a_valid_triple(world, tmp_path, capsys):
    kg = tmp_path / "kg.tsv"
    kg.write_text("only\ttwo\nno tabs at all\n", encoding="utf-8")
    argv = prepare_args(world, tmp_path / "out")
    argv[4] = kg
    fails(capsys, argv, "kg.tsv", "no valid triples")


def test_kg_store_folder_cannot_be_merged_and_a_second_file_is_checked(world, tmp_path, capsys):
    argv = prepare_args(world, tmp_path / "out")
    fails(capsys, [*argv[:5], world["prepared"] / "kg", *argv[5:]], f"{world['prepared'] / 'kg'}: ",
          "cannot be merged with other files")
    fails(capsys, [*argv[:5], tmp_path / "nokg2.tsv", *argv[5:]], "nokg2.tsv", "KG file not found")


def test_huge_entity_name_is_skipped_and_counted_not_a_segfault(world, tmp_path):
    """pyahocorasick segfaults (exit 139) on a ~1M-character word: such names never reach it."""
    kg = tmp_path / "kg.tsv"
    shutil.copy(world["kg"], kg)
    with kg.open("a", encoding="utf-8") as f:
        f.write("中" * 1_000_000 + "\t别名\t中国\n")
    corpus = tmp_path / "pd.txt"
    corpus.write_text("".join(world["corpus"].read_text(encoding="utf-8").splitlines(keepends=True)[:20]),
                      encoding="utf-8")
    out = tmp_path / "out"
    args = prepare_args(world, out)
    args[2], args[4] = corpus, kg
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "ckbert.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert "entity_name_too_long 1" in proc.stdout  # the closing summary reports the skip
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["skipped"]["entity_name_too_long"] == 1
    assert manifest["linker"]["names_too_long"] == 1 and manifest["linker"]["max_entity_chars"] == 256


@pytest.mark.parametrize("flag,value,msg", [
    ("--seq-len", "4", "--seq-len must be >= 8"),
    ("--workers", "0", "--workers must be >= 1"),
    ("--max-entity-chars", "0", "--max-entity-chars must be >= 2"),
    ("--max-sentence-chars", "0", "--max-sentence-chars must be >= 1"),
])
def test_prepare_numeric_arguments(world, tmp_path, capsys, flag, value, msg):
    fails(capsys, prepare_args(world, tmp_path / "out", flag, value), msg)
    assert not (tmp_path / "out").exists()


def test_prepare_missing_tokenizer_folder(world, tmp_path, capsys):
    argv = [a for a in prepare_args(world, tmp_path / "out") if a not in ("--build-vocab",)]
    fails(capsys, [*argv, "--tokenizer", tmp_path / "no-tok"], "no-tok", "tokenizer folder not found")


# ---- prepare's --out ---------------------------------------------------------------------------------
def test_prepare_out_is_a_file(world, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("mine")
    fails(capsys, prepare_args(world, out), out, "not a folder")
    assert out.read_text() == "mine"


def test_prepare_out_holds_something_else(world, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    fails(capsys, prepare_args(world, out, "--overwrite"), out, "holds no ckbert run")
    assert snapshot(out) == before


def test_prepare_complete_dataset_with_other_settings(world, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(world["prepared"], out)
    before = snapshot(out)
    line = fails(capsys, prepare_args(world, out, "--seq-len", "40"), out, "different settings (seq_len)",
                 "--overwrite")
    assert "complete prepared dataset" in line
    assert snapshot(out) == before
    out_text, _ = succeeds(capsys, prepare_args(world, out))  # the original command: nothing to do
    assert "already complete" in out_text and snapshot(out) == before


def test_prepare_unfinished_run_with_finished_shards_and_other_settings(world, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(world["prepared"], out)
    (out / "manifest.json").unlink()
    before = snapshot(out)
    line = fails(capsys, prepare_args(world, out, "--seq-len", "40"), out, "finished shard", "rerun its original command")
    assert "seq_len" in line and snapshot(out) == before


def test_prepare_overwrite_replaces_a_complete_dataset(world, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(world["prepared"], out)
    succeeds(capsys, prepare_args(world, out, "--seq-len", "40", "--overwrite"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seq_len"] == 40 and all(s["rows"] >= 0 for s in manifest["shards"])
    assert not list(out.glob("*.tmp"))


def test_failed_prepare_restarts_in_place_after_the_fix(world, tmp_path, capsys):
    """A run that failed on a bad corpus line (no shard finished) is redone by the fixed command in the
    same --out, as `open_prepared`'s hint ('rerun its command') says."""
    corpus = tmp_path / "pd.txt"
    good = world["corpus"].read_bytes()
    corpus.write_bytes(good[:2000].rsplit(b"\n", 1)[0] + b"\n\xc3\x28/n\n")
    out = tmp_path / "ds"
    argv = prepare_args(world, out)
    argv[2] = corpus
    fails(capsys, argv, "pd.txt", "invalid UTF-8")
    assert (out / "state" / "run.json").is_file() and not (out / "manifest.json").exists()
    line = fails(capsys, ["pretrain", "--config", world["config"], f"data.prepared={out}", f"out={tmp_path / 'o'}"],
                 out, "rerun its `ckbert prepare` command")
    assert "unfinished run" in line
    corpus.write_bytes(good[:2000].rsplit(b"\n", 1)[0] + b"\n")  # fixed: the command is not the same (size, mtime)
    _, err = succeeds(capsys, argv)
    assert "restarting the unfinished run" in err and (out / "manifest.json").is_file()


# ---- a damaged prepared dataset (pretrain opens it) ------------------------------------------------
def _first_arrow(ds: Path) -> Path:
    return next((ds / "shards" / "shard-00000").glob("*.arrow"))


def _edit_manifest(ds: Path, change) -> None:
    path = ds / "manifest.json"
    data = json.loads(path.read_text())
    new = change(data)
    path.write_text(new if isinstance(new, str) else json.dumps(data if new is None else new))


DAMAGE = {
    # case: (damage, words the one-line error must hold)
    "arrow_truncated": (lambda ds: _truncate(_first_arrow(ds)), ["data-00000-of-00001.arrow", "bytes", "truncated"]),
    "arrow_truncated_old_done": (lambda ds: (_drop_sizes(ds), _truncate(_first_arrow(ds))),
                                 ["shard-00000", "unreadable"]),
    "manifest_list": (lambda ds: _edit_manifest(ds, lambda m: []), ["manifest.json", "must be a JSON object"]),
    "manifest_truncated": (lambda ds: _edit_manifest(ds, lambda m: json.dumps(m)[:40]),
                           ["manifest.json:1", "not valid JSON"]),
    "manifest_empty": (lambda ds: _edit_manifest(ds, lambda m: ""), ["manifest.json", "empty"]),
    "no_seq_len": (lambda ds: _edit_manifest(ds, lambda m: m.pop("seq_len") and None), ["manifest.json", "'seq_len'"]),
    "seq_len_lots": (lambda ds: _edit_manifest(ds, lambda m: m.update(seq_len="lots")),
                     ["manifest.json", "'seq_len' must be an integer", "lots"]),
    "shards_not_a_list": (lambda ds: _edit_manifest(ds, lambda m: m.update(shards={})), ["'shards' must be a list"]),
    "tokenizer_not_an_object": (lambda ds: _edit_manifest(ds, lambda m: m.update(tokenizer="x")),
                                ["'tokenizer' must be an object"]),
    "vocab_size_mismatch": (lambda ds: _edit_manifest(ds, lambda m: m["tokenizer"].update(
        vocab_size=m["tokenizer"]["vocab_size"] + 7)), ["tokenizer.vocab_size"]),
    "masking_mode_unknown": (lambda ds: _edit_manifest(ds, lambda m: m.update(masking_mode="random")),
                             ["'masking_mode'", "random"]),
    "done_missing": (lambda ds: (ds / "shards" / "shard-00000.done").unlink(), ["shard-00000", "unfinished"]),
}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_sizes(ds: Path) -> None:
    """A `.done` written before sizes were recorded."""
    done = ds / "shards" / "shard-00000.done"
    rec = json.loads(done.read_text())
    rec.pop("bytes", None)
    done.write_text(json.dumps(rec))


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_prepared_dataset(world, tmp_path, capsys, case):
    ds = tmp_path / "prepared"
    shutil.copytree(world["prepared"], ds)
    damage, words = DAMAGE[case]
    damage(ds)
    fails(capsys, ["pretrain", "--config", world["config"], f"data.prepared={ds}", f"out={tmp_path / 'o'}"],
          ds, *words)


def test_flipped_byte_found_by_the_full_check(world, tmp_path, capsys, monkeypatch):
    ds = tmp_path / "prepared"
    shutil.copytree(world["prepared"], ds)
    arrow = _first_arrow(ds)
    data = bytearray(arrow.read_bytes())
    data[-100] ^= 0xFF  # same size: only the hash sees it
    arrow.write_bytes(bytes(data))
    monkeypatch.setenv("CKBERT_VERIFY_SHARDS", "1")
    fails(capsys, ["pretrain", "--config", world["config"], f"data.prepared={ds}", f"out={tmp_path / 'o'}"],
          arrow, "sha256 differs")


# ---- configuration (pretrain) ----------------------------------------------------------------------
def test_unknown_key_in_the_yaml_file(world, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    data = yaml.safe_load(world["config"].read_text())
    data["train"]["bogus"] = 1
    cfg.write_text(yaml.safe_dump(data))
    fails(capsys, ["pretrain", "--config", cfg], cfg, "unknown config key train.bogus")


@pytest.mark.parametrize("override,words", [
    ("train.bogus=1", ["command-line override 'train.bogus=1'", "unknown config key train.bogus"]),
    ("train.batch_size=many", ["command-line override 'train.batch_size=many'", "expected an integer"]),
    ("train.batch_size=[1,", ["override 'train.batch_size=[1,'", "not a YAML scalar"]),
    ("optim.lr=.nan", ["command-line override 'optim.lr=.nan'", "finite"]),
    ("bogus.sub=1", ["command-line override 'bogus.sub=1'", "unknown config key bogus"]),
])
def test_bad_override_blames_the_command_line(world, tmp_path, capsys, override, words):
    line = fails(capsys, ["pretrain", "--config", world["config"], f"out={tmp_path / 'o'}", override], *words)
    assert str(world["config"]) not in line  # the file is fine: the override is to blame


def test_unknown_model_size_lists_the_known_ones(world, tmp_path, capsys):
    fails(capsys, ["pretrain", "--config", world["config"], f"out={tmp_path / 'o'}", "model=gigantic"],
          "'gigantic'", "tiny, base, large, huge")


def test_missing_and_invalid_config_file(tmp_path, capsys):
    fails(capsys, ["pretrain", "--config", tmp_path / "none.yaml"], "none.yaml", "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  prepared: x\n train: [\n")
    fails(capsys, ["pretrain", "--config", bad], f"{bad}:", "invalid YAML")


# ---- checkpoints -----------------------------------------------------------------------------------
def _run_copy(world, tmp_path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return run, ckpt


def test_empty_rng_state_gives_the_reason(world, tmp_path, capsys):
    run, ckpt = _run_copy(world, tmp_path)
    (ckpt / "rng.pt").write_bytes(b"")
    fails(capsys, ["pretrain", "--config", world["config"], f"out={run}", "--resume"],
          "rng.pt is unreadable: the file is empty", ckpt.name)


@pytest.mark.parametrize("case", ["state_garbage", "state_list", "latest_dangling", "weights_truncated"])
def test_broken_checkpoint_for_export(world, tmp_path, capsys, case):
    run, ckpt = _run_copy(world, tmp_path)
    state = ckpt / "trainer_state.json"
    if case == "state_garbage":
        state.write_text('{"step": 1,')
        words = [f"{state}:1", "trainer state is not valid JSON"]
    elif case == "state_list":
        state.write_text("[1, 2]")
        words = [state, "must be a JSON object"]
    elif case == "latest_dangling":
        (run / "checkpoints" / "latest").write_text("step-999999\n")
        words = ["step-999999", "does not exist"]
    else:
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        words = [ckpt, "model.safetensors is unreadable"]
    fails(capsys, ["export", run, "--out", tmp_path / "hf"], *words)
    assert not (tmp_path / "hf").exists() and no_staging_left(tmp_path / "hf")


# ---- export's --out ----------------------------------------------------------------------------------
def test_export_refuses_an_earlier_export(world, tmp_path, capsys):
    out = tmp_path / "hf"
    shutil.copytree(world["model"], out)
    before = snapshot(out)
    fails(capsys, ["export", world["run"], "--out", out], out, "not empty", "--overwrite")
    assert snapshot(out) == before


def test_export_overwrite_replaces_whole(world, tmp_path, capsys):
    out = tmp_path / "hf"
    shutil.copytree(world["model"], out)
    (out / "stale.txt").write_text("from an earlier export")
    succeeds(capsys, ["export", world["run"], "--out", out, "--overwrite"])
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert no_staging_left(out) and not any(p.name.startswith(".hf.old") for p in tmp_path.iterdir())


def test_export_into_an_empty_folder_keeps_modes(world, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    out.chmod(0o750)
    mask = os.umask(0o022)
    try:
        succeeds(capsys, ["export", world["run"], "--out", out])
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # the folder the user made keeps its mode
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f  # safetensors alone would write 0600


def test_export_metrics_file_not_an_object(world, tmp_path, capsys):
    metrics = tmp_path / "m.json"
    metrics.write_text("[0.5]")
    fails(capsys, ["export", world["run"], "--out", tmp_path / "hf", "--metrics", metrics], metrics,
          "metrics file must be a JSON object")


# ---- model folders (finetune, clue, probe) ------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _model_cmd(command: str, world, model: Path, tmp_path: Path) -> list:
    if command == "finetune":
        return ["finetune", "--task", "afqmc", "--model", model, "--data", CLUE / "afqmc", "--out", tmp_path / "o",
                *FT_SMOKE]
    if command == "clue":
        return ["clue", "--model", model, "--data-root", CLUE, "--tasks", "afqmc", "--out", tmp_path / "o", *FT_SMOKE]
    return ["probe", "--model", model, "--kg", world["prepared"] / "kg", "--out", tmp_path / "o.json"]


@pytest.mark.parametrize("command", ["finetune", "clue", "probe"])
def test_model_folder_without_tokenizer(world, tmp_path, capsys, command):
    model = model_copy(world, tmp_path / "model", drop=TOKENIZER_FILES)
    fails(capsys, _model_cmd(command, world, model, tmp_path), model, "no tokenizer in the model folder")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.json").exists()


def test_tokenizer_larger_than_the_model_vocabulary(world, tmp_path, capsys):
    model = model_copy(world, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = 200
    (model / "config.json").write_text(json.dumps(config))
    fails(capsys, _model_cmd("finetune", world, model, tmp_path), model, "more than the model's vocab_size 200")


def test_placeholder_tokenizer(world, tmp_path, capsys):
    from transformers import BertTokenizerFast

    model = model_copy(world, tmp_path / "model", drop=TOKENIZER_FILES)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"一二三四五六七八九十"])}
    BertTokenizerFast(vocab=vocab).save_pretrained(str(model))
    fails(capsys, _model_cmd("probe", world, model, tmp_path), model, "only 15 tokens")


# ---- fine-tuning: data and --out --------------------------------------------------------------------------
def test_finetune_refuses_an_earlier_result(world, capsys):
    before = snapshot(world["ft"])
    fails(capsys, ["finetune", "--task", "afqmc", "--model", world["model"], "--data", CLUE / "afqmc",
                   "--out", world["ft"], *FT_SMOKE], world["ft"], "not empty", "--overwrite")
    assert snapshot(world["ft"]) == before


def test_finetune_overwrite_replaces_whole_no_zip_pile_up(world, tmp_path, capsys):
    out = tmp_path / "ft"
    shutil.copytree(world["ft"], out)
    (out / "submit_tiny_20000101.zip").write_bytes(b"an older submission")
    succeeds(capsys, ["finetune", "--task", "afqmc", "--model", world["model"], "--data", CLUE / "afqmc",
                      "--out", out, "--name", "tiny", "--overwrite", *FT_SMOKE])
    assert len(list(out.glob("submit_*.zip"))) == 1 and not (out / "submit_tiny_20000101.zip").exists()
    assert json.loads((out / "results.json").read_text())["task"] == "afqmc" and no_staging_left(out)


def _bad_clue_data(tmp_path: Path, case: str) -> tuple[Path, list]:
    data = tmp_path / "afqmc"
    shutil.copytree(CLUE / "afqmc", data)
    if case == "missing_field":
        with (data / "train.json").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"sentence1": "只有一句", "label": "0"}, ensure_ascii=False) + "\n")
        return data, ["train.json:7", "missing field 'sentence2'"]
    if case == "bad_json":
        (data / "dev.json").write_text('{"sentence1": "a", "sentence2": "b", "label": "1"}\n{not json\n')
        return data, ["dev.json:2", "invalid JSON"]
    if case == "bad_label":
        with (data / "train.json").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"sentence1": "一", "sentence2": "二", "label": "7"}) + "\n")
        return data, ["train.json:7", "label"]
    (data / "dev.json").unlink()
    return data, ["dev file not found"]


@pytest.mark.parametrize("case", ["missing_field", "bad_json", "bad_label", "missing_file"])
def test_bad_clue_data(world, tmp_path, capsys, case):
    data, words = _bad_clue_data(tmp_path, case)
    out = tmp_path / "o"
    fails(capsys, ["finetune", "--task", "afqmc", "--model", world["model"], "--data", data, "--out", out, *FT_SMOKE],
          *words)
    assert not out.exists() and no_staging_left(out)  # nothing half written


@pytest.mark.parametrize("options,overrides,words", [
    (["--data", "/no/such/folder"], [], ["/no/such/folder", "data folder not found"]),
    (["--data", CLUE / "afqmc"], ["max_length=100000"], ["max_length 100000", "max_position_embeddings 64"]),
    (["--data", CLUE / "afqmc"], ["seeds=[-1]"], ["command-line override 'seeds=[-1]'", "seeds must be"]),
    (["--data", CLUE / "afqmc"], ["learning_rate=.inf"], ["command-line override 'learning_rate=.inf'", "finite"]),
    (["--task", "afqmcc"], [], ["unknown task 'afqmcc'"]),
])
def test_finetune_bad_arguments(world, tmp_path, capsys, options, overrides, words):
    fails(capsys, ["finetune", "--task", "afqmc", "--model", world["model"], "--out", tmp_path / "o", *options,
                   *FT_SMOKE, *overrides], *words)
    assert not (tmp_path / "o").exists()


def test_clue_bad_arguments(world, tmp_path, capsys):
    fails(capsys, ["clue", "--model", world["model"], "--data-root", CLUE, "--tasks", ",", "--out", tmp_path / "o"],
          "--tasks", "names no task")
    fails(capsys, ["clue", "--model", world["model"], "--data-root", tmp_path / "none", "--out", tmp_path / "o"],
          "none", "data root not found")
    before = snapshot(world["ft"])
    fails(capsys, ["clue", "--model", world["model"], "--data-root", CLUE, "--tasks", "afqmc", "--out", world["ft"],
                   *FT_SMOKE], world["ft"], "not empty")
    assert snapshot(world["ft"]) == before


# ---- probe -----------------------------------------------------------------------------------------------
def _probe(world, *extra) -> list:
    return ["probe", "--model", world["model"], "--kg", world["prepared"] / "kg", "--max-triples", "3", "--k", "2",
            *extra]


def test_probe_out_is_a_folder_refused_before_the_work(world, tmp_path, capsys):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "earlier.json").write_text("{}")
    before = snapshot(out)
    fails(capsys, _probe(world, "--out", out), out, "is a folder")
    assert snapshot(out) == before and not (tmp_path / "reports.tmp").exists()


def test_probe_out_file_exists(world, tmp_path, capsys):
    out = tmp_path / "probe.json"
    out.write_text('{"earlier": true}')
    fails(capsys, _probe(world, "--out", out), out, "exists", "--overwrite")
    assert out.read_text() == '{"earlier": true}'
    succeeds(capsys, _probe(world, "--out", out, "--overwrite"))
    assert "groups" in json.loads(out.read_text()) and no_staging_left(out)


@pytest.mark.parametrize("extra,words", [
    (["--k", "0"], ["--k must be >= 1"]),
    (["--batch-size", "-3"], ["--batch-size must be >= 1"]),
    (["--seed", "-1"], ["--seed must be >= 0"]),
    (["--template", "{head}"], ["--template"]),
])
def test_probe_bad_arguments(world, capsys, extra, words):
    fails(capsys, _probe(world, *extra), *words)


def test_probe_missing_kg_and_damaged_prepared(world, tmp_path, capsys):
    fails(capsys, ["probe", "--model", world["model"], "--kg", tmp_path / "kg"], tmp_path / "kg")
    ds = tmp_path / "prepared"
    shutil.copytree(world["prepared"], ds)
    (ds / "manifest.json").write_text("[]")
    fails(capsys, _probe(world, "--prepared", ds), ds / "manifest.json", "must be a JSON object")


# ---- plan ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,words", [
    (["--gpu-mem", "nan"], ["--gpu-mem must be a finite number", "nan"]),
    (["--gpu-mem", "inf"], ["--gpu-mem must be a finite number", "inf"]),
    (["--gpu-mem", "0"], ["--gpu-mem must be >= 0.5"]),
    (["--gpu-mem", "40", "--seq-len", "-5"], ["--seq-len must be >= 1", "-5"]),
    (["--gpu-mem", "40", "--seq-len", "0"], ["--seq-len must be >= 1"]),
    (["--gpu-mem", "40", "--seq-len", "100000"], ["--seq-len 100000", "max_position_embeddings 512", "tiny.yaml"]),
    (["--gpu-mem", "40", "--gpus", "0"], ["--gpus must be >= 1"]),
])
def test_plan_numeric_arguments(capsys, extra, words):
    fails(capsys, ["plan", "--config", TINY_YAML, *extra], *words)


def test_plan_missing_config(tmp_path, capsys):
    fails(capsys, ["plan", "--config", tmp_path / "x.yaml", "--gpu-mem", "40"], "x.yaml", "not found")


# ---- demo-data and kg-stats ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "1.5", "0"])
def test_demo_data_heldout_fraction(tmp_path, capsys, value):
    fails(capsys, ["demo-data", "--out", tmp_path / "demo", "--heldout-fraction", value], "--heldout-fraction", value)
    assert not (tmp_path / "demo").exists()


def test_demo_data_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    before = snapshot(out)
    fails(capsys, ["demo-data", "--out", out], out, "not empty", "--overwrite")
    assert snapshot(out) == before


@pytest.mark.parametrize("case", ["missing", "not_a_store", "no_triples"])
def test_kg_stats(tmp_path, capsys, case):
    path = tmp_path / "kg"
    if case == "not_a_store":
        path.mkdir()
    elif case == "no_triples":
        path = tmp_path / "kg.tsv"
        path.write_text("a\tb\n")
    fails(capsys, ["kg-stats", path], path)


@pytest.mark.parametrize("case", ["missing", "no_manifest", "no_kg"])
def test_kg_shuffle(world, tmp_path, capsys, case):
    prepared, words = tmp_path / "prepared", []
    if case == "missing":
        words = [prepared, "not found"]
    elif case == "no_manifest":
        prepared.mkdir()
        words = [prepared, "manifest.json"]
    else:
        shutil.copytree(world["prepared"], prepared)
        shutil.rmtree(prepared / "kg")
        words = [prepared, "kg/"]
    fails(capsys, ["kg-shuffle", "--prepared", prepared, "--out", tmp_path / "out"], *words)
    assert not (tmp_path / "out").exists()


# ---- eval ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["no_model", "no_prepared", "damaged_prepared", "temperature_nan"])
def test_eval(world, tmp_path, capsys, case):
    model, prepared, extra, words = world["model"], world["prepared"], [], []
    if case == "no_model":
        model = tmp_path / "nomodel"
        words = [model]
    elif case == "no_prepared":
        prepared = tmp_path / "noprep"
        words = [prepared, "not found"]
    elif case == "damaged_prepared":
        prepared = tmp_path / "prepared"
        shutil.copytree(world["prepared"], prepared)
        _edit_manifest(prepared, lambda m: m.pop("seq_len") and None)
        words = [prepared / "manifest.json", "'seq_len'"]
    else:
        extra, words = ["--temperature", "nan"], ["--temperature"]
    fails(capsys, ["eval", "--model", model, "--prepared", prepared, *extra], *words)
