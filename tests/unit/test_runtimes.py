"""model.runtime: every runtime (torch.compile, onnxruntime, openvino) gives eager torch's descriptors within
TOL (max abs difference on unit-norm descriptors of real corridor images), and the exported ones a re-ranking
model's local features too; the exported runtimes cache their
ONNX file (reused, a corrupt one rebuilt), take torch's thread count and say clearly what to install when
their package is missing; `vpr-core export` writes files that load and give the same descriptors."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

import numpy as np
import pytest

from vpr_core.config import ConfigError, config_from_dict, load_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOL = 1e-4  # max abs difference of unit-norm descriptors, onnxruntime vs eager torch


def _cfg(tmp, **kw):
    m = load_config().model
    return dataclasses.replace(m, runtime="onnxruntime", runtime_cache=str(tmp), device="cpu", **kw)


@pytest.fixture(scope="module")
def onnx_extractor(default_model, tmp_path_factory):
    from vpr_core.models import DescriptorExtractor
    return DescriptorExtractor(_cfg(tmp_path_factory.mktemp("ort_cache")), default_model)


def test_onnx_descriptors_equal_eager_torch(onnx_extractor, corridor_images, corridor_descriptors):
    assert onnx_extractor.runtime.exported
    got = onnx_extractor(corridor_images)
    assert got.shape == corridor_descriptors.shape and got.dtype == np.float32
    assert np.abs(got - corridor_descriptors).max() <= TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # batch-1 (the node's path) matches too
    one = onnx_extractor(corridor_images[:1])
    assert np.abs(one[0] - corridor_descriptors[0]).max() <= TOL
    assert onnx_extractor.extract(corridor_images[:2], with_local=True).local is None


def test_cache_reused_then_corrupt_file_rebuilt(onnx_extractor, default_model, corridor_images,
                                                corridor_descriptors):
    from vpr_core.models import DescriptorExtractor
    path = onnx_extractor.runtime.path
    mtime = path.stat().st_mtime_ns
    again = DescriptorExtractor(onnx_extractor.cfg, default_model)
    assert again.runtime.path == path and not again.runtime.exported
    assert path.stat().st_mtime_ns == mtime
    path.write_bytes(b"not an onnx model")
    fixed = DescriptorExtractor(onnx_extractor.cfg, default_model)
    assert fixed.runtime.exported and path.stat().st_size > 1_000_000
    assert np.abs(fixed(corridor_images[:4]) - corridor_descriptors[:4]).max() <= TOL
    assert [p for p in os.listdir(path.parent) if p.endswith(".tmp")] == []


def test_cache_key_follows_the_graph_and_weights_not_the_label(tmp_path):
    import torch
    from vpr_core.models.runtimes import cache_key
    base, model = _cfg(tmp_path), torch.nn.Linear(4, 3)
    key = cache_key(base, "onnx", model)
    assert key == cache_key(dataclasses.replace(base, batch_size=1, device="auto", name="x"), "onnx", model)
    other = dataclasses.replace(base, preprocess=dataclasses.replace(base.preprocess, image_size=[224, 224]))
    assert key != cache_key(other, "onnx", model)
    assert key != cache_key(dataclasses.replace(base, aggregator={"name": "gem", "p": 2.0}), "onnx", model)
    with torch.no_grad():
        model.weight[0, 0] += 1e-3  # weights changed in memory (training, k-means centres): a new export
    assert key != cache_key(base, "onnx", model)


def test_missing_package_is_a_clear_error(monkeypatch, default_model, tmp_path):
    from vpr_core.models.runtimes import OnnxRuntime
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ConfigError, match=r"model.runtime onnxruntime needs the onnxruntime package: "
                                          r"pip install onnxruntime==1\.30\.0"):
        OnnxRuntime(_cfg(tmp_path), default_model)


def test_compile_refuses_a_local_head(default_model):
    """torch.compile runs the global descriptor only: a re-ranking model is refused with the runtimes that can."""
    from torch import nn
    from vpr_core.models.runtimes import CompiledRuntime
    m = nn.Module()
    m.local_head = nn.Identity()
    with pytest.raises(ConfigError, match="local head.*onnxruntime or openvino"):
        CompiledRuntime(load_config().model, m)


@pytest.fixture(scope="module")
def rerank_model(repo_root):
    from vpr_core.models import build_model
    return build_model(load_config(str(repo_root / "config" / "default_rerank.yaml")).model)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_local_features_through_exported_runtimes_equal_eager_torch(runtime, rerank_model, repo_root, tmp_path_factory,
                                                                    corridor_images):
    """A re-ranking model (the stride-16 feature_map head) runs whole in the exported graph: the same global
    descriptors, the same local cells at the same pixels, descriptors within float16 storage, and the same
    mutual-nearest-neighbour match counts the re-ranker orders candidates by."""
    pytest.importorskip(runtime)
    from vpr_core.models import DescriptorExtractor
    from vpr_core.rerank import build_reranker
    cfg = load_config(str(repo_root / "config" / "default_rerank.yaml"))
    eager = DescriptorExtractor(dataclasses.replace(cfg.model, runtime="torch"), rerank_model)
    ex = DescriptorExtractor(dataclasses.replace(cfg.model, runtime=runtime, device="cpu",
                                                 runtime_cache=str(tmp_path_factory.mktemp("cache"))), rerank_model)
    assert ex.runtime.has_local and ex.runtime.exported
    ref, got = eager.extract(corridor_images), ex.extract(corridor_images)
    assert np.abs(got.global_desc - ref.global_desc).max() <= TOL
    mnn = build_reranker(cfg.rerank)
    for a, b in zip(ref.local, got.local):
        assert len(a) == len(b) == 300 and a.image_hw == b.image_hw
        ia, ib = np.lexsort(a.xy.T), np.lexsort(b.xy.T)  # the same cells, whatever order near-equal weights give
        assert np.array_equal(a.xy[ia], b.xy[ib])
        assert np.abs(a.desc[ia].astype(np.float32) - b.desc[ib].astype(np.float32)).max() <= 2e-3
    for i in range(1, len(corridor_images)):
        assert mnn.verify(got.local[0], got.local[i]).num_matches == mnn.verify(ref.local[0], ref.local[i]).num_matches
    assert ex.extract(corridor_images[:1]).local[0].dim == 112  # batch 1, the node's path


def test_bad_runtime_name_refused_by_validation():
    with pytest.raises(ConfigError, match=r"model\.runtime"):
        config_from_dict({"model": {"runtime": "tensorrt"}})
    for name in ("torch", "compile", "onnxruntime", "openvino"):
        assert config_from_dict({"model": {"runtime": name}}).model.runtime == name


def test_cli_export_writes_a_loadable_file(tmp_path, corridor_images, corridor_descriptors, capsys):
    import onnxruntime as ort
    from vpr_core.cli import main
    out = tmp_path / "m.onnx"
    assert main(["export", "--format", "onnx", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    from vpr_core.models.preprocess import Preprocessor
    pre = Preprocessor(load_config().model.preprocess, (0.5,) * 3, (0.5,) * 3)
    got = sess.run(["global_desc"], {"images": pre(corridor_images[:3]).numpy()})[0]
    assert np.abs(got - corridor_descriptors[:3]).max() <= TOL


OV_TOL = TOL  # measured max abs difference on corridor images: 4e-7 (fp32 inference hint)


@pytest.fixture(scope="module")
def openvino_extractor(default_model, onnx_extractor):
    pytest.importorskip("openvino")
    from vpr_core.models import DescriptorExtractor
    return DescriptorExtractor(dataclasses.replace(onnx_extractor.cfg, runtime="openvino"), default_model)


def test_openvino_descriptors_close_to_eager_torch(openvino_extractor, onnx_extractor, corridor_images,
                                                   corridor_descriptors):
    assert not openvino_extractor.runtime.exported  # the ONNX file onnxruntime exported is shared
    assert openvino_extractor.runtime.path == onnx_extractor.runtime.path
    got = openvino_extractor(corridor_images)
    assert got.shape == corridor_descriptors.shape and got.dtype == np.float32
    diff = np.abs(got - corridor_descriptors).max()
    assert diff <= OV_TOL, diff
    # the same nearest database image for every query as eager torch (what Recall@1 reads)
    assert (np.argmax(got @ got.T - 2 * np.eye(len(got)), 1)
            == np.argmax(corridor_descriptors @ corridor_descriptors.T - 2 * np.eye(len(got)), 1)).mean() >= 0.98


def test_openvino_missing_package_is_a_clear_error(monkeypatch, default_model, tmp_path):
    from vpr_core.models.runtimes import OpenVinoRuntime
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match=r"model.runtime openvino needs the openvino package: "
                                          r"pip install openvino==2026\.4\.1"):
        OpenVinoRuntime(_cfg(tmp_path), default_model)


def test_compile_runtime_equals_eager_torch(default_model, corridor_images, corridor_descriptors):
    """torch.compile, warmed up when built (about 40 s on one CPU core; cached by inductor afterwards)."""
    from vpr_core.models import DescriptorExtractor
    cfg = dataclasses.replace(load_config().model, runtime="compile", batch_size=1)
    ex = DescriptorExtractor(cfg, default_model)
    got = ex(corridor_images)  # batch 1, the size it was warmed up at: no compilation here
    assert got.shape == corridor_descriptors.shape and got.dtype == np.float32
    assert np.abs(got - corridor_descriptors).max() <= TOL


def test_cli_export_openvino_ir(tmp_path, corridor_images, corridor_descriptors, capsys):
    ov = pytest.importorskip("openvino")
    from vpr_core.cli import main
    from vpr_core.models.preprocess import Preprocessor
    assert main(["export", "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 0
    assert (tmp_path / "m.bin").is_file() and [p.name for p in tmp_path.iterdir()] != []
    compiled = ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pre = Preprocessor(load_config().model.preprocess, (0.5,) * 3, (0.5,) * 3)
    got = compiled(pre(corridor_images[:3]).numpy())[compiled.output(0)]
    assert np.abs(got - corridor_descriptors[:3]).max() <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no temporary files left


def test_threads_follow_torch(onnx_extractor, default_model):
    """runtime.threads sets torch's pool (vpr_core.runtime.apply_threads); the exported runtimes take the same."""
    import torch
    from vpr_core.models.runtimes import OnnxRuntime
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rt = OnnxRuntime(onnx_extractor.cfg, default_model)
        assert rt.session.get_session_options().intra_op_num_threads == 1
        if importlib.util.find_spec("openvino") is not None:
            from vpr_core.models.runtimes import OpenVinoRuntime
            ov_rt = OpenVinoRuntime(onnx_extractor.cfg, default_model)
            assert int(ov_rt.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    finally:
        torch.set_num_threads(before)
