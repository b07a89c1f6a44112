"""The unpadded ("varlen") encoder path equals the padded one at every real position."""

from __future__ import annotations

import pytest
import torch

from ckbert.model import CKBertForPreTraining


def _padded_batch(vocab: int, pad_id: int, lengths: list[int], length: int, seed: int = 3):
    """Right-padded input_ids [B, L], attention_mask [B, L], token types [B, L] with the given lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), length), generator=g)
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = pad_id
    types = torch.randint(0, 2, ids.shape, generator=g) * mask
    return ids, mask, types


# heavy: 80% padding with a one-token row; none: every position real
BATCHES = {"heavy": ([24, 3, 1, 7, 2], 24), "none": ([9, 9, 9], 9)}


def _loss(model, hidden, mask, weights):
    """A scalar touching every real hidden state (random weights) plus the MLM head at real rows."""
    real = mask.reshape(-1).nonzero().squeeze(1)
    labels = torch.arange(real.numel()) % model.config.vocab_size
    flat = hidden.reshape(-1, hidden.shape[-1])
    return (flat[real] * weights[real]).sum() + model.mlm_loss(hidden, real, labels)


@pytest.mark.parametrize("kind", sorted(BATCHES))
def test_unpadded_equals_padded_forward_and_backward(random_model, kind):
    model, config = random_model
    lengths, length = BATCHES[kind]
    ids, mask, types = _padded_batch(config.vocab_size, config.pad_token_id, lengths, length)
    weights = torch.randn(ids.numel(), config.hidden_size, generator=torch.Generator().manual_seed(5))
    results = {}
    for unpad in (False, True):
        model.zero_grad(set_to_none=True)
        hidden = model.encode(ids, mask, types, unpad=unpad)
        _loss(model, hidden, mask, weights).backward()
        results[unpad] = hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (h_pad, g_pad), (h_unpad, g_unpad) = results[False], results[True]
    real = mask.bool()
    assert h_unpad.shape == h_pad.shape == (*ids.shape, config.hidden_size)
    torch.testing.assert_close(h_unpad[real], h_pad[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(h_unpad[~real], torch.zeros_like(h_unpad[~real]))  # re-padded with zeros
    assert g_unpad.keys() == g_pad.keys()
    for name in g_pad:
        torch.testing.assert_close(g_unpad[name], g_pad[name], rtol=1e-4, atol=1e-5, msg=name)


def test_unpadded_rows_and_index(random_model):
    model, config = random_model
    ids, mask, types = _padded_batch(config.vocab_size, config.pad_token_id, [6, 2, 4], 6)
    with torch.no_grad():
        rows, index = model.encode_unpadded(ids, mask, types)
        full = model.encode(ids, mask, types, unpad=False)
    assert torch.equal(index, mask.reshape(-1).nonzero().squeeze(1))
    assert rows.shape == (12, config.hidden_size)
    torch.testing.assert_close(rows, full.reshape(-1, config.hidden_size)[index], rtol=1e-5, atol=1e-5)


def test_no_padding_gathers_nothing_and_changes_nothing(random_model):
    model, config = random_model
    ids, mask, types = _padded_batch(config.vocab_size, config.pad_token_id, [7, 7], 7)
    with torch.no_grad():
        rows, index = model.encode_unpadded(ids, mask, types)
        padded = model.encode(ids, mask, types, unpad=False)
        default = model.encode(ids, mask, types)
    assert index is None
    assert torch.equal(default, padded)
    assert torch.equal(rows, padded.reshape(-1, config.hidden_size))


def test_fully_padded_row_does_not_disturb_the_others(random_model):
    """A row without any real token (possible in a hand-made batch) contributes no rows and no NaN."""
    model, config = random_model
    ids, mask, types = _padded_batch(config.vocab_size, config.pad_token_id, [5, 0, 3], 5)
    with torch.no_grad():
        hidden = model.encode(ids, mask, types)
        alone = model.encode(ids[[0, 2]], mask[[0, 2]], types[[0, 2]])
    assert torch.isfinite(hidden).all()
    torch.testing.assert_close(hidden[[0, 2]], alone, rtol=1e-5, atol=1e-5)
    assert not hidden[1].any()


def test_training_mode_unpadded_is_finite_and_trains(layout, small_config):
    """Dropout on, bf16 autocast: the unpadded path gives finite gradients for every parameter."""
    torch.manual_seed(0)
    config = small_config(layout)
    model = CKBertForPreTraining(config).train()
    ids, mask, types = _padded_batch(config.vocab_size, config.pad_token_id, [11, 4, 1], 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.encode(ids, mask, types)
        loss = model.mlm_loss(hidden, torch.tensor([0, 5, 11, 14, 22]), torch.tensor([3, 4, 5, 6, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


def test_empty_batch(random_model):
    """A batch of zero rows (a CMRM pass without sample texts) gives [0, L, H]."""
    model, config = random_model
    ids = torch.zeros(0, 6, dtype=torch.long)
    hidden = model.encode(ids, torch.ones_like(ids))
    assert hidden.shape == (0, 6, config.hidden_size)


@pytest.mark.parametrize("samples", [([4, 2, 6, 1], 6), ([], 6)], ids=["samples", "no-samples"])
def test_packed_batches_equal_each_batch_alone(random_model, samples):
    """`encode_packed` (the MLM batch and CMRM's sample texts in one pass) gives every batch the
    states and the parameters the gradients of encoding each batch on its own."""
    model, config = random_model
    main = _padded_batch(config.vocab_size, config.pad_token_id, [24, 3, 1, 7, 2], 24)[:2]
    short = _padded_batch(config.vocab_size, config.pad_token_id, *samples, seed=4)[:2]
    weights = [torch.randn(ids.numel(), config.hidden_size, generator=torch.Generator().manual_seed(6 + k))
               for k, (ids, _) in enumerate((main, short))]
    results = {}
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        hidden = model.encode_packed([main, short]) if packed else [model.encode(*main), model.encode(*short)]
        loss = _loss(model, hidden[0], main[1], weights[0])
        loss = loss + (hidden[1].reshape(-1, config.hidden_size) * weights[1]).sum()  # pads are zeros either way
        loss.backward()
        results[packed] = [h.detach() for h in hidden], {n: p.grad.clone() for n, p in model.named_parameters()}
    (h_alone, g_alone), (h_packed, g_packed) = results[False], results[True]
    for alone, packed, (ids, _) in zip(h_alone, h_packed, (main, short), strict=True):
        assert packed.shape == alone.shape == (*ids.shape, config.hidden_size)
        torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    for name in g_alone:
        torch.testing.assert_close(g_packed[name], g_alone[name], rtol=1e-4, atol=1e-5, msg=name)
