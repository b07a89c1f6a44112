"""Tokenizer: load a Hugging Face BERT tokenizer folder or build a WordPiece vocabulary from the
corpus, add the `[dep]` and `[sdp]` marker tokens, and align words to tokens.

Alignment works on the annotator's words: each sentence is encoded as a pre-split word list, so a
token never crosses a word boundary and the tokenizer itself reports the word of every token.
Chinese characters are single tokens (BERT-Chinese pre-tokenisation); Latin words and numbers may
become several WordPiece tokens of the same word.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from itertools import chain, repeat
from pathlib import Path

from ckbert.errors import UserError

MARKERS = ("[dep]", "[sdp]")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def add_markers(tokenizer) -> list[str]:
    """Add `[dep]` and `[sdp]` as special tokens where missing (the one way ckbert adds them: the
    prepared dataset's tokenizer, an imported HF checkpoint's); returns those that were new."""
    missing = [m for m in MARKERS if m not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return missing


def load_tokenizer(path: str | Path):
    """A BertTokenizerFast from a local folder (vocab.txt or tokenizer.json), markers added."""
    from transformers import BertTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise UserError("tokenizer folder not found", path=path)
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise UserError("tokenizer folder has neither tokenizer.json nor vocab.txt", path=path)
    try:
        tok = BertTokenizerFast.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load tokenizer: {exc}".splitlines()[0], path=path) from None
    add_markers(tok)
    return tok


# Files of a Hugging Face tokenizer folder that `copy_tokenizer` takes over (weights etc. are not).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt")


def has_markers(path: Path) -> bool:
    """True when `path` is a BERT tokenizer folder whose tokenizer.json already holds `[dep]` and `[sdp]`
    as special added tokens (e.g. the tokenizer/ of a dataset ckbert prepared): then `copy_tokenizer`
    gives the folder `load_tokenizer` + `save_pretrained` would write, without importing transformers."""
    import json

    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(config, dict) or config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
        return False
    added = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")}
    listed = set(config.get("extra_special_tokens") or []) | set(config.get("additional_special_tokens") or [])
    return set(MARKERS) <= added and set(MARKERS) <= listed


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer files of a folder that `has_markers` accepted."""
    import shutil

    dst.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def load_backend(path: str | Path):
    """The Rust `tokenizers.Tokenizer` of a folder's tokenizer.json, which must hold the markers: all
    `ckbert prepare` needs (word encoding, vocabulary size, marker ids) without importing transformers."""
    from tokenizers import Tokenizer

    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:  # the Rust side raises plain Exception for a malformed file
        raise UserError(f"cannot load tokenizer.json: {exc}".splitlines()[0], path=path) from None
    missing = [m for m in MARKERS if tok.token_to_id(m) is None]
    if missing:
        raise UserError(f"tokenizer.json lacks the marker tokens {missing}", path=path)
    return tok


def build_vocab(texts: Iterable[str], out_dir: Path, vocab_size: int = 21128, min_frequency: int = 2):
    """Build a BERT-Chinese style WordPiece vocabulary on the corpus, deterministically, and save a
    BertTokenizerFast folder with the markers to `out_dir`.

    Words come from BERT's own normaliser and pre-tokeniser (lower case, CJK characters split into
    single-character words). The vocabulary is: the special tokens; every character seen at least
    `min_frequency` times, as a word start and, where it occurs inside a word, as `##c`; then whole
    multi-character words (numbers, Latin words) by descending count, ties by the word itself, up
    to `vocab_size`. Greedy longest-match WordPiece then splits any other word into known pieces
    or characters. The result depends only on the corpus text and the two numbers: the same corpus
    gives a byte-identical vocab.txt whatever the worker count or how often a run was interrupted
    (the Rust WordPiece trainer breaks ties by hash-map order and did not).
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast

    norm = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True)
    pre = BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    starts: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    for w, n in words.items():
        starts[w[0]] += n
        for c in w[1:]:
            inner[c] += n
    chars = sorted(set(starts) | set(inner))
    alphabet = chars + sorted("##" + c for c in chars if inner[c])
    floor = len(BERT_SPECIALS) + len(alphabet)
    if vocab_size < floor:
        raise UserError(f"--vocab-size {vocab_size} is smaller than the {floor} entries this corpus needs "
                        f"(5 special tokens and {len(alphabet)} character entries)")
    multi = sorted((w for w, n in words.items() if len(w) > 1 and n >= min_frequency and w not in chars),
                   key=lambda w: (-words[w], w))
    vocab = BERT_SPECIALS + alphabet + multi[: vocab_size - floor]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast.from_pretrained(str(out_dir), do_lower_case=True, tokenize_chinese_chars=True)
    add_markers(tok)
    tok.save_pretrained(str(out_dir))
    return tok


def fingerprint(tokenizer_dir: Path) -> str:
    return hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()


def encode_words(tokenizer, batch: list[list[str]]) -> list[tuple[list[int], list[int]]]:
    """Word lists -> per sentence (token ids, word index of each token); no [CLS]/[SEP].

    The reference path: one batched call of the Rust tokenizer on pre-split words. A word that yields
    no token (only pure whitespace can, after normalisation) has no token pointing to it.
    """
    encs = tokenizer.backend_tokenizer.encode_batch(batch, is_pretokenized=True, add_special_tokens=False)
    return [(e.ids, e.word_ids) for e in encs]


class WordEncoder:
    """Fast path of `encode_words` with the same output: BERT tokenization of a pre-split word does
    not depend on its neighbours (the normaliser works per character, WordPiece per word), so each
    distinct word is tokenized once by the Rust tokenizer and then looked up. Words follow Zipf's
    law, so the cache hit rate is high; the cache is cleared when it reaches `max_words`.
    """

    def __init__(self, tokenizer, max_words: int = 500_000):
        # a transformers fast tokenizer or the `tokenizers.Tokenizer` itself (`load_backend`)
        self.backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if self.backend.truncation is not None or self.backend.padding is not None:
            # A tokenizer.json may carry truncation/padding settings; the batched encoding of new words
            # below must see neither (a copy, so the caller's tokenizer is left as it is).
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(self.backend.to_str())
            self.backend.no_truncation()
            self.backend.no_padding()
        self.max_words = max_words
        self.cache: dict[str, list[int]] = {}

    def __call__(self, batch: list[list[str]]) -> list[tuple[list[int], list[int]]]:
        """Same output as `encode_words`: per sentence (token ids, word index of each token)."""
        out = []
        for ids, lens in self.encode_lens(batch):
            out.append((ids, list(chain.from_iterable(map(repeat, range(len(lens)), lens)))))
        return out

    def encode_lens(self, batch: list[list[str]]) -> list[tuple[list[int], list[int]]]:
        """Per sentence (token ids, number of tokens of each word): the token -> word map in run-length
        form, which is what the shard pipeline needs; the flattening runs in C (chain, map)."""
        cache = self.cache
        missing = {w for words in batch for w in words if w not in cache}
        if missing:
            if len(cache) + len(missing) > self.max_words:
                cache.clear()
                missing = {w for words in batch for w in words}
            missing_list = list(missing)
            # One encoding of all new words as one pre-split "sentence" (one Encoding object instead of
            # one per word, which dominated the cost); word_ids then split the tokens back per word.
            enc = self.backend.encode(missing_list, is_pretokenized=True, add_special_tokens=False)
            per_word: list[list[int]] = [[] for _ in missing_list]
            for t, w in zip(enc.ids, enc.word_ids, strict=True):
                per_word[w].append(t)
            for w, ids in zip(missing_list, per_word, strict=True):
                cache[w] = ids
        out = []
        for words in batch:
            toks = list(map(cache.__getitem__, words))
            out.append((list(chain.from_iterable(toks)), list(map(len, toks))))
        return out
