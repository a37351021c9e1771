"""The node's health as one diagnostic_msgs/DiagnosticStatus per period, for /diagnostics.

Rates and latency are measured over the last period; counters are totals since start. Every
rejection reason of vpr_core.detector.REJECTIONS is reported, 0 included, so a dashboard sees all of
them and "it never fires" shows which gate said no. WARN when frames were dropped in the period or
the latency p95 exceeds node.latency_budget_ms.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from vpr_core.decision import REJECTIONS
from vpr_core.shared_map import SharedStats

STATUS_NAME = "vpr_ros: loop closure"
# Drop reasons always reported (0 included); any other reason the pipeline counts is added as it appears
DROP_REASONS = ("queue_full", "bad_image", "bad_descriptor", "error")
T = TypeVar("T")


def retry(read: Callable[[], T], attempts: int = 5) -> T:
    """Read counters the worker thread may be changing: a dict or deque that changed size while being
    copied raises RuntimeError; try again (the copy itself is short)."""
    for _ in range(attempts - 1):
        try:
            return read()
        except RuntimeError:
            time.sleep(0.001)
    return read()


@dataclass
class Snapshot:
    """What the node knows at one instant, read by the node (vpr_core stats and its own counters)."""
    summary: Mapping  # PlaceRecognizer.stats.summary()
    latencies_ms: Sequence[float]  # recent per-frame latencies (image arrival -> PlaceMatch out), oldest first
    received: int  # frames received from the image topics since start
    map_size: int
    mode: str
    missing: Mapping[str, int] = field(default_factory=dict)  # side input -> frames without it
    inputs: Mapping[str, str] = field(default_factory=dict)  # extra key/values (topics in use)
    fleet: Optional[SharedStats] = None  # the fleet's shared map (map.backend milvus), None without one


class DiagnosticsReporter:
    """Turns successive snapshots into DiagnosticArray messages (keeps the previous one for rates)."""

    def __init__(self, hardware_id: str, latency_budget_ms: float) -> None:
        self.hardware_id = hardware_id
        self.latency_budget_ms = float(latency_budget_ms)
        self._last: Optional[Tuple[float, int, int, int]] = None  # (time, received, frames, dropped total)
        self._fleet_failures = 0  # shared-map write and search failures at the previous report

    def status(self, snap: Snapshot, now_s: Optional[float] = None) -> DiagnosticStatus:
        now_s = time.monotonic() if now_s is None else now_s
        s = snap.summary
        frames = int(s["frames"])
        dropped: Dict[str, int] = {r: 0 for r in DROP_REASONS}
        dropped.update({str(k): int(v) for k, v in s["dropped"].items()})
        dropped_total = sum(dropped.values())
        last = self._last or (now_s, snap.received, frames, dropped_total)
        dt = max(now_s - last[0], 1e-9)
        rate_in = (snap.received - last[1]) / dt if self._last else 0.0
        rate_out = (frames - last[2]) / dt if self._last else 0.0
        new_drops = dropped_total - last[3]
        new_frames = frames - last[2] if self._last else frames
        recent = list(snap.latencies_ms)[-new_frames:] if new_frames > 0 else []
        if recent:  # this period's frames
            median, p95 = float(np.median(recent)), float(np.percentile(recent, 95))
        else:  # none processed in the period: the history's figures, never a warning
            median = float(s.get("end_to_end_ms_median", s["latency_ms_median"]))
            p95 = float(s.get("end_to_end_ms_p95", s["latency_ms_p95"]))
        self._last = (now_s, snap.received, frames, dropped_total)

        problems: List[str] = []
        if new_drops > 0:
            problems.append(f"{new_drops} frame(s) dropped in the last {dt:.1f} s")
        if snap.fleet is not None:
            failures = snap.fleet.write_failures + snap.fleet.search_failures
            if failures > self._fleet_failures:
                problems.append(f"shared map: {failures - self._fleet_failures} failed write(s)/search(es) in the "
                                f"last {dt:.1f} s ({snap.fleet.pending} keyframes waiting)")
            self._fleet_failures = failures
        if self.latency_budget_ms > 0 and recent and p95 > self.latency_budget_ms:
            problems.append(f"latency p95 {p95:.0f} ms over the {self.latency_budget_ms:.0f} ms budget")
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        message = "; ".join(problems) if problems else ("running" if frames else "waiting for images")

        values: List[Tuple[str, object]] = [
            ("mode", snap.mode), ("frame_rate_in_hz", f"{rate_in:.2f}"), ("processing_rate_hz", f"{rate_out:.2f}"),
            ("latency_ms.median", f"{median:.1f}"), ("latency_ms.p95", f"{p95:.1f}"),
            ("latency_budget_ms", f"{self.latency_budget_ms:.0f}"),
            ("processing_ms.median", f"{float(s['latency_ms_median']):.1f}"),
            ("processing_ms.p95", f"{float(s['latency_ms_p95']):.1f}"),
            ("queue_wait_ms.median", f"{float(s.get('queue_ms_median', 0.0)):.1f}"),
            ("queue_wait_ms.p95", f"{float(s.get('queue_ms_p95', 0.0)):.1f}"),
            ("frames_received", snap.received), ("frames_processed", frames),
            ("map_size", snap.map_size), ("keyframes", s["keyframes"]), ("loop_closures", s["loop_closures"])]
        if "lost_estimate" in s:  # frames estimated lost before they arrived (when the pipeline counts them)
            values.append(("frames_lost_estimate", s["lost_estimate"]))
        values += [(f"dropped.{r}", n) for r, n in sorted(dropped.items())]
        rejections = s["rejections"]
        values += [(f"rejected.{r}", int(rejections.get(r, 0))) for r in REJECTIONS]
        values += [(f"stage_ms.{k}.median", f"{v:.1f}") for k, v in s.get("stage_ms_median", {}).items()]
        values += [(f"stage_ms.{k}.p95", f"{v:.1f}") for k, v in s.get("stage_ms_p95", {}).items()]
        if snap.fleet is not None:
            f = snap.fleet
            values += [("fleet.closures", s.get("fleet_closures", 0)), ("fleet.published", f.published),
                       ("fleet.pending", f.pending), ("fleet.dropped", f.dropped),
                       ("fleet.write_failures", f.write_failures), ("fleet.searches", f.searches),
                       ("fleet.search_failures", f.search_failures), ("fleet.bad_rows", f.bad_rows)]
        values += [(f"frames_without.{k}", n) for k, n in sorted(snap.missing.items())]
        values += sorted(snap.inputs.items())
        return DiagnosticStatus(level=level, name=STATUS_NAME, message=message, hardware_id=self.hardware_id,
                                values=[KeyValue(key=k, value=str(v)) for k, v in values])

    def array(self, snap: Snapshot, stamp) -> DiagnosticArray:
        msg = DiagnosticArray(status=[self.status(snap)])
        msg.header.stamp = stamp
        return msg
