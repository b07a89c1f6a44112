"""Budget-aware schedules, the held-out evaluation (random-token masks, unigram baseline, CMRM
accuracy, collapse signal), and what a run logs with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ckbert.cli import main as cli
from ckbert.cmrm_samples import CMRM_STAT_KEYS
from ckbert.collator import PretrainCollator
from ckbert.evaluation import heldout
from ckbert.optim import BudgetSchedule
from ckbert.train import keep_until
from ckbert.train_config import CMRMConfig, MaskingConfig


def lrs_of(schedule: BudgetSchedule, opt, n: int, seconds: float = 0.0, tokens: int = 0) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        schedule.advance(seconds, tokens)
    return out


def sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_time_budget_drives_warmup_and_decay():
    opt = sgd()
    s = BudgetSchedule(opt, warmup_ratio=0.1, max_steps=10**9, max_seconds=100.0)
    lrs = lrs_of(s, opt, 100, seconds=1.0)  # 1 s per step: 100 steps fill the 100 s budget
    assert s.done() and s.progress() == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert lrs[-1] == pytest.approx(1 / 90) and max(lrs) == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:], strict=False))  # annealed, monotone
    # the same budget at 4 s per step: 4x fewer steps, the same shape over wall time
    opt2 = sgd()
    s2 = BudgetSchedule(opt2, warmup_ratio=0.1, max_steps=10**9, max_seconds=100.0)
    lrs2 = lrs_of(s2, opt2, 25, seconds=4.0)
    assert s2.done() and lrs2[-1] == pytest.approx(lrs[-4], abs=0.05)


def test_token_budget_and_the_first_budget_spent_wins():
    opt = sgd()
    s = BudgetSchedule(opt, warmup_ratio=0.0, max_steps=1000, max_tokens=500)
    lrs_of(s, opt, 5, tokens=100)
    assert s.done() and s.steps == 5 and opt.param_groups[0]["lr"] == 0.0
    opt = sgd()
    s = BudgetSchedule(opt, warmup_ratio=0.0, max_steps=4, max_tokens=10**9)
    lrs_of(s, opt, 4, tokens=100)
    assert s.done() and s.tokens == 400


def test_schedule_state_round_trip():
    opt = sgd()
    s = BudgetSchedule(opt, 0.2, 100, max_seconds=60.0)
    lrs_of(s, opt, 7, seconds=2.5, tokens=30)
    opt2 = sgd()
    s2 = BudgetSchedule(opt2, 0.2, 100, max_seconds=60.0)
    s2.load_state_dict(torch.load(_saved(s.state_dict()), weights_only=True))
    assert s2.state_dict() == s.state_dict() and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def _saved(state: dict):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_mean_pairwise_cosine():
    mask = torch.ones(2, 5, dtype=torch.long)
    same = torch.ones(2, 5, 8)
    assert float(heldout.mean_pairwise_cosine(same, mask)) == pytest.approx(1.0)
    eye = torch.eye(8)[:6].reshape(2, 3, 8)
    assert float(heldout.mean_pairwise_cosine(eye, torch.ones(2, 3, dtype=torch.long))) == pytest.approx(0.0, abs=1e-6)
    # padding is ignored: one real position per row, two rows, orthogonal
    mask = torch.tensor([[1, 0, 0], [1, 0, 0]])
    assert float(heldout.mean_pairwise_cosine(eye, mask)) == pytest.approx(0.0, abs=1e-6)


def test_cmrm_counts_a_tie_is_not_a_win():
    scores = torch.tensor([[2.0, 1.0, -float("inf")], [1.0, 1.0, 1.0], [0.0, 3.0, 1.0]])
    c = heldout.cmrm_counts(scores)
    assert c["cmrm_n"] == 3 and c["cmrm_hits"] == 1
    assert c["cmrm_chance"] == pytest.approx(1 / 2 + 1 / 3 + 1 / 3)


def test_unigram_log_probs_and_baseline(prepared):
    manifest, ds, kg, tok = prepared
    n_train = heldout.heldout_start(len(ds), 32)
    logp = heldout.unigram_log_probs(ds, n_train, len(tok))
    counts = np.bincount(np.concatenate([np.asarray(r) for r in ds[:n_train]["input_ids"]]), minlength=len(tok)) + 1.0
    assert torch.allclose(logp, torch.from_numpy(np.log(counts / counts.sum())).float(), atol=1e-6)
    labels = torch.tensor([int(logp.argmax()), 5, 5])
    c = heldout.mlm_counts(torch.zeros(3, len(tok)), labels, logp)
    assert c["uni_hits"] == 1 and c["uni_ce"] == pytest.approx(-float(logp[labels].sum()), rel=1e-6)
    assert c["ce"] == pytest.approx(3 * np.log(len(tok)), rel=1e-5)  # uniform logits


def test_random_token_eval_masks_everything(prepared):
    manifest, ds, kg, tok = prepared
    col = PretrainCollator(tok, manifest, None, heldout.RANDOM_TOKEN_EVAL, CMRMConfig(enabled=False), 64, 0)
    from ckbert.train import KeyedRows

    batch = col(KeyedRows(ds).__getitems__([(0, r) for r in range(32)]))
    shown = batch["input_ids"].view(-1)[batch["mlm_positions"]]
    assert bool((shown == tok.mask_token_id).all())
    n_tok = sum(len(r) for r in ds[:32]["input_ids"])
    assert abs(batch["mlm_labels"].numel() / n_tok - 0.15) < 0.02


def test_keep_until_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 0, "eval_mlm": 7.0}, {"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.9}, {"step": 15, "loss": 0.8}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 20, "lo', encoding="utf-8")
    keep_until(path, 10)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 5, 10]


def test_collator_drops_a_mention_left_without_negative(prepared):
    manifest, ds, kg, tok = prepared
    col = PretrainCollator(tok, manifest, kg, MaskingConfig(), CMRMConfig(negatives=2), 64, 0)
    stats = dict.fromkeys(CMRM_STAT_KEYS, 0)
    stats["mentions"] = 2
    # "中☃" and "中☄" both tokenize to 中 [UNK]: the first mention's only negative merges with its positive
    texts = ["中☃", "中☄", "中国", "中文"]
    ids, mask, pool, index, exclude, kept = col.sampler.tokenize(texts, [[0, 1, -1], [2, 3, 1]], stats,
                                                                  dict.fromkeys(texts, 1))
    assert kept.tolist() == [1] and index.shape == (1, 3)
    assert stats["no_negative"] == 1 and stats["mentions"] == 1 and stats["merged"] == 1
    assert (index[0] >= 0).sum() == 3  # the kept mention: positive + 2 distinct negatives
    assert stats["candidates"] == 3  # its softmax width; the dropped mention adds none


def run_config(root: Path, prepared_dir: Path, model_yaml: Path, **train) -> Path:
    cfg = {"data": {"prepared": str(prepared_dir), "eval_rows": 32}, "model": str(model_yaml),
           "out": str(root / "out"), "seed": 3, "optim": {"lr": 5e-3, "warmup_ratio": 0.2},
           "train": {"batch_size": 8, "max_steps": 10**6, "log_every": 1, "eval_every": 0, "save_every": 0,
                     "dropout": 0.0, "unigram_decoder_bias": True, **train}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_token_budget_run_ends_annealed_with_the_honest_eval(tmp_path, prepared_dir, micro_model_yaml, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(heldout, "COLLAPSE_COSINE", -1.0)  # any cosine "collapses": the warning's wiring
    cfg = run_config(tmp_path, prepared_dir, micro_model_yaml, max_tokens=3000)
    assert cli(["pretrain", "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_rand_mlm" in r]
    assert train[-1]["tokens"] >= 3000 and train[-2]["tokens"] < 3000  # stopped at the budget
    assert train[-1]["lr"] < 0.2 * max(r["lr"] for r in train)  # annealed
    state = json.loads((tmp_path / "out" / "checkpoints" / f"step-{train[-1]['step']:06d}" / "trainer_state.json").read_text())
    assert state["reason"] == "budget spent"
    first, last = evals[0], evals[-1]
    for key in ("eval_rand_mlm", "eval_rand_top1", "eval_rand_unigram_mlm", "eval_rand_unigram_top1", "eval_mlm",
                "eval_unigram_mlm", "eval_cmrm", "eval_cmrm_acc", "eval_cmrm_chance", "eval_cosine"):
        assert key in last, key
    # the decoder bias starts at the log unigram: step 0 scores close to the unigram baseline
    assert abs(first["eval_rand_mlm"] - first["eval_rand_unigram_mlm"]) < 0.15
    assert 0.0 < last["eval_cmrm_chance"] <= 0.5
    assert "random-token masks MLM" in err and "(unigram " in err
    assert err.count("warning: last-layer states are nearly one vector") == 1


def test_time_budget_run_stops_and_resume_continues_the_clock(tmp_path, prepared_dir, micro_model_yaml):
    cfg = run_config(tmp_path, prepared_dir, micro_model_yaml, max_minutes=0.05, save_every=2)
    assert cli(["pretrain", "--config", str(cfg)]) == 0
    ckpt = tmp_path / "out" / "checkpoints"
    last = json.loads((ckpt / (ckpt / "latest").read_text().strip() / "trainer_state.json").read_text())
    assert last["reason"] == "budget spent"
    sched = torch.load(ckpt / (ckpt / "latest").read_text().strip() / "scheduler.pt", weights_only=True)
    assert sched["elapsed_s"] >= 3.0
    # resuming a spent budget stops at once, with the clock carried over (no new steps)
    assert cli(["pretrain", "--config", str(cfg), "--resume"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == last["step"]


def test_ckbert_eval_through_plain_transformers_equals_the_runs_own_eval(tmp_path, prepared_dir, micro_model_yaml,
                                                                          capsys):
    cfg = run_config(tmp_path, prepared_dir, micro_model_yaml, max_tokens=1500)
    assert cli(["pretrain", "--config", str(cfg)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    own = [r for r in rows if "eval_rand_mlm" in r][-1]
    assert cli(["export", str(tmp_path / "out"), "--out", str(tmp_path / "hf")]) == 0
    assert cli(["export", str(tmp_path / "out"), "--out", str(tmp_path / "hf16"), "--dtype", "bf16"]) == 0
    size32 = (tmp_path / "hf" / "model.safetensors").stat().st_size
    assert (tmp_path / "hf16" / "model.safetensors").stat().st_size < 0.55 * size32
    capsys.readouterr()
    assert cli(["eval", "--model", str(tmp_path / "hf"), "--prepared", str(prepared_dir), "--eval-rows", "32",
                "--seed", "3", "--json"]) == 0
    hf = json.loads(capsys.readouterr().out.splitlines()[-1])
    for key in ("eval_rand_mlm", "eval_rand_top1", "eval_rand_unigram_mlm", "eval_mlm", "eval_cmrm_acc", "eval_cosine"):
        assert hf[key] == pytest.approx(own[key], abs=2e-3), key
    assert cli(["eval", "--model", str(tmp_path / "hf"), str(tmp_path / "hf16"), "--name", "fp32", "bf16",
                "--prepared", str(prepared_dir), "--eval-rows", "32", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "| held-out | fp32 | bf16 | unigram baseline / chance |" in text
    assert "MLM loss, random-token masks (nats)" in text and "CMRM: positive ranked first" in text
