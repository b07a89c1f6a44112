"""Accelerator layer: Triton fused kernels, their PyTorch references, backend selection.

Imports nothing else of ckbert (design.md, section 1).
"""
