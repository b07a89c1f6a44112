"""Opening a local Hugging Face BERT-family checkpoint folder (ours or public), without the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckbert.errors import UserError

# A BERT-family folder's tokenizer is tokenizer.json (fast) or vocab.txt (WordPiece). Without either,
# transformers 5 still returns a tokenizer: an empty one of the 5 special tokens, which turns every
# character into [UNK]; so the files are required and the size is checked against the model.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
MIN_TOKENIZER_SIZE = 100  # fewer tokens than this is a placeholder, not a vocabulary


def load_tokenizer(model_dir: Path) -> Any:
    """The folder's fast tokenizer (offsets for CMRC2018 and NER need a fast one), checked against
    the model: tokenizer files present, at least `MIN_TOKENIZER_SIZE` tokens, no more tokens than
    the model's vocab_size. The one check `ckbert finetune`, `clue` and `probe` share."""
    from transformers import AutoTokenizer

    config = check_model_dir(model_dir)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise UserError("no tokenizer in the model folder (neither tokenizer.json nor vocab.txt); copy the "
                        "tokenizer the model was trained with into it", path=model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot load a tokenizer: {str(exc).splitlines()[0]}", path=model_dir) from None
    if not tokenizer.is_fast:
        raise UserError("the tokenizer is not a fast (Rust) tokenizer; offsets need one", path=model_dir)
    size, vocab = len(tokenizer), config.get("vocab_size")
    if size < MIN_TOKENIZER_SIZE:
        raise UserError(f"the tokenizer has only {size} tokens (a placeholder, not the model's vocabulary?)",
                        path=model_dir)
    if isinstance(vocab, int) and size > vocab:
        raise UserError(f"the tokenizer has {size} tokens, more than the model's vocab_size {vocab} "
                        "(the tokenizer of another model?)", path=model_dir)
    return tokenizer


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """The folder's config.json as a dict, or a UserError when the folder is not a model."""
    from transformers import AutoConfig

    if not model_dir.is_dir():
        raise UserError("model folder not found", path=model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError("not a Hugging Face model folder (no config.json)", path=model_dir)
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read config.json: {str(exc).splitlines()[0]}", path=model_dir) from None
    has_weights = any(
        (model_dir / name).is_file()
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )
    if not has_weights:
        raise UserError("no model weights (model.safetensors) in the model folder", path=model_dir)
    return config.to_dict()


def max_positions(model_dir: Path) -> int:
    config = check_model_dir(model_dir)
    return int(config.get("max_position_embeddings", 512))


def load_model(model_cls: Any, model_dir: Path, random_init: bool = False, **kwargs: Any) -> Any:
    """`model_cls` (an AutoModelFor* class) from the folder; a new task head is randomly initialised.

    `random_init` keeps the folder's architecture and size but draws every weight at random: the
    no-pretraining baseline of the same size and tokenizer.

    transformers' per-load report (pretraining head unused, task head new) is expected for every
    fine-tuning run, so it is silenced; real load failures still raise.
    """
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if random_init:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, **kwargs)
            return model_cls.from_config(config)
        return model_cls.from_pretrained(str(model_dir), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model: {str(exc).splitlines()[0]}", path=model_dir) from None
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
