"""The `kernels` switch: same parameters and checkpoint either way, same numbers, no silent fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ckbert.errors import UserError
from ckbert.model import CKBertForPreTraining


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="Triton can run here, so requesting it is not an error")
def test_requesting_triton_where_it_cannot_run_is_an_error(small_config):
    with pytest.raises(UserError, match="model.kernels: kernel backend 'triton' was requested"):
        CKBertForPreTraining(small_config(kernels="triton"))


# Runs in a fresh interpreter: TRITON_INTERPRET must be set before triton is imported.
_SCRIPT = textwrap.dedent('''
    import sys, torch
    from ckbert.kernels import ops
    from ckbert.model import CKBertForPreTraining
    from ckbert.model_config import ModelConfig

    out = {}
    for backend in ("torch", "triton"):
        ops.reset_backend()
        for layout in ("post_ln", "pre_ln"):
            torch.manual_seed(0)
            config = ModelConfig(vocab_size=61, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=48, max_position_embeddings=16, layout=layout,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 hidden_act="gelu" if layout == "post_ln" else "gelu_new", kernels=backend)
            model = CKBertForPreTraining(config)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            ids = torch.randint(1, 61, (2, 9))
            mask = torch.ones(2, 9, dtype=torch.long)
            mask[1, 6:] = 0
            hidden = model.encode(ids, mask)
            loss = model.mlm_loss(hidden, torch.tensor([1, 4, 10]), torch.tensor([5, 7, 9]))
            loss.backward()
            out[backend, layout] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                                    list(model.state_dict()))
    worst = 0.0
    for layout in ("post_ln", "pre_ln"):
        (la, ga, ka), (lb, gb, kb) = out["torch", layout], out["triton", layout]
        assert ka == kb, "parameter names differ between backends"
        worst = max(worst, abs(la - lb).item(), *((ga[n] - gb[n]).abs().max().item() for n in ga))
    print("max abs difference", worst)
    sys.exit(0 if worst < 1e-4 else 1)
''')


@pytest.mark.slow
def test_triton_backend_matches_torch_backend():
    """Loss and every gradient through the Triton kernels (CPU interpreter) equal the torch ops."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "max abs difference" in proc.stdout
