"""Normalisation, sentence splitting and the three corpus readers, on real People's Daily / review text."""

from __future__ import annotations

import json

import pytest

from ckbert.data_prep.readers import Tally, parse_line, read_lines
from ckbert.data_prep.text import has_traditional, normalize, split_sentences, split_tagged
from ckbert.errors import UserError


def test_normalize_fullwidth_controls_and_separators(pd_plain):
    line = pd_plain[3]  # "１２月３１日，中共中央总书记、..." (full-width digits in the source)
    assert "１２月" in line
    norm = normalize(line)
    assert norm.startswith("12月31日，")  # digits converted, Chinese comma kept
    assert normalize("甲\u2028乙\x07丙\u200b丁\u3000戊\t己") == "甲\n乙丙丁 戊 己"


def test_split_sentences_real_line(pd_plain):
    line = normalize(pd_plain[6])
    sents, n_cut = split_sentences(line)
    assert n_cut == 0 and len(sents) >= 3
    assert "".join(sents) == line.replace(" ", "")
    assert all(s[-1] in "。！？”" for s in sents[:-1])


def test_long_sentence_is_cut_at_commas(pd_plain):
    line = normalize(max(pd_plain, key=len))
    sents, n_cut = split_sentences(line, max_chars=40)
    assert n_cut > 0 and all(len(s) <= 40 for s in sents)
    assert "".join(sents) == line.replace(" ", "")


def test_split_tagged_keeps_words(pd_lines):
    pairs = [item.rpartition("/") for item in pd_lines[6].split()]
    words, tags = [p[0] for p in pairs], [p[2] for p in pairs]
    sents, _ = split_tagged(words, tags, max_chars=30)
    assert [w for s, _ in sents for w in s] == words
    assert all(sum(map(len, s)) <= 30 or len(s) == 1 for s, _ in sents)


def test_traditional_detected(sources):
    trad = None
    with open(sources["reviews_pos"], encoding="utf-8") as f:
        for line in f:
            if has_traditional(line):
                trad = line
                break
    assert trad is not None
    assert not has_traditional("中共中央总书记、国家主席江泽民")


def _docs(fmt, path, **kw):
    tally = Tally()
    docs = [parse_line(fmt, path.name, n, line, tally, **kw) for n, line in read_lines(path)]
    return [d for d in docs if d is not None], tally


def test_plain_reader_ids(pd_plain_file, pd_plain):
    docs, tally = _docs("text", pd_plain_file)
    assert docs[0].doc_id == "pd_plain.txt:L1"
    assert docs[6].sentences[1].sid == "pd_plain.txt:L7#1"
    from ckbert.data_prep.text import has_chinese

    assert len(docs) == sum(has_chinese(line) for line in pd_plain)


def test_jsonl_reader(tmp_path, sources):
    lines = open(sources["reviews_neg"], encoding="utf-8").read().splitlines()[:20]
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(json.dumps({"rid": f"r{i}", "body": t}, ensure_ascii=False) for i, t in enumerate(lines)),
                    encoding="utf-8")
    docs, _ = _docs("jsonl", path, text_field="body", id_field="rid")
    assert docs[0].doc_id == "r0" and docs[0].sentences[0].sid == "r0#0"
    assert normalize(lines[0]).replace(" ", "").startswith(docs[0].sentences[0].text.replace(" ", "")[:10])


def test_pretagged_reader(pd_file, pd_lines):
    docs, _ = _docs("pretagged", pd_file)
    s = docs[1].sentences[0]
    assert s.words == ["中共中央", "总书记", "、", "国家", "主席", "江", "泽民"]
    assert s.tags == ["nt", "n", "w", "n", "n", "nr", "nr"]
    assert s.text == "".join(s.words)


# ---- bad input ---------------------------------------------------------------------------------


def test_invalid_utf8_names_file_and_line(tmp_path, pd_plain):
    path = tmp_path / "bad.txt"
    path.write_bytes((pd_plain[0] + "\n" + pd_plain[1] + "\n").encode() + b"\xff\xfe abc\n")
    with pytest.raises(UserError, match=r"bad.txt:3: invalid UTF-8"):
        list(read_lines(path))


def test_empty_and_binary_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.txt: empty file"):
        list(read_lines(empty))
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(UserError, match="model.bin: binary file"):
        list(read_lines(binary))
    with pytest.raises(UserError, match="missing.txt: file not found"):
        list(read_lines(tmp_path / "missing.txt"))


def test_no_chinese_is_counted(tmp_path):
    tally = Tally()
    doc = parse_line("text", "en.txt", 5, "Only English here! And 12345!", tally)
    assert doc is None and tally.skipped["no_chinese"] == 2 and tally.first["no_chinese"] == "en.txt:5"


def test_bad_jsonl_and_pretagged_lines():
    with pytest.raises(UserError, match="c.jsonl:4: invalid JSON"):
        parse_line("jsonl", "c.jsonl", 4, "{not json", Tally())
    with pytest.raises(UserError, match="c.jsonl:2: JSON record has no field 'text'"):
        parse_line("jsonl", "c.jsonl", 2, '{"body": "中文"}', Tally())
    with pytest.raises(UserError, match="t.txt:9: expected word/TAG"):
        parse_line("pretagged", "t.txt", 9, "迈向/v  充满", Tally())


@pytest.mark.parametrize("codec, suffix", [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_corpus_reads_like_the_plain_file(tmp_path, pd_file, codec, suffix):
    """`.gz` / `.zst` corpora are decompressed while read: the same numbered lines as the plain file;
    a damaged file is a one-line error naming it, and bad UTF-8 inside still names its line."""
    import pyarrow as pa

    def compress(data: bytes, name: str):
        path = tmp_path / (name + suffix)
        with pa.output_stream(str(path), compression=codec) as out:
            out.write(data)
        return path

    packed = compress(pd_file.read_bytes(), "pd.txt")
    assert list(read_lines(packed)) == list(read_lines(pd_file))
    assert list(read_lines(packed, max_chars=500)) == list(read_lines(pd_file, max_chars=500))
    damaged = tmp_path / ("damaged.txt" + suffix)
    damaged.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    with pytest.raises(UserError, match=f"damaged.txt{suffix}: cannot decompress"):
        list(read_lines(damaged))
    bad = compress("第一行\n".encode() + b"\xc3\x28\n", "bad.txt")
    with pytest.raises(UserError, match=f"bad.txt{suffix}:2: invalid UTF-8"):
        list(read_lines(bad))
    with pytest.raises(UserError, match="empty file"):
        list(read_lines(compress(b"", "empty.txt")))
