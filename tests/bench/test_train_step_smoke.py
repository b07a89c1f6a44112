"""Smoke run of bench/train_step.py's variant matrix (tiny model, small vocabulary, one step), so that
every row of the benchmark (objectives on/off, fp32/bf16, HF at both precisions) keeps running."""

from __future__ import annotations

import json

import pytest
import torch


def test_train_step_matrix_smoke(bench_module, small_prepared, tmp_path, capsys):
    bench = bench_module("train_step")
    out = tmp_path / "train_step.json"
    threads = torch.get_num_threads()
    assert bench.main(["--prepared", str(small_prepared), "--sizes", "tiny", "--batch-size", "2", "--steps", "1",
                       "--warmup", "0", "--vocab-size", "2048", "--layers", "1", "--threads", "1", "--matrix", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # in-process runs leave the caller's thread setting alone
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["torch_threads"] == 1 and rec["bench"] == "train_step" and rec["machine"]["command"]
    assert rec["variants"] == [v.name for v in bench.MATRIX] and len(rec["variants"]) == 8
    (size,) = rec["sizes"]
    rows = {r["variant"]: r for r in size["rows"]}
    assert set(rows) == set(rec["variants"]) | {"HF BertForMaskedLM/fp32", "HF BertForMaskedLM/bf16"}
    cuda = torch.cuda.is_available()
    for name in rec["variants"]:
        r = rows[name]
        if r["kernels"] == "triton" and not cuda:
            assert r["status"] == "not run: no CUDA GPU" and "step_s" not in r
            continue
        hf = rows[f"HF BertForMaskedLM/{r['precision']}"]  # the ratio is against HF at the same precision
        assert r["status"] == "ok" and r["step_s"] > 0 and len(r["step_times_s"]) == 1
        assert r["hf_step_s"] == hf["step_s"] and r["ratio_to_hf"] == pytest.approx(hf["step_s"] / r["step_s"])
        assert r["tokens_per_s"] == pytest.approx(size["tokens_per_batch"] / r["step_s"])
    # the single-variant summary (issue 3's ratio line, bench/plots.py) is still there
    assert size["speedup"] == rows["mlm+cmrm/bf16/torch"]["ratio_to_hf"]
    assert size["mentions_per_batch"] > 0 and size["layers"] == 1  # CMRM has mentions to work on
    printed = capsys.readouterr().out
    assert "ratio" in printed and "| mlm/fp32/torch |" in printed
    if not cuda:
        assert "| mlm+cmrm/bf16/triton | not run: no CUDA GPU |" in printed


def test_train_step_default_is_the_single_comparison(bench_module):
    bench = bench_module("train_step")
    assert bench.DEFAULT.name == "mlm+cmrm/bf16/torch"
    assert bench.parse_variant("mlm/fp32/triton") == bench.Variant("mlm", "fp32", "triton")
    with pytest.raises(Exception, match="OBJECTIVE/PRECISION/KERNELS"):
        bench.parse_variant("cmrm/fp16/torch")


@pytest.mark.parametrize("smoke", [True, False])
def test_run_all_runs_the_train_step_matrix(bench_module, tmp_path, smoke):
    cmd = bench_module("run_all").sections(tmp_path, tmp_path / "prepared", smoke)["train_step"]
    assert cmd[1].endswith("train_step.py") and "--matrix" in cmd
    sizes = cmd[cmd.index("--sizes") + 1 : cmd.index("--steps")]
    assert sizes == (["tiny"] if smoke else ["tiny", "base"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_triton_variants_alone_are_reported_not_run_without_a_gpu(bench_module, small_prepared, tmp_path, capsys):
    bench = bench_module("train_step")
    out = tmp_path / "triton.json"
    assert bench.main(["--prepared", str(small_prepared), "--sizes", "tiny", "--batch-size", "2", "--steps", "1",
                       "--warmup", "0", "--vocab-size", "2048", "--layers", "1", "--variants", "mlm/fp32/triton",
                       "mlm+cmrm/bf16/triton", "--out", str(out)]) == 0
    (size,) = json.loads(out.read_text(encoding="utf-8"))["sizes"]
    assert [(r["variant"], r["status"]) for r in size["rows"]] == [
        ("mlm/fp32/triton", "not run: no CUDA GPU"), ("mlm+cmrm/bf16/triton", "not run: no CUDA GPU")]
    assert "speedup" not in size and "| mlm/fp32/triton | not run: no CUDA GPU |" in capsys.readouterr().out
