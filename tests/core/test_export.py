"""Converted models export: torch.jit.script compiles the plain torch layer, tracing and ONNX
export record the standard grouped convolution (the same numbers, an op every exporter knows)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import diagonalwise as dw
from tests.equivalence import TOLERANCES


def converted_model():
    torch.manual_seed(0)
    native = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.ReLU())
    return dw.convert(native, block_size=4).double()


def test_torch_jit_script_compiles_a_converted_model():
    model, x = converted_model(), torch.randn(2, 8, 7, 7, dtype=torch.float64)
    expected = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected, **TOLERANCES[torch.float64])
    # torch.jit.script puts what __prepare_scriptable__ returns into the model too
    assert type(model[0]) is nn.Conv2d


def test_tracing_records_the_standard_grouped_convolution():
    model, x = converted_model(), torch.randn(2, 8, 7, 7, dtype=torch.float64)
    traced = torch.jit.trace(model, (x,))
    graph = str(traced.inlined_graph)
    assert "diag_embed" not in graph and "_convolution" in graph
    torch.testing.assert_close(traced(x), model(x), **TOLERANCES[torch.float64])


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_of_a_converted_model(dynamo):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model, x = converted_model().float(), torch.randn(2, 8, 7, 7)
    if dynamo:
        proto = torch.onnx.export(model, (x,), dynamo=True).model_proto
    else:
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False)
        proto = onnx.load_from_string(buffer.getvalue())
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    assert len(convs) == 1
    if not dynamo:
        assert [a.i for a in convs[0].attribute if a.name == "group"] == [8]
