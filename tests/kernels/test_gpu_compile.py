"""Every Triton kernel compiles for an H100 (sm_90) down to a cubin, on this CPU-only machine.

The interpreter runs the kernels' arithmetic but not Triton's compiler, which rejects things the
interpreter accepts (non-constexpr globals, type mismatches in loops, unsupported ops). triton
ships ptxas, so the full pipeline (TTIR, TTGIR, LLVM IR, PTX, cubin) runs without a GPU. Each case
uses the constexprs the launchers pick on a GPU (one row per program for CE and contrastive, 4K-element
LayerNorm tiles). This proves compilation only: running and timing need a GPU (bench/gpu_kernels.py).
"""

import os
import subprocess
import sys

import pytest

# A child process: the kernels must be defined without TRITON_INTERPRET, which this test session sets.
SCRIPT = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ckbert.kernels import add_layernorm_triton as ln, bias_gelu_triton as bg
from ckbert.kernels import contrastive_triton as co, linear_cross_entropy_triton as ce

target = GPUTarget("cuda", 90, 32)
cases = {
    "ln_fwd_bf16_dropout": (ln._fwd_kernel, dict(X="*bf16", B="*fp32", R="*fp32", W="*fp32", LB="*fp32", Seed="*i64",
        Y="*fp32", H="*fp32", Mean="*fp32", Rstd="*fp32", M="i32", N="i32", eps="fp32", p="fp32"),
        dict(HAS_BIAS=True, HAS_DROPOUT=True, BLOCK_M=4, BLOCK_N=1024)),
    "ln_bwd_bf16_dropout": (ln._bwd_kernel, dict(DY="*bf16", DHO="*bf16", H="*bf16", W="*bf16", Mean="*fp32",
        Rstd="*fp32", Seed="*i64", DH="*bf16", DX="*bf16", DW_part="*fp32", DLB_part="*fp32", DB_part="*fp32",
        M="i32", N="i32", p="fp32"), dict(HAS_DHO=True, HAS_DROPOUT=True, HAS_BIAS=True, BLOCK_M=4, BLOCK_N=1024)),
    "ln_keep_mask": (ln._keep_mask_kernel, dict(Seed="*i64", Keep="*i8", M="i32", N="i32", p="fp32"), dict(BLOCK=1024)),
    "gelu_fwd_erf": (bg._fwd_kernel, dict(X="*bf16", B="*bf16", Y="*bf16", M="i32", N="i32"),
        dict(APPROX_TANH=False, BLOCK_M=4, BLOCK_N=1024)),
    "gelu_bwd_tanh": (bg._bwd_kernel, dict(DY="*bf16", X="*bf16", B="*bf16", DX="*bf16", M="i32", N="i32"),
        dict(APPROX_TANH=True, BLOCK_M=4, BLOCK_N=1024)),
    "ce_rows": (ce._ce_rows_kernel, dict(Logits="*bf16", stride="i32", Labels="*i64", Loss="*fp32", C="i32", V="i32",
        ignore_index="i32", smoothing="fp32"), dict(BLOCK_M=1, BLOCK_V=4096)),
    "contrastive": (co._contrastive_kernel, dict(A="*bf16", C="*bf16", Valid="*i8", Loss="*fp32", DA="*bf16",
        DC="*bf16", N="i32", K="i32", H="i32", inv_temperature="fp32"), dict(BLOCK_N=1, BLOCK_K=16, BLOCK_H=1024)),
}
for name, (fn, sig, const) in cases.items():
    signature = {**sig, **{k: "constexpr" for k in const}}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=const), target=target)
    assert compiled.asm["cubin"], name
    print("compiled", name, flush=True)
'''


@pytest.mark.slow
def test_all_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # a real compile every run
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("compiled ") == 7, proc.stdout
