"""Loop closures when frames are dropped (`python -m offline_eval.drop_robustness [DATASET]`): the dataset
as one 10 Hz stream (database, then queries), with N frames removed at random as a node's full queue
removes them, through the configured decision; prints closures and false ones per drop count and seed.

Why: the node drops frames under load. Counting sequence steps by frame index, corridor with 10-30 of
222 frames dropped gave false closures (1-3 frames beyond the +-2 tolerance) in 7 of 18 seeded runs, 23
in all; counting them in time (vpr_core.sequence), 6 among 534 closures; with the trimmed sequence score and
a streak that must move with the query, 8 among 796 (each 3-4 frames off, none at another place; gap-free
45 of 45). Nordland's validation stretch (--segment 2050:2650) showed the tunnel case: 7 false among 1049
before the trim, 0 among 1346 after."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import numpy as np

from offline_eval.benchmark import parse_overrides
from offline_eval.closures import as_stream
from offline_eval.protocol import extract_dataset, stream_stamps
from offline_eval.feature_cache import default_cache
from vpr_core.config import load_config
from vpr_core.datasets import load_dataset
from vpr_core.pipeline import PlaceRecognizer


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="drop_robustness", description=__doc__)
    ap.add_argument("dataset", nargs="?", default="../shared/datasets/corridor")
    ap.add_argument("--config", help="decision/model config (default: config/default.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--segment", metavar="START:STOP", help="only this stretch of the route (database positions)")
    ap.add_argument("--drops", default="0,10,20,30", help="frames removed from the stream (comma-separated)")
    ap.add_argument("--seeds", type=int, default=6, help="random drop patterns per count")
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset).segment_of(args.segment)
    cfg = load_config(args.config, parse_overrides(args.set))
    first = PlaceRecognizer(cfg)
    stream = as_stream(ds, extract_dataset(first.extractor, ds, cache=default_cache()))  # the stream and its judge vpr-closures uses
    frames, stamps, n_db, worst = stream.features, stream_stamps(len(stream.features)), len(ds.database), 0
    print(f"{ds.name}: {len(frames)} frames as one stream; decision of {args.config or 'config/default.yaml'}")
    print(f"{'dropped':>8}{'seed':>6}{'closures':>10}{'false':>7}  false (query frame -> matched database frame)")
    for ndrop in (int(x) for x in args.drops.split(",")):
        for seed in range(args.seeds if ndrop else 1):
            keep = np.ones(len(frames), bool)
            keep[np.random.default_rng(seed).choice(len(frames), ndrop, replace=False)] = False
            rec = PlaceRecognizer(cfg, extractor=first.extractor)
            frame_of, false, closures = {}, [], 0
            for i in np.flatnonzero(keep):
                glob, _, contrast = frames[i]
                r = rec.process_descriptor(glob, stamps[i], "camera", contrast=contrast)
                frame_of[r.place_match.query.id] = int(i)
                if r.loop_closure is None:
                    continue
                closures += 1
                m = frame_of[r.loop_closure.match.id]
                if not stream.is_true(int(i), m):
                    false.append((int(i) - n_db, m))
            worst = max(worst, len(false))
            print(f"{ndrop:>8}{seed:>6}{closures:>10}{len(false):>7}  {false[:6]}")
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
