"""The one error contract of the command line: bad input is ONE line `error: ...` on stderr, exit code 2.

Why one place: a user (or a script, or a scheduler's log) must read every refusal the same way,
whether the library refused a value (`UserError`), Typer refused to parse one (`--trials abc`,
`--trials 0`, an unknown option) or a command refused a combination. No traceback, no Rich box.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Typer >= 0.24 carries its own copy of Click and raises these two from it; Typer 0.29 (pyproject's floor)
# exports no public name for either (typer.exceptions has only Abort, Exit, TyperException). Kept on purpose,
# checked 2026-12-06: the old `click.exceptions` fallback for Typer < 0.24 is gone (the floor excludes it).
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperCommand, TyperGroup

from bench.registry import UserError

USAGE_EXIT = 2


def _stderr() -> Console:
    """A new console each time: CliRunner swaps sys.stderr per invocation, a module-level one would keep the old."""
    return Console(stderr=True)


def error_line(message: str) -> None:
    """Print `error: MESSAGE` as one line; the message is escaped so `[space]` is not taken for markup."""
    one_line = " ".join(message.split())
    _stderr().print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)


def warning_line(message: str) -> None:
    """Print `warning: MESSAGE` as one line on stderr (the sweep's warnings before it starts)."""
    _stderr().print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
    """One line on stderr, then exit (2: bad input; commands pass 1 for faults of the machine)."""
    error_line(message)
    raise typer.Exit(code)


def _bound_phrase(low: float | None, high: float | None) -> str:
    """The project's wording of an option's range: `positive`, `>= 0`, `at least 3`, `in 0..N`."""
    if low is not None and high is not None:
        return f"in {low}..{high}"
    if high is not None:
        return f"at most {high}"
    if low == 1:
        return "positive"
    if low == 0:
        return ">= 0"
    return f"at least {low}"


def usage_message(exc: ClickException) -> str:
    """Typer's parse errors in the project's words. Typer validates through pydantic; its first
    error says what failed (int_parsing, greater_than_equal, ...) and on which input."""
    param = getattr(exc, "param", None)
    cause = exc.__cause__
    errors = cause.errors() if cause is not None and hasattr(cause, "errors") else []
    if param is None or not errors or not getattr(param, "opts", None):
        return exc.format_message()
    flag, kind, value = param.opts[0], str(errors[0].get("type", "")), errors[0].get("input")
    if kind == "int_parsing" or kind == "int_from_float":
        return f"{flag} must be an integer, got '{value}'"
    if kind == "float_parsing":
        return f"{flag} must be a number, got '{value}'"
    if kind in ("greater_than_equal", "greater_than"):  # the bound it broke, not the whole range
        return f"{flag} must be {_bound_phrase(getattr(param, 'min', None), None)}, got {value}"
    if kind in ("less_than_equal", "less_than"):
        return f"{flag} must be {_bound_phrase(None, getattr(param, 'max', None))}, got {value}"
    return exc.format_message()


def _handled(call: Any, standalone_mode: bool) -> Any:
    """Run `call()` (Typer's own main in non-standalone mode) and turn every refusal into one line.

    Typer's standalone mode prints parse errors in a Rich box; running it non-standalone hands us the
    exception instead. Exit codes otherwise stay Typer's: 0, a command's typer.Exit, 130 on Ctrl-C."""
    try:
        code = call()
    except NoArgsIsHelpError as exc:  # `cli.py` alone: the help (Rich drew it already), exit 2 as Typer does
        if exc.format_message().strip():
            typer.echo(exc.format_message(), err=True)
        code = USAGE_EXIT
    except ClickException as exc:
        error_line(usage_message(exc))
        code = USAGE_EXIT
    except UserError as exc:  # a bad input that escaped its command
        error_line(str(exc))
        code = USAGE_EXIT
    except typer.Abort:
        _stderr().print("aborted", highlight=False)
        code = 1
    if not standalone_mode:
        return code
    sys.exit(code if isinstance(code, int) else 0)


def tidy_help(params: Sequence[Any]) -> None:
    """Before help is drawn: fill `{backbones}` and `{methods}` in help texts with the registries' keys,
    and show flags without a `<bool>` type (a flag takes no value). Why at help time: the registries
    import torch, which parsing `report`, or any error message, never needs."""
    names: dict[str, str] | None = None
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        text = getattr(param, "help", None)
        if isinstance(text, str) and "{" in text:
            names = names or registry_names()
            for key, value in names.items():
                text = text.replace("{" + key + "}", value)
            param.help = text


def registry_names() -> dict[str, str]:
    """The registries' keys as help text: backbones (and timm:<name>) and methods."""
    from bench.models.backbones import backbone_names
    from bench.models.kinds import METHODS

    return {"backbones": ", ".join(backbone_names()), "methods": ", ".join(METHODS.names())}


class OneLineErrorGroup(TyperGroup):
    """The app's group: Typer's parsing, our one-line errors (see `_handled`)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Typer's main, run non-standalone so its errors reach `_handled` instead of a Rich box."""

        def call() -> Any:
            """Typer's own main; `super()` needs its arguments spelled out inside a nested function."""
            return super(OneLineErrorGroup, self).main(args, prog_name, complete_var, standalone_mode=False, **extra)

        return _handled(call, standalone_mode)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """`cli.py --help`: the group's own options tidied like a command's."""
        tidy_help(self.get_params(ctx))
        super().format_help(ctx, formatter)


class Command(TyperCommand):
    """Every command of the app: its help tidied by `tidy_help` (registry names filled in, flags without `<bool>`)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Tidy, then let Typer draw the help as usual."""
        tidy_help(self.get_params(ctx))
        super().format_help(ctx, formatter)
