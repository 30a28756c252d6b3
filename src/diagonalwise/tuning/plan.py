"""A tuning plan: per qualified layer name, the chosen algorithm; saved as JSON, applied to any
instance of the same model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..algorithms import get_algorithm
from ..atomic_files import write_json_atomic
from ..modules import DIAGONALWISE_TYPE, is_converted, swap_modules
from .cache import CACHE_FORMAT
from .capture import is_tunable
from .choice import LayerChoice


@dataclass
class Plan:
    """Per qualified layer name, the chosen algorithm with its measurements; JSON round-trips and
    applies to any instance of the same model."""

    layers: dict[str, LayerChoice] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    #: The whole-model check (:func:`check_whole_model`): seconds tuned and native, and whether
    #: the per-layer choices were kept.
    whole_model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": CACHE_FORMAT, "environment": self.environment,
                "layers": {name: asdict(choice) for name, choice in self.layers.items()},
                "whole_model": self.whole_model}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        if data.get("format") != CACHE_FORMAT or not isinstance(data.get("layers"), dict):
            raise ValueError(f"not a diagonalwise plan (format {data.get('format')!r}, "
                             f"expected {CACHE_FORMAT})")
        return cls({name: LayerChoice(**choice) for name, choice in data["layers"].items()},
                   data.get("environment", {}), data.get("whole_model", {}))

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> dict[str, int]:
        """How many layers chose each algorithm."""
        counts: dict[str, int] = {}
        for choice in self.layers.values():
            counts[choice.algorithm] = counts.get(choice.algorithm, 0) + 1
        return dict(sorted(counts.items()))

    def apply(self, model: nn.Module) -> nn.Module:
        """Set every layer the plan names to its algorithm, converting plain convolutions; returns
        the root. A layer name the model lacks is an error."""
        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"the plan names layers this model does not have: {missing[:5]}; "
                             "was it tuned on another model?")

        def replace(module: nn.Module, name: str) -> nn.Module:
            if name not in self.layers:
                return module
            if not is_tunable(module):
                raise ValueError(f"layer {name!r} is a {type(module).__name__}, which the plan "
                                 "cannot set: only grouped nn.Conv1d/2d/3d are tunable")
            algorithm = get_algorithm(self.layers[name].algorithm)
            if is_converted(module):
                module.set_algorithm(algorithm=algorithm)
                return module
            return DIAGONALWISE_TYPE[type(module)].from_conv(module, algorithm=algorithm)

        return swap_modules(model, replace)
