"""Entity linker and tokenizer alignment on real People's Daily sentences and CMeKG names."""

from __future__ import annotations

import pytest

from ckbert.data_prep.linker import Linker, LinkerConfig
from ckbert.data_prep.readers import Tally, parse_line
from ckbert.data_prep.tokenizer import WordEncoder, build_vocab, encode_words, load_tokenizer


@pytest.fixture(scope="module")
def sentences(pd_lines):
    tally = Tally()
    docs = [parse_line("pretagged", "pd", i, ln, tally) for i, ln in enumerate(pd_lines, 1)]
    return [s for d in docs if d for s in d.sentences]


def test_longest_match_on_word_boundaries(sentences, cmekg_triples):
    names = sorted({x for h, _, t in cmekg_triples for x in (h, t)})
    linker = Linker(list(enumerate(names)), LinkerConfig(min_len=2))
    found = 0
    for s in sentences:
        mentions = linker.link(s.words)
        covered = []
        for ws, we, e in mentions:
            assert "".join(s.words[ws:we]) == names[e]  # span text is the entity name
            assert len(names[e]) >= 2
            covered.extend(range(ws, we))
        assert len(covered) == len(set(covered))  # non-overlapping
        found += len(mentions)
    assert found > 20


def test_never_splits_a_word():
    words = ["中国", "人民", "银行"]
    linker = Linker([(0, "国人"), (1, "人民银行"), (2, "中国")], LinkerConfig(min_len=2))
    assert linker.link(words) == [(0, 1, 2), (1, 3, 1)]  # "国人" crosses a word boundary


def test_longest_wins_and_filters():
    words = ["糖尿病", "肾病", "患者"]
    names = [(0, "糖尿病"), (1, "糖尿病肾病"), (2, "肾病"), (3, "患者")]
    assert Linker(names, LinkerConfig(min_len=2)).link(words) == [(0, 2, 1), (2, 3, 3)]
    stop = Linker(names, LinkerConfig(min_len=2, stop_words=frozenset({"糖尿病肾病", "患者"})))
    assert stop.link(words) == [(0, 1, 0), (1, 2, 2)]
    assert Linker(names, LinkerConfig(min_len=3)).link(words) == [(0, 2, 1)]
    ner = Linker(names, LinkerConfig(min_len=2, ner_only=True))
    assert ner.link(words, ner_spans=[(2, 3)]) == [(2, 3, 3)]
    pos = Linker(names, LinkerConfig(min_len=2, pos_prefixes=("n",)))
    assert pos.link(words, pos=["n", "n", "v"]) == [(0, 2, 1)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, pd_plain):
    return build_vocab(iter(pd_plain), tmp_path_factory.mktemp("tok") / "tok", vocab_size=3000, min_frequency=1)


def test_built_vocab_and_markers(tokenizer, tmp_path_factory):
    vocab = tokenizer.get_vocab()
    assert "[dep]" in vocab and "[sdp]" in vocab and "[MASK]" in vocab
    assert tokenizer.convert_tokens_to_ids("[dep]") != tokenizer.unk_token_id
    assert tokenizer.tokenize("江泽民") == ["江", "泽", "民"]  # CJK characters are single tokens
    again = load_tokenizer(tokenizer.name_or_path)
    assert again.get_vocab() == vocab


def test_alignment_and_fast_path(tokenizer, sentences):
    batch = [s.words for s in sentences]
    ref = encode_words(tokenizer, batch)
    fast = WordEncoder(tokenizer, max_words=50)(batch)  # small cache: exercises the clearing too
    assert fast == ref
    for words, (ids, word_ids) in zip(batch, ref, strict=True):
        assert sorted(set(word_ids)) == list(range(len(words)))
        assert word_ids == sorted(word_ids)
        for k, w in enumerate(words):
            toks = [ids[t] for t in range(len(ids)) if word_ids[t] == k]
            assert tokenizer.decode(toks).replace(" ", "").replace("##", "") == w.lower() or tokenizer.unk_token_id in toks


def test_fast_path_batched_new_words_and_run_lengths(tokenizer, sentences):
    """New words are encoded in one call and split back by word_ids; words with several tokens (Latin,
    numbers), none (whitespace) and a tokenizer carrying truncation/padding settings must not matter."""
    import copy

    batch = [s.words for s in sentences] + [["CKBERT", "模型", "2026年", "unbelievable", "中国"], ["中国", " ", "人民"]]
    ref = encode_words(tokenizer, batch)
    padded = copy.deepcopy(tokenizer)
    padded.backend_tokenizer.enable_truncation(max_length=8)
    padded.backend_tokenizer.enable_padding(length=16)
    enc = WordEncoder(padded)
    assert enc(batch) == ref
    assert padded.backend_tokenizer.truncation is not None  # the caller's tokenizer is left as it was
    for (ids, lens), (rids, rword) in zip(enc.encode_lens(batch), ref, strict=True):
        assert ids == rids and lens == [rword.count(k) for k in range(len(lens))]
    assert enc.encode_lens([["中国", " ", "人民"]])[0][1] == [2, 0, 2]


def test_stop_list_file(tmp_path):
    from ckbert.data_prep.linker import read_stop_list
    from ckbert.errors import UserError

    path = tmp_path / "stop.txt"
    path.write_text("# generic names\n中国\n\n 全国 \n", encoding="utf-8")
    assert read_stop_list(path) == frozenset({"中国", "全国"})
    with pytest.raises(UserError, match="nostop.txt: stop-list file not found"):
        read_stop_list(tmp_path / "nostop.txt")


def test_jieba_annotator_tags_equal_posseg_table(pd_plain):
    import jieba
    import jieba.posseg

    from ckbert.data_prep.annotate import JiebaAnnotator, _guess_tag
    from ckbert.data_prep.readers import Sentence

    ann = JiebaAnnotator()
    n_dict = len(ann._tags)
    assert ann._tags == jieba.posseg.dt.word_tag_tab  # the fast reader of dict.txt gives jieba's own table
    sents = [Sentence(f"s{k}", t, None, None) for k, t in enumerate(pd_plain[:40])]
    table = jieba.posseg.dt.word_tag_tab
    for _ in range(2):  # the second pass reads the memo of guessed tags
        for s, a in zip(sents, ann.annotate(sents), strict=True):
            words = [w for w in jieba.cut(s.text, HMM=False) if not w.isspace()]
            assert a.words == words and a.pos == [table.get(w) or _guess_tag(w) for w in words]
    assert len(ann._tags) > n_dict  # punctuation is not in jieba's dictionary: guessed and memoised
