"""What the trainer feeds its trainable modules: live images through the whole model, or, when the
backbone is frozen, its outputs computed once and memory-mapped from disk (head training on a CPU)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from vpr_core.images import load_image
from vpr_core.models.vpr_model import DescriptorExtractor
from vpr_core.models.weights import resolve_checkpoint_path

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """Training data cannot be used (unreadable image, empty split, labels that do not fit)."""


def load_images(paths: Sequence[Path]) -> List[np.ndarray]:
    """RGB images of `paths`; an unreadable one is a dataset defect named in the error, never skipped silently."""
    out = []
    for p in paths:
        try:
            out.append(load_image(p))
        except (OSError, ValueError) as exc:
            raise TrainingDataError(f"training image {p} cannot be read: {exc}") from None
    return out


def _model_key(extractor: DescriptorExtractor) -> str:
    """Names the backbone outputs: architecture, weights file (size, mtime) and preprocessing."""
    cfg = extractor.cfg
    try:
        ck = resolve_checkpoint_path(cfg.checkpoint)
        ck_id = [str(ck), ck.stat().st_size, ck.stat().st_mtime_ns]
    except Exception:  # no weights file (a random backbone in tests): the config alone names it
        ck_id = [cfg.checkpoint]
    blob = json.dumps([cfg.backbone, ck_id, cfg.checkpoint_format, vars(cfg.preprocess)], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _image_id(path: Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


class FeatureCache:
    """Backbone outputs as float16 .npy chunks under `<folder>/<model key>/`, opened memory-mapped.

    A chunk holds the images one build was missing, listed in its .json sidecar (path, size, mtime);
    later runs reuse every chunk and compute only new images. Chunks are written to a temporary file
    and renamed when complete, so an interrupted build never leaves a chunk that looks whole."""

    def __init__(self, chunks: List[Tuple[np.ndarray, Dict[str, int]]], rows: Dict[Path, Tuple[int, int]]) -> None:
        self.chunks = chunks
        self.row = rows  # path -> (chunk, row)

    @staticmethod
    def _chunks(folder: Path) -> List[Tuple[np.ndarray, Dict[str, int]]]:
        out = []
        for side in sorted(folder.glob("chunk-*.json")):
            try:
                ids = json.loads(side.read_text())
                arr = np.load(side.with_suffix(".npy"), mmap_mode="r")
                if arr.shape[0] != len(ids):
                    raise ValueError(f"{arr.shape[0]} rows for {len(ids)} images")
                out.append((arr, {k: i for i, k in enumerate(ids)}))
            except (OSError, ValueError) as exc:  # truncated or foreign chunk: ignored, its images recomputed
                log.warning("feature cache chunk %s is unusable (%s); ignoring it", side, exc)
        return out

    @classmethod
    def build(cls, extractor: DescriptorExtractor, paths: Sequence[Path], folder: Path,
              progress: bool = True) -> "FeatureCache":
        paths = list(dict.fromkeys(Path(p) for p in paths))
        folder = Path(folder) / _model_key(extractor)
        folder.mkdir(parents=True, exist_ok=True)
        ids = {p: _image_id(p) for p in paths}
        chunks = cls._chunks(folder)
        missing = [p for p in paths if not any(ids[p] in c[1] for c in chunks)]
        if missing:
            cls._compute(extractor, missing, [ids[p] for p in missing], folder, progress)
            chunks = cls._chunks(folder)
        rows = {}
        for p in paths:
            c = next(i for i, (_, m) in enumerate(chunks) if ids[p] in m)
            rows[p] = (c, chunks[c][1][ids[p]])
        log.info("feature cache %s: %d images (%d computed now)", folder, len(paths), len(missing))
        return cls(chunks, rows)

    @staticmethod
    def _compute(extractor: DescriptorExtractor, paths: List[Path], ids: List[str], folder: Path,
                 progress: bool) -> None:
        name = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
        tmp, final = folder / f"chunk-{name}.tmp.npy", folder / f"chunk-{name}.npy"
        model, bs, out = extractor.model, max(1, extractor.cfg.batch_size), None
        with torch.inference_mode():
            for i in tqdm(range(0, len(paths), bs), desc="cache backbone features", unit="batch", disable=not progress):
                x = extractor.preprocess(load_images(paths[i:i + bs])).to(extractor.device)
                f = model.backbone(x).float().cpu().numpy().astype(np.float16)
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(paths), *f.shape[1:]))
                out[i:i + len(f)] = f
        out.flush()
        del out
        tmp.replace(final)
        final.with_suffix(".json").write_text(json.dumps(ids))  # the sidecar last: its presence marks a whole chunk

    def features(self, paths: Sequence[Path]) -> torch.Tensor:
        """Rows of `paths` as float32, read from each chunk in file order."""
        where = [self.row[Path(p)] for p in paths]
        shape = self.chunks[0][0].shape[1:]
        out = np.empty((len(where), *shape), np.float32)
        for c, (arr, _) in enumerate(self.chunks):
            sel = [(j, r) for j, (cc, r) in enumerate(where) if cc == c]
            if sel:
                js, rs = map(np.asarray, zip(*sorted(sel, key=lambda t: t[1])))
                out[js] = arr[rs]
        return torch.from_numpy(out)


class HeadOnFeatures(torch.nn.Module):
    """The model after its backbone: cached backbone outputs in, unit-norm descriptors out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model._global(feats)


class GlobalAndLocal(torch.nn.Module):
    """The model's global descriptors (B, D) and dense local descriptors (B, N, C), with gradients, from
    images (`forward_all`) or, when `input_hw` is given, from cached backbone outputs of images that size."""

    def __init__(self, model: torch.nn.Module, input_hw: Optional[Tuple[int, int]] = None) -> None:
        super().__init__()
        self.model, self.input_hw = model, input_hw

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_all(x) if self.input_hw is None else self.model.from_features(x, self.input_hw)
        return out.global_desc, out.local.desc


class Encoder:
    """Global descriptors of image paths with gradients for training: from cached backbone features
    when a cache is set (frozen backbone), else from images through the whole model. `net` is what
    is called (the trainer may wrap it for DDP or torch.compile); `describe` uses the plain module.
    With `local` (a model with a local head), calls return (global, dense local descriptors)."""

    def __init__(self, extractor: DescriptorExtractor, cache: Optional[FeatureCache] = None,
                 local: bool = False) -> None:
        self.extractor = extractor
        self.cache = cache
        self.device = extractor.device
        self.plain: torch.nn.Module = HeadOnFeatures(extractor.model) if cache is not None else extractor.model
        self.net: torch.nn.Module = self.plain
        if local:
            if extractor.model.local_head is None:
                raise ValueError("local descriptors were asked for, but the model has no local head")
            hw = (extractor.preprocess.height, extractor.preprocess.width) if cache is not None else None
            self.net = GlobalAndLocal(extractor.model, hw)
        self.images_seen = 0

    @property
    def model(self) -> torch.nn.Module:
        return self.extractor.model

    def inputs(self, paths: Sequence[Path]) -> torch.Tensor:
        """What the net consumes: cached features or preprocessed images, on the model's device."""
        if self.cache is not None:
            return self.cache.features(paths).to(self.device)
        return self.extractor.preprocess(load_images(paths)).to(self.device)

    def __call__(self, paths: Sequence[Path]) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        self.images_seen += len(paths)
        return self.net(self.inputs(paths))

    @torch.no_grad()
    def describe(self, paths: Sequence[Path], batch_size: int = 256, progress: bool = False,
                 desc: str = "describe") -> np.ndarray:
        """Descriptors (N, D) float32 without gradients, in batches (mining caches, validation)."""
        modes = [(m, m.training) for m in self.model.modules()]  # frozen parts stay in eval mode after
        self.model.eval()
        bs = batch_size if self.cache is not None else max(1, self.extractor.cfg.batch_size)
        out = [self.plain(self.inputs(paths[i:i + bs])).float().cpu().numpy()
               for i in tqdm(range(0, len(paths), bs), desc=desc, unit="batch", disable=not progress, leave=False)]
        for m, mode in modes:
            m.training = mode
        return np.concatenate(out) if out else np.zeros((0, self.model.dim), np.float32)
