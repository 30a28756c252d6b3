"""``nn.Conv1d/2d/3d`` subclasses that run a chosen algorithm (by default the refactorization).

Equivalence contract: a ``DiagonalwiseConv2d`` computes exactly what ``nn.Conv2d`` with the same
arguments and parameters computes, in value and in every gradient, up to floating-point rounding.
It has the same parameters (``weight`` of shape ``(out_channels, in_channels // groups, *kernel)``,
``bias``), so state_dicts load either way, and it supports every ``padding_mode``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .algorithms import Algorithm
from .functional import resolve_algorithm
from .reference import NATIVE_CONV

_Size = int | tuple[int, ...]


class _DiagonalwiseConvNd:
    """Shared behaviour of the three modules; combined with the nn.ConvNd it replaces."""

    #: The torch layer this module replaces; ``to_native`` gives one back.
    native_type: type[nn.Conv1d | nn.Conv2d | nn.Conv3d]
    algorithm: Algorithm

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: _Size | str = 0,
        dilation: _Size = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        block_size: int | None = None,
        algorithm: str | Algorithm | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.set_algorithm(block_size=block_size, algorithm=algorithm)

    def set_algorithm(
        self, *, block_size: int | None = None, algorithm: str | Algorithm | None = None
    ) -> None:
        """Choose how this layer computes: ``block_size`` groups per dense block (``None``: the
        paper's default), or a named ``algorithm``. Validated here, once, not in forward."""
        self.algorithm = resolve_algorithm(
            self.groups, self.in_channels // self.groups, block_size, algorithm
        )

    @property
    def block_size(self) -> int:
        """Groups per dense block of the current algorithm (1: not refactorized)."""
        return self.algorithm.block_size

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # Mirrors nn.ConvNd._conv_forward, with the algorithm in place of F.convNd.
        if self.padding_mode != "zeros":
            input = nn.functional.pad(
                input, self._reversed_padding_repeated_twice, mode=self.padding_mode
            )
            padding = (0,) * len(self.kernel_size)
        else:
            padding = self.padding
        if torch.jit.is_tracing():
            # traced graphs (ONNX export, torch.jit.trace) get the standard grouped convolution:
            # the same numbers, and an op every exporter knows
            return NATIVE_CONV[len(self.kernel_size)](input, weight, bias, self.stride, padding,
                                                      self.dilation, self.groups)
        return self.algorithm(input, weight, bias, self.stride, padding, self.dilation, self.groups)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script compiles the plain torch layer (same Parameters, same numbers)
        return self.to_native()

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", block_size={self.block_size}"
        if self.algorithm.name != f"block_diagonal:{self.block_size}":
            text += f", algorithm={self.algorithm.name}"
        return text

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv1d | nn.Conv2d | nn.Conv3d,
        *,
        block_size: int | None = None,
        algorithm: str | Algorithm | None = None,
    ):
        """A module of this class with the same configuration and the very same Parameter objects
        as ``conv`` (nothing is copied: optimizer state, tied weights and DDP stay valid)."""
        if not isinstance(conv, cls.native_type):
            raise TypeError(f"{cls.__name__}.from_conv takes an {cls.native_type.__module__}."
                            f"{cls.native_type.__qualname__}, got {type(conv).__name__}")
        layer = _rebuild(conv, cls)
        layer.set_algorithm(block_size=block_size, algorithm=algorithm)
        return layer

    def to_native(self) -> nn.Conv1d | nn.Conv2d | nn.Conv3d:
        """The plain torch layer with the very same Parameter objects."""
        return _rebuild(self, self.native_type)


#: The hook registries of an nn.Module; a rebuilt layer takes over the very same dicts, so the
#: handles the user holds still remove them.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")

#: Attributes of ours that a plain torch layer does not get back.
_OWN_ATTRIBUTES = {"algorithm"}


def _has_meta_tensor(module: nn.Module) -> bool:
    return any(t is not None and t.is_meta
               for t in [*module._parameters.values(), *module._buffers.values()])


def _rebuild(conv: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """An instance of ``cls`` that is ``conv`` in all but its class: the same Parameter and buffer
    objects, the same hooks (forward, pre-forward, backward, state-dict) and the same extra
    attributes. So hook-based reparametrizations (``torch.nn.utils.prune``, the legacy
    ``weight_norm`` and ``spectral_norm``, whose ``weight`` is recomputed by a pre-forward hook
    from ``weight_orig``/``weight_g``/``weight_v``...) keep working unchanged.

    Built on the meta device so no weight is allocated; a meta tensor left behind would be a bug
    here, so it raises instead of returning garbage.
    """
    layer = cls.__new__(cls)
    native = next(base for base in cls.__mro__ if base in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    native.__init__(
        layer, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
    )
    layer._parameters = dict(conv._parameters)
    layer._buffers = dict(conv._buffers)
    layer._non_persistent_buffers_set = set(conv._non_persistent_buffers_set)
    for name in _HOOK_DICTS:
        setattr(layer, name, getattr(conv, name))
    layer._is_full_backward_hook = conv._is_full_backward_hook
    for hooks in (layer._load_state_dict_pre_hooks, layer._state_dict_pre_hooks):
        for key, hook in hooks.items():
            # a hook registered "with module" holds a weak reference to the old one
            if getattr(hook, "with_module", False) and hook.module() is conv:
                hooks[key] = type(hook)(hook.hook, layer)
    # a reparametrized weight (prune's) or the user's own attributes
    vars(layer).update({name: value for name, value in vars(conv).items()
                        if name not in vars(layer) and name not in _OWN_ATTRIBUTES})
    layer.train(conv.training)
    if _has_meta_tensor(layer) and not _has_meta_tensor(conv):
        raise RuntimeError(f"diagonalwise: rebuilding a {type(conv).__name__} as {cls.__name__} "
                           "left a meta tensor behind; please report this as a bug")
    return layer


class DiagonalwiseConv1d(_DiagonalwiseConvNd, nn.Conv1d):
    """``nn.Conv1d`` computed by a chosen algorithm; extra keywords ``block_size``, ``algorithm``.

    Equivalent to ``nn.Conv1d`` with the same arguments (value and gradients); input (N, C, L).
    """

    native_type = nn.Conv1d


class DiagonalwiseConv2d(_DiagonalwiseConvNd, nn.Conv2d):
    """``nn.Conv2d`` computed by a chosen algorithm; extra keywords ``block_size``, ``algorithm``.

    Equivalent to ``nn.Conv2d`` with the same arguments (value and gradients); input (N, C, H, W).
    """

    native_type = nn.Conv2d


class DiagonalwiseConv3d(_DiagonalwiseConvNd, nn.Conv3d):
    """``nn.Conv3d`` computed by a chosen algorithm; extra keywords ``block_size``, ``algorithm``.

    Equivalent to ``nn.Conv3d`` with the same arguments (value and gradients); input (N, C, D, H, W).
    """

    native_type = nn.Conv3d


#: The exact torch type each module replaces, and back.
DIAGONALWISE_TYPE = {cls.native_type: cls for cls in
                     (DiagonalwiseConv1d, DiagonalwiseConv2d, DiagonalwiseConv3d)}


def is_converted(module: nn.Module) -> bool:
    """Whether ``module`` is one of the diagonalwise convolutions (:func:`diagonalwise.convert`
    made it, or it was built as one)."""
    return isinstance(module, _DiagonalwiseConvNd)


def swap_modules(root: nn.Module, fn: Callable[[nn.Module, str], nn.Module]) -> nn.Module:
    """Replace every module of the tree by ``fn(module, qualified_name)`` (``""`` for the root)
    and return the new root. ``fn`` returns the module itself to keep it. A module shared by
    several parents is passed to ``fn`` once and replaced in every parent by the same result;
    the children of what ``fn`` returns are visited after it."""
    replaced: dict[int, nn.Module] = {}

    def visit(module: nn.Module, name: str) -> nn.Module:
        if id(module) in replaced:
            return replaced[id(module)]
        new = fn(module, name)
        replaced[id(module)] = new
        for child_name, child in list(new._modules.items()):
            if child is not None:
                new._modules[child_name] = visit(child, f"{name}.{child_name}" if name else child_name)
        return new

    return visit(root, "")
