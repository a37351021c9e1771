"""Place-recognition datasets on disk, one reader per layout, shared by offline_eval and training.

Query/database datasets (`load_dataset`, chosen by what the folder holds through the `LAYOUTS`
registry): VPR-Bench, frame-synchronised traversals (Nordland), geo-localisation splits with UTM
names, GSV-Cities' validation .npy triples, revisited Oxford/Paris (`gnd_*.pkl`); pickled ground truth
is read without running it. Place-labelled images (`load_place_images`, GSV-Cities; `place_images_from`
a positioned dataset) and labelled pairs (`load_pairs`) feed the training schemes that need them.
"""
from __future__ import annotations

from vpr_core.datasets import geo, ground_truth, npy_ground_truth, revisited  # noqa: F401  (readers register)
from vpr_core.datasets.base import IMAGE_SUFFIXES, LAYOUTS, POSITION_UNITS, PlaceDataset, image_files
from vpr_core.datasets.errors import DatasetError
from vpr_core.datasets.geo import DEFAULT_RADIUS_M, SPLITS, utm_from_name
from vpr_core.datasets.gsv_cities import GSV_COLUMNS, gsv_image_name, load_place_images
from vpr_core.datasets.load import load_dataset
from vpr_core.datasets.pairs import PairList, load_pairs
from vpr_core.datasets.place_images import PlaceImages, place_images_from
from vpr_core.datasets.positions import neighbours_within, position_bins

__all__ = [
    "IMAGE_SUFFIXES", "LAYOUTS", "POSITION_UNITS", "PlaceDataset", "DatasetError", "load_dataset",
    "image_files", "SPLITS", "DEFAULT_RADIUS_M", "utm_from_name", "GSV_COLUMNS", "gsv_image_name",
    "load_place_images", "PairList", "load_pairs", "PlaceImages", "place_images_from",
    "neighbours_within", "position_bins",
]
