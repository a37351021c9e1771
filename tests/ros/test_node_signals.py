"""How the node stops: SIGINT and SIGTERM both finish the queued frames, save the map, destroy the node and
only then shut the ROS context down (rclpy's own handler would shut the context down first)."""
from __future__ import annotations

import re


def test_sigterm_finishes_the_frames_saves_the_map_and_exits_cleanly(start_node, client, images, tmp_path):
    """A service manager stops the node with SIGTERM: the node stops like on SIGINT, in order (workers,
    map save, node, then the ROS context), and exits 0 with its shutdown summary logged."""
    import signal
    path = tmp_path / "term.vprmap"
    run = start_node(tmp_path, "term", {"map.path": str(path), "map.autoload": False, "map.autosave": True,
                                        "detector.exclude_recent_s": 0.0})
    for k in (0, 10):
        client.send(client.image_msg(images.database(k), "rgb8", f"t{k}"), run)
    run.proc.proc.send_signal(signal.SIGTERM)
    assert run.wait_exit(60.0) == 0, run.log_text()[-3000:]
    log = run.log_text()
    assert path.is_file() and re.search(r"saved map .*term\.vprmap: 2 keyframes", log), log[-2000:]
    assert "processed 2 frames" in log
