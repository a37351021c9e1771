"""`merge_maps`: one map of two maps of one model (`vpr-core map-merge`), as separate sessions, no id reused."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from vpr_core.map_database import MapDatabase
from vpr_core.map_schema import MapError


def merge_maps(first: MapDatabase, second: MapDatabase, assume_same_model: bool = False) -> MapDatabase:
    """One map holding `first`'s keyframes, then `second`'s (local features included), as separate sessions:
    the second map's ids move past the first's id floor and its sessions past the first's, so nothing
    collides and no id either map handed out is reused. Maps of different descriptors are refused
    (MapError); a map that does not record its model (format version < 3) only with `assume_same_model`."""
    from vpr_core.models.identity import same_descriptors

    if first.dim != second.dim:
        raise MapError(f"cannot merge a {first.dim}-D map with a {second.dim}-D one: they hold different models' "
                       f"descriptors")
    if first.model and second.model and not same_descriptors(first.model, second.model):
        raise MapError(f"cannot merge maps of different models: {first.model} and {second.model} (descriptors of "
                       f"different models are not comparable)")
    if not (first.model and second.model) and not assume_same_model:
        raise MapError("a map does not record the model that built it (map format version < 3): merge only if both "
                       "were built with the same model and weights (vpr-core map-merge --assume-same-model)")
    if len(first.local) and len(second.local) and first.local.dim != second.local.dim:
        raise MapError(f"cannot merge maps with {first.local.dim}-D and {second.local.dim}-D local features "
                       f"(built with different local heads)")
    out = MapDatabase(first.dim, first.index_type, "false", model=first.model or second.model, ivf=first.ivf)
    id_shift, session_shift = first.next_id, first.next_session
    for db, shift, sessions in ((first, 0, 0), (second, id_shift, session_shift)):
        descs = db.descriptors_at(np.arange(len(db)))
        for pos, kid in enumerate(db._order):
            kf = db.keyframes[kid]
            moved = replace(kf, id=kf.id + shift, session=kf.session + sessions)
            out.add(descs[pos], moved, db.local.get(kid))
    out.id_floor = id_shift + second.next_id
    out.wait_rebuild()
    return out

