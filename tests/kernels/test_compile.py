"""torch.compile traces the Triton-backed ops: the custom ops' fake implementations give the shapes,
the autograd.Functions the backward. The "aot_eager" backend runs the traced forward and backward
graphs without code generation (no C++ compiler needed); values must equal eager mode."""

import torch

from ckbert.kernels.ops import (
    add_layernorm,
    bias_dropout_add_layernorm,
    bias_gelu,
    contrastive_loss,
    linear_cross_entropy,
)


def _block(x, w1, b1, w2, b2, ln_w, ln_b, dec_w, labels, anchor_idx):
    """A post-LN FFN sublayer, a pre-LN add+norm, the MLM loss and a contrastive loss: every op once."""
    h = bias_gelu(x @ w1.t(), b1, "none", backend="triton")
    y = bias_dropout_add_layernorm(h @ w2.t(), b2, x, ln_w, ln_b, 1e-5, 0.0, False, backend="triton")
    z, _ = add_layernorm(y, x, ln_w, ln_b, 1e-5, backend="triton")
    mlm = linear_cross_entropy(z, dec_w, None, labels, chunk_size=3, backend="triton")
    cands = z[anchor_idx]  # [N, K, H]
    return mlm + contrastive_loss(z[:2], cands, 0.1, backend="triton")


def test_compiled_equals_eager():
    g = torch.Generator().manual_seed(0)
    m, h, f, v = 7, 16, 24, 11
    params = [
        torch.randn(f, h, generator=g) * 0.2, torch.randn(f, generator=g) * 0.1,
        torch.randn(h, f, generator=g) * 0.2, torch.randn(h, generator=g) * 0.1,
        1 + 0.1 * torch.randn(h, generator=g), 0.1 * torch.randn(h, generator=g),
        torch.randn(v, h, generator=g) * 0.2,
    ]
    params = [p.requires_grad_() for p in params]
    x = torch.randn(m, h, generator=g).requires_grad_()
    labels = torch.randint(0, v, (m,), generator=g)
    anchor_idx = torch.tensor([[2, 3, 4], [5, 6, 0]])
    eager = _block(x, *params[:6], params[6], labels, anchor_idx)
    grads = torch.autograd.grad(eager, [x, *params])
    torch._dynamo.reset()
    compiled_fn = torch.compile(_block, backend="aot_eager", fullgraph=True)
    compiled = compiled_fn(x, *params[:6], params[6], labels, anchor_idx)
    grads_c = torch.autograd.grad(compiled, [x, *params])
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
