"""GSV-Cities reader (Dataframes/<City>.csv + Images/<city>/<name>.jpg), written in tmp_path with real
Nordland frames: file names rebuilt from rows, labels unique across cities, small places dropped."""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pytest

from vpr_core.datasets import DatasetError, gsv_image_name, load_place_images

HEADER = ",place_id,year,month,northdeg,city_id,lat,lon,panoid"  # pandas writes its index first


def _write_city(root, real_frame, city, places):
    """places: {place_id: count}; image j of a place is month j+1 of 2019, bearing 10*j."""
    lines, k = [HEADER], 0
    for pid, count in places.items():
        for j in range(count):
            lat, lon, pano = 51.5 + pid / 1000, -0.125 + j / 10000, f"p{pid}_x-{j}"
            lines.append(f"{k},{pid},2019,{j + 1},{10 * j},{city},{lat},{lon},{pano}")
            real_frame(k, root / "Images" / city / gsv_image_name(city, pid, 2019, j + 1, 10 * j, lat, lon, pano))
            k += 1
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    (root / "Dataframes" / f"{city}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def gsv_root(tmp_path, real_frame):
    root = tmp_path / "gsv_mini"
    _write_city(root, real_frame, "London", {0: 4, 1: 2, 7: 5})
    _write_city(root, real_frame, "Boston", {0: 4, 3: 4})
    return root


def _groups(images):
    """{label: set of (city, place id)} read back from the image names."""
    out = defaultdict(set)
    for path, label in zip(images.paths, images.labels):
        city, pid = path.name.split("_")[:2]
        out[int(label)].add((city, int(pid)))
    return out


def test_image_name_format():
    assert (gsv_image_name("London", 13, 2017, 5, 7, 51.5074, -0.1278, "Ab_c-1")
            == "London_0000013_2017_05_007_51.5074_-0.1278_Ab_c-1.jpg")


def test_places_unique_across_cities_and_small_ones_dropped(gsv_root, caplog):
    with caplog.at_level(logging.INFO, logger="vpr_core.datasets"):
        images = load_place_images(gsv_root)
    assert "dropped 1 of 5 places with fewer than 4 images (2 images)" in caplog.text
    assert len(images) == 4 + 5 + 4 + 4 and images.places == 4 and images.labels.dtype == np.int64
    assert sorted(set(images.labels.tolist())) == [0, 1, 2, 3]  # dense
    groups = _groups(images)
    assert sorted(next(iter(g)) for g in groups.values()) == [("Boston", 0), ("Boston", 3), ("London", 0),
                                                               ("London", 7)]
    assert all(len(g) == 1 for g in groups.values())  # London 0 and Boston 0 are different places
    assert all(p.is_file() and p.parent.parent == gsv_root / "Images" for p in images.paths)
    assert images.position_unit == "deg" and images.positions.shape == (17, 2)
    london7 = [i for i, p in enumerate(images.paths) if p.name.startswith("London_0000007_2019_03_")]
    np.testing.assert_allclose(images.positions[london7[0]], (51.507, -0.125 + 2 / 10000))


def test_city_choice_and_minimum(gsv_root):
    boston = load_place_images(gsv_root, cities=["Boston"])
    assert len(boston) == 8 and boston.places == 2
    assert all(p.name.startswith("Boston_") for p in boston.paths)
    assert load_place_images(gsv_root, min_images_per_place=2).places == 5
    assert load_place_images(gsv_root, min_images_per_place=5).places == 1  # only London 7
    with pytest.raises(DatasetError, match="no place of .* has 6 or more images"):
        load_place_images(gsv_root, min_images_per_place=6)
    with pytest.raises(DatasetError, match=">= 1"):
        load_place_images(gsv_root, min_images_per_place=0)
    with pytest.raises(DatasetError, match=r"no dataframe for \['Paris'\]; cities present: \['Boston', 'London'\]"):
        load_place_images(gsv_root, cities=["Paris"])


def test_lat_lon_written_with_other_digits_are_still_found(tmp_path, real_frame):
    root = tmp_path / "gsv_digits"
    (root / "Dataframes").mkdir(parents=True)
    (root / "Dataframes" / "Rome.csv").write_text(HEADER + "\n" + "\n".join(
        f"{j},5,2020,{j + 1},0,Rome,41.90000,12.5,pano_{j}" for j in range(4)) + "\n")
    for j in range(4):  # the files say 41.90000 where str(float) says 41.9
        real_frame(j, root / "Images" / "Rome" / f"Rome_0000005_2020_{j + 1:02d}_000_41.90000_12.5_pano_{j}.jpg")
    images = load_place_images(root)
    assert len(images) == 4 and images.places == 1
    assert sorted(p.name[-10:] for p in images.paths) == [f"pano_{j}.jpg" for j in range(4)]


def test_missing_image_names_the_row(gsv_root):
    victim = sorted((gsv_root / "Images" / "Boston").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"1 image.* missing.*Boston.csv line [0-9]+: .*{victim.name}"):
        load_place_images(gsv_root)
    assert len(load_place_images(gsv_root, cities=["London"])) == 9  # other cities unaffected


def test_broken_dataframes(gsv_root, tmp_path):
    csv_path = gsv_root / "Dataframes" / "London.csv"
    csv_path.write_text("place_id,year,month,city_id,lat,lon,panoid\n0,2019,1,London,51.5,0.1,p\n")
    with pytest.raises(DatasetError, match=r"London.csv: missing column\(s\) \['northdeg'\]"):
        load_place_images(gsv_root)
    csv_path.write_text(HEADER + "\n0,zero,2019,1,0,London,51.5,0.1,p\n")
    with pytest.raises(DatasetError, match="London.csv line 2: place_id"):
        load_place_images(gsv_root)
    with pytest.raises(DatasetError, match="not a GSV-Cities folder"):
        load_place_images(tmp_path / "elsewhere")
