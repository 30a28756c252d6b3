"""Caffe model files in PyTorch: ``load_caffe`` builds an ``nn.Module`` from a deploy
``.prototxt`` (and fills it from a ``.caffemodel``), which trains like any PyTorch model, with
``diagonalwise.tune`` or ``convert`` on its depthwise and grouped convolutions (``Convolution``
with ``group``, or the forks' ``DepthwiseConvolution``/``ConvolutionDepthwise``);
``save_caffemodel`` writes a file that Caffe and OpenCV's DNN module load. Needs ``protobuf``.

Contract: in evaluation mode the model computes what Caffe computes in its TEST phase for the
supported layers, to float32 rounding; write then read gives back every tensor bit for bit.
Anything in a prototxt that would be computed differently is refused with its file, line and key.
"""

from __future__ import annotations

from pathlib import Path

from .caffemodel import load_caffemodel, save_caffemodel
from .model import CaffeModel, build_caffe

__all__ = ["CaffeModel", "load_caffe", "save_caffemodel"]


def load_caffe(prototxt: str | Path, caffemodel: str | Path | None = None) -> CaffeModel:
    """The network a deploy ``prototxt`` describes, with the caffemodel's values if one is given
    (else PyTorch's default initialization). It takes one float tensor per input of the declared
    shape (N may differ) and returns the last layer's top."""
    model = build_caffe(prototxt)
    if caffemodel is not None:
        load_caffemodel(model, caffemodel)
    return model
