"""Inference runtimes selected by `model.runtime`: what runs the model's forward pass.

- `auto` (the default): `openvino` on a CPU when the wheel is installed, else `torch`; the choice is
  logged.
- `torch`: eager PyTorch, channels-last, inference mode (the reference every other runtime is tested
  against).
- `compile`: torch.compile (inductor) of the eager model, compiled and warmed up when built, not on the
  first frame. On this project's CPU it is no faster than eager (32 ms batch-1); it is meant for GPUs.
- `onnxruntime`: the global forward exported once with torch.onnx.export at the configured input size
  to a cache file keyed by the model config, a hash of the weights in memory and the torch version, then
  run with an onnxruntime CPU session whose intra-op thread count follows torch's (`runtime.threads`).
  A cache file that does not load is exported again. A model with a local head exports its dense
  local outputs too (descriptors, positions, weights), so re-ranking models run here as well; which
  cells are kept (`max_local_features`) is chosen afterwards, as for eager torch.
- `openvino`: the same cached ONNX file compiled by OpenVINO for the CPU (fp32, threads as above).

A runtime is built by `build_runtime(cfg, model)` and called with a preprocessed (B,3,H,W) float32 CPU
or device tensor; it returns `ForwardArrays`: (B,D) float32 unit-norm descriptors as numpy, and the local
head's outputs when the model has one.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from vpr_core.config import ConfigError, ModelConfig
from vpr_core.models.identity import model_digest
from vpr_core.registry import Registry

log = logging.getLogger(__name__)



@dataclass
class ForwardArrays:
    """One forward pass as numpy: global descriptors (B,D) and, for a model with a local head, its dense
    local outputs (desc (B,N,C), xy (B,N,2) in input pixels, weight (B,N) or None)."""
    global_desc: np.ndarray
    local_desc: Optional[np.ndarray] = None
    local_xy: Optional[np.ndarray] = None
    local_weight: Optional[np.ndarray] = None

    @classmethod
    def from_named(cls, named: dict) -> "ForwardArrays":
        """From an exported graph's outputs by name (OUTPUTS)."""
        f32 = {k: np.asarray(v, dtype=np.float32) for k, v in named.items()}
        return cls(f32["global_desc"], f32.get("local_desc"), f32.get("local_xy"), f32.get("local_weight"))


Runtime = Callable[[torch.Tensor], ForwardArrays]
OUTPUTS = ("global_desc", "local_desc", "local_xy", "local_weight")  # an exported graph's outputs, in order
RUNTIMES: Registry[Optional[Runtime]] = Registry("model runtime")
ONNX_OPSET = 17
PIP_PINS = {"onnxruntime": "onnxruntime==1.30.0", "onnx": "onnx==1.23.1", "openvino": "openvino==2026.4.1"}


def _require(package: str, runtime: str, who: str = ""):
    """Import `package` or raise a ConfigError saying which pip install the runtime (or `who`) needs."""
    import importlib
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ConfigError(f"{who or 'model.runtime ' + runtime} needs the {package} package: pip install "
                          f"{PIP_PINS.get(package, package)}{'' if who else ' (or set model.runtime: torch)'}; "
                          f"import failed: {exc}"
                          ) from None


def _importable(package: str) -> bool:
    try:
        importlib.import_module(package)
        return True
    except ImportError:
        return False


def cache_dir(cfg: ModelConfig) -> Path:
    """`model.runtime_cache`, else $VPR_ROS_CACHE (the Makefile points it into the repository's ignored
    runs/), else $XDG_CACHE_HOME/vpr_ros (default ~/.cache/vpr_ros)."""
    if cfg.runtime_cache:
        return Path(cfg.runtime_cache).expanduser()
    if os.environ.get("VPR_ROS_CACHE"):
        return Path(os.environ["VPR_ROS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vpr_ros"


def cache_key(cfg: ModelConfig, fmt: str, model: nn.Module) -> str:
    """Hash of what determines the exported graph: the model (config and weights in memory, labels aside),
    the torch version that traces it and the format."""
    data = {"model": model_digest(cfg, model), "_torch": torch.__version__, "_format": [fmt, ONNX_OPSET]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


class ExportGraph(nn.Module):
    """What is exported: images -> global descriptors, then the local head's desc, xy (and weight) when
    the model has one, all from one backbone pass (OUTPUTS order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if getattr(self.model, "local_head", None) is None:
            return (self.model(x),)
        out = self.model.forward_all(x)
        lo = out.local
        return (out.global_desc, lo.desc.float(), lo.xy.float()) + (() if lo.weight is None else (lo.weight.float(),))


def export_onnx(model: nn.Module, cfg: ModelConfig, out: Path, runtime: str = "onnxruntime", who: str = "") -> Path:
    """Export the model's forward (B,3,H,W) -> global (B,D) [+ local outputs] at the configured input size
    to `out` (written to a temporary file beside it, then renamed: never half-written)."""
    _require("onnx", runtime, who)
    h, w = cfg.preprocess.image_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # eval on the wrapper too: export restores the wrapper's mode afterwards, recursively into the model
    graph = ExportGraph(model).eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, 3, int(h), int(w), device=device)
    with torch.inference_mode():
        names = list(OUTPUTS[:len(graph(x))])
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (x,), tmp, input_names=["images"], output_names=names,
                              dynamic_axes={n: {0: "batch"} for n in ["images"] + names},
                              opset_version=ONNX_OPSET, dynamo=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("exported %s to %s", cfg.name, out)
    return out


def export_openvino(model: nn.Module, cfg: ModelConfig, out: Path) -> Path:
    """The ONNX export converted to OpenVINO IR: `out` (.xml) and the .bin beside it."""
    ov = _require("openvino", "openvino", "vpr-core export --format openvino")
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        onnx_path = export_onnx(model, cfg, Path(tmp) / "model.onnx", "openvino", "vpr-core export --format openvino")
        ov.save_model(ov.Core().read_model(str(onnx_path)), str(out), compress_to_fp16=False)
    return out


class _ExportedRuntime:
    """The forward exported to ONNX in the cache (or found there), loaded by a subclass's `_load`; a cache
    file that does not load is exported again once."""

    runtime = ""
    package = ""

    def __init__(self, cfg: ModelConfig, model: nn.Module) -> None:
        self.mod = _require(self.package, self.runtime)
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.name)[:64]  # model.name is a free label
        self.path = cache_dir(cfg) / "onnx" / f"{label}-{cache_key(cfg, 'onnx', model)}.onnx"
        self.exported = False  # True when this build exported (not a cache hit)
        if not self.path.is_file():
            export_onnx(model, cfg, self.path, self.runtime)
            self.exported = True
        want_local = getattr(model, "local_head", None) is not None
        try:
            self._open(cfg, want_local)
        except Exception as exc:  # noqa: BLE001 - a corrupt or stale cache file of any kind: export again
            if self.exported:
                raise
            log.warning("cached ONNX model %s does not load (%s); exporting it again", self.path, exc)
            export_onnx(model, cfg, self.path, self.runtime)
            self.exported = True
            self._open(cfg, want_local)

    def _open(self, cfg: ModelConfig, want_local: bool) -> None:
        """Load the file and run it once (the first frame does not pay for allocations); a file whose
        outputs are not this model's (local outputs or not) is refused."""
        self._load()
        h, w = cfg.preprocess.image_size
        self.has_local = self(torch.zeros(1, 3, int(h), int(w))).local_desc is not None
        if self.has_local != want_local:
            raise RuntimeError(f"{self.path} has {'' if self.has_local else 'no '}local outputs but the model has "
                               f"{'a' if want_local else 'no'} local head")

    def __call__(self, x: torch.Tensor) -> ForwardArrays:
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _numpy(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).contiguous().numpy())


class OnnxRuntime(_ExportedRuntime):
    """onnxruntime CPU session, intra-op threads = torch's (runtime.threads)."""

    runtime = package = "onnxruntime"

    def _load(self) -> None:
        ort = self.mod
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.names: List[str] = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> ForwardArrays:
        return ForwardArrays.from_named(dict(zip(self.names, self.session.run(self.names, {"images": self._numpy(x)}))))


class OpenVinoRuntime(_ExportedRuntime):
    """OpenVINO on CPU from the same cached ONNX file, fp32 inference, threads = torch's (runtime.threads)."""

    runtime = package = "openvino"

    def _load(self) -> None:
        core = self.mod.Core()
        model = core.read_model(str(self.path))
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        # a port may carry the graph's internal tensor name beside ours: pick ours
        self.outputs = [(port, next((n for n in OUTPUTS if n in port.get_names()), port.get_any_name()))
                        for port in self.compiled.outputs]

    def __call__(self, x: torch.Tensor) -> ForwardArrays:
        res = self.request.infer({0: self._numpy(x)})
        return ForwardArrays.from_named({name: res[port] for port, name in self.outputs})


class CompiledRuntime:
    """torch.compile of the global forward (inductor), warmed up here at batch 1 and the configured input size
    so the first frame does not pay for compilation (about 40 s for EfficientNet-Lite0 on one CPU core); a
    new batch size compiles once more, after which dynamo treats the batch as dynamic."""

    def __init__(self, cfg: ModelConfig, model: nn.Module) -> None:
        if getattr(model, "local_head", None) is not None:
            raise ConfigError("model.runtime compile runs the global descriptor only and this model has a local head "
                              "(model.local_head); use model.runtime: torch, onnxruntime or openvino for it")
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        self.dtype = half if (half is not None and self.device.type == "cuda") else torch.float32
        self.fn = torch.compile(model)
        h, w = cfg.preprocess.image_size
        self(torch.zeros(1, 3, int(h), int(w)))

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> ForwardArrays:
        x = x.to(self.device, memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return ForwardArrays(self.fn(x).float().cpu().numpy())


@RUNTIMES.register("auto")
def _auto(cfg: ModelConfig, model: nn.Module) -> Optional[Runtime]:
    """The fastest runtime this model and machine allow: OpenVINO on a CPU (2.7x eager torch at batch 1
    here), else eager torch (a GPU, no openvino wheel, or an operator ONNX cannot export); logged."""
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    why = ("the model runs on a GPU" if not on_cpu else
           "the openvino package is not installed" if not _importable("openvino") else "")
    if why:
        log.info("model.runtime auto: eager torch (%s)", why)
        return None
    try:
        runtime = OpenVinoRuntime(cfg, model)
    except Exception as exc:  # noqa: BLE001  (an operator ONNX cannot export, a compile failure: any of them)
        log.warning("model.runtime auto: eager torch (this model does not export to OpenVINO: %s)",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    log.info("model.runtime auto: openvino (CPU%s)", ", with local features" if runtime.has_local else "")
    return runtime


@RUNTIMES.register("torch")
def _torch_runtime(cfg: ModelConfig, model: nn.Module) -> Optional[Runtime]:
    return None  # DescriptorExtractor's own eager path


@RUNTIMES.register("compile")
def _compile(cfg: ModelConfig, model: nn.Module) -> Optional[Runtime]:
    return CompiledRuntime(cfg, model)


@RUNTIMES.register("onnxruntime")
def _onnxruntime(cfg: ModelConfig, model: nn.Module) -> Optional[Runtime]:
    return OnnxRuntime(cfg, model)


@RUNTIMES.register("openvino")
def _openvino(cfg: ModelConfig, model: nn.Module) -> Optional[Runtime]:
    return OpenVinoRuntime(cfg, model)


def build_runtime(cfg: ModelConfig, model: nn.Module) -> Optional[Runtime]:
    """The runtime `cfg.runtime` names; None = eager torch."""
    return RUNTIMES.get(cfg.runtime)(cfg, model)
