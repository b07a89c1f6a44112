"""bias + GELU (erf and tanh forms): Triton (interpreter) against the PyTorch reference."""

import pytest
import torch

from ckbert.kernels.ops import bias_gelu, bias_gelu_reference


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (3, 1023), (2, 5, 768), (2, 1500)])  # 1500: two column tiles
def test_forward_and_gradients(shape, dtype, approximate, assert_close_to_exact, to_double):
    g = torch.Generator().manual_seed(0)
    # Spread of 3 reaches both tails, where the erf and tanh forms and their slopes differ most.
    x = (torch.randn(shape, generator=g) * 3).to(dtype).requires_grad_()
    bias = torch.randn(shape[-1], generator=g).to(dtype).requires_grad_()
    y = bias_gelu(x, bias, approximate, backend="triton")
    y_ref = bias_gelu_reference(x, bias, approximate)
    xe, be = to_double(x, bias)
    y_ex = bias_gelu_reference(xe, be, approximate)
    assert_close_to_exact(y, y_ref, y_ex, "y")
    dy = torch.randn(shape, generator=g).to(dtype)
    got = torch.autograd.grad(y, (x, bias), dy)
    ref = torch.autograd.grad(y_ref, (x, bias), dy)
    ex = torch.autograd.grad(y_ex, (xe, be), dy.double())
    for name, a, b, c in zip(["dx", "dbias"], got, ref, ex, strict=True):
        assert_close_to_exact(a, b, c, name)


def test_forms_differ_and_bad_form_is_rejected():
    x = torch.linspace(-4, 4, 64).reshape(8, 8)
    b = torch.zeros(8)
    exact, tanh = bias_gelu(x, b, "none", backend="triton"), bias_gelu(x, b, "tanh", backend="triton")
    assert (exact - tanh).abs().max() > 1e-4  # the kernel really switches form
    with pytest.raises(ValueError, match="approximate"):
        bias_gelu(x, b, "erf", backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_activation_with_fp32_bias_stays_bf16(backend):
    """As a linear layer's bias under autocast: the output and d x are bf16, d bias fp32."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 40, generator=g) * 2).to(torch.bfloat16).requires_grad_()
    bias = torch.randn(40, generator=g).requires_grad_()
    y = bias_gelu(x, bias, backend=backend)
    assert y.dtype == torch.bfloat16
    exact = bias_gelu_reference(x.double(), bias.double())
    torch.testing.assert_close(y.double(), exact, atol=3e-2, rtol=2e-2)
    dx, dbias = torch.autograd.grad(y, (x, bias), torch.ones_like(y))
    assert dx.dtype == torch.bfloat16 and dbias.dtype == torch.float32
    dx_ex, db_ex = torch.autograd.grad(exact, (x, bias), torch.ones_like(exact))
    torch.testing.assert_close(dx.double(), dx_ex.double(), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(dbias.double(), db_ex.double(), atol=0.1, rtol=2e-2)
