"""ONNX in and out: the graph written from the weights equals torch for every activation, and
someone else's file is checked before it runs (operators, contract, memory bounded per frame)."""

from __future__ import annotations

import copy
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import mean_of_features, onnx_file
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.features import Standardization, chroma_correction, transform_features
from tinyvmaf.model import VmafNet, mlp
from tinyvmaf.onnx_io import ONNX_ACTIVATIONS, OnnxVmaf, check_graph, model_from_weights, onnx_graph
from tinyvmaf.teacher.function import DOMAIN_HIGH, DOMAIN_LOW, load_teacher


def random_model(activation: nn.Module, log_motion: bool) -> VmafNet:
    torch.manual_seed(1)
    net = mlp([16, 8])
    net[1], net[3] = activation, copy.deepcopy(activation)
    model = VmafNet(net, log_motion)
    box = np.random.default_rng(0).uniform(DOMAIN_LOW, DOMAIN_HIGH, size=(1000, 6))  # fitted as on training frames
    model.set_standardization(
        Standardization.fit(transform_features(box, model.motion), np.full(1000, 50.0) + box[:, 0])
    )
    return model.eval()


ACTIVATIONS = [cls() for cls in ONNX_ACTIVATIONS if cls is not nn.GELU] + [nn.GELU(), nn.GELU(approximate="tanh")]


ACTIVATIONS += [nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Softplus(beta=2.0), nn.Hardtanh(-2.0, 3.0)]


def test_a_model_that_broadcasts_to_huge_tensors_is_refused(tmp_path):
    wide = numpy_helper.from_array(np.zeros((1, 100_000), np.float32), "wide")
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["m"], keepdims=1, axes=[1]),
        helper.make_node("Add", ["m", "wide"], ["w"]),  # [N, 100000]
        helper.make_node("ReduceMean", ["w"], ["vmaf"], keepdims=0, axes=[1]),
    ]
    out = helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch"])
    with pytest.raises(
        TinyVmafError, match=r"tensor 'w' of shape \['batch', 100000\] holds more than 4,096 values per frame"
    ):
        OnnxVmaf(onnx_file(tmp_path / "wide.onnx", nodes, [out], [wide], opset=13))
    square = [
        helper.make_node("Gemm", ["features", "features"], ["nn"], transB=1),  # [N, N]
        helper.make_node("ReduceMean", ["nn"], ["vmaf"], keepdims=0, axes=[1]),
    ]
    with pytest.raises(TinyVmafError, match=r"tensor 'nn' has shape \['batch', 'batch'\]"):
        OnnxVmaf(onnx_file(tmp_path / "square.onnx", square, [out], opset=13))


@pytest.mark.parametrize(
    "feed, why",
    [
        (helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", 6]), "is DOUBLE"),
        (helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6, 1]), "is FLOAT"),
        (helper.make_tensor_value_info("features", TensorProto.FLOAT, [4, 6]), r"is FLOAT \[4, 6\]"),
        (helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5]), r"is FLOAT \['batch', 5\]"),
    ],
    ids=["float64", "rank 3", "fixed batch", "5 features"],
)
def test_inputs_of_another_type_rank_or_batch_are_refused_in_one_line(feed, why, tmp_path):
    nodes = [helper.make_node("ReduceMean", ["features"], ["vmaf"], keepdims=0, axes=[1])]
    out = helper.make_tensor_value_info("vmaf", feed.type.tensor_type.elem_type, ["batch"])
    path = onnx_file(tmp_path / "m.onnx", nodes, [out], feed=feed, opset=13)
    with pytest.raises(
        TinyVmafError, match=rf"^{path}: input 'features' {why}.*not float32 \[N, 6\] or \[N, 4\] for any N"
    ):
        OnnxVmaf(path)


def test_outputs_of_the_wrong_shape_are_refused_in_one_line(tmp_path):
    nodes = [helper.make_node("Identity", ["features"], ["vmaf"])]
    out = helper.make_tensor_value_info("vmaf", TensorProto.FLOAT, ["batch", 6])
    path = onnx_file(tmp_path / "m.onnx", nodes, [out], opset=13)
    with pytest.raises(TinyVmafError, match=r"output 'vmaf' is FLOAT \['batch', 6\], not float32 \[N\] or \[N, 1\]"):
        OnnxVmaf(path)
    two = [helper.make_node("Identity", ["features"], ["a"]), helper.make_node("Identity", ["features"], ["b"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 6]) for n in "ab"]
    with pytest.raises(TinyVmafError, match=r"has 1 input\(s\) and 2 output\(s\)"):
        OnnxVmaf(onnx_file(tmp_path / "two.onnx", two, outs, opset=13))


def test_a_model_of_the_right_contract_scores(tmp_path):
    model = OnnxVmaf(mean_of_features(tmp_path / "ok.onnx"))
    x = np.full((5000, 6), 0.5)  # more than one run of frames
    assert np.allclose(model.predict(lambda names: x), 50.0)
    nonregular = tmp_path / "fifo.onnx"
    os.mkfifo(nonregular)
    with pytest.raises(TinyVmafError, match="not a regular file"):
        OnnxVmaf(nonregular)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda m: repr(m))
@pytest.mark.parametrize("log_motion", [False, True])
def test_onnx_graph_matches_torch_for_every_activation(activation, log_motion):
    model = random_model(activation, log_motion)
    graph = onnx_graph(model)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (feed,), (out,) = session.get_inputs(), session.get_outputs()
    assert (feed.name, feed.shape, out.name, out.shape) == ("features", ["batch", 6], "vmaf", ["batch"])
    rng = np.random.default_rng(2)
    for n in (1, 100_000):
        x = rng.uniform(DOMAIN_LOW, DOMAIN_HIGH, size=(n, 6)).astype(np.float32)
        assert check_graph(graph, model, x) <= 1e-4  # checker, then ONNX Runtime against torch
    assert {n.op_type for n in graph.graph.node} >= {"Gemm", "Clip"}


def test_onnx_graph_refuses_what_it_cannot_write():
    with pytest.raises(TinyVmafError, match=r"^arch.net: no ONNX form for layer PReLU; activations known: .*SiLU"):
        onnx_graph(random_model(nn.PReLU(), False))


def test_a_graph_that_disagrees_with_torch_is_refused():
    model = random_model(nn.SiLU(), False)
    graph = onnx_graph(model)
    with torch.no_grad():
        model.net[0].bias += 0.5  # the torch module moved on: the file no longer describes it
    x = np.random.default_rng(3).uniform(DOMAIN_LOW, DOMAIN_HIGH, size=(100, 6)).astype(np.float32)
    with pytest.raises(TinyVmafError, match=r"^the ONNX graph: ONNX Runtime disagrees with torch"):
        check_graph(graph, model, x)


def test_a_four_input_stand_in_of_a_0_to_110_teacher_as_onnx():
    """The contract of a v1.0.16 4K 3H stand-in: [N, 4] in its teacher's column order, its
    motion3 logged, scores clipped to [0, 110], ONNX Runtime equal to torch on every frame."""
    teacher = load_teacher("vmaf_v1.0.16_3d0h_2160")
    torch.manual_seed(2)
    model = VmafNet(mlp([8], "SiLU", 4), True, teacher.feature_columns, teacher.clip)
    box = np.random.default_rng(0).uniform(*teacher.domain, size=(1000, 4))
    model.set_standardization(Standardization.fit(transform_features(box, 3), np.full(1000, 100.0) + 20 * box[:, 2]))
    proto = onnx_graph(model.eval())
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1] == 4
    check_graph(proto, model, box)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["vmaf"], {"features": box.astype(np.float32)}
    )[0]
    assert got.max() == 110.0 and (got > 100).mean() > 0.1  # scores above 100 survive; the clip is 110's
    with pytest.raises(TinyVmafError, match="the net takes 6 features, but its teacher gives 4"):
        VmafNet(mlp([8]), False, teacher.feature_columns, teacher.clip)


def _saved_and_read(state: dict, path) -> dict:
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def test_weights_that_declare_more_than_they_hold_or_too_many_are_refused_before_allocating(tmp_path):
    """A state dict of stride-0 views (89 KB declaring 499 layers of 4096x4096 took 5.5 GB before a
    traceback), and one of more weights than a tiny model holds, are one line each."""
    views = {f"net.{2 * i}.weight": torch.zeros(1).expand(4096, 4096 if i else 6) for i in range(3)}
    views |= {f"net.{2 * i}.bias": torch.zeros(1).expand(4096) for i in range(3)}
    with pytest.raises(
        TinyVmafError, match=r"^m.pt: tensor 'net.0.weight' of shape \(4096, 6\) declares more values than"
    ):
        model_from_weights(_saved_and_read(views, tmp_path / "v.pt"), "ReLU", False, "m.pt")
    big = {"net.0.weight": torch.zeros(1000, 6), "net.0.bias": torch.zeros(1000), "net.2.weight": torch.zeros(1000, 1000),
           "net.2.bias": torch.zeros(1000), "net.4.weight": torch.zeros(1, 1000), "net.4.bias": torch.zeros(1)}  # fmt: skip
    with pytest.raises(
        TinyVmafError, match=r"^m.pt: 1,009,001 weights, more than the 1,000,000 a tiny model may hold$"
    ):
        model_from_weights(_saved_and_read(big, tmp_path / "b.pt"), "ReLU", False, "m.pt")


def test_a_v1_stand_in_reads_speed_chroma_0_as_its_teacher_does_in_torch_and_onnx():
    """Content with no chroma: the teacher reads speed_chroma_uv 0 as c (1 - adm3), and so does a
    stand-in with the teacher's chroma correction, in torch and in its ONNX graph; rebuilt from its
    weights it keeps it."""
    name = "vmaf_v1.0.16_5d0h"
    teacher, chroma = load_teacher(name), chroma_correction(name, True)
    box = np.random.default_rng(3).uniform(*teacher.domain, size=(2000, 4))
    box[::2, chroma[2]] = 0.0  # half the frames greyscale
    corrected = transform_features(box, None, chroma)
    assert np.array_equal(corrected[1::2], box[1::2])  # colour frames untouched
    assert np.allclose(corrected[::2, chroma[2]], 120 * (1 - box[::2, chroma[1]]))
    assert np.abs(teacher(corrected) - teacher(box)).max() < 1e-3  # what the teacher reads, exactly
    torch.manual_seed(4)
    model = VmafNet(mlp([8], "SiLU", 4), False, teacher.feature_columns, teacher.clip, chroma)
    model.set_standardization(Standardization.fit(corrected, teacher(box)))
    plain = VmafNet(mlp([8], "SiLU", 4), False, teacher.feature_columns, teacher.clip)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        x = torch.tensor(box, dtype=torch.float32)
        differs = (model.predict(x) != plain.predict(x)).numpy()
    assert differs[::2].mean() > 0.9 and not differs[1::2].any()
    assert check_graph(onnx_graph(model.eval()), model, box) <= 1e-4
    rebuilt = model_from_weights(model.state_dict(), "SiLU", False, "m.pt", name, True)
    assert rebuilt.chroma == chroma
    with pytest.raises(TinyVmafError, match=r"^m.pt: chroma_correction is set, but teacher vmaf_v0.6.1 has none$"):
        model_from_weights(random_model(nn.SiLU(), False).state_dict(), "SiLU", False, "m.pt", "vmaf_v0.6.1", True)
    with pytest.raises(TinyVmafError, match=r"^m.pt: chroma_correction is 'yes', not true or false$"):
        model_from_weights(model.state_dict(), "SiLU", False, "m.pt", name, "yes")
