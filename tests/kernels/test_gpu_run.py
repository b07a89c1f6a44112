"""On a CUDA machine: the compiled kernels (not the interpreter) against the references, at model
shapes, in fp32 and bf16. Skipped without a GPU (marker `gpu`).

It runs in a child process because this test session defines the kernels under TRITON_INTERPRET=1
(conftest.py). The tolerance rule is the one of conftest.assert_close_to_exact: at most 2x the
reference's own error in that dtype (against an fp64 run) plus 4 ulps of the largest value.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import sys
import torch
from ckbert.kernels import ops
from ckbert.kernels.add_layernorm_triton import dropout_keep_mask

device = torch.device(sys.argv[1])
small = device.type == "cpu"  # a CPU dry run of this script under the interpreter


def check(got, low, exact, what):
    exact = exact.detach().double()
    err = (got.detach().double() - exact).abs().max().item()
    ref_err = (low.detach().double() - exact).abs().max().item()
    bound = 2 * ref_err + 4 * torch.finfo(got.dtype).eps * max(exact.abs().max().item(), 1e-30)
    assert got.dtype == low.dtype and err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e}"


def leaves(shapes, dtype, g):
    return [(torch.randn(*s, generator=g) * sc + sh).to(device, dtype).requires_grad_() for s, sc, sh in shapes]


def compare(name, fn, ref, inputs, seed_grads=True):
    exact = [t.detach().double().requires_grad_() for t in inputs]
    out, low, ex = fn(*inputs), ref(*inputs), ref(*exact)
    check(out, low, ex, name)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(device, out.dtype)
    for i, (a, b, c) in enumerate(zip(torch.autograd.grad(out, inputs, dy), torch.autograd.grad(low, inputs, dy),
                                      torch.autograd.grad(ex, exact, dy.double()))):
        check(a, b, c, f"{name} grad {i}")
    print("ok", name, flush=True)


rows, d, ffn, m_rows, vocab = (64, 96, 160, 40, 1000) if small else (4096, 768, 3072, 2458, 21128)
for dtype in (torch.float32, torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    tag = str(dtype).split(".")[-1]
    for width in ((d,) if small else (768, 1024)):
        x, b, r, w, lb = leaves([((rows, width), 1, 0), ((width,), 0.5, 0), ((rows, width), 2, 0),
                                 ((width,), 0.2, 1), ((width,), 0.2, 0)], dtype, g)
        seed = torch.tensor([77], device=device)
        keep = dropout_keep_mask(seed, rows, width, 0.1)
        compare(f"post-LN dropout {tag} d={width}",
                lambda *a: ops.bias_dropout_add_layernorm(*a, 1e-12, 0.1, True, backend="triton", seed=seed),
                lambda *a: ops.add_layernorm_reference(*a, 1e-12, 0.1, True, keep=keep)[0], [x, b, r, w, lb])
        compare(f"pre-LN {tag} d={width} y",
                lambda x, r, w, lb: ops.add_layernorm(x, r, w, lb, 1e-12, backend="triton")[0],
                lambda x, r, w, lb: ops.add_layernorm_reference(x, None, r, w, lb, 1e-12)[0], [x, r, w, lb])
        # The new residual h depends on x and r only (the backward through y and h together is
        # checked in test_add_layernorm.py).
        compare(f"pre-LN {tag} d={width} h",
                lambda x, r: ops.add_layernorm(x, r, w, lb, 1e-12, backend="triton")[1],
                lambda x, r: ops.add_layernorm_reference(
                    x, None, r, w.detach().to(x.dtype), lb.detach().to(x.dtype), 1e-12)[1], [x, r])
    x, b = leaves([((rows, ffn), 3, 0), ((ffn,), 1, 0)], dtype, g)
    for form in ("none", "tanh"):
        compare(f"bias+GELU {form} {tag}", lambda x, b: ops.bias_gelu(x, b, form, backend="triton"),
                lambda x, b: ops.bias_gelu_reference(x, b, form), [x, b])
    h, wt, bt = leaves([((m_rows, d), 1, 0), ((vocab, d), d ** -0.5, 0), ((vocab,), 0.1, 0)], dtype, g)
    labels = torch.randint(0, vocab, (m_rows,), generator=g).to(device)
    labels[::7] = -100
    compare(f"linear+CE {tag}", lambda *a: ops.linear_cross_entropy(*a, labels, label_smoothing=0.1, backend="triton"),
            lambda *a: ops.linear_cross_entropy_reference(*a, labels, label_smoothing=0.1), [h, wt, bt])
    a, c = leaves([((64, d), 1, 0), ((64, 16, d), 1, 0)], dtype, g)
    valid = (torch.rand(64, 16, generator=g) > 0.2).to(device)
    compare(f"contrastive {tag}", lambda a, c: ops.contrastive_loss(a, c, 0.07, valid, backend="triton"),
            lambda a, c: ops.contrastive_loss_reference(a, c, 0.07, valid), [a, c])
print("all ok")
'''


def run_script(device: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CKBERT_KERNELS")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", SCRIPT, device], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.mark.gpu
def test_compiled_kernels_match_references_on_cuda():
    proc = run_script("cuda", interpret=False)
    assert proc.returncode == 0 and "all ok" in proc.stdout, proc.stdout + proc.stderr[-4000:]


@pytest.mark.slow
def test_script_dry_run_on_cpu():
    """The same script with small shapes under the interpreter, so that the GPU check cannot rot
    unseen on CPU-only CI."""
    proc = run_script("cpu", interpret=True)
    assert proc.returncode == 0 and "all ok" in proc.stdout, proc.stdout + proc.stderr[-4000:]
