"""Building a model from a config that came with a file (a shared run's `.hydra/config.yaml`): only the project's
own builders, named in `BUILDERS`, with arguments of the types their signatures declare.

`hydra.utils.instantiate` calls whatever `_target_` a config names, with whatever arguments, so a config read from
someone else's run folder could open pipes, write files or unpickle (a `_target_` of `webdataset.gopen` with a
`pipe:` URL runs a shell command). Configs the user composed (train.py's command line) are instantiated by Hydra as
usual; configs read from files go through `build_net`. Another project adds its own model with `register_builder`,
in its own code.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synground.models.albef import AlbefGroundingModel
from synground.models.base import GroundingModel
from synground.models.blip import BlipGroundingModel


class UnsafeConfigError(ValueError):
    """A config read from a file names something other than an allowed model builder, or arguments of other types."""


@dataclass(frozen=True)
class Builder:
    """A function that returns a GroundingModel and the typed parameters a config may give it."""

    function: Callable[..., GroundingModel]
    parameters: dict[str, Any]  # name -> type hint

    @classmethod
    def of(cls, function: Callable[..., GroundingModel], keywords_to: Callable[..., Any] | None = None) -> Builder:
        """`keywords_to`: where the function passes its **kwargs (its parameters with defaults are allowed too)."""
        parameters = typed_parameters(function, with_defaults_only=False)
        if keywords_to is not None:
            parameters = typed_parameters(keywords_to, with_defaults_only=True) | parameters
        return cls(function, parameters)


def typed_parameters(function: Callable[..., Any], with_defaults_only: bool) -> dict[str, Any]:
    """A function's named parameters (or only those with defaults) and their resolved type hints."""
    hints = typing.get_type_hints(function)
    return {
        name: hints.get(name)
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and (parameter.default is not inspect.Parameter.empty or not with_defaults_only)
    }


BUILDERS: dict[str, Builder] = {
    "synground.models.BlipGroundingModel.from_pretrained": Builder.of(
        BlipGroundingModel.from_pretrained, keywords_to=BlipGroundingModel.__init__
    ),
    "synground.models.BlipGroundingModel.tiny": Builder.of(BlipGroundingModel.tiny, keywords_to=BlipGroundingModel.__init__),
    "synground.models.AlbefGroundingModel.from_checkpoint": Builder.of(AlbefGroundingModel.from_checkpoint),
    "synground.models.AlbefGroundingModel.tiny": Builder.of(AlbefGroundingModel.tiny),
}


def register_builder(target: str, function: Callable[..., GroundingModel], keywords_to: Callable[..., Any] | None = None) -> None:
    """Allow `_target_: <target>` in configs read from files, e.g. a model of your own project. Its parameters must
    have type hints of plain types (bool, int, float, str, None, lists of them): they are what a file may give."""
    builder = Builder.of(function, keywords_to)
    for name, hint in builder.parameters.items():
        if not plain_type(hint):
            raise TypeError(f"{target}: parameter {name} has type {hint}; only bool, int, float, str, None and lists")
    BUILDERS[target] = builder


def build_net(config: Mapping[str, Any] | DictConfig, where: str) -> GroundingModel:
    """The model a `model.net` config from a file describes, built by an allowed builder. `where` names the file in
    errors."""
    if isinstance(config, DictConfig):
        try:
            config = OmegaConf.to_container(config, resolve=True)
        except OmegaConfBaseException as error:
            raise UnsafeConfigError(f"{where}: model.net cannot be resolved: {error}") from error
    if not isinstance(config, Mapping):
        raise UnsafeConfigError(f"{where}: model.net must be a mapping with a _target_, got {type(config).__name__}")
    arguments = dict(config)
    target = arguments.pop("_target_", None)
    builder = BUILDERS.get(canonical_target(target)) if isinstance(target, str) else None
    if builder is None:
        raise UnsafeConfigError(
            f"{where}: model.net._target_ is {target!r}, which is not one of the model builders a file may name "
            f"({', '.join(sorted(BUILDERS))}). A config beside a checkpoint is not trusted to call anything else; "
            "register your own model with synground.models.builders.register_builder in your code"
        )
    for name, value in arguments.items():
        if name not in builder.parameters:
            raise UnsafeConfigError(f"{where}: model.net.{name} is not a parameter of {target} ({sorted(builder.parameters)})")
        if not fits(value, builder.parameters[name]):
            raise UnsafeConfigError(
                f"{where}: model.net.{name} = {short(value)} is not of type {builder.parameters[name]} ({target})"
            )
    return builder.function(**arguments)


def canonical_target(target: str) -> str:
    """`synground.models.blip.BlipGroundingModel.tiny` -> `synground.models.BlipGroundingModel.tiny` (both spellings
    name the same builder)."""
    for module in ("synground.models.blip.", "synground.models.albef."):
        if target.startswith(module):
            return "synground.models." + target.removeprefix(module)
    return target


def fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value has the type `hint` (bool, int, float, str, None, X | Y, list[X])."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, option) for option in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(fits(element, item) for element in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return False


def plain_type(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, list):
        return all(plain_type(option) for option in typing.get_args(hint))
    return hint in (bool, int, float, str, type(None))


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
