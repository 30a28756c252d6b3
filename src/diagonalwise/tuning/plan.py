"""A tuning plan: per qualified layer name, the chosen algorithm; saved as JSON, applied to any
instance of the same model."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..atomic_files import PlanFile
from ..modules import DIAGONALWISE_TYPE, is_converted, swap_modules
from .capture import is_tunable
from .choice import LayerChoice

PLAN_FORMAT = 1


@dataclass
class Plan(PlanFile):
    """Per qualified layer name, the chosen algorithm with its measurements; JSON round-trips and
    applies to any instance of the same model."""

    layers: dict[str, LayerChoice] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    #: The whole-model check (:func:`check_whole_model`): seconds tuned and native, and whether
    #: the per-layer choices were kept.
    whole_model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "environment": self.environment,
                "layers": {name: choice.to_dict() for name, choice in self.layers.items()},
                "whole_model": self.whole_model}

    @classmethod
    def from_dict(cls, data: object) -> Plan:
        """The plan in ``data``; a ValueError saying what is wrong if it is not one."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or \
                not isinstance(data.get("layers"), dict):
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a diagonalwise plan (format {found!r}, expected {PLAN_FORMAT} "
                             "with a 'layers' mapping); write one with Plan.save")
        layers = {}
        for name, choice in data["layers"].items():
            try:
                layers[name] = LayerChoice.from_dict(choice)
            except ValueError as error:
                raise ValueError(f"plan layer {name!r}: {error}") from None
        return cls(layers, data.get("environment", {}), data.get("whole_model", {}))

    def summary(self) -> dict[str, int]:
        """How many layers chose each algorithm."""
        counts: dict[str, int] = {}
        for choice in self.layers.values():
            counts[choice.algorithm] = counts.get(choice.algorithm, 0) + 1
        return dict(sorted(counts.items()))

    def apply(self, model: nn.Module) -> nn.Module:
        """Set every layer the plan names to its algorithm, converting plain convolutions; returns
        the root. All or nothing: every layer is checked first (it exists, it is a grouped
        convolution, its algorithm accepts its groups), and on any error nothing changes."""
        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"the plan names layers this model does not have: {missing[:5]}; "
                             "was it tuned on another model?")
        algorithms = {}
        for name, choice in self.layers.items():
            module = modules[name]
            if not is_tunable(module):
                raise ValueError(f"layer {name!r} is a {type(module).__name__}, which the plan "
                                 "cannot set: only grouped nn.Conv1d/2d/3d are tunable")
            algorithms[name] = choice.resolve()
            if not algorithms[name].accepts_groups(module.groups):
                raise ValueError(f"layer {name!r}: {choice.algorithm} cannot run groups="
                                 f"{module.groups}; was the plan tuned on another model?")

        def replace(module: nn.Module, name: str) -> nn.Module:
            if name not in algorithms:
                return module
            algorithm = algorithms[name]
            if is_converted(module):
                module.set_algorithm(algorithm=algorithm)
                return module
            return DIAGONALWISE_TYPE[type(module)].from_conv(module, algorithm=algorithm)

        return swap_modules(model, replace)
