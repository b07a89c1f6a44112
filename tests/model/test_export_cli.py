"""`ckbert export`: training checkpoint folder -> HF folder; half-written input is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from ckbert.cli import main as cli_main
from ckbert.config import to_dict
from ckbert.model import CKBertForPreTraining


@pytest.fixture
def run_dir(tmp_path, tokenizer_dir, small_config, randomise):
    """A run folder laid out as docs/contracts.md says: OUT/tokenizer, OUT/checkpoints/step-000012
    (model.safetensors + trainer_state.json) and OUT/checkpoints/latest naming it."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out = tmp_path / "run"
    tok.save_pretrained(str(out / "tokenizer"))
    config = small_config("post_ln", vocab_size=len(tok))
    model = CKBertForPreTraining(config)
    randomise(model)
    ckpt = out / "checkpoints" / "step-000012"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    state = {"step": 12, "model_config": to_dict(config), "tokenizer_dir": "../../tokenizer",
             "metrics": {"eval_mlm_loss": 4.5},
             "config": {"data": {"prepared": str(tmp_path / "absent")}, "masking": {"rate": 0.15},
                        "cmrm": {"enabled": True, "weight": 0.09, "temperature": 0.5, "negatives": 4}}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (out / "checkpoints" / "latest").write_text("step-000012\n")
    # the run's log as the trainer writes it; the record after step 12 must not reach the card
    records = [{"step": 0, "eval_mlm": 9.9, "eval_cmrm": 1.6},
               {"step": 10, "loss": 7.5, "mlm": 7.3, "cmrm": 1.4, "lr": 1e-4, "tokens_per_s": 812.0},
               {"step": 12, "eval_mlm": 7.1, "eval_cmrm": 1.2},
               {"step": 20, "loss": 1.0, "mlm": 1.0, "cmrm": 1.0, "tokens_per_s": 9.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{truncated\n")
    return out, model.eval()


def test_export_command_from_run_folder(tmp_path, run_dir, capsys, people_daily_lines):
    out, model = run_dir
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"fill_mask_top1": 0.25}))
    assert cli_main(["export", str(out), "--out", str(tmp_path / "hf"), "--metrics", str(metrics)]) == 0
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    enc = tok(people_daily_lines[:2], padding=True, return_tensors="pt", truncation=True, max_length=20)
    with torch.no_grad():
        ours = model(enc["input_ids"], enc["attention_mask"])
        theirs = hf(**enc).logits
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "eval_mlm_loss | 4.5" in card and "fill_mask_top1 | 0.25" in card and "CMRM, weight 0.09" in card
    for row in ("eval_mlm loss, step 0 (untrained) | 9.9", "eval_mlm loss, step 12 | 7.1",
                "train mlm, step 10 | 7.3", "train tokens_per_s, step 10 | 812",
                "metrics.jsonl lines skipped (unreadable) | 1"):
        assert row in card, row
    assert "step 20" not in card


def _run_export(args, capsys) -> str:
    assert cli_main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckbert export: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_export_refuses_half_written_checkpoints(tmp_path, run_dir, capsys):
    out, _ = run_dir
    ckpt = out / "checkpoints" / "step-000012"
    dest = str(tmp_path / "hf")
    # a temporary folder of an interrupted save
    tmp = out / "checkpoints" / ".step-000013.tmp-99"
    tmp.mkdir()
    assert "half written" in _run_export([str(tmp), "--out", dest], capsys)
    # truncated weights
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "model.safetensors is unreadable" in _run_export([str(out), "--out", dest], capsys)
    # weights missing, trainer state missing
    (ckpt / "model.safetensors").unlink()
    assert "missing model.safetensors" in _run_export([str(ckpt), "--out", dest], capsys)
    (ckpt / "trainer_state.json").unlink()
    assert "missing trainer_state.json" in _run_export([str(out), "--out", dest], capsys)
    # `latest` naming a checkpoint that is gone
    (out / "checkpoints" / "latest").write_text("step-000099\n")
    assert "does not exist" in _run_export([str(out), "--out", dest], capsys)
    assert "not found" in _run_export([str(tmp_path / "nowhere"), "--out", dest], capsys)
    assert not (tmp_path / "hf").exists()


def test_export_refuses_mismatched_weights(tmp_path, run_dir, capsys):
    out, _ = run_dir
    state_path = out / "checkpoints" / "step-000012" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["model_config"]["intermediate_size"] = 96
    state_path.write_text(json.dumps(state))
    err = _run_export([str(out), "--out", str(tmp_path / "hf")], capsys)
    assert "shape mismatch for bert.encoder.layer.0.intermediate.dense" in err
    state["model_config"]["hidden_layers"] = 2
    state_path.write_text(json.dumps(state))
    assert "unknown config key hidden_layers" in _run_export([str(out), "--out", str(tmp_path / "hf")], capsys)
