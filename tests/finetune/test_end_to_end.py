"""Every task end to end on the tiny checkpoint: train a few steps, evaluate, write the submission
file, and check the file against the shapes clue.md prescribes (independently of the writers)."""

import json
import zipfile

import pytest

from ckbert.finetune.clue import main as clue_main
from ckbert.finetune.run import main as finetune_main
from ckbert.finetune.tasks import CLUE_TASKS, NLI_LABELS, TNEWS_LABELS
from ckbert.finetune.tokens import CLUENER_TYPES

SMOKE = ["max_steps=2", "eval_steps=1", "max_length=64", "batch_size=4", "doc_stride=16"]
SUBMISSION = {
    "afqmc": "afqmc_predict.json", "tnews": "tnews11_predict.json", "iflytek": "iflytek_predict.json",
    "ocnli": "ocnli_50k_predict.json", "cmnli": "cmnli_predict.json", "cluewsc2020": "cluewsc11_predict.json",
    "csl": "csl_predict.json", "cmrc2018": "cmrc2018_predict.json", "chid": "chid11_predict.json",
    "c3": "c311_predict.json", "cluener": "cluener_predict.json",
}
LABELS = {
    "afqmc": {"0", "1"}, "tnews": set(TNEWS_LABELS), "iflytek": {str(i) for i in range(119)},
    "ocnli": set(NLI_LABELS), "cmnli": set(NLI_LABELS), "cluewsc2020": {"true", "false"}, "csl": {"0", "1"},
}


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_submission(task, path, data):
    """The submission file shape of clue.md, checked against the fixture's test file."""
    if task in LABELS:
        test = _jsonl(data / "test.json")
        rows = _jsonl(path)
        assert [r["id"] for r in rows] == [t.get("id", t.get("idx")) for t in test]  # order of test.json
        assert all(set(r) == {"id", "label"} and r["label"] in LABELS[task] for r in rows)
    elif task == "cmrc2018":
        out = json.loads(path.read_text(encoding="utf-8"))
        qids = [qa["id"] for a in json.loads((data / "test.json").read_text())["data"]
                for p in a["paragraphs"] for qa in p["qas"]]
        assert sorted(out) == sorted(qids) and all(isinstance(v, str) for v in out.values())
    elif task == "chid":
        out = json.loads(path.read_text(encoding="utf-8"))
        assert sorted(out) == ["#idiom000007#", "#idiom000008#"]
        assert all(isinstance(v, int) and 0 <= v < 10 for v in out.values())
    elif task == "c3":
        rows = _jsonl(path)
        questions = json.loads((data / "test1.1.json").read_text())[0][1]
        assert [r["id"] for r in rows] == [q["id"] for q in questions]
        assert all(isinstance(r["label"], int) and 0 <= r["label"] < len(q["choice"]) for r, q in zip(rows, questions, strict=True))
    elif task == "cluener":
        test = _jsonl(data / "test.json")
        rows = _jsonl(path)
        assert [r["id"] for r in rows] == [t["id"] for t in test]
        for r, t in zip(rows, test, strict=True):
            for etype, ents in r["label"].items():
                assert etype in CLUENER_TYPES
                for entity, spans in ents.items():
                    assert all(t["text"][s : e + 1] == entity for s, e in spans)  # inclusive ends
    else:
        raise AssertionError(task)


@pytest.mark.parametrize("task", CLUE_TASKS)
def test_clue_task_end_to_end(task, tiny_model, fixtures, tmp_path, capsys):
    out = tmp_path / task
    rc = finetune_main(["--task", task, "--model", str(tiny_model), "--data", str(fixtures / task),
                        "--out", str(out), "--name", "tiny", *SMOKE])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["runs"][0]["steps"] == 2 and len(results["runs"][0]["evals"]) == 2
    assert 0.0 <= results["dev"][results["metric"]] <= 100.0
    check_submission(task, out / SUBMISSION[task], fixtures / task)
    with zipfile.ZipFile(out / results["submission_zip"]) as zf:
        assert zf.namelist() == [SUBMISSION[task]]
    assert results["submission_zip"].startswith("submit_tiny_")
    if task == "afqmc":  # the floor to beat: train labels 1,1,0,0,1,0 tie, Counter keeps the first ("1")
        assert results["majority_baseline"] == {"label": "1", "dev": 50.0}  # dev labels 1,1,0,0


@pytest.mark.parametrize("task", ["sentiment", "pd_ner"])
def test_offline_task_end_to_end(task, tiny_model, tmp_path):
    rc = finetune_main(["--task", task, "--model", str(tiny_model), "--out", str(tmp_path), *SMOKE,
                        "max_train_examples=16", "max_eval_examples=16", "seeds=[1,2]"])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in results["runs"]] == [1, 2]
    assert results["stats"]["test_examples"] == 16 and results["stats"]["train_examples"] == 16
    assert results["best_seed"] in (1, 2)
    assert results["dev"] == max((r["dev"] for r in results["runs"]), key=lambda d: d[results["metric"]])
    assert 0.0 <= results["test"][results["metric"]] <= 100.0  # real labels: a real test score


def test_best_dev_weights_are_restored(tiny_model, fixtures, tmp_path):
    """The reported dev score is the best evaluation seen during training, not the last one."""
    rc = finetune_main(["--task", "afqmc", "--model", str(tiny_model), "--data", str(fixtures / "afqmc"),
                        "--out", str(tmp_path), "max_steps=6", "eval_steps=1", "max_length=64",
                        "batch_size=2", "learning_rate=0.01"])
    assert rc == 0
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    best = max(e["accuracy"] for e in run["evals"])
    assert run["dev"]["accuracy"] == pytest.approx(best)
    assert run["best_step"] == next(e["step"] for e in run["evals"] if e["accuracy"] == best)


def test_clue_command_table_and_zip(tiny_model, fixtures, tmp_path, capsys):
    rc = clue_main(["--model", str(tiny_model), "--data-root", str(fixtures), "--tasks", "afqmc,cmrc2018",
                    "--out", str(tmp_path), "--name", "tiny", *SMOKE, "afqmc.max_steps=1"])
    assert rc == 0
    table = (tmp_path / "results.md").read_text()
    assert "| afqmc | accuracy |" in table and "73.70" in table and "| cmrc2018 | em |" in table
    assert "| afqmc |" in capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["task"] for r in data["tasks"]] == ["afqmc", "cmrc2018"]
    assert json.loads((tmp_path / "afqmc" / "results.json").read_text())["runs"][0]["steps"] == 1
    (zip_path,) = tmp_path.glob("submit_tiny_*.zip")
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["afqmc_predict.json", "cmrc2018_predict.json"]


def test_random_init_baseline_keeps_size_but_not_weights(tiny_model):
    import torch

    from ckbert.finetune.tasks import get_task

    task = get_task("sentiment")
    pretrained, random = task.model(tiny_model), task.model(tiny_model, random_init=True)
    assert pretrained.config.hidden_size == random.config.hidden_size == 32
    assert random.config.vocab_size == pretrained.config.vocab_size
    w = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(pretrained.state_dict()[w], random.state_dict()[w])


def test_ner_labels_and_decoding_line_up(tiny_model, fixtures, tmp_path):
    """Overfit the CLUENER fixture (its dev lines are training lines): exact spans come back only if
    tags, word ids and decoding line up."""
    rc = finetune_main(["--task", "cluener", "--model", str(tiny_model), "--data", str(fixtures / "cluener"),
                        "--out", str(tmp_path), "max_steps=40", "eval_steps=40", "max_length=64", "batch_size=5",
                        "learning_rate=0.005", "warmup=0"])
    assert rc == 0
    assert json.loads((tmp_path / "results.json").read_text())["dev"]["f1"] == 100.0


def test_epoch_evaluation_and_no_pickles_left(tiny_model, fixtures, tmp_path):
    """eval_steps=0 scores dev at every epoch end (6 examples, batch 4: 2 steps per epoch); the
    Trainer's checkpoints (and their training_args.bin pickle) are gone, the kept model is safetensors."""
    rc = finetune_main(["--task", "afqmc", "--model", str(tiny_model), "--data", str(fixtures / "afqmc"),
                        "--out", str(tmp_path), "--save-model", "epochs=2", "eval_steps=0", "max_length=64",
                        "batch_size=4"])
    assert rc == 0
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert run["steps"] == 4 and [e["step"] for e in run["evals"]] == [2, 4]
    assert all(e["train_loss"] > 0 and e["dev_loss"] > 0 for e in run["evals"])
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl")) or "checkpoint" in f]
    assert "seed-42/model/model.safetensors" in files and "afqmc_predict.json" in files
