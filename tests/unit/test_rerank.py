"""vpr_core.rerank: mutual-NN matching, the mnn and DEGENSAC re-rankers, build_reranker, the ordering
rule, and the loop-closure detector with re-ranking on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vpr_core.config import DetectorConfig, RerankConfig
from vpr_core.detector import LoopClosureDetector
from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import LocalFeatureError, LocalFeatures, LocalFeatureStore
from vpr_core.map_database import MapDatabase
from vpr_core.rerank import build_reranker, rerank
from vpr_core.rerank.degensac import DegensacReranker
from vpr_core.rerank.matching import mutual_nn
from vpr_core.rerank.mnn import MNNReranker

LDIM = 32  # local descriptor size in these tests
SEC = 1_000_000_000


def _unit(n, dim, seed):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lf(desc, xy=None, hw=(480, 640)):
    xy = np.zeros((len(desc), 2), np.float32) if xy is None else xy
    return LocalFeatures(np.asarray(xy, np.float32), np.asarray(desc, np.float16), hw)


def _sharing(query_desc, shared, seed):
    """Features of another image that shares the first `shared` of the query's descriptors (shuffled
    among fresh random ones); no unrelated pair comes near cosine 0.9 at LDIM=32."""
    own = _unit(len(query_desc), LDIM, seed)
    own[:shared] = query_desc[:shared]
    return _lf(own[np.random.default_rng(seed).permutation(len(own))])


def stored(store, cands):
    """The store's features of each candidate, in order (what `rerank` takes)."""
    return [store.get(c.id) for c in cands]


def _cand(kid, score):
    return Candidate(Keyframe(kid, 0), score)


# ---- mutual_nn ------------------------------------------------------------------------------------

A = np.eye(3, dtype=np.float32)
B = np.array([[0, 1, 0], [0.8, 0.6, 0], [0, 0, -1]], np.float32)
# sim = A @ B.T: a0 -> b1 (0.8), a1 -> b0 (1.0), a2 -> b0 (tie at 0); b0 -> a1, b1 -> a0, b2 -> a0


@pytest.mark.parametrize("convert", [lambda x: x, lambda x: x.astype(np.float16), torch.from_numpy])
def test_mutual_nn_finds_exactly_the_mutual_pairs(convert):
    ia, ib, sim = mutual_nn(convert(A), convert(B))
    assert ia.tolist() == [0, 1] and ib.tolist() == [1, 0]
    np.testing.assert_allclose(sim, [0.8, 1.0], atol=1e-3)
    assert ia.dtype == ib.dtype == np.int64 and sim.dtype == np.float32
    ib2, ia2, _ = mutual_nn(B, A)  # symmetric
    assert sorted(zip(ia2.tolist(), ib2.tolist())) == [(0, 1), (1, 0)]


def test_mutual_nn_min_similarity():
    assert mutual_nn(A, B, min_similarity=0.9)[0].tolist() == [1]
    assert mutual_nn(A, B, min_similarity=0.8)[0].tolist() == [0, 1]
    # a mutual pair of opposite vectors: dropped by the default (0), kept when -1 allows anything
    a, b = np.array([[0, 0, 1.0]]), np.array([[0, 0, -1.0]])
    assert len(mutual_nn(a, b)[0]) == 0
    ia, ib, sim = mutual_nn(a, b, min_similarity=-1.0)
    assert ia.tolist() == [0] and ib.tolist() == [0] and sim[0] == pytest.approx(-1.0)


def test_mutual_nn_ratio_test_drops_ambiguous_matches():
    a = np.array([[1.0, 0, 0], [0, 0, 1.0]], np.float32)
    b = np.array([[0.99, 0.141, 0], [0.95, -0.3, 0], [0, 0.1, 0.995]], np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    s = a[0] @ b.T  # a0's nearest is b0, second nearest b1
    d1, d2 = np.sqrt(2 - 2 * s[0]), np.sqrt(2 - 2 * s[1])
    assert mutual_nn(a, b)[0].tolist() == [0, 1]  # ratio 1 = off
    assert mutual_nn(a, b, ratio=d1 / d2 + 0.02)[0].tolist() == [0, 1]
    assert mutual_nn(a, b, ratio=d1 / d2 - 0.02)[0].tolist() == [1]  # a1's match is unambiguous
    assert mutual_nn(a[:1], b[:1], ratio=0.1)[0].tolist() == [0]  # one candidate: no second neighbour


def test_mutual_nn_empty_inputs_and_dimension_mismatch():
    for a, b in ((np.zeros((0, 3)), B), (A, np.zeros((0, 3))), (np.zeros((0, 3)), np.zeros((0, 3)))):
        ia, ib, sim = mutual_nn(a, b)
        assert ia.shape == ib.shape == sim.shape == (0,)
    with pytest.raises(ValueError, match="3-D.*4-D"):
        mutual_nn(A, np.ones((2, 4), np.float32))


# ---- mnn re-ranker and the ordering rule -------------------------------------------------------------

@pytest.fixture
def query_desc():
    return _unit(40, LDIM, seed=1)


def test_mnn_counts_shared_descriptors(query_desc):
    rr = MNNReranker(min_inliers=30, match_threshold=0.9)
    v = rr.verify(_lf(query_desc), _sharing(query_desc, 30, seed=2))
    assert (v.method, v.num_matches, v.num_inliers, v.local_score, v.verified) == ("mnn", 30, -1, 30, True)
    assert v.time_ms > 0
    assert MNNReranker(min_inliers=31, match_threshold=0.9).verify(
        _lf(query_desc), _sharing(query_desc, 30, seed=2)).verified is False


def test_more_shared_descriptors_outrank_a_higher_global_score(query_desc):
    store = LocalFeatureStore()
    store.add(0, _sharing(query_desc, 5, seed=2))
    store.add(1, _sharing(query_desc, 30, seed=3))
    cands = [_cand(0, 0.95), _cand(1, 0.80)]
    out = rerank(_lf(query_desc), cands, stored(store, cands), MNNReranker(min_inliers=10, match_threshold=0.9))
    assert [c.id for c in out] == [1, 0]
    assert [c.score for c in out] == [0.80, 0.95]  # the global scores travel with their candidates
    assert [(c.verification.num_matches, c.verification.verified) for c in out] == [(30, True), (5, False)]
    assert all(c.verification is None for c in cands)  # the inputs are not modified
    # without a similarity floor random features add a few mutual matches, but the order holds
    assert [c.id for c in rerank(_lf(query_desc), cands, stored(store, cands), MNNReranker())] == [1, 0]


def test_equal_local_scores_keep_the_global_order(query_desc):
    store = LocalFeatureStore()
    for kid in (3, 4, 5):
        store.add(kid, _sharing(query_desc, 10, seed=kid))
    cands = [_cand(3, 0.95), _cand(4, 0.90), _cand(5, 0.90)]
    rr = MNNReranker(match_threshold=0.9)
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        ordered = [cands[i] for i in order]
        got = rerank(_lf(query_desc), ordered, stored(store, ordered), rr)
        assert [c.verification.num_matches for c in got] == [10, 10, 10]
        expected = [3, 4, 5] if order.index(1) < order.index(2) else [3, 5, 4]  # equal scores: search order
        assert [c.id for c in got] == expected


def test_a_candidate_without_stored_features_sinks_and_is_unverified(query_desc):
    store = LocalFeatureStore()
    store.add(1, _lf(_unit(40, LDIM, seed=9)))  # stored, but nothing in common with the query
    cands = [_cand(7, 0.99), _cand(1, 0.5)]
    out = rerank(_lf(query_desc), cands, stored(store, cands), MNNReranker(min_inliers=0, match_threshold=0.9))
    assert [c.id for c in out] == [1, 7]
    assert out[0].verification.num_matches == 0
    v = out[1].verification
    assert (v.method, v.verified, v.num_matches, v.local_score) == ("mnn", False, -1, -1)


def test_mnn_rejects_bad_options_and_other_local_heads(query_desc):
    for kw in ({"min_inliers": -1}, {"match_threshold": 1.5}, {"ratio": 0.0}, {"ratio": 1.2}):
        with pytest.raises(ValueError):
            MNNReranker(**kw)
    with pytest.raises(LocalFeatureError, match="32-D.*16-D"):
        MNNReranker().verify(_lf(query_desc), _lf(_unit(5, 16, seed=0)))


# ---- DEGENSAC --------------------------------------------------------------------------------------

K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])


def _project(points, rot, t):
    x = (K @ (rot @ points.T + t[:, None])).T
    return x[:, :2] / x[:, 2:]


def _two_views(n_true=60, n_out=20, seed=0, plane=False):
    """Query/candidate features of one scene seen by two cameras: n_true correspondences from the
    true geometry, n_out whose candidate position is random; descriptors are shared, so mutual NN
    matches all of them. Returns (query, candidate, true xy1, true xy2)."""
    rng = np.random.default_rng(seed)
    n = n_true + n_out
    z = np.full(n, 6.0) if plane else rng.uniform(4, 9, n)
    pts = np.c_[rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), z]
    a = 0.12
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    x1, x2 = _project(pts, np.eye(3), np.zeros(3)), _project(pts, rot, np.array([-0.8, 0.1, 0.3]))
    x2[n_true:] = rng.uniform([0, 0], [640, 480], (n_out, 2))
    desc = _unit(n, LDIM, seed + 100)
    perm = rng.permutation(n)
    query = _lf(desc, x1)
    cand = _lf(desc[perm], x2[perm])
    return query, cand, x1[:n_true], x2[:n_true]


def _h(x):
    return np.c_[x, np.ones(len(x))]


def test_degensac_fundamental_finds_the_true_inliers():
    query, cand, x1, x2 = _two_views()
    v = DegensacReranker(min_inliers=40, px_threshold=2.0).verify(query, cand)
    assert v.method == "degensac" and v.num_matches == 80
    assert 58 <= v.num_inliers <= 62 and v.local_score == v.num_inliers and v.verified
    assert v.fundamental.shape == (3, 3) and v.homography is None
    lines = _h(x1) @ v.fundamental.T  # epipolar lines in the candidate image: l = F x1
    dist = np.abs(np.sum(_h(x2) * lines, axis=1)) / np.linalg.norm(lines[:, :2], axis=1)
    assert np.median(dist) < 0.5 and np.percentile(dist, 95) < 2.0
    assert not DegensacReranker(min_inliers=v.num_inliers + 1, px_threshold=2.0).verify(query, cand).verified


def test_degensac_homography_on_a_planar_scene():
    query, cand, x1, x2 = _two_views(plane=True, seed=3)
    v = DegensacReranker(model="homography", px_threshold=2.0).verify(query, cand)
    assert 58 <= v.num_inliers <= 62 and v.verified
    assert v.homography.shape == (3, 3) and v.fundamental is None
    mapped = _h(x1) @ v.homography.T
    err = np.linalg.norm(mapped[:, :2] / mapped[:, 2:] - x2, axis=1)
    assert np.percentile(err, 95) < 1.0


def test_degensac_scores_geometry_not_just_descriptors():
    """Two candidates with identical descriptors: the one whose positions fit a two-view geometry
    wins, the one with scrambled positions keeps only the few inliers chance allows."""
    query, good, _, _ = _two_views(n_out=0)
    rng = np.random.default_rng(5)
    scrambled = _lf(good.desc, rng.uniform([0, 0], [640, 480], good.xy.shape))
    store = LocalFeatureStore()
    store.add(0, scrambled)
    store.add(1, good)
    rr = DegensacReranker(min_inliers=20, px_threshold=2.0)
    cands = [_cand(0, 0.9), _cand(1, 0.8)]
    out = rerank(query, cands, stored(store, cands), rr)
    assert [c.id for c in out] == [1, 0]
    assert out[0].verification.num_inliers >= 58 and out[1].verification.num_inliers < 20
    assert out[0].verification.verified and not out[1].verification.verified


def test_degensac_needs_eight_matches():
    query, cand, _, _ = _two_views(n_true=7, n_out=0)
    v = DegensacReranker(min_inliers=0).verify(query, cand)
    assert (v.num_matches, v.num_inliers, v.verified, v.fundamental) == (7, 0, False, None)


def test_degensac_is_deterministic():
    # half outliers, 1.5 px noise, 50 iterations: hard enough that the RANSAC samples decide the result
    query, cand, _, _ = _two_views(n_out=60, seed=7)
    cand.xy[:] += np.random.default_rng(1).normal(0, 1.5, cand.xy.shape).astype(np.float32)
    rr = DegensacReranker(px_threshold=1.0, max_iters=50)
    runs = [rr.verify(query, cand), rr.verify(query, cand), DegensacReranker(px_threshold=1.0, max_iters=50)
            .verify(query, cand)]
    assert len({v.num_inliers for v in runs}) == 1 and runs[0].num_inliers > 0
    for v in runs[1:]:
        np.testing.assert_array_equal(v.fundamental, runs[0].fundamental)
    reseeded = DegensacReranker(px_threshold=1.0, max_iters=50)
    reseeded.seed = 4  # control: other samples give another answer on this pair, so the above can fail
    assert reseeded.verify(query, cand).num_inliers != runs[0].num_inliers


@pytest.mark.parametrize("kw", [{"model": "affine"}, {"px_threshold": 0.0}, {"px_threshold": -1.0},
                                {"confidence": 0.0}, {"confidence": 1.0}, {"confidence": 1.5},
                                {"max_iters": 0}, {"min_inliers": -2}, {"ratio": 0.0}])
def test_degensac_rejects_bad_options(kw):
    with pytest.raises(ValueError):
        DegensacReranker(**kw)


# ---- build_reranker ----------------------------------------------------------------------------------

def test_build_reranker():
    assert build_reranker(RerankConfig(method="none")) is None
    rr = build_reranker(RerankConfig(method="degensac", min_inliers=7, px_threshold=2.5, model="homography"))
    assert isinstance(rr, DegensacReranker)
    assert (rr.min_inliers, rr.px_threshold, rr.model) == (7, 2.5, "homography")
    rr = build_reranker(RerankConfig(method="mnn", min_inliers=3, match_threshold=0.5, ratio=0.8))
    assert isinstance(rr, MNNReranker) and (rr.min_inliers, rr.match_threshold, rr.ratio) == (3, 0.5, 0.8)
    with pytest.raises(KeyError, match="degensac.*mnn"):
        build_reranker(RerankConfig(method="sift"))
    with pytest.raises(ValueError, match="top_k"):
        build_reranker(RerankConfig(method="mnn", top_k=0))
    with pytest.raises(ValueError, match="confidence"):
        build_reranker(RerankConfig(method="degensac", confidence=2.0))


# ---- the detector with re-ranking on ----------------------------------------------------------------

GDIM = 64


def _toward(a, b, cos):
    """A unit vector with cosine `cos` to unit vector `a`, in the plane of a and b."""
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    return (cos * a + np.sqrt(1 - cos ** 2) * b).astype(np.float32)


@pytest.fixture
def world():
    """A map of 8 places (ids 0..7) with 40 local features each: (db, global descriptors, local descriptors)."""
    glob, local = _unit(8, GDIM, seed=10), [_unit(40, LDIM, seed=20 + i) for i in range(8)]
    db = MapDatabase(GDIM, "flat", "false")
    for i in range(8):
        db.add(glob[i], Keyframe(i, i * SEC), _lf(local[i]))
    return db, glob, local


def _detector(db, top_k=3, rerank_top_k=5, min_inliers=30, tc=1, method="mnn", mapping=False):
    cfg = DetectorConfig(top_k=top_k, exclude_recent_count=0, exclude_recent_s=0.0, loop_threshold=0.9,
                         temporal_consistency=tc, consistency_window=2, mapping=mapping, sequence_length=1,
                         exclude_recent_change=0.0)
    rcfg = RerankConfig(method=method, top_k=rerank_top_k, min_inliers=min_inliers, match_threshold=0.9)
    return LoopClosureDetector(cfg, db, rcfg)


def test_a_high_global_score_alone_no_longer_closes_a_loop(world):
    db, glob, local = world
    strangers = _lf(_unit(40, LDIM, seed=99))
    det = _detector(db)
    for t in range(3):
        r = det.process(glob[2], (100 + t) * SEC, "cam", local=strangers)
        assert r.place_match.best.score == pytest.approx(1.0, abs=1e-5) and r.loop_closure is None
        assert not r.place_match.best.verification.verified
    # the same global descriptor with the place's own local features: closure at once (tc = 1)
    r = _detector(db).process(glob[2], 200 * SEC, "cam", local=_lf(local[2]))
    lc = r.loop_closure
    assert lc is not None and lc.match.id == 2
    assert lc.verification is r.place_match.best.verification
    assert (lc.verification.method, lc.verification.num_matches, lc.verification.verified) == ("mnn", 40, True)
    # min_inliers above the 40 shared features: verified never, closure never
    assert _detector(db, min_inliers=41).process(glob[2], 300 * SEC, "cam", local=_lf(local[2])).loop_closure is None


def test_verified_closures_respect_temporal_consistency(world):
    db, glob, local = world
    strangers = _unit(40, LDIM, seed=98)

    def flags(seq):
        det = _detector(db, tc=3)
        return [det.process(glob[k], (100 + t) * SEC, "cam", local=_lf(d)).loop_closure is not None
                for t, (k, d) in enumerate(seq)]

    assert flags([(3, local[3]), (4, local[4]), (4, local[4])]) == [False, False, True]
    # an unverified frame resets the streak just as a score below threshold does
    seq = [(3, local[3]), (4, local[4]), (4, strangers), (5, local[5]), (5, local[5]), (6, local[6])]
    assert flags(seq) == [False, False, False, False, False, True]


def test_rerank_reorders_and_keeps_the_global_candidates(world):
    db, glob, local = world
    query = _toward(glob[0], glob[1], 0.97)
    order = [c.id for c in db.search(query, 8)]
    fifth = order[4]  # within rerank.top_k = 5, beyond detector.top_k = 3
    r = _detector(db, top_k=3, rerank_top_k=5).process(query, 100 * SEC, "cam", local=_lf(local[fifth]))
    pm = r.place_match
    assert [c.id for c in pm.global_candidates] == order[:5]
    assert all(c.verification is None for c in pm.global_candidates)
    assert [c.id for c in pm.candidates] == [fifth] + order[:2] and pm.rerank_ms > 0
    assert pm.candidates[0].verification.verified and pm.candidates[0].verification.num_matches == 40
    assert pm.candidates[0].score == pytest.approx(float(glob[fifth] @ query), abs=1e-5)
    # verified, but its global score is far below loop_threshold: still no closure
    assert pm.candidates[0].score < 0.9 and r.loop_closure is None
    # the place the query looks like, with its own features, does close the loop
    r = _detector(db).process(query, 101 * SEC, "cam", local=_lf(local[0]))
    assert r.loop_closure is not None and r.loop_closure.match.id == 0


def test_rerank_top_k_bounds_what_is_re_ranked(world):
    db, glob, local = world
    order = [c.id for c in db.search(glob[0], 8)]
    last = order[-1]  # globally the worst match
    r = _detector(db, top_k=4, rerank_top_k=2).process(glob[0], 100 * SEC, "cam", local=_lf(local[last]))
    pm = r.place_match
    assert [c.id for c in pm.candidates] == order[:4]  # `last` is beyond rerank.top_k: no promotion
    assert [c.verification is not None for c in pm.candidates] == [True, True, False, False]
    r = _detector(db, top_k=4, rerank_top_k=8).process(glob[0], 100 * SEC, "cam", local=_lf(local[last]))
    assert r.place_match.candidates[0].id == last and len(r.place_match.candidates) == 4


def test_frames_without_local_features_are_refused_when_re_ranking(world):
    db, glob, _ = world
    det = _detector(db, min_inliers=0, mapping=True)
    with pytest.raises(ValueError, match="local head"):
        det.process(glob[1], 100 * SEC, "cam")
    assert len(db) == 8
    r = det.process(glob[1], 101 * SEC, "cam", local=_lf(_unit(10, LDIM, seed=3)))
    assert r.place_match.query.id == 8 and len(db) == 9 and db.keyframes[8].local_features == "local.npz"
    assert len(db.local_features(8)) == 10


def test_degensac_verified_closure_carries_the_geometry():
    query, cand, _, _ = _two_views()
    glob, rng = _unit(3, GDIM, seed=30), np.random.default_rng(6)
    db = MapDatabase(GDIM, "flat", "false")
    for i in range(3):
        other = _lf(_unit(80, LDIM, seed=40 + i), rng.uniform(0, 480, (80, 2)))
        db.add(glob[i], Keyframe(i, i * SEC), cand if i == 1 else other)
    r = _detector(db, method="degensac", min_inliers=30).process(glob[1], 100 * SEC, "cam", local=query)
    lc = r.loop_closure
    assert lc is not None and lc.match.id == 1
    v = lc.verification
    assert v.method == "degensac" and v.num_matches == 80 and v.num_inliers >= 58 and v.fundamental.shape == (3, 3)
    others = [c.verification for c in r.place_match.candidates[1:]]
    assert [(o.num_matches, o.num_inliers, o.verified) for o in others] == [(0, 0, False)] * 2


def test_reranking_paused_searches_globally_but_still_stores_local_features(world):
    db, glob, local = world
    det = _detector(db, mapping=True)
    strangers = _lf(_unit(40, LDIM, seed=97))
    with det.reranking_paused():
        r = det.process(glob[2], 100 * SEC, "cam", local=strangers)
    # global search only: no verification attached, the global score closes (threshold 0.9, tc 1)
    assert r.place_match.global_candidates == [] and r.place_match.rerank_ms == 0.0
    assert r.place_match.best.verification is None and r.loop_closure is not None
    assert r.place_match.is_keyframe and db.local_features(r.place_match.query.id) is not None
    # re-ranking is back after the block, also when the block raised
    with pytest.raises(RuntimeError), det.reranking_paused():
        raise RuntimeError("boom")
    r = det.process(glob[2], 200 * SEC, "cam", local=_lf(_unit(40, LDIM, seed=96)))
    assert r.loop_closure is None and r.place_match.best.verification is not None
