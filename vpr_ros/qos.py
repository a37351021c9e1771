"""Subscription QoS by name (config `node.qos`), and the trade-off between them.

sensor_data: best effort, keep last 5 (rclpy's qos_profile_sensor_data). Connects to every camera
    driver (a best-effort subscriber matches reliable and best-effort publishers); a frame lost on a
    busy link is not resent (it shows in the lost_estimate counter).
reliable: keep last `depth`, retransmitted. No transport loss, but it does not connect to best-effort
    publishers at all, and a slow link makes the publisher resend (latency grows under load).
"""
from __future__ import annotations

from typing import Callable, Dict

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data


SUBSCRIPTION_QOS: Dict[str, Callable[[int], QoSProfile]] = {  # one per vpr_core.config.QOS_PROFILES name
    "sensor_data": lambda depth: qos_profile_sensor_data,
    "reliable": lambda depth: QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, depth),
                                         reliability=ReliabilityPolicy.RELIABLE),
}


def subscription_qos(name: str, depth: int) -> QoSProfile:
    """The QoS profile `node.qos` names (validated by vpr_core.config)."""
    return SUBSCRIPTION_QOS[name](depth)
