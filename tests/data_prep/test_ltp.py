"""LTP annotator through a tiny randomly initialised LTP model (real ltp/ltp_core loading code, offline)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("ltp", reason="the optional `ltp` extra is not installed")

from ckbert.cli import main as cli  # noqa: E402
from ckbert.data_prep.dataset import open_prepared  # noqa: E402
from ckbert.data_prep.ltp_annotator import LTPAnnotator  # noqa: E402
from ckbert.data_prep.readers import Tally, parse_line  # noqa: E402
from ckbert.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def annotator(tiny_ltp):
    return LTPAnnotator(str(tiny_ltp))


def test_transformers5_lacks_batch_encode_plus(annotator):
    # the reason for the wrapper: the raw tokenizer has no batch_encode_plus, the wrapped one has
    assert not hasattr(annotator.ltp.tokenizer._tokenizer, "batch_encode_plus")
    assert callable(annotator.ltp.tokenizer.batch_encode_plus)


def test_annotates_real_sentences(annotator, pd_plain):
    tally = Tally()
    sents = [s for i, ln in enumerate(pd_plain[:8], 1) if (d := parse_line("text", "pd", i, ln, tally)) for s in d.sentences]
    anns = annotator.annotate(sents)
    assert annotator.provides == ("words", "pos", "ner", "dep", "sdp")
    assert len(anns) == len(sents)
    for s, a in zip(sents, anns, strict=True):
        n = len(a.words)
        assert "".join(a.words) == s.text
        assert len(a.pos) == n and set(a.pos) <= set(annotator.pos_tags)
        for heads, labels, vocab in ((a.dep_head, a.dep_label, annotator.dep_labels), (a.sdp_head, a.sdp_label, annotator.sdp_labels)):
            assert len(heads) == len(labels) == n
            assert all(0 <= h <= n for h in heads) and heads.count(0) >= 1  # 1-based, 0 = root
            assert set(labels) <= set(vocab)
        assert all(0 <= st < en <= n for st, en, _ in a.ner)


def test_prepare_with_ltp_stores_arcs(tmp_path, tiny_ltp, pd_plain, kg_tsv):
    corpus = tmp_path / "pd.txt"
    corpus.write_text("\n".join(pd_plain[:10]) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    assert cli(["prepare", "--corpus", str(corpus), "--kg", str(kg_tsv), "--out", str(out), "--quiet",
                "--annotator", "ltp", "--ltp-model", str(tiny_ltp), "--build-vocab", "--workers", "1",
                "--seq-len", "48", "--link-pos", ""]) == 0
    manifest, ds, _, _ = open_prepared(out)
    assert manifest["masking_mode"] == "arcs" and manifest["dep_labels"] and manifest["sdp_labels"]
    assert manifest["counts"]["dep_arcs"] > 0
    for row in ds:
        n = len(row["word_pos"])
        assert len(row["dep_head"]) == len(row["dep_label"]) == len(row["sdp_head"]) == n
        assert all(-1 <= h < n for h in row["dep_head"] + row["sdp_head"])
        assert all(0 <= lab < len(manifest["dep_labels"]) for lab in row["dep_label"])


def test_folder_without_config_json(tmp_path, tiny_ltp, capsys):
    folder = tmp_path / "noconfig"
    shutil.copytree(tiny_ltp, folder)
    (folder / "config.json").unlink()
    with pytest.raises(UserError, match="noconfig: LTP model folder has no config.json"):
        LTPAnnotator(str(folder))


def test_mismatched_weights_are_an_error(tmp_path, tiny_ltp):
    import torch

    folder = tmp_path / "bad"
    shutil.copytree(tiny_ltp, folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state.pop(sorted(state)[0])
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="1 missing"):
        LTPAnnotator(str(folder))


def test_foreign_target_refused(tmp_path, tiny_ltp):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_ltp, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["processor"]["cws"]["_ltp_target_"] = "os.system"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="non-LTP class 'os.system'"):
        LTPAnnotator(str(folder))
