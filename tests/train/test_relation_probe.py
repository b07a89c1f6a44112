"""The relation probe (`ckbert probe --kind relation`): a short CMRM run with held-out heads, exported,
then probed through plain transformers; its scores are CMRM's own (our encoder, anchors, pooling)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ckbert.checkpoint import latest_checkpoint, load_model_state, load_trainer_state
from ckbert.cli import main as cli
from ckbert.data_prep.kg_store import heldout_entity
from ckbert.evaluation import relation_probe as rp
from ckbert.evaluation.heldout import heldout_start
from ckbert.export import cmrm_of_export
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import model_config_from_dict
from ckbert.objectives import masked_mean_pool, mention_anchors
from ckbert.train_config import CMRMConfig

SHARE = 0.3


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, prepared_dir, micro_model_yaml):
    root = tmp_path_factory.mktemp("relprobe")
    cfg = {"data": {"prepared": str(prepared_dir), "eval_rows": 48}, "model": str(micro_model_yaml),
           "out": str(root / "out"), "seed": 2, "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
           "cmrm": {"heldout_heads": SHARE, "temperature": 0.1, "weight": 0.5},
           "train": {"batch_size": 8, "max_steps": 6, "log_every": 3, "eval_every": 0, "save_every": 0}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert cli(["pretrain", "--config", str(root / "cfg.yaml")]) == 0
    assert cli(["export", str(root / "out"), "--out", str(root / "hf")]) == 0
    return root


def test_heldout_heads_are_logged_and_recorded_in_the_export(probed_run):
    rows = [json.loads(x) for x in (probed_run / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("cmrm_heldout", 0) for r in rows) > 0  # held-out mentions were dropped, and counted
    config = json.loads((probed_run / "hf" / "config.json").read_text())
    assert config["ckbert_cmrm"]["heldout_heads"] == SHARE and config["ckbert_cmrm"]["sample_chars"] == 16
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(str(probed_run / "hf"))  # the extra key loads fine
    assert cmrm_of_export(model.config).heldout_heads == SHARE


def test_probe_cli_reports_seen_and_held_out_against_both_negative_sets(probed_run, prepared_dir, capsys):
    out = probed_run / "probe.json"
    assert cli(["probe", "--kind", "relation", "--model", str(probed_run / "hf"), "--prepared", str(prepared_dir),
                "--eval-rows", "48", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["heldout_share"] == SHARE and report["k"] == 4
    control = ", control: another mention's anchor"
    assert set(report["groups"]) == {f"{g}, {p} texts, vs {k}{c}" for g in ("seen", "held_out")
                                     for p in ("mention+tail", "tail") for k in ("hop 2-3", "random")
                                     for c in ("", control)}
    assert report["protocols"] == {"mention+tail": {"render": "mention_tail", "pool": "text"},
                                   "tail": {"render": "tail", "pool": "text"}}
    for g in report["groups"].values():
        assert g["triples"] > 0 and 2 <= g["mean_candidates"] <= 5 and 1 <= g["heads"] <= g["triples"]
        assert g["chance_accuracy@1"] >= 20.0 and 0.0 <= g["accuracy@1"] <= 100.0
        lo, hi = g["accuracy@1_ci95"]
        assert 0.0 <= lo <= g["accuracy@1"] <= hi <= 100.0
        assert g["items, tail in row"] + g["items, tail not in row"] == g["triples"]
    printed = capsys.readouterr().out
    assert "| seen, mention+tail texts, vs hop 2-3 |" in printed and "control:" not in printed  # JSON only
    # --kind relation without --prepared: one line, exit 2
    assert cli(["probe", "--kind", "relation", "--model", str(probed_run / "hf")]) == 2
    assert "needs --prepared" in capsys.readouterr().err


def test_items_hold_true_neighbours_first_and_no_one_hop_negatives(prepared):
    manifest, ds, kg, tok = prepared
    start = heldout_start(len(ds), 48)
    stats: dict[str, int] = {}
    items = rp.build_items(ds, range(start, len(ds)), kg, CMRMConfig(), SHARE, 4, 2, 0, stats)
    assert items and {it.group for it in items} == {"seen", "held_out"}
    for it in items:
        name = kg.entity_name(it.head)
        assert it.group == ("held_out" if heldout_entity(name, SHARE) else "seen")
        hop1 = {int(t) for t in kg.neighbors(it.head)[1]}
        assert it.tail in hop1 and not set(it.negatives["hop 2-3"]) & hop1  # hop 2-3: no 1-hop neighbour
        assert not set(it.negatives["random"]) & (hop1 | {it.head})
        for render in ("mention_tail", "tail"):
            for texts in rp.item_texts(kg, it, CMRMConfig(render=render)).values():
                assert len(set(texts)) == len(texts)  # distinct in either rendering
                assert all(t.startswith(name[:16]) for t in texts) == (render == "mention_tail")
    assert rp.build_items(ds, range(start, len(ds)), kg, CMRMConfig(), SHARE, 4, 2, 0, {}) == items  # seeded
    partners = [rp.control_partner(items, i) for i in range(len(items))]
    assert all(items[j].head != it.head for it, j in zip(items, partners, strict=True))  # another head's anchor


def test_scores_are_cmrm_cosines_of_our_own_encoder(probed_run, prepared):
    """Plain transformers gives the cosines that the training code (ckbert's encoder, mention_anchors,
    masked_mean_pool) gives for the same rows and sample texts."""
    from transformers import AutoModelForMaskedLM

    manifest, ds, kg, tok = prepared
    start = heldout_start(len(ds), 48)
    items = rp.build_items(ds, range(start, len(ds)), kg, CMRMConfig(), SHARE, 4, 2, 0, {})[:12]
    hf = AutoModelForMaskedLM.from_pretrained(str(probed_run / "hf"))
    scores = rp.score_items(hf, tok, ds, kg, items, CMRMConfig(), batch_size=5)
    assert rp.score_protocols(hf, tok, ds, kg, items, batch_size=5)["mention+tail"] == scores
    tail = rp.score_items(hf, tok, ds, kg, items, CMRMConfig(pool="tail"), batch_size=7)
    ckpt = latest_checkpoint(probed_run / "out")
    ours = CKBertForPreTraining(model_config_from_dict(load_trainer_state(ckpt)["model_config"]))
    ours.load_state_dict(load_model_state(ckpt))
    ours.eval()
    with torch.no_grad():
        for n, it in enumerate(items):
            ids = torch.tensor([[tok.cls_token_id, *ds[it.row]["input_ids"], tok.sep_token_id]])
            hidden = ours.encode(ids, torch.ones_like(ids))
            anchor = mention_anchors(hidden, torch.tensor([0]), torch.tensor([it.start + 1]), torch.tensor([it.end + 1]))
            texts = rp.item_texts(kg, it, CMRMConfig())
            for key in rp.NEGATIVE_SETS:
                enc = tok(texts[key], padding=True, return_tensors="pt", return_token_type_ids=False)
                hidden = ours.encode(enc["input_ids"], enc["attention_mask"])
                cos = torch.nn.functional.cosine_similarity(anchor, masked_mean_pool(hidden, enc["attention_mask"]))
                np.testing.assert_allclose(scores[key][n], cos.numpy(), atol=1e-4)
                other = items[rp.control_partner(items, n)]
                ids_o = torch.tensor([[tok.cls_token_id, *ds[other.row]["input_ids"], tok.sep_token_id]])
                anchor_o = mention_anchors(ours.encode(ids_o, torch.ones_like(ids_o)), torch.tensor([0]),
                                           torch.tensor([other.start + 1]), torch.tensor([other.end + 1]))
                cos_o = torch.nn.functional.cosine_similarity(anchor_o, masked_mean_pool(hidden, enc["attention_mask"]))
                np.testing.assert_allclose(scores[key + rp.CONTROL][n], cos_o.numpy(), atol=1e-4)
                # pool "tail": the tokens after the name (CJK: one token per character), by hand
                n_name = len(tok(kg.entity_name(it.head)[:16], add_special_tokens=False)["input_ids"])
                tail_mask = enc["attention_mask"].clone()
                tail_mask[:, : 1 + n_name] = 0
                tail_mask[torch.arange(len(texts[key])), enc["attention_mask"].sum(1) - 1] = 0  # [SEP]
                tail_mask[tail_mask.sum(1) == 0] = enc["attention_mask"][tail_mask.sum(1) == 0]
                cos = torch.nn.functional.cosine_similarity(anchor, masked_mean_pool(hidden, tail_mask))
                np.testing.assert_allclose(tail[key][n], cos.numpy(), atol=1e-4)


def test_every_model_is_probed_with_the_same_texts(probed_run, prepared_dir, tmp_path):
    """The protocol is the probe's: a model that says it was trained with other texts and pooling
    (config.json ckbert_cmrm) gets the same items, texts and scores as one that says nothing."""
    import shutil

    reports = []
    for name, recorded in (("cmrm_tail", {"render": "tail", "pool": "tail", "sample_chars": 8}), ("plain", None)):
        model = tmp_path / name
        shutil.copytree(probed_run / "hf", model)
        config = json.loads((model / "config.json").read_text())
        if recorded is None:
            config.pop("ckbert_cmrm")
        else:
            config["ckbert_cmrm"].update(recorded)
        (model / "config.json").write_text(json.dumps(config))
        out = tmp_path / f"{name}.json"
        assert cli(["probe", "--kind", "relation", "--model", str(model), "--prepared", str(prepared_dir),
                    "--eval-rows", "48", "--heldout-share", str(SHARE), "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0]["groups"] == reports[1]["groups"] and reports[0]["protocols"] == reports[1]["protocols"]


class _Encoder(torch.nn.Module):
    """A stand-in encoder for the probe's scoring: a probe row's mention gets the vector of one
    text (`anchor_text`: the item's true candidate for the oracle), every other sequence the
    vector of its own token ids; `constant` gives every position the same vector."""

    def __init__(self, rows: dict[tuple, dict[tuple[int, int], tuple]], constant: bool = False):
        super().__init__()
        self.rows, self.constant = rows, constant
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @staticmethod
    def vec(ids: tuple) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng(abs(hash(ids)) % 2**32).standard_normal(32)).float()

    def forward(self, input_ids, attention_mask):
        out = torch.zeros(*input_ids.shape, 32)
        for b in range(len(input_ids)):
            ids = tuple(input_ids[b][attention_mask[b].bool()].tolist())
            if self.constant:
                out[b] = 1.0
            elif ids in self.rows:
                out[b] = torch.randn(input_ids.shape[1], 32)
                for (a, e), text_ids in self.rows[ids].items():
                    out[b, a + 1 : e + 1] = self.vec(text_ids)  # +1: [CLS]
            else:
                out[b] = self.vec(ids)
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=out)


class _LM(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.base_model = encoder


@pytest.mark.parametrize("protocol", ["mention+tail", "tail"])
def test_an_oracle_scores_100_and_a_constant_encoder_exact_chance(prepared, protocol):
    from ckbert.cmrm_samples import tokenize_samples
    from ckbert.evaluation.probe import summarise

    manifest, ds, kg, tok = prepared
    start = heldout_start(len(ds), 48)
    items = rp.build_items(ds, range(start, len(ds)), kg, rp.BUILD, SHARE, 4, 1, 0, {})  # one item per mention
    cmrm = rp.PROTOCOLS[protocol]
    rows: dict[tuple, dict] = {}
    for it in items:
        true_text = rp.item_texts(kg, it, cmrm)["hop 2-3"][0]
        ids, mask, _ = tokenize_samples(tok, [true_text], [0], cmrm)
        row = (tok.cls_token_id, *ds[it.row]["input_ids"], tok.sep_token_id)
        rows.setdefault(row, {})[(it.start, it.end)] = tuple(ids[0][mask[0].astype(bool)].tolist())
    for constant in (False, True):
        lm = _LM(_Encoder(rows, constant))
        scores = rp.score_items(lm, tok, ds, kg, items, cmrm, batch_size=7)
        for key in rp.NEGATIVE_SETS:
            report = summarise([it.group for it in items], scores[key])
            for r in report.values():
                if constant:
                    assert r["accuracy@1"] == pytest.approx(r["chance_accuracy@1"])
                    assert r["mrr"] == pytest.approx(r["chance_mrr"])
                else:
                    assert r["accuracy@1"] == 100.0 and r["mrr"] == 1.0


def test_bootstrap_intervals_resample_heads():
    from ckbert.evaluation.probe import bootstrap_ci, summarise

    # one head right on all of its 9 items, nine heads wrong on their one item each: the item mean is
    # 50%, and resampling heads (not items) gives a wide interval
    scores = [[1.0, 0.0]] * 9 + [[0.0, 1.0]] * 9
    heads = ["a"] * 9 + [f"h{i}" for i in range(9)]
    r = summarise(["g"] * 18, scores, clusters=heads)["g"]
    assert r["accuracy@1"] == 50.0 and r["heads"] == 10
    lo, hi = r["accuracy@1_ci95"]
    assert lo < 25.0 and hi > 75.0
    by_item = summarise(["g"] * 18, scores)["g"]["accuracy@1_ci95"]
    assert by_item[1] - by_item[0] < hi - lo
    assert bootstrap_ci(np.ones((5, 2)), list("abcde")) == [(1.0, 1.0), (1.0, 1.0)]


def test_a_merged_graph_is_reported_overall_and_per_graph():
    """Items of a store merged from several graphs count in their group and in "<graph>: <group>"."""
    items = [rp.RelationItem(0, 0, 1, h, 9, 0, {"hop 2-3": [7]}, "seen", None, g)
             for h, g in ((1, "location"), (2, "location"), (3, "cmekg"))]
    scores = {"tail": {"hop 2-3": [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]}}
    out = rp.report(items, scores)
    assert set(out) == {"seen, tail texts, vs hop 2-3", "location: seen, tail texts, vs hop 2-3",
                        "cmekg: seen, tail texts, vs hop 2-3"}
    assert out["location: seen, tail texts, vs hop 2-3"]["accuracy@1"] == 100.0
    assert out["cmekg: seen, tail texts, vs hop 2-3"]["accuracy@1"] == 0.0
    assert out["seen, tail texts, vs hop 2-3"]["triples"] == 3 and out["seen, tail texts, vs hop 2-3"]["heads"] == 3
    one_graph = [rp.RelationItem(**{**it.__dict__, "graph": None}) for it in items]
    assert set(rp.report(one_graph, scores)) == {"seen, tail texts, vs hop 2-3"}


def test_the_export_records_its_split_and_eval_and_probe_honour_it(probed_run, prepared_dir, prepared, capsys):
    from ckbert.evaluation.heldout import split_rows

    manifest, ds, kg, tok = prepared
    split = json.loads((probed_run / "hf" / "config.json").read_text())["ckbert_split"]
    assert split["rows"] == len(ds) and split["train_rows"] == heldout_start(len(ds), 48)
    assert split["heldout_heads"] == SHARE and split["kg_fingerprint"] == kg.fingerprint
    model = str(probed_run / "hf")
    # more held-out rows than the model held out would score rows it trained on: refused, one line
    for command in (["probe", "--kind", "relation"], ["eval"]):
        rc = cli([*command, "--model", model, "--prepared", str(prepared_dir), "--eval-rows", str(len(ds) // 10 + 5)])
        err = capsys.readouterr().err
        assert rc == 2 and "takes in rows the model trained on" in err and "Traceback" not in err
    # another held-out share would count heads it trained on as held out: refused; its own share is fine
    for kind in ("relation", "cloze"):
        kg_arg = ["--kg", str(prepared_dir / "kg")] if kind == "cloze" else []
        rc = cli(["probe", "--kind", kind, "--model", model, "--prepared", str(prepared_dir), *kg_arg,
                  "--heldout-share", "0.1"])
        err = capsys.readouterr().err
        assert rc == 2 and "the model held out 0.3 of the heads" in err and "Traceback" not in err
    # without --eval-rows: the recorded split; validation and test are the two halves
    out = {}
    for half in ("validation", "test"):
        path = probed_run / f"probe_{half}.json"
        assert cli(["probe", "--kind", "relation", "--model", model, "--prepared", str(prepared_dir),
                    "--split", half, "--out", str(path), "--overwrite"]) == 0
        out[half] = json.loads(path.read_text())
        assert out[half]["split_recorded"] and out[half]["eval_rows"] == len(ds) - split["train_rows"]
    v, t = (split_rows(len(ds), 48, h) for h in ("validation", "test"))
    assert out["validation"]["rows"] == [v.start, v.stop] and out["test"]["rows"] == [t.start, t.stop]
    assert v.stop == t.start and v.start == split["train_rows"] and t.stop == len(ds)


def test_held_out_heads_split_into_halves_by_the_same_hash():
    from ckbert.data_prep.kg_store import heldout_part

    names = [f"实体{i}" for i in range(4000)]
    parts = [heldout_part(n, 0.2) for n in names]
    assert all((p is not None) == heldout_entity(n, 0.2) for n, p in zip(names, parts, strict=True))
    assert 0.08 < parts.count("validation") / len(names) < 0.12 and 0.08 < parts.count("test") / len(names) < 0.12
    assert heldout_part("实体1", 0.0) is None


def test_probe_items_of_a_split_keep_only_its_held_out_heads(prepared):
    from ckbert.data_prep.kg_store import heldout_part

    manifest, ds, kg, tok = prepared
    rows = range(heldout_start(len(ds), 48), len(ds))
    every = rp.build_items(ds, rows, kg, rp.BUILD, SHARE, 4, 2, 0, {})
    for half in ("validation", "test"):
        stats: dict[str, int] = {}
        items = rp.build_items(ds, rows, kg, rp.BUILD, SHARE, 4, 2, 0, stats, split=half)
        held = [it for it in items if it.group == "held_out"]
        assert all(heldout_part(kg.entity_name(it.head), SHARE) == half for it in held)
        assert {it.head for it in items if it.group == "seen"} == {it.head for it in every if it.group == "seen"}
