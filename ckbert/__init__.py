"""ckbert: pretraining Chinese knowledge-enhanced BERT encoders (the CKBERT recipe).

Kept import-light on purpose: the CLI and the data stage import submodules directly.
"""

__version__ = "0.1.0"
