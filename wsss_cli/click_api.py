"""Click's classes from whichever click Typer runs on (recent Typers vendor their own copy as `typer._click`)."""

from __future__ import annotations

import sys

import typer

_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
ClickException, UsageError, BadParameter = _ERRORS["ClickException"], _ERRORS["UsageError"], typer.BadParameter
NoArgsIsHelpError = getattr(sys.modules[UsageError.__module__], "NoArgsIsHelpError", ())
_PACKAGE = UsageError.__module__.rpartition(".")[0]  # "typer._click" or "click"
ParameterSource = sys.modules[f"{_PACKAGE}.core"].ParameterSource
