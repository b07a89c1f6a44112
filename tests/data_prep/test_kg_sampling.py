"""CMRM negative sampling (kg_store.sample_negatives and its two paths) against exact hop distances
computed by breadth-first search, on a real CMeKG slice with and without inverse edges."""

from __future__ import annotations

import numpy as np
import pytest

from ckbert.data_prep import kg_store
from ckbert.data_prep.kg_store import (
    build_store_from_file,
    enumerate_negatives,
    is_neighbour,
    sample_negatives,
    walk_negatives,
)
from ckbert.data_prep.readers import Tally


@pytest.fixture(scope="module")
def inv(tmp_path_factory, kg_tsv):
    return build_store_from_file(kg_tsv, None, tmp_path_factory.mktemp("inv") / "kg", tally=Tally(),
                                 inverse_edges=True)


def distances(store, i: int, max_hop: int) -> dict[int, int]:
    """Shortest out-edge distance from `i` to every entity within `max_hop` (BFS)."""
    dist = {i: 0}
    frontier = [i]
    for d in range(1, max_hop + 1):
        nxt = []
        for u in frontier:
            for v in store.neighbors(u)[1].tolist():
                if v not in dist:
                    dist[v] = d
                    nxt.append(v)
        frontier = nxt
    return dist


def far_set(store, i: int, max_hop: int) -> set[int]:
    return {v for v, d in distances(store, i, max_hop).items() if 2 <= d <= max_hop}


def entities_with_far(store, lo: int, hi: int, want: int, max_hop: int = 3):
    """Up to `want` entities whose hop-2..max_hop set has between lo and hi members, with that set."""
    out = []
    for i in range(store.num_entities):
        if store.indptr[i] == store.indptr[i + 1]:
            continue
        far = far_set(store, i, max_hop)
        if lo <= len(far) <= hi:
            out.append((i, far))
            if len(out) == want:
                break
    return out


@pytest.mark.parametrize("kind", ["store", "inv"])
@pytest.mark.parametrize("max_hop", [2, 3])
def test_negatives_are_exactly_at_hop_2_to_max(request, kind, max_hop):
    store = request.getfixturevalue(kind)
    rng = np.random.default_rng(0)
    cases = entities_with_far(store, 1, 10**9, 25, max_hop)
    assert len(cases) == 25
    for i, far in cases:
        dist = distances(store, i, max_hop)
        for fn in (walk_negatives, sample_negatives):
            negs = fn(store, i, 4, rng, max_hop=max_hop)
            assert len(set(negs)) == len(negs) <= 4
            assert all(2 <= dist.get(x, 99) <= max_hop for x in negs), (i, negs)
        # the combined sampler returns exactly min(n, available): a shortfall only when one exists
        assert len(sample_negatives(store, i, 4, rng, max_hop=max_hop)) == min(4, len(far))


def test_walks_do_the_work_on_large_neighbourhoods(inv):
    """Where hundreds of candidates exist the walks alone find all n (no enumeration needed)."""
    rng = np.random.default_rng(1)
    cases = entities_with_far(inv, 200, 10**9, 30)
    assert len(cases) == 30
    full = sum(len(walk_negatives(inv, i, 4, rng)) == 4 for i, _ in cases)
    assert full >= 27, full


def test_small_neighbourhoods_fall_back_to_enumeration(store):
    """Fewer candidates than n: the answer is all of them (the walks may miss some), a recorded shortfall."""
    rng = np.random.default_rng(2)
    cases = entities_with_far(store, 1, 3, 10)
    assert cases, "the CMeKG slice has no entity with 1 to 3 hop-2..3 entities"
    for i, far in cases:
        assert set(sample_negatives(store, i, 4, rng)) == far
        assert set(enumerate_negatives(store, i, 4, rng)) == far


def test_reproducible_and_random(inv):
    i, far = entities_with_far(inv, 500, 10**9, 1)[0]
    a = [sample_negatives(inv, i, 4, np.random.default_rng((7, 0, r))) for r in range(50)]
    b = [sample_negatives(inv, i, 4, np.random.default_rng((7, 0, r))) for r in range(50)]
    assert a == b  # same (seed, epoch, row) -> same negatives
    drawn = {x for negs in a for x in negs}
    assert drawn <= far
    # 50 draws of 4 from hundreds of candidates: not a fixed few
    assert len(drawn) >= 60 and len({tuple(n) for n in a}) == 50


def test_leaf_and_degenerate_requests(store):
    rng = np.random.default_rng(3)
    leaf = int(np.flatnonzero(store.degrees() == 0)[0])
    assert sample_negatives(store, leaf, 4, rng) == [] and walk_negatives(store, leaf, 4, rng) == []
    i = entities_with_far(store, 5, 10**9, 1)[0][0]
    assert walk_negatives(store, i, 0, rng) == [] and walk_negatives(store, i, 4, rng, max_hop=1) == []


def test_is_neighbour_is_set_membership_by_bisection(inv):
    """`is_neighbour` (bisection within each relation block of the head's sorted edges) answers what
    membership in the head's set of tails answers: hubs, entities with many relations, leaves."""
    degree = np.diff(np.asarray(inv.indptr))
    heads = [int(np.argmax(degree)), *np.flatnonzero(degree > 0)[:: max(1, int((degree > 0).sum()) // 300)].tolist(),
             int(np.flatnonzero(degree == 0)[0]) if (degree == 0).any() else 0]
    rng = np.random.default_rng(0)
    relations_seen = 0
    for i in heads:
        rels, tails = inv.neighbors(i)
        relations_seen = max(relations_seen, len(set(rels.tolist())))
        xs = np.concatenate([tails, rng.integers(0, inv.num_entities, size=200)])
        expected = np.isin(xs, tails)
        assert (is_neighbour(inv, i, xs) == expected).all()
    assert relations_seen > 3 and degree.max() > 100  # the cases the bisection has to get right


def test_walks_are_the_same_with_the_bisection_as_with_a_set(inv, monkeypatch):
    """The walks' 1-hop test changed from a sorted copy of the whole neighbour list to bisection; the
    negatives drawn are identical (same generator stream, same answers)."""
    picks = np.flatnonzero(np.diff(np.asarray(inv.indptr)) > 0)[:150].tolist()
    fast = [walk_negatives(inv, i, 4, np.random.default_rng(i)) for i in picks]
    monkeypatch.setattr(kg_store, "is_neighbour", lambda store, i, xs: np.isin(xs, store.neighbors(i)[1]))
    slow = [walk_negatives(inv, i, 4, np.random.default_rng(i)) for i in picks]
    assert fast == slow and sum(map(len, fast)) > 300
