"""Contrastive scoring loss: Triton (interpreter) against the PyTorch reference."""

import pytest
import torch

from ckbert.kernels.contrastive_triton import contrastive_fwd
from ckbert.kernels.ops import contrastive_loss, contrastive_loss_reference


def _inputs(n, k, h, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    anchor = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    cands = torch.randn(n, k, h, generator=g)
    cands[:, 0] += torch.randn(n, h, generator=g)  # positives nearer their anchor: a non-trivial softmax
    return anchor, cands.to(dtype).requires_grad_(), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,h", [(1, 1, 7), (7, 5, 768), (3, 16, 1023), (5, 3, 24)])
@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_gradients(n, k, h, dtype, masked, assert_close_to_exact, to_double):
    anchor, cands, g = _inputs(n, k, h, dtype)
    valid = None
    if masked:
        valid = torch.rand(n, k, generator=g) > 0.3
        valid[:, 0] = True
        valid[n // 2, 0] = False if n > 1 else True  # one anchor without its positive: not counted
    temperature = 0.07
    loss = contrastive_loss(anchor, cands, temperature, valid, backend="triton")
    loss_ref = contrastive_loss_reference(anchor, cands, temperature, valid)
    ae, ce = to_double(anchor, cands)
    loss_ex = contrastive_loss_reference(ae, ce, temperature, valid)
    assert_close_to_exact(loss, loss_ref, loss_ex, "loss")
    got = torch.autograd.grad(loss * 0.5, (anchor, cands))
    ref = torch.autograd.grad(loss_ref * 0.5, (anchor, cands))
    ex = torch.autograd.grad(loss_ex * 0.5, (ae, ce))
    for name, a, b, c in zip(["danchor", "dcandidates"], got, ref, ex, strict=True):
        assert_close_to_exact(a, b, c, name)


def test_missing_candidates_are_out_of_the_softmax():
    anchor, cands, _ = _inputs(4, 6, 32, torch.float32)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[:, 4:] = False
    masked = contrastive_loss(anchor, cands, 0.1, valid, backend="triton")
    dropped = contrastive_loss(anchor, cands[:, :4], 0.1, None, backend="triton")
    torch.testing.assert_close(masked, dropped, rtol=1e-6, atol=1e-7)
    (dc,) = torch.autograd.grad(masked, (cands,))
    assert torch.all(dc[:, 4:] == 0)


def test_bad_arguments():
    anchor, cands, _ = _inputs(2, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(anchor, cands, 0.0, backend="triton")
    with pytest.raises(ValueError, match="valid"):
        contrastive_loss(anchor, cands, 0.1, torch.ones(2, 2, dtype=torch.bool), backend="triton")
    with pytest.raises(ValueError, match="anchor"):
        contrastive_loss(anchor[:, :4], cands, 0.1, backend="triton")


def test_gpu_tiling_one_anchor_per_program_matches():
    """On a GPU the kernel runs one anchor per program; the interpreter default packs several."""
    anchor, cands, g = _inputs(5, 3, 40, torch.float32)
    valid = (torch.rand(5, 3, generator=g) > 0.3).to(torch.int8)
    valid[2, 0] = 0
    a, c = anchor.detach(), cands.detach()
    one = contrastive_fwd(a, c, valid, 0.1, rows_per_program=1)
    packed = contrastive_fwd(a, c, valid, 0.1)
    for x, y in zip(one, packed, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
