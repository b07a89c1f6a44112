"""A general-domain location graph from the files that the PyPI package jionlp ships (`ckbert demo-data`'s
`location.tsv`).

Sources, found in the installed package without importing it (`demo_data.demo_sources`; importing
jionlp loads its models):
- `dictionary/china_location.zip` -> `china_location.txt`: province, city, county, town, village, one
  per line, the number of leading tabs being the level. Levels 0..2 are `name<TAB>code<TAB>short name`
  (a short name may list several, `克州/克孜勒苏`); Taiwan's districts are just `name`, as are towns and
  villages. Municipalities and Hong Kong / Macau repeat themselves at the city level.
- `dictionary/world_location.txt`: a continent line (`亚洲:`), then one country per line,
  `short name<TAB>full name<TAB>capital[<TAB>main city/main city/...]`.

Triples `(head, relation, tail)`:
- 位于  county -> city, city -> province, province -> 中国, town -> county (village -> town only with
        `max_level="village"`); country -> continent; a country's capital and main cities -> the country.
- 简称  a Chinese place -> each of its short names that differs from its full name (上海市 -> 上海).
- 首都  country -> capital.  全称  a country's short name -> its full name where they differ.
  Capitals of provinces (省会) are not in the data and are not made up.

Decisions:
- Depth. `max_level` (default "town") is the deepest Chinese level kept. Villages are left out by default:
  658k lines, mostly tiny entities (北新村) that news text hardly names and that would outnumber the rest
  of the graph 16 to 1. Lines below `max_level` are counted (`below_max_level`), never dropped silently.
- Entity names. Chinese places are named by their full names (上海市, 嘉定区), countries by their short
  names (中国, 日本: how text names them and how the world file names capitals' countries). A full name
  shared by several places (朝阳区, 城关镇) is one entity with the facts of each, as in every name-keyed KG;
  `shared_full_name` counts them. The placeholders `省直辖行政区划` / `市直辖行政区划` (the units directly
  under a province or city) are not places: their children are placed in the province or city itself
  (济源市 位于 河南省); `placeholder` counts them.
- Short names. Text writes 上海, 广东 far more often than 上海市, 广东省, so a short name also gets the
  位于 facts of its place (上海 位于 中国, 嘉定 位于 上海市), tails kept as full names. Only when the short
  name is unambiguous: if it names more than one thing (the short name of several places, e.g. 鼓楼 of the
  鼓楼区 of several cities or 西安 of 西安市 and 西安区, a municipality's city-level repeat not counting as a
  second place; the full name of another place, e.g. 香港; or a world file name outside China, e.g. 黑山
  of 黑山县 and of Montenegro), it only stays the tail of its 简称 edges;
  `ambiguous_short_name` counts such names. The world file's Chinese cities (北京, 上海) are the same
  places as those short names: 北京 位于 中国 comes from both, as one triple.
- Bad input never stops the reader: a line whose indentation jumps by more than one level
  (`malformed_indent`), with the wrong number of columns (`malformed_columns`), a country line without
  a capital or outside a continent block (`malformed_country`) is counted and skipped, and so are the
  lines under a skipped line (`under_malformed`); empty names, self-loops (上海市 位于 上海市, the
  municipality repeated as its own city) and duplicates are counted and left out too.
"""

from __future__ import annotations

import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ckbert.errors import UserError

LEVELS = ("province", "city", "county", "town", "village")
CHINA = "中国"
LOCATED_IN, SHORT_NAME, CAPITAL, FULL_NAME = "位于", "简称", "首都", "全称"
CHINA_MEMBER = "china_location.txt"
PLACEHOLDER_SUFFIX = "直辖行政区划"  # 省直辖行政区划, 市直辖行政区划: groupings, not places
COUNTED = ("blank_line", "malformed_indent", "malformed_columns", "malformed_country", "under_malformed",
           "empty_name", "self_loop", "duplicate", "below_max_level", "placeholder", "ambiguous_short_name",
           "shared_full_name")
_CODED_LEVELS = 3  # levels 0..2 (province, city, county) carry a code and short names


@dataclass
class _Graph:
    """Triples in insertion order, without empty names, self-loops or duplicates (each counted)."""

    triples: list[tuple[str, str, str]] = field(default_factory=list)
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)

    def add(self, h: str, r: str, t: str) -> bool:
        if not h or not t:
            self.counts["empty_name"] += 1
        elif h == t:
            self.counts["self_loop"] += 1
        elif (h, r, t) in self.seen:
            self.counts["duplicate"] += 1
        else:
            self.seen.add((h, r, t))
            self.triples.append((h, r, t))
            return True
        return False


@dataclass
class _Place:
    name: str
    shorts: list[str]
    parent: str  # the tail of its 位于 fact


def _clean(name: str) -> str:
    return " ".join(name.split())  # also drops the odd ideographic space (\u3000茶花社区)


def _read_china_lines(china_zip: Path) -> list[str]:
    try:
        with zipfile.ZipFile(china_zip) as z:
            raw = z.read(CHINA_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"cannot read {CHINA_MEMBER} from the zip ({e})", path=china_zip) from e
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{CHINA_MEMBER} is not UTF-8 ({e})", path=china_zip) from e


def _parse_place(rest: str, level: int) -> tuple[str, list[str]] | None:
    """`name[<TAB>code<TAB>short/short]` -> (name, short names) or None if the columns are wrong."""
    cols = rest.split("\t")
    if len(cols) == 1:
        return _clean(cols[0]), []
    if len(cols) == 3 and level < _CODED_LEVELS:
        return _clean(cols[0]), [_clean(s) for s in cols[2].split("/")]
    return None


def _china_places(lines: list[str], max_level: int, counts: Counter) -> list[_Place]:
    """The places down to `max_level`, each with its parent's full name (中国 for provinces)."""
    places: list[_Place] = []
    stack: list[str | None] = []  # full name per level of the current line's ancestors; None = skipped
    for line in lines:
        if not line.strip():
            counts["blank_line"] += 1
            continue
        rest = line.lstrip("\t")
        level = len(line) - len(rest)
        if level > len(stack) or level >= len(LEVELS):
            counts["malformed_indent"] += 1  # its children then jump too and are counted the same way
            continue
        del stack[level:]
        if level > 0 and stack[-1] is None:
            counts["under_malformed"] += 1
            stack.append(None)
            continue
        parsed = _parse_place(rest, level)
        if parsed is None or not parsed[0]:
            counts["malformed_columns" if parsed is None else "empty_name"] += 1
            stack.append(None)
            continue
        name, shorts = parsed
        if name.endswith(PLACEHOLDER_SUFFIX):
            counts["placeholder"] += 1
            stack.append(stack[-1] if level else CHINA)  # its children go to its parent
            continue
        stack.append(name)
        if level > max_level:
            counts["below_max_level"] += 1
            continue
        places.append(_Place(name, shorts, stack[-2] if level else CHINA))
    return places


def _ambiguous_shorts(places: list[_Place], foreign: set[str]) -> set[str]:
    """Short names that name more than one place, or a place and another entity (module docstring).
    A place is its (name, parent); a municipality's repeat at the city level (上海市 in 上海市) is no
    place of its own."""
    named: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for p in places:
        for s in p.shorts:
            if s and s != p.name and p.name != p.parent:
                named[s].add((p.name, p.parent))
    full_names = {p.name for p in places}
    return {s for s, where in named.items() if len(where) > 1 or s in full_names or s in foreign}


def _add_china(places: list[_Place], foreign: set[str], graph: _Graph) -> None:
    """位于 and 简称 for each place, then 位于 for its unambiguous short names; `foreign` are the world
    file's names outside China."""
    kept: list[tuple[_Place, bool]] = []
    for p in places:
        kept.append((p, graph.add(p.name, LOCATED_IN, p.parent)))
        for s in p.shorts:
            if s != p.name:
                graph.add(p.name, SHORT_NAME, s)
    ambiguous = _ambiguous_shorts(places, foreign)
    graph.counts["ambiguous_short_name"] = len(ambiguous)
    distinct = {(p.name, p.parent) for p in places if p.name != p.parent}
    graph.counts["shared_full_name"] = sum(n > 1 for n in Counter(name for name, _ in distinct).values())
    for p, fact_kept in kept:
        for s in p.shorts:
            if fact_kept and s and s != p.name and s not in ambiguous:
                graph.add(s, LOCATED_IN, p.parent)


@dataclass
class _Country:
    continent: str
    name: str  # the short name: the entity
    full: str
    capital: str
    cities: list[str]


def _countries(lines: list[str], counts: Counter) -> list[_Country]:
    out: list[_Country] = []
    continent = None
    for line in lines:
        if not line.strip():
            counts["blank_line"] += 1
            continue
        if "\t" not in line and line.rstrip().endswith((":", "：")):
            continent = _clean(line.rstrip()[:-1])
            continue
        cols = [_clean(c) for c in line.split("\t")]
        if continent is None or not 3 <= len(cols) <= 4 or not cols[2]:
            counts["malformed_country"] += 1
            continue
        cities = [_clean(c) for c in cols[3].split("/")] if len(cols) == 4 else []
        out.append(_Country(continent, cols[0], cols[1], cols[2], cities))
    return out


def _add_world(countries: list[_Country], graph: _Graph) -> None:
    for c in countries:
        graph.add(c.name, LOCATED_IN, c.continent)
        graph.add(c.name, FULL_NAME, c.full)
        graph.add(c.name, CAPITAL, c.capital)
        for city in [c.capital, *c.cities]:
            graph.add(city, LOCATED_IN, c.name)


def location_triples(
    china_zip: Path, world_txt: Path, max_level: str = "town"
) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """The location graph of the module docstring: triples in a deterministic order (the Chinese places
    in file order, then their short names' facts, then the countries) and the counts of what was read,
    written and skipped."""
    if max_level not in LEVELS:
        raise UserError(f"unknown max_level {max_level!r} (one of {', '.join(LEVELS)})")
    graph = _Graph()
    china_lines = _read_china_lines(Path(china_zip))
    try:
        world_lines = Path(world_txt).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the world location file ({e})", path=world_txt) from e
    countries = _countries(world_lines, graph.counts)
    foreign = {n for c in countries if c.name != CHINA for n in (c.name, c.capital, *c.cities)}
    _add_china(_china_places(china_lines, LEVELS.index(max_level), graph.counts), foreign, graph)
    _add_world(countries, graph)
    counts: dict[str, int] = {"china_lines": len(china_lines), "world_lines": len(world_lines)}
    counts["triples"] = len(graph.triples)
    for rel, n in Counter(r for _, r, _ in graph.triples).items():
        counts[f"triples_{rel}"] = n
    counts["entities"] = len({h for h, _, _ in graph.triples} | {t for _, _, t in graph.triples})
    counts.update({k: graph.counts[k] for k in COUNTED})  # every key, zeros included: a stable schema
    return graph.triples, counts
