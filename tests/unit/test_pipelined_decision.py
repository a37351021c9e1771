"""The node decides on a second worker: frame n+1 is prepared (model, search, sequence scores, keyframe)
before frame n is re-ranked, verified and decided. On the real corridor stream with re-ranking, prepare
and finish interleaved that way publish exactly what the one-frame-at-a-time pipeline publishes; a frame
prepared in a map that a reset replaced before its decision closes nothing."""
from __future__ import annotations

from collections import deque

import pytest

from offline_eval.closures import as_stream
from offline_eval.protocol import extract_dataset, stream_stamps
from vpr_core.config import load_config
from vpr_core.datasets import load_dataset
from vpr_core.pipeline import PlaceRecognizer


def _cfg(repo_root):
    return load_config(str(repo_root / "config" / "default_rerank.yaml"), {"map.use_gpu": "false", "rerank.top_k": 20})


@pytest.fixture(scope="module")
def corridor(repo_root, corridor_root):
    from vpr_core.models import DescriptorExtractor
    ex = DescriptorExtractor(_cfg(repo_root).model)
    ds = load_dataset(corridor_root)
    return ex, as_stream(ds, extract_dataset(ex, ds, progress=False))


def _frames(stream):
    return [(d, local, contrast, t) for (d, local, contrast), t in zip(stream.features,
                                                                       stream_stamps(len(stream.features)))]


def _run(rec: PlaceRecognizer, frames, lag: int):
    """Each frame prepared `lag` frames before it is finished, as the node's two workers may."""
    waiting, results = deque(), []
    for d, local, contrast, t in frames:
        waiting.append(rec.prepare_descriptor(d, t, "camera", local=local, contrast=contrast))
        if len(waiting) > lag:
            results.append(rec.finish(waiting.popleft()))
    return results + [rec.finish(p) for p in waiting]


def _published(results):
    return [(r.place_match.query.id, [c.id for c in r.place_match.candidates], r.place_match.is_keyframe,
             r.decision.rejected, r.loop_closure.match.id if r.loop_closure else None) for r in results]


def test_decisions_frames_behind_equal_decisions_in_step(repo_root, corridor):
    ex, stream = corridor
    in_step = _run(PlaceRecognizer(_cfg(repo_root), extractor=ex), _frames(stream), lag=0)
    behind = _run(PlaceRecognizer(_cfg(repo_root), extractor=ex), _frames(stream), lag=3)
    closures = [r.loop_closure for r in in_step if r.loop_closure is not None]
    assert len(closures) >= 20, "the corridor stream must close loops for this comparison to mean anything"
    assert all(c.verification.method == "mnn" and c.verification.verified for c in closures)
    assert _published(behind) == _published(in_step)


def test_a_frame_prepared_before_a_map_reset_closes_nothing(repo_root, corridor):
    ex, stream = corridor
    frames = _frames(stream)
    closing = next(i for i, r in enumerate(_run(PlaceRecognizer(_cfg(repo_root), extractor=ex), frames, 0))
                   if r.loop_closure is not None)
    rec = PlaceRecognizer(_cfg(repo_root), extractor=ex)
    _run(rec, frames[:closing], 0)
    d, local, contrast, t = frames[closing]
    pending = rec.prepare_descriptor(d, t, "camera", local=local, contrast=contrast)
    rec.reset_map()
    r = rec.finish(pending)
    assert r.loop_closure is None and r.decision.rejected == "map_replaced"
    assert r.place_match.query.id == pending.query.id and rec.stats.rejections["map_replaced"] == 1
    assert len(rec.db) == 0  # the reset map is not given the old map's frame
