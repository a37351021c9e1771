"""GSV-Cities: `Dataframes/<City>.csv` (one row per image: place_id, year, month, northdeg, city_id,
lat, lon, panoid) and `Images/<city_id>/<name>.jpg`, the name rebuilt from the row. Places, not
query/database splits: the reader returns PlaceImages for the place-batch training schemes."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vpr_core.datasets.errors import DatasetError
from vpr_core.datasets.place_images import PlaceImages, keep_places

GSV_COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
_Row = Tuple[int, int, int, int, str, float, float, str]  # place_id, year, month, northdeg, city, lat, lon, panoid


def gsv_image_name(city: str, place_id: int, year: int, month: int, northdeg: int, lat: float, lon: float,
                   panoid: str) -> str:
    """The file name GSV-Cities gives the image of one dataframe row:
    city_placeid(7 digits)_year_month(2)_bearing(3)_lat_lon_panoid.jpg."""
    return f"{city}_{place_id:07d}_{year:04d}_{month:02d}_{northdeg:03d}_{lat}_{lon}_{panoid}.jpg"


def _read_city(path: Path) -> List[Tuple[int, _Row]]:
    """(CSV line number, parsed row) for every image row of one city's dataframe."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in GSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; a GSV-Cities dataframe has {list(GSV_COLUMNS)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append((line, (int(float(r["place_id"])), int(float(r["year"])), int(float(r["month"])),
                                    int(float(r["northdeg"])), r["city_id"].strip(), float(r["lat"]),
                                    float(r["lon"]), r["panoid"].strip())))
            except (TypeError, ValueError):
                raise DatasetError(f"{path} line {line}: place_id, year, month and northdeg must be integers and "
                                   f"lat, lon numbers; got {dict((c, r.get(c)) for c in GSV_COLUMNS)}") from None
    return rows


def _row_name(row: _Row) -> str:
    pid, year, month, deg, city, lat, lon, panoid = row
    return gsv_image_name(city, pid, year, month, deg, lat, lon, panoid)


class _CityFolder:
    """The image names of one `Images/<city_id>/` folder, listed once; rows are found by their exact
    name, else by (place, date, bearing, panoid) when lat/lon were written with other digits."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        self._by_key: Optional[Dict[tuple, str]] = None

    def find(self, row: _Row) -> Optional[Path]:
        pid, year, month, deg, _, _, _, panoid = row
        name = _row_name(row)
        if name in self.names:
            return self.folder / name
        if self._by_key is None:
            self._by_key = {k: n for n in self.names if (k := _name_key(n)) is not None}
        found = self._by_key.get((pid, year, month, deg, panoid))
        return None if found is None else self.folder / found


def _name_key(name: str) -> Optional[tuple]:
    parts = Path(name).stem.split("_", 7)  # the panoid, last, may itself hold '_'
    if len(parts) != 8:
        return None
    try:
        return int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]), parts[7]
    except ValueError:
        return None


def load_place_images(root: str | Path, cities: Optional[Sequence[str]] = None,
                      min_images_per_place: int = 4) -> PlaceImages:
    """The images of `cities` (default: every dataframe) labelled by place, place ids made unique
    across cities; places with fewer than `min_images_per_place` images are dropped and counted."""
    root = Path(root)
    frames = root / "Dataframes"
    if not frames.is_dir():
        raise DatasetError(f"{root}: not a GSV-Cities folder (expected {frames}/<City>.csv and "
                           f"{root / 'Images'}/<City>/)")
    available = sorted(p.stem for p in frames.glob("*.csv"))
    cities = list(available if cities is None else cities)
    unknown = [c for c in cities if c not in available]
    if unknown or not cities:
        raise DatasetError(f"{frames}: no dataframe for {unknown or 'any city'}; cities present: {available}")
    keys, paths, positions, missing = [], [], [], []
    folders: Dict[str, _CityFolder] = {}
    for ci, city in enumerate(cities):
        for line, row in _read_city(frames / f"{city}.csv"):
            folder = folders.setdefault(row[4], _CityFolder(root / "Images" / row[4]))
            path = folder.find(row)
            if path is None:
                missing.append(f"{city}.csv line {line}: {folder.folder / _row_name(row)}")
                continue
            keys.append((ci, row[0]))
            paths.append(path)
            positions.append((row[5], row[6]))
    if missing:
        raise DatasetError(f"{root}: {len(missing)} image(s) named by the dataframes are missing, e.g. {missing[:3]}")
    if not paths:
        raise DatasetError(f"{root}: the dataframes of {cities} list no images")
    keep, labels = keep_places(np.asarray(keys, dtype=np.int64), min_images_per_place, root.name)
    if not keep.size:
        raise DatasetError(f"{root}: no place of {cities} has {min_images_per_place} or more images")
    return PlaceImages(root.name, root, [paths[i] for i in keep], labels,
                       np.asarray(positions, dtype=np.float64)[keep], "deg")
