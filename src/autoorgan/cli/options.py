"""Typer options made from :class:`autoorgan.options.PredictOptions`, so each predict option is
declared once (its flag, help and default live on the field)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, get_type_hints

import typer

from autoorgan.options import OptionSpec, PredictOptions, option_fields

#: Name of the parameter through which a decorated command receives its built options.
OPTIONS_PARAMETER = "options"


def _typer_parameter(f: dataclasses.Field[Any], hints: dict[str, Any]) -> inspect.Parameter:
    spec: OptionSpec = f.metadata["spec"]
    flags = list(spec.flags)
    if spec.negative:
        flags = [f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:]]
    annotation: Any = spec.cli_type if spec.cli_type is not None else hints[f.name]
    if f.default is None and type(None) not in getattr(annotation, "__args__", ()):
        annotation = annotation | None
    default = f.default.value if isinstance(f.default, enum.Enum) else f.default
    option = typer.Option(*flags, help=spec.help, show_default=default not in (None, False),
                          rich_help_panel=spec.panel, **spec.cli)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, option])


def with_predict_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` one command-line option per :class:`PredictOptions` field; the command
    receives them built as its ``options`` parameter (a bad value is an ``InputError``, raised
    from the command like its own errors)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != OPTIONS_PARAMETER]
    fields = option_fields()
    names = {f.name for f in fields}

    @functools.wraps(command)
    def wrapper(**given: Any) -> Any:
        settings = {name: value for name, value in given.items() if name in names}
        own_values = {name: value for name, value in given.items() if name not in names}
        return command(**own_values, **{OPTIONS_PARAMETER: _Deferred(settings)})

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    hints = get_type_hints(PredictOptions)
    parameters += [_typer_parameter(f, hints) for f in fields]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # Typer must see the new signature, not the command's
    return wrapper


@dataclasses.dataclass(frozen=True)
class _Deferred:
    """The command-line values, built into :class:`PredictOptions` by the command itself (inside
    its error handling, so a bad value is one error line)."""

    settings: dict[str, Any]

    def build(self, **more: Any) -> PredictOptions:
        return PredictOptions(**self.settings, **more)


__all__ = ["with_predict_options"]
