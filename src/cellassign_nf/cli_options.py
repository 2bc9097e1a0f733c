"""Click options built from the settings dataclasses (``cellassign_nf.settings``): each option's
name, type, range, default and help come from its field, so the CLI cannot drift from the API."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

S = TypeVar("S")


def _option_type(f: dataclasses.Field) -> Any:
    meta, kind = f.metadata, type(f.default)
    if "choices" in meta:
        return click.Choice(list(meta["choices"]))
    bounds = {k: meta[k] for k in ("min", "max", "min_open", "max_open") if k in meta}
    if kind is int:
        return click.IntRange(**bounds) if bounds else int
    if kind is float:
        return click.FloatRange(**bounds) if bounds else float
    return kind


def field_option(f: dataclasses.Field) -> Callable:
    """The click option of one settings field: ``--max-epochs`` for ``max_epochs``, plus the
    field's extra ``names``; a boolean field becomes ``--name/--no-name``."""
    flag = "--" + f.name.replace("_", "-")
    names = [flag, *f.metadata.get("names", ())]
    if isinstance(f.default, bool):
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default, help=f.metadata.get("help"))
    return click.option(*names, f.name, type=_option_type(f), default=f.default, help=f.metadata.get("help"))


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that the CLI offers."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def options_of(*classes: type, exclude: Iterable[str] = ()) -> Callable:
    """A decorator adding one option per CLI field of each class (in field order)."""
    skip = set(exclude)

    def decorate(func: Callable) -> Callable:
        for cls in reversed(classes):
            for f in reversed(cli_fields(cls)):
                if f.name not in skip:
                    func = field_option(f)(func)
        return func

    return decorate


def settings_of(cls: type[S], kw: dict[str, Any], **fixed: Any) -> S:
    """``cls`` from the options in ``kw`` (fields the CLI does not offer keep their defaults)."""
    values = {f.name: kw[f.name] for f in cli_fields(cls) if f.name in kw}
    return cls(**{**values, **fixed})
