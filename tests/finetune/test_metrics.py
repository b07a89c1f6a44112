"""Metric functions against values computed by hand."""

import pytest

from ckbert.finetune.metrics import (
    accuracy,
    cmrc_em,
    cmrc_f1,
    cmrc_scores,
    cmrc_segments,
    entity_f1,
    longest_common_run,
)


def test_accuracy():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    with pytest.raises(ValueError):
        accuracy([], [])


def test_cmrc_segmentation_splits_chinese_keeps_words_and_drops_punctuation():
    assert cmrc_segments("北京，Hello World 2008年！") == ["北", "京", "hello", "world", "2008", "年"]
    # the official list has "……" as one entry, which never equals a single character
    assert cmrc_segments("好…") == ["好", "…"]


def test_longest_common_run_is_contiguous():
    assert longest_common_run(list("abcde"), list("xbcdy")) == 3
    assert longest_common_run(list("abc"), list("acb")) == 1  # subsequence "ab" would be 2


def test_cmrc_f1_by_hand():
    # answer 明清两代 (4 chars), prediction 明清两代的皇 (6 chars): common run 4
    # P = 4/6, R = 4/4, F1 = 2PR/(P+R) = 0.8
    assert cmrc_f1("明清两代的皇", ["明清两代"]) == pytest.approx(0.8)
    # max over references: the second reference matches exactly
    assert cmrc_f1("明清", ["明清两代", "明清"]) == pytest.approx(1.0)
    assert cmrc_f1("故宫", ["明清"]) == 0.0


def test_cmrc_em_ignores_case_space_and_punctuation():
    assert cmrc_em(" 《三体》", ["三体"]) == 1.0
    assert cmrc_em("ABC", ["abc"]) == 1.0
    assert cmrc_em("三体二", ["三体"]) == 0.0


def test_cmrc_scores_average_and_missing_prediction():
    refs = {"q1": ["明清两代"], "q2": ["嘉峪关"], "q3": ["山海关"]}
    preds = {"q1": "明清两代的皇", "q2": "嘉峪关"}  # q3 missing -> 0
    out = cmrc_scores(preds, refs)
    assert out["em"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (0.8 + 1.0) / 3)
    assert out["average"] == pytest.approx((out["em"] + out["f1"]) / 2)


def test_entity_f1_by_hand():
    gold = [[("name", 0, 1), ("address", 3, 4)], [("company", 0, 3)]]
    pred = [[("name", 0, 1), ("address", 3, 5)], [("company", 0, 3), ("game", 5, 6)]]
    # tp = 2, predicted 4, gold 3: P = 0.5, R = 2/3, F1 = 4/7
    out = entity_f1(pred, gold)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(4 / 7)
    # per type: name 1/1/1, address 0 of 1 and 1, company 1/1/1, game 0 of 1 predicted
    assert (out["f1_name"], out["f1_address"], out["f1_company"], out["f1_game"]) == (1.0, 0.0, 1.0, 0.0)
    assert entity_f1([[]], [[]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
