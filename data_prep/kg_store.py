"""Knowledge-graph store: memory-mapped numpy arrays (docs/contracts.md, "Knowledge-graph store").

Layout of a store folder (all `.npy`, opened with ``mmap_mode="r"``, so every DataLoader worker and
rank maps the same pages and nothing is unpickled):

    entity_offsets int64 [E+1], entity_bytes uint8 [B]    UTF-8 names, concatenated
    entity_sorted  int32 [E]                             ids ordered by name bytes (name -> id by bisection)
    relation_offsets, relation_bytes                     the same for relation names
    indptr int64 [E+1], rel int32 [T], tail int32 [T]    CSR adjacency over heads (out-edges)
    desc_offsets, desc_bytes                             one description per entity ("" = none)

`build_store_from_file` ingests triples (TSV `head<TAB>relation<TAB>tail`, or CSV with a header such
as OwnThink's `实体,属性,值`) with Arrow's CSV reader, counts and drops bad rows (wrong column count,
empty name, self-loop, duplicate) and writes the folder atomically (temp name + rename);
`iter_triples` + `build_store` is the line-by-line Python path with the same result.

`inverse_edges=True` also stores every kept triple (h, r, t) reversed as (t, r + INVERSE_SUFFIX, h),
so that the out-edge CSR (and the hop sampling over it) walks both directions: an entity that only
ever appears as a tail then has 1-hop facts. It is recorded in meta.json and in the fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ckbert.data_prep.readers import Tally, base_name, check_input_file, read_lines
from ckbert.errors import UserError

FORMAT_VERSION = 1
INVERSE_SUFFIX = "_inv"
_ARRAYS = (
    "entity_offsets", "entity_bytes", "entity_sorted", "relation_offsets", "relation_bytes",
    "indptr", "rel", "tail", "desc_offsets", "desc_bytes",
)


def triple_format(path: Path, fmt: str | None) -> str:
    """"tsv" or "csv": `fmt`, else from the name without a compression suffix; a CSV must open with
    a 3-column header line."""
    fmt = fmt or ("csv" if base_name(path).suffix.lower() == ".csv" else "tsv")
    if fmt not in ("tsv", "csv"):
        raise UserError(f"unknown KG format {fmt!r} (tsv or csv)")
    if fmt == "csv":
        first = next(read_lines(path), None)
        if first is None or len(next(csv.reader([first[1]]))) != 3:
            raise UserError("CSV KG needs a header with 3 columns (e.g. 实体,属性,值)", path=path, line=1)
    return fmt


def iter_triples(path: Path, fmt: str | None, tally: Tally) -> Iterator[tuple[str, str, str]]:
    """Yield (head, relation, tail) from a TSV or CSV file; bad rows are counted in `tally`."""
    fmt = triple_format(path, fmt)
    name = path.name
    lines = read_lines(path)
    if fmt == "csv":
        next(lines)  # the header
    for lineno, line in lines:
        if not line.strip():
            continue
        parts = next(csv.reader([line])) if fmt == "csv" else line.split("\t")
        if len(parts) != 3:
            tally.skip("kg_bad_columns", f"{name}:{lineno}")
            continue
        h, r, t = (p.strip() for p in parts)
        if not h or not r or not t:
            tally.skip("kg_empty_name", f"{name}:{lineno}")
            continue
        if h == t:
            tally.skip("kg_self_loop", f"{name}:{lineno}")
            continue
        yield h, r, t


def _names_to_arrays(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [n.encode("utf-8") for n in names]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return offsets, data


def build_store(
    triples: Iterable[tuple[str, str, str]],
    out_dir: Path,
    *,
    source: str,
    tally: Tally,
    desc_relation: str | None = None,
    inverse_edges: bool = False,
) -> KGStore:
    """Build the store folder `out_dir` from (head, relation, tail) tuples (already validated, e.g. by
    `iter_triples`); triples of `desc_relation` become descriptions; `inverse_edges` also stores each
    triple reversed (see the module docstring)."""
    import pyarrow as pa

    heads, rels, tails = [], [], []
    for h, r, t in triples:
        heads.append(h)
        rels.append(r)
        tails.append(t)
    if not heads:
        raise UserError("no valid triples (expected head<TAB>relation<TAB>tail lines, or CSV with a header)", path=source)
    col = lambda x: pa.array(x, type=pa.large_string())
    return _build(col(heads), col(rels), col(tails), out_dir, source=source, tally=tally, desc_relation=desc_relation,
                  inverse_edges=inverse_edges)


def build_store_from_file(
    path: Path | Sequence[Path], fmt: str | None, out_dir: Path, *, tally: Tally, desc_relation: str | None = None,
    inverse_edges: bool = False,
) -> KGStore:
    """Fast path of `build_store(iter_triples(path, ...))` with the same result: Arrow's C++ CSV reader
    parses the file and Arrow kernels do the name -> id mapping (10M triples in well under 3 minutes).

    Several files are merged into one graph (entities by name; a triple in two files is a duplicate),
    and meta.json records each file as a named graph (`graphs`: file stem -> its relations), so that
    the probes can report per graph (`KGStore.relation_graph`)."""
    import pyarrow as pa

    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    graphs: dict[str, list[str]] = {}
    parts = []
    for p in paths:
        h, r, t = _read_triples(p, fmt, tally)
        parts.append((h, r, t))
        if len(paths) > 1:
            stem = base_name(p).stem
            if stem in graphs:
                raise UserError(f"two KG files named {stem!r}: each file is a graph named by its stem", path=p)
            graphs[stem] = sorted(set(r.unique().to_pylist()) - {desc_relation})
    if len(parts) > 1:
        h, r, t = (pa.concat_arrays([part[i] for part in parts]) for i in range(3))
    source = str(paths[0]) if len(paths) == 1 else " ".join(map(str, paths))
    return _build(h, r, t, out_dir, source=source, tally=tally, desc_relation=desc_relation,
                  inverse_edges=inverse_edges, extra={"graphs": graphs} if graphs else None)


def _read_triples(path: Path, fmt: str | None, tally: Tally):
    """One TSV / CSV triple file -> trimmed Arrow (head, relation, tail) arrays, bad rows counted."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    check_input_file(path)
    fmt = triple_format(path, fmt)
    skip = 1 if fmt == "csv" else 0

    def bad_row(row) -> str:
        where = f"{path.name}:{row.number}" if row.number is not None else path.name  # 1-based file line
        tally.skip("kg_bad_columns", where)
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=["h", "r", "t"], skip_rows=skip, block_size=1 << 24,
                                           use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",",
                                             quote_char=False if fmt == "tsv" else '"', invalid_row_handler=bad_row),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.large_string() for c in "hrt"},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        for _ in read_lines(path):  # finds and reports the line with invalid UTF-8 (or a damaged file)
            pass
        raise UserError(f"cannot parse the KG file: {str(exc).splitlines()[0]}", path=path) from None
    h, r, t = (pc.utf8_trim_whitespace(table[c].combine_chunks()) for c in "hrt")
    del table
    empty = pc.or_(pc.or_(pc.equal(pc.utf8_length(h), 0), pc.equal(pc.utf8_length(r), 0)), pc.equal(pc.utf8_length(t), 0))
    loop = pc.and_(pc.equal(h, t), pc.invert(empty))
    n_empty, n_loop = pc.sum(empty).as_py() or 0, pc.sum(loop).as_py() or 0
    if n_empty:
        tally.skip("kg_empty_name", path.name, n_empty)
    if n_loop:
        tally.skip("kg_self_loop", path.name, n_loop)
    if n_empty or n_loop:
        keep = pc.invert(pc.or_(empty, loop))
        h, r, t = h.filter(keep), r.filter(keep), t.filter(keep)
    if len(h) == 0:
        raise UserError("no valid triples (expected head<TAB>relation<TAB>tail lines, or CSV with a header)", path=path)
    return h, r, t


def _string_arrays(arr) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow large_string array -> (int64 offsets [n+1] starting at 0, uint8 bytes)."""
    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    data = data[offsets[0] : offsets[-1]].copy()
    return (offsets - offsets[0]).astype(np.int64), data


def _sort_dedup(hi: np.ndarray, ri: np.ndarray, ti: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sort edges by (head, relation, tail), the CSR order, and drop exact repeats; returns the count dropped."""
    order = np.lexsort((ti, ri, hi))
    hi, ri, ti = hi[order], ri[order], ti[order]
    del order
    dup = np.zeros(len(hi), dtype=bool)
    dup[1:] = (hi[1:] == hi[:-1]) & (ri[1:] == ri[:-1]) & (ti[1:] == ti[:-1])
    n_dup = int(dup.sum())
    if n_dup:
        keep = ~dup
        hi, ri, ti = hi[keep], ri[keep], ti[keep]
    return hi, ri, ti, n_dup


def _add_inverse(hi: np.ndarray, ri: np.ndarray, ti: np.ndarray, rel_names):
    """Append (t, r_inv, h) for every edge; relation ids are renumbered into the sorted union of the
    forward names and the `_inv` names (a forward name that already ends in `_inv` may coincide with
    an inverse name: then both directions share that relation id)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    inv_names = pa.array([n + INVERSE_SUFFIX for n in rel_names.to_pylist()], type=rel_names.type)  # R is small
    names = pc.unique(pa.concat_arrays([rel_names, inv_names]))
    names = names.take(pc.sort_indices(names))
    fwd = pc.index_in(rel_names, value_set=names).to_numpy().astype(np.int32)
    inv = pc.index_in(inv_names, value_set=names).to_numpy().astype(np.int32)
    return (np.concatenate([hi, ti]), np.concatenate([fwd[ri], inv[ri]]), np.concatenate([ti, hi]), names)


def _build(
    h, r, t, out_dir: Path, *, source: str, tally: Tally, desc_relation: str | None, inverse_edges: bool = False,
    extra: dict | None = None,
) -> KGStore:
    """Arrow string columns -> store. Entity ids follow name byte order, so `entity_sorted` is the identity."""
    import pyarrow as pa
    import pyarrow.compute as pc

    descs: dict[int, str] = {}
    desc_h = desc_t = None
    if desc_relation is not None:
        is_desc = pc.equal(r, desc_relation)
        if pc.any(is_desc).as_py():
            desc_h, desc_t = h.filter(is_desc), t.filter(is_desc)
            keep = pc.invert(is_desc)
            h, r, t = h.filter(keep), r.filter(keep), t.filter(keep)
    if len(h) == 0:
        raise UserError("no valid triples besides descriptions", path=source)
    parts = [h, t] if desc_h is None else [h, t, desc_h]
    ents = pc.unique(pa.concat_arrays(parts))
    ents = ents.take(pc.sort_indices(ents))
    rel_names = pc.unique(r)
    rel_names = rel_names.take(pc.sort_indices(rel_names))
    hi = pc.index_in(h, value_set=ents).to_numpy().astype(np.int32)
    ti = pc.index_in(t, value_set=ents).to_numpy().astype(np.int32)
    ri = pc.index_in(r, value_set=rel_names).to_numpy().astype(np.int32)
    del h, r, t
    if desc_h is not None:
        dh = pc.index_in(desc_h, value_set=ents).to_numpy()
        first = np.unique(dh, return_index=True)[1]  # the first description of each head wins
        for k in first.tolist():
            descs[int(dh[k])] = desc_t[k].as_py()
    E = len(ents)
    hi, ri, ti, n_dup = _sort_dedup(hi, ri, ti)
    if n_dup:
        tally.skip("kg_duplicate", str(source), n_dup)
    inverse = None
    if inverse_edges:
        # Reverse edges that equal a stored edge (the input already had both directions under the
        # `_inv` name) are merged, not counted as skipped input: they are reported in meta.json.
        before = len(hi)
        hi, ri, ti, rel_names = _add_inverse(hi, ri, ti, rel_names)
        hi, ri, ti, merged = _sort_dedup(hi, ri, ti)
        inverse = {"triples_before": before, "triples_after": len(hi), "merged": merged}
    indptr = np.zeros(E + 1, dtype=np.int64)
    np.cumsum(np.bincount(hi, minlength=E), out=indptr[1:])
    del hi
    arrays = {}
    arrays["entity_offsets"], arrays["entity_bytes"] = _string_arrays(ents)
    arrays["entity_sorted"] = np.arange(E, dtype=np.int32)
    arrays["relation_offsets"], arrays["relation_bytes"] = _string_arrays(rel_names)
    arrays["indptr"], arrays["rel"], arrays["tail"] = indptr, ri, ti
    desc_list = [""] * E
    for i, d in descs.items():
        desc_list[i] = d
    arrays["desc_offsets"], arrays["desc_bytes"] = _string_arrays(pa.array(desc_list, type=pa.large_string()))
    del desc_list
    return _write(arrays, out_dir, E=E, R=len(rel_names), T=len(ti), n_desc=len(descs), source=source, tally=tally,
                  inverse=inverse, extra=extra)


def _write(
    arrays: dict, out_dir: Path, *, E: int, R: int, T: int, n_desc: int, source: str, tally: Tally, inverse: dict | None,
    extra: dict | None = None,
) -> KGStore:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    digest = hashlib.sha256()
    for name in _ARRAYS:
        np.save(tmp / f"{name}.npy", arrays[name])
        digest.update(name.encode())
        digest.update(_file_sha256(tmp / f"{name}.npy").encode())
    if inverse is not None:
        # The option is part of the identity even where the arrays could coincide; a store built
        # without it keeps the fingerprint it had before the option existed.
        digest.update(b"inverse_edges")
    meta = {
        "format_version": FORMAT_VERSION,
        "entities": E,
        "relations": R,
        "triples": T,
        "descriptions": n_desc,
        "fingerprint": digest.hexdigest(),
        "source": str(source),
        "skipped": {k: v for k, v in tally.skipped.items() if k.startswith("kg_")},
        "inverse_edges": inverse is not None,
    }
    if inverse is not None:
        meta["inverse"] = {"suffix": INVERSE_SUFFIX, **inverse}
    meta.update(extra or {})
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return KGStore.open(out_dir)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class KGStore:
    """Read-only view of a store folder; every array is a numpy memmap."""

    def __init__(self, path: Path, meta: dict, arrays: dict[str, np.ndarray]):
        self.path = path
        self.meta = meta
        self._a = arrays
        self.indptr = arrays["indptr"]
        self.rel = arrays["rel"]
        self.tail = arrays["tail"]
        self._graph_of: dict[str, str] | None = None

    @classmethod
    def open(cls, path: str | Path) -> KGStore:
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UserError("not a KG store (no meta.json)", path=path)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"KG store format {meta.get('format_version')!r}, expected {FORMAT_VERSION}", path=path)
        arrays = {}
        for name in _ARRAYS:
            f = path / f"{name}.npy"
            if not f.is_file():
                raise UserError(f"KG store is missing {name}.npy", path=path)
            arrays[name] = np.load(f, mmap_mode="r")
        E, T = meta["entities"], meta["triples"]
        if len(arrays["indptr"]) != E + 1 or len(arrays["tail"]) != T or int(arrays["indptr"][-1]) != T:
            raise UserError("KG store arrays do not match meta.json (damaged store)", path=path)
        return cls(path, meta, arrays)

    @property
    def num_entities(self) -> int:
        return int(self.meta["entities"])

    @property
    def num_relations(self) -> int:
        return int(self.meta["relations"])

    @property
    def num_triples(self) -> int:
        return int(self.meta["triples"])

    @property
    def inverse_edges(self) -> bool:
        """Whether every triple is also stored reversed (stores from before the option: False)."""
        return bool(self.meta.get("inverse_edges", False))

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def _string(self, kind: str, i: int) -> str:
        off = self._a[f"{kind}_offsets"]
        return bytes(self._a[f"{kind}_bytes"][off[i] : off[i + 1]]).decode("utf-8")

    def entity_name(self, i: int) -> str:
        return self._string("entity", i)

    def relation_name(self, r: int) -> str:
        return self._string("relation", r)

    def description(self, i: int) -> str:
        return self._string("desc", i)

    def relation_graph(self, r: int) -> str | None:
        """The graph (file stem) relation `r` came from when the store merged several files, graphs
        joined by "+" if it came from more than one; None for a store built from one file."""
        graphs = self.meta.get("graphs")
        if not graphs:
            return None
        if self._graph_of is None:
            of: dict[str, set[str]] = {}
            for graph, names in graphs.items():
                for n in names:
                    of.setdefault(n, set()).add(graph)
                    of.setdefault(n + INVERSE_SUFFIX, set()).add(graph)
            self._graph_of = {n: "+".join(sorted(g)) for n, g in of.items()}
        return self._graph_of.get(self.relation_name(r))

    def entity_names(self) -> Iterator[tuple[int, str]]:
        """All (id, name) pairs, decoded in blocks (for building the linker)."""
        off = np.asarray(self._a["entity_offsets"])
        data = self._a["entity_bytes"]
        block = 1 << 16
        for s in range(0, self.num_entities, block):
            e = min(s + block, self.num_entities)
            raw = bytes(data[off[s] : off[e]])
            base = off[s]
            for i in range(s, e):
                yield i, raw[off[i] - base : off[i + 1] - base].decode("utf-8")

    def lookup(self, name: str) -> int | None:
        key = name.encode("utf-8")
        order = self._a["entity_sorted"]
        off = self._a["entity_offsets"]
        data = self._a["entity_bytes"]
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            i = int(order[mid])
            probe = bytes(data[off[i] : off[i + 1]])
            if probe < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(order):
            i = int(order[lo])
            if bytes(data[off[i] : off[i + 1]]) == key:
                return i
        return None

    def neighbors(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.indptr[i]), int(self.indptr[i + 1])
        return np.asarray(self.rel[a:b]), np.asarray(self.tail[a:b])

    def degrees(self) -> np.ndarray:
        return np.diff(np.asarray(self.indptr))

    def nbytes(self) -> int:
        return sum(os.path.getsize(self.path / f"{n}.npy") for n in _ARRAYS)


def _heldout_fraction(name: str) -> float:
    """BLAKE2b of the name's UTF-8 bytes read as a fraction of 2**64: where the name falls in [0, 1)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"ckbert-heldout").digest()
    return int.from_bytes(digest, "big") / 2.0**64


def heldout_entity(name: str, share: float) -> bool:
    """Whether entity `name` is in the held-out share of heads (issue 12): a fixed function of the
    name alone (its `_heldout_fraction` < `share`), so CMRM's sampler, the relation probe and any
    rebuild of the store agree without storing a list."""
    return share > 0 and _heldout_fraction(name) < share


def heldout_part(name: str, share: float) -> str | None:
    """Which half of the held-out heads `name` is in: "validation" (fraction below share / 2),
    "test" (the rest of the share) or None (not held out): the same fraction as `heldout_entity`."""
    x = _heldout_fraction(name) if share > 0 else 1.0
    return None if x >= share else ("validation" if x < share / 2 else "test")


def sample_positive(store: KGStore, i: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """One random 1-hop fact (relation id, tail id) of entity `i`, or None when it has no out-edge."""
    a, b = int(store.indptr[i]), int(store.indptr[i + 1])
    if a == b:
        return None
    k = int(rng.integers(a, b))
    return int(store.rel[k]), int(store.tail[k])


def is_neighbour(store: KGStore, i: int, xs: np.ndarray) -> np.ndarray:
    """Bool [len(xs)]: which of the entities `xs` are 1-hop neighbours of `i` (a tail of an out-edge).

    The CSR keeps each head's edges sorted by (relation, tail), so every relation block of `i` is a
    sorted run of tails: the blocks are found by bisection on the relation ids and each is searched
    by bisection, O(relations of i x log degree) array reads per call, not O(degree): a hub with
    millions of neighbours costs what a median entity costs (issue 26)."""
    xs = np.asarray(xs, dtype=np.int64)
    out = np.zeros(xs.shape, dtype=bool)
    a, b = int(store.indptr[i]), int(store.indptr[i + 1])
    rel, tail = store.rel, store.tail
    while a < b and xs.size:
        end = a + int(np.searchsorted(rel[a:b], rel[a], side="right"))  # the block of relation rel[a]
        block = tail[a:end]
        pos = np.searchsorted(block, xs)
        hit = pos < block.size
        hit[hit] = block[pos[hit]] == xs[hit]
        out |= hit
        a = end
    return out


# Random walks per round of `walk_negatives`, per requested negative, and rounds before giving up.
WALKS_PER_NEGATIVE = 8
WALK_ROUNDS = 3


def walk_negatives(store: KGStore, i: int, n: int, rng: np.random.Generator, max_hop: int = 3) -> list[int]:
    """Up to `n` distinct hop-2..max_hop entities of `i`, found by random walks (may return fewer).

    Each walk starts on a random out-edge of `i` and takes 1..max_hop-1 more random out-edges (the
    length is drawn uniformly); its end is kept unless it is `i` or a 1-hop neighbour of `i`. A walk
    of k edges ends at shortest distance <= k, so a kept end is exactly at hop 2..max_hop. Cost is
    O(walks x max_hop) array lookups, whatever the size of the 2..3-hop
    neighbourhood. Ends are weighted by the number of walks reaching them (entities reached through
    many paths come up more often), not uniform over the neighbourhood. At most WALK_ROUNDS rounds
    of n x WALKS_PER_NEGATIVE walks, so the caller must handle a short answer. The 1-hop test is
    `is_neighbour` (bisection), so a hub's walk costs what a median entity's does.
    """
    indptr, tail = np.asarray(store.indptr), np.asarray(store.tail)
    a, b = int(indptr[i]), int(indptr[i + 1])
    if a == b or max_hop < 2 or n <= 0:
        return []
    m = max(16, WALKS_PER_NEGATIVE * n)
    found: list[int] = []
    seen: set[int] = set()
    for _ in range(WALK_ROUNDS):
        cur = tail[rng.integers(a, b, size=m)].astype(np.int64)  # [m] walk positions after 1 edge
        steps = rng.integers(2, max_hop + 1, size=m)  # [m] total edges of each walk
        alive = np.ones(m, dtype=bool)
        for step in range(2, max_hop + 1):
            go = np.flatnonzero(alive & (steps >= step))
            lo = indptr[cur[go]]
            deg = indptr[cur[go] + 1] - lo
            alive[go[deg == 0]] = False  # dead end (no out-edge): the walk is rejected
            ok = deg > 0
            go, lo, deg = go[ok], lo[ok], deg[ok]
            cur[go] = tail[lo + (rng.random(go.size) * deg).astype(np.int64)]
        ends = cur[alive]
        for e in ends[~is_neighbour(store, i, ends) & (ends != i)].tolist():
            if e not in seen:
                seen.add(e)
                found.append(e)
                if len(found) == n:
                    return found
    return found


def _expand(store: KGStore, nodes: np.ndarray, rng: np.random.Generator, cap: int) -> np.ndarray:
    """Tails of the out-edges of `nodes`; at most `cap` edges, drawn uniformly when there are more.

    Cost is O(len(nodes) + cap) whatever the graph size: hubs are sampled, not enumerated.
    """
    if len(nodes) == 0:
        return nodes
    starts = np.asarray(store.indptr[nodes])
    lens = np.asarray(store.indptr[nodes + 1]) - starts
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=np.int32)
    ends = np.cumsum(lens)
    if total > cap:
        pos = rng.integers(0, total, size=cap)
    else:
        pos = np.arange(total)
    owner = np.searchsorted(ends, pos, side="right")  # which node's range each position falls in
    edge = starts[owner] + (pos - (ends[owner] - lens[owner]))
    return np.asarray(store.tail[np.sort(edge)])


def enumerate_negatives(
    store: KGStore, i: int, n: int, rng: np.random.Generator, max_hop: int = 3, cap: int = 4096
) -> list[int]:
    """Up to `n` entities drawn uniformly from the hop-2..max_hop set of `i` (not hop 1, not `i`),
    built by frontier expansion; a frontier of more than `cap` out-edges is sampled, so on hubs the
    set is a sample of the neighbourhood (exact whenever every frontier has at most `cap` edges)."""
    a, b = int(store.indptr[i]), int(store.indptr[i + 1])
    hop1 = np.unique(np.asarray(store.tail[a:b]))
    frontier = hop1
    reached = []
    for _ in range(2, max_hop + 1):
        frontier = np.unique(_expand(store, frontier, rng, cap))
        if len(frontier) == 0:
            break
        reached.append(frontier)
    if not reached:
        return []
    cand = np.unique(np.concatenate(reached))
    cand = np.setdiff1d(cand, hop1, assume_unique=True)
    cand = cand[cand != i]
    if len(cand) > n:
        cand = rng.choice(cand, size=n, replace=False)
    else:
        cand = rng.permutation(cand)
    return [int(x) for x in cand]


def sample_negatives(
    store: KGStore, i: int, n: int, rng: np.random.Generator, max_hop: int = 3, cap: int = 4096
) -> list[int]:
    """Up to `n` distinct entities reached at hop 2..max_hop and not at hop 1 (nor `i`), at random.

    Random walks first (`walk_negatives`: cheap on hubs, where enumerating the 2..3-hop
    neighbourhood costs milliseconds); only when they find fewer than `n` (a small neighbourhood,
    where fewer than `n` may exist and enumeration is cheap) the answer is `enumerate_negatives`,
    so a shortfall is reported only when the (capped) enumeration finds fewer than `n` too.
    Deterministic given the state of `rng`.
    """
    found = walk_negatives(store, i, n, rng, max_hop)
    if len(found) == n:
        return found
    return enumerate_negatives(store, i, n, rng, max_hop, cap)
