"""The part of Caffe's ``caffe.proto`` that model files with the layers we read use: the messages
and fields below keep Caffe's names and field numbers (BVLC/caffe, src/caffe/proto/caffe.proto),
so ``.caffemodel`` files from Caffe read here and files written here read in Caffe. The schema is
built at import into a private descriptor pool: no ``protoc``, no generated code.

A prototxt field that is not listed fails to parse with its line and name, which is the point: a
layer option we do not know would otherwise be silently ignored.
"""

from __future__ import annotations

from functools import cache

PACKAGE = "caffe"

ENGINE = {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}

#: enum name -> values; "Message.Enum" for an enum nested in a message, as Caffe nests them
ENUMS = {
    "Phase": {"TRAIN": 0, "TEST": 1},
    "ParamSpec.DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1},
    "FillerParameter.VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2},
    "ConvolutionParameter.Engine": ENGINE,
    "PoolingParameter.PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "PoolingParameter.Engine": ENGINE,
    "PoolingParameter.RoundMode": {"CEIL": 0, "FLOOR": 1},
    "ReLUParameter.Engine": ENGINE,
    "SigmoidParameter.Engine": ENGINE,
    "SoftmaxParameter.Engine": ENGINE,
    "TanHParameter.Engine": ENGINE,
    "EltwiseParameter.EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2},
}

#: message -> fields as (name, number, label, type, default); a type that is not a scalar names a
#: message or enum of this schema; label "*" repeated, "+" repeated and packed, "" optional
MESSAGES = {
    "BlobShape": [("dim", 1, "+", "int64", None)],
    "BlobProto": [
        ("shape", 7, "", "BlobShape", None), ("data", 5, "+", "float", None),
        ("diff", 6, "+", "float", None), ("double_data", 8, "+", "double", None),
        ("double_diff", 9, "+", "double", None), ("num", 1, "", "int32", "0"),
        ("channels", 2, "", "int32", "0"), ("height", 3, "", "int32", "0"),
        ("width", 4, "", "int32", "0"),
    ],
    "NetState": [("phase", 1, "", "Phase", "TEST"), ("level", 2, "", "int32", "0"),
                 ("stage", 3, "*", "string", None)],
    "NetStateRule": [("phase", 1, "", "Phase", None), ("min_level", 2, "", "int32", None),
                     ("max_level", 3, "", "int32", None), ("stage", 4, "*", "string", None),
                     ("not_stage", 5, "*", "string", None)],
    "NetParameter": [
        ("name", 1, "", "string", None), ("input", 3, "*", "string", None),
        ("input_shape", 8, "*", "BlobShape", None), ("input_dim", 4, "*", "int32", None),
        ("force_backward", 5, "", "bool", "false"), ("state", 6, "", "NetState", None),
        ("debug_info", 7, "", "bool", "false"), ("layer", 100, "*", "LayerParameter", None),
    ],
    "ParamSpec": [("name", 1, "", "string", None),
                  ("share_mode", 2, "", "ParamSpec.DimCheckMode", None),
                  ("lr_mult", 3, "", "float", "1"), ("decay_mult", 4, "", "float", "1")],
    "FillerParameter": [
        ("type", 1, "", "string", "constant"), ("value", 2, "", "float", "0"),
        ("min", 3, "", "float", "0"), ("max", 4, "", "float", "1"), ("mean", 5, "", "float", "0"),
        ("std", 6, "", "float", "1"), ("sparse", 7, "", "int32", "-1"),
        ("variance_norm", 8, "", "FillerParameter.VarianceNorm", "FAN_IN"),
    ],
    "LayerParameter": [
        ("name", 1, "", "string", None), ("type", 2, "", "string", None),
        ("bottom", 3, "*", "string", None), ("top", 4, "*", "string", None),
        ("phase", 10, "", "Phase", None), ("loss_weight", 5, "*", "float", None),
        ("param", 6, "*", "ParamSpec", None), ("blobs", 7, "*", "BlobProto", None),
        ("propagate_down", 11, "*", "bool", None), ("include", 8, "*", "NetStateRule", None),
        ("exclude", 9, "*", "NetStateRule", None),
        ("batch_norm_param", 139, "", "BatchNormParameter", None),
        ("clip_param", 148, "", "ClipParameter", None),
        ("concat_param", 104, "", "ConcatParameter", None),
        ("convolution_param", 106, "", "ConvolutionParameter", None),
        ("dropout_param", 108, "", "DropoutParameter", None),
        ("eltwise_param", 110, "", "EltwiseParameter", None),
        ("flatten_param", 135, "", "FlattenParameter", None),
        ("inner_product_param", 117, "", "InnerProductParameter", None),
        ("input_param", 143, "", "InputParameter", None),
        ("pooling_param", 121, "", "PoolingParameter", None),
        ("relu_param", 123, "", "ReLUParameter", None),
        ("scale_param", 142, "", "ScaleParameter", None),
        ("sigmoid_param", 124, "", "SigmoidParameter", None),
        ("softmax_param", 125, "", "SoftmaxParameter", None),
        ("swish_param", 147, "", "SwishParameter", None),
        ("tanh_param", 127, "", "TanHParameter", None),
    ],
    "BatchNormParameter": [("use_global_stats", 1, "", "bool", None),
                           ("moving_average_fraction", 2, "", "float", "0.999"),
                           ("eps", 3, "", "float", "1e-05")],
    "ClipParameter": [("min", 1, "", "float", None), ("max", 2, "", "float", None)],
    "ConcatParameter": [("axis", 2, "", "int32", "1"), ("concat_dim", 1, "", "uint32", "1")],
    "ConvolutionParameter": [
        ("num_output", 1, "", "uint32", None), ("bias_term", 2, "", "bool", "true"),
        ("pad", 3, "*", "uint32", None), ("kernel_size", 4, "*", "uint32", None),
        ("stride", 6, "*", "uint32", None), ("dilation", 18, "*", "uint32", None),
        ("pad_h", 9, "", "uint32", "0"), ("pad_w", 10, "", "uint32", "0"),
        ("kernel_h", 11, "", "uint32", None), ("kernel_w", 12, "", "uint32", None),
        ("stride_h", 13, "", "uint32", None), ("stride_w", 14, "", "uint32", None),
        ("group", 5, "", "uint32", "1"), ("weight_filler", 7, "", "FillerParameter", None),
        ("bias_filler", 8, "", "FillerParameter", None),
        ("engine", 15, "", "ConvolutionParameter.Engine", "DEFAULT"),
        ("axis", 16, "", "int32", "1"), ("force_nd_im2col", 17, "", "bool", "false"),
    ],
    "DropoutParameter": [("dropout_ratio", 1, "", "float", "0.5")],
    "EltwiseParameter": [("operation", 1, "", "EltwiseParameter.EltwiseOp", "SUM"),
                         ("coeff", 2, "*", "float", None),
                         ("stable_prod_grad", 3, "", "bool", "true")],
    "FlattenParameter": [("axis", 1, "", "int32", "1"), ("end_axis", 2, "", "int32", "-1")],
    "InnerProductParameter": [
        ("num_output", 1, "", "uint32", None), ("bias_term", 2, "", "bool", "true"),
        ("weight_filler", 3, "", "FillerParameter", None),
        ("bias_filler", 4, "", "FillerParameter", None), ("axis", 5, "", "int32", "1"),
        ("transpose", 6, "", "bool", "false"),
    ],
    "InputParameter": [("shape", 1, "*", "BlobShape", None)],
    "PoolingParameter": [
        ("pool", 1, "", "PoolingParameter.PoolMethod", "MAX"), ("pad", 4, "", "uint32", "0"),
        ("pad_h", 9, "", "uint32", "0"), ("pad_w", 10, "", "uint32", "0"),
        ("kernel_size", 2, "", "uint32", None), ("kernel_h", 5, "", "uint32", None),
        ("kernel_w", 6, "", "uint32", None), ("stride", 3, "", "uint32", "1"),
        ("stride_h", 7, "", "uint32", None), ("stride_w", 8, "", "uint32", None),
        ("engine", 11, "", "PoolingParameter.Engine", "DEFAULT"),
        ("global_pooling", 12, "", "bool", "false"),
        ("round_mode", 13, "", "PoolingParameter.RoundMode", "CEIL"),
    ],
    "ReLUParameter": [("negative_slope", 1, "", "float", "0"),
                      ("engine", 2, "", "ReLUParameter.Engine", "DEFAULT")],
    "ScaleParameter": [
        ("axis", 1, "", "int32", "1"), ("num_axes", 2, "", "int32", "1"),
        ("filler", 3, "", "FillerParameter", None), ("bias_term", 4, "", "bool", "false"),
        ("bias_filler", 5, "", "FillerParameter", None),
    ],
    "SigmoidParameter": [("engine", 1, "", "SigmoidParameter.Engine", "DEFAULT")],
    "SoftmaxParameter": [("engine", 1, "", "SoftmaxParameter.Engine", "DEFAULT"),
                         ("axis", 2, "", "int32", "1")],
    "SwishParameter": [("beta", 1, "", "float", "1")],
    "TanHParameter": [("engine", 1, "", "TanHParameter.Engine", "DEFAULT")],
}


def _file_descriptor():
    from google.protobuf import descriptor_pb2

    types = descriptor_pb2.FieldDescriptorProto
    scalars = {"float": types.TYPE_FLOAT, "double": types.TYPE_DOUBLE, "int32": types.TYPE_INT32,
               "int64": types.TYPE_INT64, "uint32": types.TYPE_UINT32, "bool": types.TYPE_BOOL,
               "string": types.TYPE_STRING}
    file = descriptor_pb2.FileDescriptorProto(name="diagonalwise_caffe.proto", package=PACKAGE,
                                              syntax="proto2")
    messages = {}
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        messages[name] = message
        for field_name, number, label, kind, default in fields:
            field = message.field.add(name=field_name, number=number)
            field.label = types.LABEL_REPEATED if label else types.LABEL_OPTIONAL
            if label == "+":
                field.options.packed = True
            if kind in scalars:
                field.type = scalars[kind]
            else:
                field.type = types.TYPE_ENUM if kind in ENUMS else types.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{kind}"
            if default is not None:
                field.default_value = default
    for name, values in ENUMS.items():
        owner, _, enum_name = name.rpartition(".")
        enum = (messages[owner].enum_type if owner else file.enum_type).add(name=enum_name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)
    return file


@cache
def message_class(name: str) -> type:
    """The protobuf class of one of Caffe's messages, e.g. ``message_class("NetParameter")``."""
    try:
        from google.protobuf import descriptor_pool, message_factory
    except ImportError:
        raise ImportError("reading Caffe files needs the protobuf package: "
                          "pip install 'diagonalwise[caffe]' (or pip install protobuf)") from None
    pool = _pool(descriptor_pool)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


@cache
def _pool(descriptor_pool):
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_file_descriptor().SerializeToString())
    return pool
