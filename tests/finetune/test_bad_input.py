"""Bad input: one clear line naming the file (and line), never a traceback; over-long input is counted."""

import json
import shutil
from types import SimpleNamespace

import pytest

from ckbert.cli import main as cli_main
from ckbert.errors import UserError
from ckbert.finetune.hparams import load_config
from ckbert.finetune.tasks import get_task
from ckbert.hf_load import check_model_dir, load_tokenizer


@pytest.fixture
def data(fixtures, tmp_path):
    def copy(task):
        shutil.copytree(fixtures / task, tmp_path / task)
        return tmp_path / task

    return copy


def _append(path, row):
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def test_missing_file(data):
    d = data("afqmc")
    (d / "dev.json").unlink()
    with pytest.raises(UserError, match=r"afqmc: afqmc dev file not found \(looked for dev.json\)"):
        get_task("afqmc").load(d, "dev", {})


def test_missing_field_names_file_and_line(data):
    d = data("afqmc")
    _append(d / "train.json", {"sentence1": "只有一句", "label": "0"})
    with pytest.raises(UserError, match=r"train.json:7: missing field 'sentence2'"):
        get_task("afqmc").load(d, "train", {})


def test_label_outside_label_set(data):
    d = data("tnews")
    _append(d / "train.json", {"label": "105", "label_desc": "x", "sentence": "一句话", "keywords": ""})
    with pytest.raises(UserError, match=r"train.json:7: label '105' is not in the tnews label set"):
        get_task("tnews").load(d, "train", {})


def test_invalid_json_line(data):
    d = data("csl")
    (d / "dev.json").write_text('{"id": 0, "abst": "x", "keyword": [], "label": "1"}\n{not json\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"dev.json:2: invalid JSON"):
        get_task("csl").load(d, "dev", {})


def test_cluener_span_must_match_text(data):
    d = data("cluener")
    _append(d / "train.json", {"text": "马云在杭州", "label": {"name": {"马云": [[0, 2]]}}})
    with pytest.raises(UserError, match=r"train.json:6: span \[0, 2\] of '马云' does not match the text"):
        get_task("cluener").load(d, "train", {})


def test_chid_blank_without_answer(data):
    d = data("chid")
    (d / "dev_answer.json").write_text('{"#idiom000005#": 7}', encoding="utf-8")
    with pytest.raises(UserError, match=r"#idiom000006# has no entry in dev_answer.json"):
        get_task("chid").load(d, "dev", {})


def test_unknown_task_and_cli_exit_code(tiny_model, capsys):
    with pytest.raises(UserError, match="unknown task 'afqmcc'"):
        get_task("afqmcc")
    assert cli_main(["finetune", "--task", "afqmcc", "--model", str(tiny_model), "--out", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ckbert finetune: error: unknown task 'afqmcc'")
    assert cli_main(["clue", "--model", str(tiny_model), "--data-root", ".", "--tasks", "afqmc,foo", "--out", "x"]) == 2
    assert "unknown CLUE task 'foo'" in capsys.readouterr().err


def test_empty_test_set(data, tiny_model, tmp_path, capsys):
    d = data("afqmc")
    (d / "test.json").write_text("\n", encoding="utf-8")
    rc = cli_main(["finetune", "--task", "afqmc", "--model", str(tiny_model), "--data", str(d),
                   "--out", str(tmp_path / "out"), "max_length=64"])
    assert rc == 2
    assert "empty test set for task afqmc" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_folder_that_is_not_a_model(tmp_path, tiny_model):
    with pytest.raises(UserError, match=r"not a Hugging Face model folder \(no config.json\)"):
        check_model_dir(tmp_path)
    shutil.copy(tiny_model / "config.json", tmp_path / "config.json")
    with pytest.raises(UserError, match="no model weights"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="cannot read config.json"):
        check_model_dir(tmp_path)
    with pytest.raises(UserError, match="model folder not found"):
        load_tokenizer(tmp_path / "missing")


def test_max_length_beyond_the_model(tiny_model, fixtures, capsys):
    rc = cli_main(["finetune", "--task", "afqmc", "--model", str(tiny_model), "--data", str(fixtures / "afqmc"),
                   "--out", "unused", "max_length=512"])
    assert rc == 2
    assert "max_length 512 exceeds the model's max_position_embeddings 128" in capsys.readouterr().err


def test_long_inputs_are_truncated_and_counted(tiny_model, fixtures):
    tok = load_tokenizer(tiny_model)
    task = get_task("csl")
    examples = task.load(fixtures / "csl", "train", {})
    enc = task.encode(examples, tok, SimpleNamespace(max_length=20), "train")
    assert enc.stats["train_truncated"] == 4
    assert max(len(ids) for ids in enc.dataset["input_ids"]) == 20


def test_long_ner_text_is_chunked_not_lost(tiny_model, fixtures):
    tok = load_tokenizer(tiny_model)
    task = get_task("cluener")
    examples = task.load(fixtures / "cluener", "train", {})
    enc = task.encode(examples, tok, SimpleNamespace(max_length=16), "train")
    assert enc.stats["train_texts_chunked"] == sum(len(ex.text) > 14 for ex in examples) > 0 and enc.stats["train_chars_truncated"] == 0
    labelled = sum(sum(1 for y in row if y != -100) for row in enc.dataset["labels"])
    assert labelled == sum(len(ex.text) for ex in examples)  # every character keeps its tag


def test_unknown_config_key():
    with pytest.raises(UserError, match="unknown config key bogus"):
        load_config("afqmc", None, ["bogus=1"])
    with pytest.raises(UserError, match="warmup is a fraction"):
        load_config("afqmc", None, ["warmup=5"])
