"""Same weights -> same logits as transformers' BertForMaskedLM / MegatronBertForMaskedLM."""

from __future__ import annotations

import pytest
import torch
import transformers

from ckbert.hf_io import hf_config_dict


def _hf_model(model, attn_implementation: str = "sdpa"):
    """An HF masked-LM model of the same config holding `model`'s weights (strict key check)."""
    cfg = hf_config_dict(model.config)
    cls_name = cfg["architectures"][0]
    hf_config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    # MegatronBert has only the eager attention in transformers 5
    hf_config._attn_implementation = "eager" if model.config.layout == "pre_ln" else attn_implementation
    hf = getattr(transformers, cls_name)(hf_config)
    result = hf.load_state_dict(model.state_dict(), strict=False)
    # the tied decoder keys are the only ones HF has beyond ours; we have none beyond HF's
    assert set(result.missing_keys) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert result.unexpected_keys == []
    return hf.eval()


def test_parameter_names_match_hf(random_model):
    model, _ = random_model
    hf = _hf_model(model)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in hf.named_parameters()]
    saved_keys = set(hf.state_dict()) - {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert set(model.state_dict()) == saved_keys


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_same_logits_as_hf(random_model, make_batch, attn):
    model, config = random_model
    hf = _hf_model(model, attn)
    ids, mask, types = make_batch(config)
    with torch.no_grad():
        ours = model(ids, mask, types)
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    assert ours.shape == theirs.shape == (*ids.shape, config.vocab_size)
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    # without token types (both default to type 0)
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_gathered_mlm_head_equals_full_logits(random_model, make_batch):
    model, config = random_model
    hf = _hf_model(model)
    ids, mask, types = make_batch(config)
    positions = torch.tensor([0, 5, 12, 13, 23, 24])  # flat indices into B*L (L = 11), real tokens only
    with torch.no_grad():
        hidden = model.encode(ids, mask, types)
        gathered = model.mlm_logits(hidden, positions)
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert gathered.shape == (len(positions), config.vocab_size)
    torch.testing.assert_close(gathered, theirs.reshape(-1, config.vocab_size)[positions], rtol=1e-5, atol=1e-5)


def test_padding_does_not_leak(random_model, make_batch):
    """Changing padded tokens changes nothing at real positions."""
    model, config = random_model
    ids, mask, types = make_batch(config)
    other = ids.clone()
    other[mask == 0] = 7
    with torch.no_grad():
        a = model.encode(ids, mask, types)
        b = model.encode(other, mask, types)
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-6)


def test_mlm_loss_matches_cross_entropy(random_model, make_batch):
    model, config = random_model
    ids, mask, types = make_batch(config)
    positions = torch.tensor([1, 2, 15])
    labels = torch.tensor([3, -100, 8])
    with torch.no_grad():
        hidden = model.encode(ids, mask, types)
        loss = model.mlm_loss(hidden, positions, labels)
        ref = torch.nn.functional.cross_entropy(model.mlm_logits(hidden, positions), labels)
    torch.testing.assert_close(loss, ref)
    none = torch.zeros(0, dtype=torch.long)
    empty = model.mlm_loss(model.encode(ids, mask, types), none, none)  # no targets: 0, backward still works
    assert empty.item() == 0.0 and empty.requires_grad


def test_dropout_only_in_training(layout, small_config, make_batch):
    from ckbert.model import CKBertForPreTraining

    config = small_config(layout, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    model = CKBertForPreTraining(config)
    ids, mask, types = make_batch(config)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode(ids, mask), model.encode(ids, mask))
        model.train()
        assert not torch.equal(model.encode(ids, mask), model.encode(ids, mask))


def test_gradients_reach_every_parameter(random_model, make_batch):
    model, config = random_model
    model.train()
    ids, mask, types = make_batch(config)
    hidden = model.encode(ids, mask, types)
    model.mlm_loss(hidden, torch.tensor([0, 3, 14]), torch.tensor([5, 6, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # token type 1 is used and every row is touched; only nothing may be left out
    assert missing == []


def test_bf16_autocast_stays_close_to_fp32(random_model, make_batch):
    """Under bf16 autocast (applied from outside) the loss stays near fp32 and gradients are finite."""
    model, config = random_model
    ids, mask, types = make_batch(config)
    positions, labels = torch.tensor([0, 4, 13, 23]), torch.tensor([3, 9, 27, 50])
    with torch.no_grad():
        ref = model.mlm_loss(model.encode(ids, mask, types), positions, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.mlm_loss(model.encode(ids, mask, types), positions, labels)
    loss.backward()
    assert loss.dtype == torch.float32
    # bf16 has an 8-bit mantissa: ~0.4% relative error per op, a few percent over the network
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_initialisation_follows_hf(small_config):
    """N(0, initializer_range) weights, zero biases, LayerNorm (1, 0), zero padding row."""
    from ckbert.model import CKBertForPreTraining

    torch.manual_seed(0)
    config = small_config("post_ln", hidden_size=128, intermediate_size=256, vocab_size=500)
    model = CKBertForPreTraining(config)
    emb = model.bert.embeddings.word_embeddings.weight
    assert torch.equal(emb[config.pad_token_id], torch.zeros(config.hidden_size))
    assert abs(emb[1:].std().item() - config.initializer_range) < 0.002
    ffn = model.bert.encoder.layer[0].intermediate.dense
    assert abs(ffn.weight.std().item() - config.initializer_range) < 0.002 and not ffn.bias.any()
    for name, p in model.named_parameters():
        if "LayerNorm" in name or name.endswith(".ln.weight") or name.endswith(".ln.bias"):
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
    assert not model.cls.predictions.bias.any()
