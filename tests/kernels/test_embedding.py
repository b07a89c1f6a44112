"""The word-embedding lookup with a reused gradient workspace (kernels/embedding.py) against F.embedding."""

import sys

import pytest
import torch
import torch.nn.functional as F

from ckbert.kernels.ops import embedding

EMB = sys.modules["ckbert.kernels.embedding"]  # the module (the package attribute is the function)
V, H, PAD = 50, 8, 0


def _tied_loss(lookup, weight, ids, hidden):
    """An embedding lookup and a tied decoder over the same weight, as in the model."""
    x = lookup(ids, weight, PAD)
    logits = F.linear(hidden + x.sum(1).mean(0), weight)
    return (logits.float().log_softmax(-1)[:, 3]).sum() + x.pow(2).sum()


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, H, generator=g).requires_grad_()
    ids = torch.randint(0, V, (4, 6), generator=g)
    ids[0, :2] = PAD  # padding ids get no gradient
    ids[1, 3] = ids[1, 4] = 7  # a repeated id
    hidden = torch.randn(5, H, generator=g)
    return weight, ids, hidden


def test_gradient_equals_f_embedding_and_workspace_is_reused_across_steps():
    weight, ids, hidden = _case()
    ref = torch.autograd.grad(_tied_loss(F.embedding, weight, ids, hidden), weight)[0]
    EMB._WORKSPACES.clear()
    for _ in range(3):  # steps: zero_grad(set_to_none), forward, backward
        weight.grad = None
        _tied_loss(embedding, weight, ids, hidden).backward()
        torch.testing.assert_close(weight.grad, ref)
    (buf,) = EMB._WORKSPACES.values()  # one workspace, reused (not held by the finished backwards)
    assert buf.shape == (V, H) and buf is not weight.grad
    assert buf.untyped_storage().data_ptr() != weight.grad.untyped_storage().data_ptr()


def test_lookup_alone_and_gradient_accumulation():
    weight, ids, _ = _case(1)
    ref = torch.autograd.grad(F.embedding(ids, weight, PAD).pow(2).sum(), weight)[0]
    weight.grad = None
    embedding(ids, weight, PAD).pow(2).sum().backward()  # the only gradient: copied, not the workspace
    embedding(ids, weight, PAD).pow(2).sum().backward()  # a second micro-batch adds to .grad
    torch.testing.assert_close(weight.grad, 2 * ref)
    assert all(weight.grad.data_ptr() != b.data_ptr() for b in EMB._WORKSPACES.values())


@pytest.mark.parametrize("tied", [True, False])
def test_two_lookups_in_one_backward(tied):
    weight, ids, hidden = _case(2)

    def loss(lookup):
        first = _tied_loss(lookup, weight, ids, hidden) if tied else lookup(ids, weight, PAD).pow(2).sum()
        return first + lookup(ids.flip(0), weight, PAD).sum()

    ref = torch.autograd.grad(loss(F.embedding), weight)[0]
    torch.testing.assert_close(torch.autograd.grad(loss(embedding), weight)[0], ref)


def test_a_kept_gradient_is_not_reused():
    weight, ids, _ = _case(4)
    ref = torch.autograd.grad(F.embedding(ids, weight, PAD).pow(2).sum(), weight)[0]
    kept = torch.autograd.grad(embedding(ids, weight, PAD).pow(2).sum(), weight)[0]
    assert any(kept is b for b in EMB._WORKSPACES.values())  # autograd.grad hands back the workspace itself
    again = torch.autograd.grad(embedding(ids, weight, PAD).sum(), weight)[0]
    torch.testing.assert_close(kept, ref)  # the second backward did not zero it
    torch.testing.assert_close(again, torch.autograd.grad(F.embedding(ids, weight, PAD).sum(), weight)[0])


def test_without_gradient_it_is_f_embedding():
    weight, ids, _ = _case(3)
    with torch.no_grad():
        torch.testing.assert_close(embedding(ids, weight, PAD), F.embedding(ids, weight, PAD))


def test_the_workspace_is_handed_out_only_when_nobody_holds_it():
    EMB._WORKSPACES.clear()
    args = ((7, 3), torch.float32, torch.device("cpu"))
    first = EMB._zeroed_workspace(*args)
    again = EMB._zeroed_workspace(*args)  # `first` still names it: held
    assert again is not first
    first_id = id(first)
    del first, again
    assert id(EMB._zeroed_workspace(*args)) == first_id  # free again: reused
    view = EMB._WORKSPACES[((7, 3), torch.float32, "cpu")][2:]  # a view keeps its base: held too
    assert id(EMB._zeroed_workspace(*args)) != first_id
    del view
    assert id(EMB._zeroed_workspace(*args)) == first_id
