"""vpr_ros.sync.StampBuffer: the pairing of odometry and depth with frames by stamp (no ROS needed)."""
from __future__ import annotations

import threading
import time

import pytest

from vpr_ros.sync import StampBuffer, seconds_to_ns

MS = 1_000_000


def test_nearest_within_the_window():
    buf = StampBuffer(10)
    for stamp in (100, 200, 300):
        buf.add(stamp * MS, f"s{stamp}")
    assert buf.nearest(240 * MS, 50 * MS) == (200 * MS, "s200")
    assert buf.nearest(260 * MS, 50 * MS) == (300 * MS, "s300")
    assert buf.nearest(300 * MS, 0) == (300 * MS, "s300"), "exact stamp with a zero window"
    assert buf.nearest(150 * MS + 1, 49 * MS) is None, "both neighbours outside the window"
    assert buf.nearest(1000 * MS, 100 * MS) is None


def test_late_samples_are_inserted_in_order_and_the_oldest_dropped():
    buf = StampBuffer(3)
    for stamp in (10, 30, 20, 40):  # 20 arrives late; 10 falls out when 40 comes
        buf.add(stamp, stamp)
    assert len(buf) == 3 and buf.newest_stamp() == 40
    assert buf.nearest(10, 0) is None and buf.nearest(20, 0) == (20, 20)
    buf.add(20, "again")
    assert buf.nearest(20, 0) == (20, "again") and len(buf) == 3, "a repeated stamp replaces its sample"


def test_waits_for_a_sample_still_in_flight():
    buf = StampBuffer(10)
    buf.add(100 * MS, "before")
    threading.Timer(0.05, lambda: buf.add(200 * MS, "after")).start()
    t0 = time.monotonic()
    assert buf.nearest(195 * MS, 10 * MS, wait_s=2.0) == (200 * MS, "after")
    assert time.monotonic() - t0 < 1.0, "returns as soon as a sample at or after the stamp arrives"


def test_no_wait_for_a_stream_that_stopped_or_never_started(monkeypatch):
    import vpr_ros.sync as sync
    buf = StampBuffer(10)
    t0 = time.monotonic()
    assert buf.nearest(100, 10, wait_s=1.0) is None, "empty: nothing to wait for"
    buf.add(0, "old")
    monkeypatch.setattr(sync, "LIVE_S", 0.0)  # the stream delivered nothing recently
    assert buf.nearest(100, 10, wait_s=1.0) is None
    assert time.monotonic() - t0 < 0.5


def test_bad_sizes_and_units():
    with pytest.raises(ValueError, match="at least one sample"):
        StampBuffer(0)
    assert seconds_to_ns(0.1) == 100 * MS
