"""The speed paths of `ckbert prepare` against their references, on real People's Daily text:
rjieba vs pure-Python jieba, the pyarrow shard writer vs `Dataset.save_to_disk`, the tokenizer
folder copy vs transformers' `save_pretrained`."""

from __future__ import annotations

import filecmp
import json
import sys

import pytest

from ckbert.data_prep.annotate import JiebaAnnotator
from ckbert.data_prep.readers import Tally, parse_line
from ckbert.data_prep.shards import arrow_schema, features, rows_to_table, save_table
from ckbert.data_prep.tokenizer import copy_tokenizer, has_markers, load_backend, load_tokenizer
from ckbert.errors import UserError


@pytest.fixture(scope="module")
def plain_sentences(pd_plain):
    tally = Tally()
    docs = [parse_line("text", "pd", i, ln, tally) for i, ln in enumerate(pd_plain, 1)]
    return [s for d in docs if d for s in d.sentences]


def test_rjieba_gives_the_words_and_tags_of_jieba(plain_sentences):
    rust, python = JiebaAnnotator(engine="rjieba"), JiebaAnnotator(engine="jieba")
    a, b = rust.annotate(plain_sentences), python.annotate(plain_sentences)
    assert len(a) == len(b) > 100
    assert [x.words for x in a] == [x.words for x in b]
    assert [x.pos for x in a] == [x.pos for x in b]
    assert rust.pos_tags == python.pos_tags  # the manifest's tag list (POS ids) does not depend on the engine
    assert rust.version.startswith("rjieba ") and python.version.startswith("jieba ")


def test_rjieba_with_hmm_mostly_agrees(plain_sentences):
    # jieba-rs' HMM for unknown words is a port, not the same code: close, not identical.
    a = JiebaAnnotator(hmm=True, engine="rjieba").annotate(plain_sentences)
    b = JiebaAnnotator(hmm=True, engine="jieba").annotate(plain_sentences)
    same = sum(x.words == y.words for x, y in zip(a, b, strict=True))
    assert same / len(a) > 0.9


def test_missing_rjieba_or_unknown_engine_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rjieba", None)  # as if the package were not installed
    with pytest.raises(UserError, match="--jieba-engine jieba"):
        JiebaAnnotator(engine="rjieba")
    with pytest.raises(UserError, match="unknown jieba engine"):
        JiebaAnnotator(engine="fast")


@pytest.fixture(scope="module")
def prepared_rows(tmp_path_factory, pd_file, kg_tsv):
    from ckbert.cli import main as cli

    out = tmp_path_factory.mktemp("fast") / "ds"
    assert cli(["prepare", "--corpus", str(pd_file), "--kg", str(kg_tsv), "--out", str(out), "--quiet",
                "--format", "pretagged", "--annotator", "pretagged", "--build-vocab", "--vocab-size", "3000",
                "--seq-len", "32", "--workers", "1"]) == 0
    from datasets import load_from_disk

    return out, load_from_disk(str(out / "shards" / "shard-00000")).to_dict()


@pytest.mark.parametrize("n", [1, 999, 1000, 1001, None])
def test_shard_writer_equals_save_to_disk(tmp_path, prepared_rows, n):
    from datasets import Dataset, load_from_disk
    from datasets.table import InMemoryTable

    rows = prepared_rows[1]
    if n is not None:
        rows = {k: (v * (n // len(v) + 1))[:n] for k, v in rows.items()}  # real rows, repeated to n
    table = rows_to_table(rows)
    assert table.equals(__import__("pyarrow").Table.from_pydict(rows, schema=features().arrow_schema), check_metadata=True)
    assert arrow_schema().equals(features().arrow_schema, check_metadata=True)
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    Dataset(InMemoryTable(table)).save_to_disk(str(ref))
    save_table(table, ours)
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in ours.iterdir())
    for name in names:
        if name != "state.json":
            assert filecmp.cmp(ref / name, ours / name, shallow=False), name
    a, b = (json.loads((d / "state.json").read_text()) for d in (ref, ours))
    assert a.pop("_fingerprint") != "" and b.pop("_fingerprint") != "" and a == b
    ds = load_from_disk(str(ours))
    assert ds.features == features() and ds.to_dict() == rows


def test_tokenizer_copy_equals_save_pretrained(tmp_path, prepared_rows):
    src = prepared_rows[0] / "tokenizer"  # written by `--build-vocab` through transformers
    assert has_markers(src)
    copy_tokenizer(src, tmp_path / "copy")
    load_tokenizer(src).save_pretrained(str(tmp_path / "saved"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(tmp_path / "copy" / name, tmp_path / "saved" / name, shallow=False), name
    hf, backend = load_tokenizer(tmp_path / "copy"), load_backend(tmp_path / "copy")
    assert backend.get_vocab_size(with_added_tokens=True) == len(hf)
    assert [backend.token_to_id(m) for m in ("[dep]", "[sdp]")] == hf.convert_tokens_to_ids(["[dep]", "[sdp]"])
    words = [["中共中央", "总书记", "、", "国家", "主席", "江", "泽民", "ABC", "12月", "[dep]"]]
    assert backend.encode_batch(words, is_pretokenized=True, add_special_tokens=False)[0].ids == \
        hf.backend_tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False)[0].ids


def test_tokenizer_folder_without_markers_is_not_copied(tmp_path, prepared_rows):
    vocab_only = tmp_path / "vocab_only"
    vocab_only.mkdir()
    (vocab_only / "vocab.txt").write_bytes((prepared_rows[0] / "tokenizer" / "vocab.txt").read_bytes())
    assert not has_markers(vocab_only)
    with pytest.raises(UserError, match="tokenizer.json"):
        load_backend(vocab_only)
