"""vpr_core.metrics: Recall@K on hand-made rankings, and loop-closure precision/recall."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vpr_core.metrics import ClosureStats, recall_at_k


def _pos(*rows):
    return [np.asarray(r, dtype=np.int64) for r in rows]


def test_recall_at_k_hand_made():
    ranked = np.array([[3, 1, 2, 0],    # correct at rank 1
                       [0, 5, 2, 9],    # correct at rank 2
                       [7, 8, 9, 4],    # correct at rank 4
                       [1, 2, 3, 4]])   # never correct
    positives = _pos([3], [5, 6], [4], [0])
    assert recall_at_k(ranked, positives, ks=(1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.5, 4: 0.75}


def test_any_of_several_positives_counts_once():
    ranked = np.array([[4, 5, 6], [9, 8, 7]])
    positives = _pos([4, 5, 6], [7, 8])
    assert recall_at_k(ranked, positives, ks=(1, 2, 3)) == {1: 0.5, 2: 1.0, 3: 1.0}


def test_minus_one_padding_never_counts():
    ranked = np.array([[-1, -1, -1], [2, -1, -1], [-1, -1, 0]])
    positives = _pos([0], [2], [0])
    assert recall_at_k(ranked, positives, ks=(1, 2, 3)) == {1: 1 / 3, 2: 1 / 3, 3: 2 / 3}


def test_k_beyond_the_ranked_columns_uses_what_is_there():
    ranked = np.array([[1], [0]])
    assert recall_at_k(ranked, _pos([0], [0]), ks=(1, 5, 10)) == {1: 0.5, 5: 0.5, 10: 0.5}


def test_query_without_positives_is_a_miss():
    ranked = np.array([[0, 1], [0, 1]])
    assert recall_at_k(ranked, _pos([0], []), ks=(1, 2)) == {1: 0.5, 2: 0.5}


def test_default_ks_and_float_values():
    ranked = np.tile(np.arange(10), (2, 1))
    out = recall_at_k(ranked, _pos([0], [7]))
    assert out == {1: 0.5, 5: 0.5, 10: 1.0}
    assert all(isinstance(v, float) for v in out.values())


def test_ranked_as_nested_lists():
    assert recall_at_k([[1, 2], [2, 1]], _pos([2], [2]), ks=(1,)) == {1: 0.5}


def test_no_queries_gives_nan():
    out = recall_at_k(np.zeros((0, 5), np.int64), [], ks=(1, 5))
    assert set(out) == {1, 5} and all(math.isnan(v) for v in out.values())


@pytest.mark.parametrize("ranked, positives", [
    (np.array([1, 2, 3]), _pos([1], [2], [3])),           # 1-D
    (np.zeros((2, 3, 1), np.int64), _pos([1], [2])),      # 3-D
    (np.zeros((3, 4), np.int64), _pos([1], [2])),         # 3 rows, 2 queries
    (np.zeros((1, 4), np.int64), _pos([1], [2])),         # 1 row, 2 queries
])
def test_wrong_shapes_are_value_errors(ranked, positives):
    with pytest.raises(ValueError, match="num_queries"):
        recall_at_k(ranked, positives)


def test_closure_stats():
    s = ClosureStats(published=10, correct=8, revisits=16)
    assert s.precision == 0.8 and s.recall == 0.5
    empty = ClosureStats(published=0, correct=0, revisits=0)
    assert math.isnan(empty.precision) and math.isnan(empty.recall)
    assert ClosureStats(published=0, correct=0, revisits=4).recall == 0.0


def test_retrieval_pr_by_hand():
    """Four queries whose top-1 scores are 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right), and a fifth
    with no answer: accepted from the highest score down, precision 1, 1/2, 2/3, 3/4 at recall 1/4, 1/4,
    2/4, 3/4 (four queries have a right answer). Summarised: R@100%P 0.25; AUC by the trapezoid rule from
    recall 0: 0.25 + 0.25 * (1/2 + 2/3) / 2 + 0.25 * (2/3 + 3/4) / 2."""
    from vpr_core.metrics import pr_curve, retrieval_pr
    ranked = np.array([[0, 1], [5, 1], [2, 9], [3, 1], [-1, -1]])
    scores = np.array([[.9, .1], [.8, .1], [.7, .1], [.6, .1], [0, 0]])
    positives = [np.array([0]), np.array([1]), np.array([2]), np.array([3]), np.array([], np.int64)]
    p, r = retrieval_pr(ranked, scores, positives)
    assert np.allclose(p, [1, 1 / 2, 2 / 3, 3 / 4]) and np.allclose(r, [.25, .25, .5, .75])
    s = pr_curve(p, r)
    assert s.recall_at_100 == 0.25 and s.recall_at_99 == 0.25
    assert s.auc == pytest.approx(0.25 + 0.25 * (1 / 2 + 2 / 3) / 2 + 0.25 * (2 / 3 + 3 / 4) / 2)


def test_retrieval_pr_ties_and_empty_cases():
    from vpr_core.metrics import retrieval_pr
    # equal scores are one threshold: both accepted together, one point
    p, r = retrieval_pr(np.array([[0], [7]]), np.array([[.5], [.5]]), [np.array([0]), np.array([1])])
    assert p.tolist() == [0.5] and r.tolist() == [0.5]
    p, r = retrieval_pr(np.zeros((2, 0), np.int64), np.zeros((2, 0)), [np.array([0]), np.array([1])])
    assert len(p) == len(r) == 0
    with pytest.raises(ValueError, match="num_queries"):
        retrieval_pr(np.zeros((3, 2)), np.zeros((3, 2)), [np.array([0])])


def test_pair_scores_by_hand():
    """Similarities 0.9 (same), 0.8 (different), 0.7 (same), 0.2 (different): of the four same/different
    couples three are ordered right (0.7 < 0.8 is not): AUC 0.75; one threshold gets at most 3 of 4
    pairs right, first at 0.9. Ties count half; labels other than 0/1 are refused."""
    from vpr_core.metrics import pair_scores
    s = pair_scores([0.9, 0.8, 0.7, 0.2], [1, 0, 1, 0])
    assert (s.auc, s.accuracy, s.threshold, s.pairs) == (0.75, 0.75, 0.9, 4)
    assert pair_scores([0.5, 0.5], [1, 0]).auc == 0.5
    assert pair_scores([0.1, 0.2, 0.9], [0, 0, 1]).accuracy == 1.0
    with pytest.raises(ValueError, match="0/1 label"):
        pair_scores([0.1, 0.2], [0, 2])
