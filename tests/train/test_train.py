"""The training loop end to end on the real prepared slice: loss goes down, resume reproduces the
uninterrupted run exactly (CPU, fp32), and bad inputs give one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from ckbert.cli import main as cli
from ckbert.errors import UserError
from ckbert.train import run
from ckbert.train_config import load_pretrain_config

STEPS = 6


def write_config(path: Path, prepared_dir: Path, model_yaml: Path, out: Path, **train) -> Path:
    cfg = {
        "data": {"prepared": str(prepared_dir), "eval_rows": 32},
        "model": str(model_yaml),
        "out": str(out),
        "seed": 1,
        "optim": {"lr": 5e-3, "warmup_ratio": 0.25},
        "train": {"batch_size": 6, "grad_accum": 2, "max_steps": STEPS, "log_every": 1, "eval_every": 0,
                  "save_every": 3, **train},
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, prepared_dir, micro_model_yaml):
    root = tmp_path_factory.mktemp("run")
    cfg_path = write_config(root / "cfg.yaml", prepared_dir, micro_model_yaml, root / "out")
    assert cli(["pretrain", "--config", str(cfg_path)]) == 0
    return cfg_path, root / "out"


def test_loss_decreases_and_logs(full_run):
    cfg_path, out = full_run
    lines = metrics(out)
    train = [m for m in lines if "loss" in m]
    evals = [m for m in lines if "eval_mlm" in m]
    assert [m["step"] for m in train] == list(range(1, STEPS + 1))
    for m in train:
        assert {"mlm", "cmrm", "lr", "tokens_per_s", "grad_norm", "cmrm_mentions", "cmrm_shortfall"} <= set(m)
        assert m["loss"] == pytest.approx(m["mlm"] + 0.09 * m["cmrm"], rel=1e-5)
    assert sum(m["cmrm_mentions"] for m in train) > 0 and all(m["cmrm"] > 0 for m in train)
    assert [e["step"] for e in evals] == [0, STEPS]
    assert evals[-1]["eval_mlm"] < evals[0]["eval_mlm"] - 0.2, evals
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000003", "step-000006"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000006"
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_resume_reproduces_uninterrupted_run(full_run, tmp_path):
    cfg_path, out = full_run
    # An interrupted run: the same folder as it was right after the step-4 checkpoint.
    cut = tmp_path / "out"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000006")
    (cut / "checkpoints" / "latest").write_text("step-000003\n")
    kept = [json.dumps(m) for m in metrics(out) if m["step"] <= 3]
    (cut / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    assert cli(["pretrain", "--config", str(cfg_path), "--out", str(cut), "--resume"]) == 0
    a, b = metrics(out), metrics(cut)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "mlm", "cmrm", "grad_norm", "lr", "eval_mlm"):
            if key in x:
                assert x[key] == y[key], (x["step"], key, x[key], y[key])  # bit-identical on CPU fp32
    wa = load_file(str(out / "checkpoints" / "step-000006" / "model.safetensors"))
    wb = load_file(str(cut / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def _error(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # progress lines may come first; the error is one line
    assert last.startswith("ckbert pretrain: error: "), err
    return last


def test_bad_config(tmp_path, capsys, prepared_dir, micro_model_yaml):
    good = write_config(tmp_path / "good.yaml", prepared_dir, micro_model_yaml, tmp_path / "o")
    data = yaml.safe_load(good.read_text())
    data["train"]["max_stepz"] = 3
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(data))
    assert "unknown config key train.max_stepz" in _error(capsys, ["pretrain", "--config", str(tmp_path / "unknown.yaml")])
    err = _error(capsys, ["pretrain", "--config", str(good), "train.batch_size=many"])
    assert "train.batch_size" in err and "integer" in err
    err = _error(capsys, ["pretrain", "--config", str(good), "train.precision=fp16", "train.device=cpu"])
    assert "fp16 needs a CUDA device" in err
    err = _error(capsys, ["pretrain", "--config", str(good), "--resume"])
    assert "no checkpoint" in err


def test_bad_checkpoints(full_run, tmp_path, capsys):
    cfg_path, out = full_run
    other = tmp_path / "out"
    shutil.copytree(out, other)
    err = _error(capsys, ["pretrain", "--config", str(cfg_path), "--out", str(other)])
    assert "already holds checkpoints" in err
    (other / "checkpoints" / "step-000006" / "optimizer.pt").unlink()  # half written
    err = _error(capsys, ["pretrain", "--config", str(cfg_path), "--out", str(other), "--resume"])
    assert "incomplete" in err and "optimizer.pt" in err
    shutil.copy(out / "checkpoints" / "step-000006" / "optimizer.pt", other / "checkpoints" / "step-000006")
    state_file = other / "checkpoints" / "step-000006" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["tokenizer_fingerprint"] = "0" * 64
    state_file.write_text(json.dumps(state))
    err = _error(capsys, ["pretrain", "--config", str(cfg_path), "--out", str(other), "--resume"])
    assert "tokenizer differs" in err


def test_bad_prepared_dataset(tmp_path, capsys, prepared_dir, micro_model_yaml):
    bad = tmp_path / "prepared"
    shutil.copytree(prepared_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    cfg = write_config(tmp_path / "c.yaml", bad, micro_model_yaml, tmp_path / "o")
    err = _error(capsys, ["pretrain", "--config", str(cfg)])
    assert "format" in err and "99" in err
    with pytest.raises(UserError, match="not found"):
        load_pretrain_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError):
        run(load_pretrain_config(cfg, [f"data.prepared={tmp_path / 'nothing'}"]))


def test_init_from_hf_folder(tmp_path, capsys, prepared, prepared_dir, micro_model_yaml):
    """`init_from`: the model starts from a local HF BertForMaskedLM folder; a folder whose weights
    do not fit its config is a one-line error."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from ckbert.train import build_model

    manifest, ds, kg, tok = prepared
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = load_pretrain_config(write_config(tmp_path / "c.yaml", prepared_dir, micro_model_yaml, tmp_path / "o"),
                               [f"init_from={folder}"])
    model, mcfg = build_model(cfg, tok, None)
    assert mcfg.hidden_size == 32 and mcfg.num_hidden_layers == 1
    theirs = hf.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    # config.json says 48 wide, the weights are 32 wide
    conf = json.loads((folder / "config.json").read_text())
    conf["hidden_size"] = 48
    (folder / "config.json").write_text(json.dumps(conf))
    cfg_path = write_config(tmp_path / "bad.yaml", prepared_dir, micro_model_yaml, tmp_path / "o2")
    err = _error(capsys, ["pretrain", "--config", str(cfg_path), f"init_from={folder}"])
    assert "shape" in err or "mismatch" in err, err


def test_non_finite_step_is_skipped():
    """train_step makes no update when the loss is not finite, and says so."""
    import contextlib

    import torch

    from ckbert.train import StepContext, train_step

    class Terms(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, batch):
            mlm = (self.w * batch["x"]).sum()
            return {"mlm": mlm, "cmrm": self.w.sum() * 0.0}

    fwd = Terms()
    opt = torch.optim.AdamW(fwd.parameters(), lr=0.1)
    ctx = StepContext(fwd, opt, torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext, 0.09, 1.0,
                      list(fwd.parameters()))
    bad = train_step(ctx, [{"x": torch.tensor([1.0, float("inf"), 0.0])}])
    assert bad["skipped"] == 1.0 and torch.equal(fwd.w.detach(), torch.ones(3))
    good = train_step(ctx, [{"x": torch.tensor([1.0, 2.0, 0.0])}])
    assert good["skipped"] == 0.0 and not torch.equal(fwd.w.detach(), torch.ones(3))


def test_compiled_step_gives_the_same_losses(full_run, tmp_path, prepared_dir, micro_model_yaml):
    """train.compile (torch.compile of the step module, here the tracing-only aot_eager backend)
    reproduces the eager run's losses and keeps the checkpoint's parameter names."""
    _, eager_out = full_run
    cfg = write_config(tmp_path / "cfg.yaml", prepared_dir, micro_model_yaml, tmp_path / "out", compile="aot_eager")
    assert cli(["pretrain", "--config", str(cfg)]) == 0
    eager = [m["loss"] for m in metrics(eager_out) if "loss" in m]
    compiled = [m["loss"] for m in metrics(tmp_path / "out") if "loss" in m]
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    last = sorted((tmp_path / "out" / "checkpoints").glob("step-*"))[-1]
    eager_last = sorted((eager_out / "checkpoints").glob("step-*"))[-1]
    assert set(load_file(last / "model.safetensors")) == set(load_file(eager_last / "model.safetensors"))


def test_batch_ramp_takes_more_micro_batches_per_step_as_the_budget_is_spent(tmp_path, prepared_dir,
                                                                                micro_model_yaml):
    cfg_path = write_config(tmp_path / "cfg.yaml", prepared_dir, micro_model_yaml, tmp_path / "out",
                            grad_accum=3, batch_ramp=0.5, save_every=0, batch_size=2)
    assert cli(["pretrain", "--config", str(cfg_path)]) == 0
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    # progress s/6 before step s: 1, 1, 2, 3, 3, 3 micro-batches (ckbert.optim.ramped_accum)
    assert (state["epoch"], state["samples_in_epoch"]) == (0, 13 * 2), state


def test_checkpoint_pruning_orders_steps_by_number(tmp_path):
    """Past step 999,999 the zero-padded folder names stop sorting as numbers; pruning keeps the
    newest steps by number."""
    import torch

    from ckbert.checkpoint import save_checkpoint, step_folders

    state = {"w": torch.zeros(2)}
    for step in (999_998, 999_999, 1_000_000):
        save_checkpoint(tmp_path, step, state, {}, {}, {}, {"step": step}, keep=2)
    assert [p.name for p in step_folders(tmp_path / "checkpoints")] == ["step-999999", "step-1000000"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-1000000"
