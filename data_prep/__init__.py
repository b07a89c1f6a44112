"""Data preparation: corpus readers, annotators, KG store, entity linker, shard writer.

Imports no model code (design.md, section 1).
"""
