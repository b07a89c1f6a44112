"""Each objective on tensors small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ckbert.objectives import cmrm_loss, masked_mean_pool, mention_anchors


def test_mention_anchor_is_mean_of_span():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)  # [B=2, L=4, H=2]
    anchors = mention_anchors(hidden, torch.tensor([0, 1, 1]), torch.tensor([1, 0, 3]), torch.tensor([3, 2, 4]))
    want = torch.stack([hidden[0, 1:3].mean(0), hidden[1, 0:2].mean(0), hidden[1, 3]])
    assert torch.allclose(anchors, want)
    hidden.requires_grad_()
    mention_anchors(hidden, torch.tensor([1]), torch.tensor([1]), torch.tensor([3])).sum().backward()
    assert hidden.grad[1, 1:3].eq(0.5).all() and hidden.grad.sum() == 2.0  # each of the 2 tokens: 1/2 per dim


def test_masked_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    assert torch.allclose(masked_mean_pool(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_cmrm_loss_by_hand():
    # anchor along x; positive along x (cos 1), negative along y (cos 0), another at 45 degrees
    anchor = torch.tensor([[2.0, 0.0]])
    samples = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 5.0]])  # rows 0, 1, 2
    index = torch.tensor([[1, 2, 0]])  # positive = row 1, negatives rows 2 and 0
    t = 0.5
    c = [1.0, 0.0, 1 / math.sqrt(2)]
    want = -c[0] / t + math.log(sum(math.exp(x / t) for x in c))
    assert cmrm_loss(anchor, samples, index, t).item() == pytest.approx(want, rel=1e-6)
    # a missing slot (-1) is excluded: same as leaving that negative out
    short = cmrm_loss(anchor, samples, torch.tensor([[1, 2, -1]]), t).item()
    want_short = -c[0] / t + math.log(math.exp(c[0] / t) + math.exp(c[1] / t))
    assert short == pytest.approx(want_short, rel=1e-6)


def test_cmrm_mean_over_mentions_and_gradients():
    anchor = torch.randn(3, 4, requires_grad=True)
    samples = torch.randn(5, 4, requires_grad=True)
    index = torch.tensor([[0, 1, 2], [3, 4, -1], [1, 0, 4]])
    total = cmrm_loss(anchor, samples, index, 0.5)
    each = [cmrm_loss(anchor[i : i + 1], samples, index[i : i + 1], 0.5) for i in range(3)]
    assert total.item() == pytest.approx(sum(e.item() for e in each) / 3, rel=1e-5)
    total.backward()
    assert anchor.grad.abs().sum() > 0 and samples.grad.abs().sum() > 0
    # in-batch negatives: every sample row competes; target = own positive
    none = torch.zeros(3, 5, dtype=torch.bool)
    ib = cmrm_loss(anchor, samples, index, 0.5, exclude=none)
    a = torch.nn.functional.normalize(anchor, dim=-1)
    s = torch.nn.functional.normalize(samples, dim=-1)
    want = torch.nn.functional.cross_entropy(a @ s.T / 0.5, index[:, 0])
    assert ib.item() == pytest.approx(want.item(), rel=1e-5)
    # an excluded text (say, another positive of the same entity) is no candidate at all
    ex = none.clone()
    ex[0, 3] = True
    logits = a @ s.T / 0.5
    want0 = torch.nn.functional.cross_entropy(logits[:1, [0, 1, 2, 4]], torch.tensor([0]))
    got0 = cmrm_loss(anchor[:1], samples, index[:1], 0.5, exclude=ex[:1])
    assert got0.item() == pytest.approx(want0.item(), rel=1e-5)


def test_cmrm_no_mentions_is_zero_with_graph():
    anchor = torch.zeros(0, 4, requires_grad=True)
    samples = torch.zeros(0, 4, requires_grad=True)
    out = cmrm_loss(anchor, samples, torch.zeros(0, 5, dtype=torch.long), 0.5)
    assert out.item() == 0.0
    out.backward()


@pytest.mark.parametrize("in_batch", [False, True], ids=["hop-negatives", "in-batch"])
def test_pretrain_forward_packs_the_sample_texts_without_changing_the_loss(prepared, in_batch):
    """`PretrainForward` encodes the MLM batch and the sample texts in one pass (`encode_packed`):
    on collated batches of real data, its terms and gradients equal two separate passes."""
    from ckbert.collator import PretrainCollator
    from ckbert.model import CKBertForPreTraining
    from ckbert.model_config import load_model_config
    from ckbert.train import KeyedRows, PretrainForward
    from ckbert.train_config import CMRMConfig, MaskingConfig

    manifest, ds, kg, tok = prepared
    cmrm = CMRMConfig(in_batch_negatives=in_batch, negatives=0 if in_batch else 4, render="tail" if in_batch
                      else "mention_tail")
    batch = PretrainCollator(tok, manifest, kg, MaskingConfig(), cmrm, 64, 0)(
        KeyedRows(ds).__getitems__([(0, r) for r in range(48)]))
    assert batch["sample_index"].shape[0] > 2  # mentions with a positive to score
    torch.manual_seed(0)
    model = CKBertForPreTraining(load_model_config("tiny", {"vocab_size": len(tok), "num_hidden_layers": 2,
                                                             "hidden_dropout_prob": 0.0,
                                                             "attention_probs_dropout_prob": 0.0})).train()
    forward = PretrainForward(model, True, 0.1, in_batch)
    results = []
    for packed in (True, False):
        model.zero_grad(set_to_none=True)
        if packed:
            terms = forward(batch)
        else:  # the reference: each batch through the encoder on its own
            hidden = model.encode(batch["input_ids"], batch["attention_mask"])
            samples = model.encode(batch["sample_input_ids"], batch["sample_attention_mask"])
            anchor = mention_anchors(hidden, batch["mention_index"], batch["mention_start"], batch["mention_end"])
            terms = {"mlm": model.mlm_loss(hidden, batch["mlm_positions"], batch["mlm_labels"]),
                     "cmrm": cmrm_loss(anchor, masked_mean_pool(samples, batch["sample_pool_mask"]),
                                       batch["sample_index"], 0.1, batch["sample_exclude"] if in_batch else None)}
        (terms["mlm"] + 0.5 * terms["cmrm"]).backward()
        results.append(({k: v.item() for k, v in terms.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (t_packed, g_packed), (t_alone, g_alone) = results
    assert t_packed == pytest.approx(t_alone, rel=1e-5)
    for name in g_alone:
        torch.testing.assert_close(g_packed[name], g_alone[name], rtol=1e-4, atol=1e-6, msg=name)
