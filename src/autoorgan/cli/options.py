"""Typer options made from :class:`autoorgan.options.PredictOptions`, so each predict option is
declared once (its flag, help and default live on the field).

:class:`PredictCommand` adds the spellings users bring from TotalSegmentator and nnU-Net, without
showing them in ``--help``: every multi-word long flag also reads with underscores
(``--roi_subset``, ``--no_crop_body``, ``--part_id``), and a list of names (``--roi-subset``)
may follow its flag separated by spaces or be given by repeating the flag, as well as
comma-separated. Both are rewritten into the declared form before the options are parsed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import typer
from typer.core import TyperCommand

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


def list_option_flags() -> frozenset[str]:
    """The flags of the :class:`PredictOptions` fields that hold a list of names (``--roi-subset``)."""
    hints = get_type_hints(PredictOptions)

    def holds_names(hint: Any) -> bool:
        return get_origin(hint) is tuple or any(get_origin(arg) is tuple for arg in get_args(hint))

    return frozenset(f.metadata["spec"].flags[0] for f in option_fields() if holds_names(hints[f.name]))


def underscore_aliases(params: Sequence[Any]) -> dict[str, str]:
    """``--a_b`` → ``--a-b`` for every multi-word long flag (and ``--no-`` form) of ``params``,
    where the underscore spelling is no flag of its own."""
    flags = [flag for p in params for flag in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))]
    aliases = {}
    for flag in flags:
        if flag.startswith("--") and "-" in flag[2:]:
            alias = "--" + flag[2:].replace("-", "_")
            if alias not in flags:
                aliases[alias] = flag
    return aliases


def _value_flags(params: Sequence[Any]) -> set[str]:
    """The flags that take a value (the next argument, unless given as ``--flag=value``)."""
    return {flag for p in params if getattr(p, "param_type_name", "") == "option"
            and not p.is_flag and not p.count for flag in (*p.opts, *p.secondary_opts)}


def normalise_arguments(args: Sequence[str], params: Sequence[Any], list_flags: Iterable[str]) -> list[str]:
    """``args`` with the underscore spellings of ``params``' flags replaced by the declared ones,
    and every value of each flag of ``list_flags`` (``--roi-subset liver spleen``, repeated
    ``--roi-subset liver --roi-subset spleen``, ``--roi-subset liver,spleen``) joined into one
    comma-separated value at the flag's first place. Values of other flags and everything after
    ``--`` stay as given."""
    aliases, takes_value, lists = underscore_aliases(params), _value_flags(params), set(list_flags)
    result: list[str] = []
    joined: dict[str, tuple[int, list[str]]] = {}
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            result += args[i - 1:]
            break
        flag, equals, value = token.partition("=") if token.startswith("--") else (token, "", "")
        flag = aliases.get(flag, flag)
        if flag in lists and (equals or i < len(args)):
            values = [value] if equals else [args[i]]
            i += 0 if equals else 1
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            if flag in joined:
                joined[flag][1].extend(values)
            else:
                joined[flag] = (len(result) + 1, values)
                result += [flag, ""]
            continue
        result.append(flag + equals + value)
        if not equals and flag in takes_value and i < len(args):
            result.append(args[i])
            i += 1
    for place, values in joined.values():
        result[place] = ",".join(values)
    return result


class PredictCommand(TyperCommand):
    """The ``predict`` command: arguments in the spellings of TotalSegmentator and nnU-Net are
    rewritten into the declared ones before they are parsed (see the module docstring); ``--help``
    shows only the declared ones."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalise_arguments(args, self.params, list_option_flags()))


__all__ = ["PredictCommand", "normalise_arguments", "underscore_aliases", "with_predict_options"]
