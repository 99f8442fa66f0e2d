"""Command options made from a settings model's fields, so that a flag's type, default and help are written
once, on the model (RunConfig), and the command and the library cannot drift apart."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import pydantic
import typer

Command = TypeVar("Command", bound=Callable[..., Any])


def cli_type(annotation: Any) -> Any:
    """The type typer parses a flag as: pydantic's constraints are dropped (the model checks them, and a
    bad value is named by its flag), a Literal is parsed as its values' type."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return cli_type(get_args(annotation)[0])
    if origin is Literal:
        return type(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [cli_type(a) for a in get_args(annotation) if a is not type(None)]
        parsed = members[0]
        return parsed | None if type(None) in get_args(annotation) else parsed
    return annotation


def options_from(
    model: type[pydantic.BaseModel], overrides: dict[str, Any] | None = None
) -> Callable[[Command], Command]:
    """Give a `def command(**flags)` one --option per field of `model`; `overrides` replaces a field's
    typer annotation where a flag needs more than a help text (an environment variable, say)."""
    overrides = overrides or {}

    def decorate(command: Command) -> Command:
        parameters = []
        for name, field in model.model_fields.items():
            annotation = (
                overrides.get(name) or Annotated[cli_type(field.annotation), typer.Option(help=field.description)]
            )
            default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
            parameters.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )
        command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        return command

    return decorate
