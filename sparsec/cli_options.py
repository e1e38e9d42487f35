"""Click plumbing of the command line: flags built from the option table
(``sparsec.spec.options``), help grouped by purpose, verbosity, and escaped printing.

Invariant: importing this module imports click and the option table only (no onnx, onnx-ir,
onnxruntime or numpy), so ``sparsec --help`` and ``sparsec passes`` stay fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import click

from sparsec.errors import UsageError, printable
from sparsec.spec.options import OPTIONS, Option

_BY_NAME = {option.name: option for option in OPTIONS}


class _SpecType(click.ParamType):
    """A flag's value read by its table entry, so a flag and a recipe key get the same check."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.name = option.metavar or option.kind.metavar

    def convert(self, value, param, ctx):
        try:
            return self.option.kind.convert(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class GroupedOption(click.Option):
    """A click option that knows its help group."""

    def __init__(self, *args, group: str = "Options", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose --help lists its options by group, in the order groups first appear."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "Other"), []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def spec_option(name: str, *short: str, group: str | None = None, required: bool = False):
    """The click option of table entry ``name`` (flags, metavar, help and default shown)."""
    option = _BY_NAME[name]
    help_text = option.help
    if option.default not in (None, False, ()) and not option.kind.flag:
        help_text += f"  [default: {option.default}]"
    kwargs: dict = {"help": help_text, "group": group or option.group, "cls": GroupedOption}
    if option.kind.pair:  # --name/--no-name, None when neither is given
        kwargs.update(default=None)
        return click.option(*short, f"{option.flag}/--no-{option.flag[2:]}", name, **kwargs)
    if option.kind.flag:
        kwargs.update(is_flag=True, default=False)
    else:
        kwargs.update(type=_SpecType(option), default=None, required=required)
        kwargs.update(multiple=option.kind.many, metavar=option.metavar or option.kind.metavar)
    return click.option(*short, option.flag, name, **kwargs)


def spec_options(*names: str, group: str | None = None):
    """Decorator adding the options ``names`` (in that order in --help)."""

    def decorate(function):
        for name in reversed(names):
            function = spec_option(name, *(("-o",) if name == "output" else ()), group=group)(
                function
            )
        return function

    return decorate


def verbosity_options(function: Callable) -> Callable:
    """-q / -v on a command (the group has them too)."""
    for flag, level, text in (
        ("--verbose", 1, "Also print passes that changed nothing and every progress detail line."),
        ("--quiet", -1, "Print only warnings and errors on stderr (no pass lines, no progress)."),
    ):
        function = click.option(
            f"-{flag[2]}",
            flag,
            is_flag=True,
            expose_value=False,
            callback=_set_verbosity(level),
            help=text,
            cls=GroupedOption,
            group="Output",
        )(function)
    return function


def _set_verbosity(level: int):
    def callback(ctx, param, value) -> None:
        if value:
            from sparsec import results

            results.set_verbosity(level)
            logging.getLogger("sparsec.progress").setLevel(
                logging.INFO if level > 0 else logging.WARNING
            )

    return callback


def echo(text: str, err: bool = False) -> None:
    """Print a result (stdout) or progress line (stderr) with its control characters escaped."""
    click.echo(printable(text), err=err)


def error_line(message: str) -> None:
    """The one stderr line of a failure, on one line whatever the message holds."""
    click.echo(f"sparsec: error: {printable(message, newlines=False)}", err=True)


def usage_hint(error: UsageError, command: str | None = None) -> str:
    """A usage error's line, pointing at the running command's --help (``command``: the
    subcommand run, when the error is caught after its context closed)."""
    ctx = click.get_current_context(silent=True)
    where = ctx.command_path if ctx is not None else f"sparsec {command}" if command else "sparsec"
    return f"{error} (see '{where} --help')"
