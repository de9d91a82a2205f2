"""Every numeric option of every command, fed 0, -1, nan, inf and a huge value: exit 0 where the value is legal,
otherwise exit 2 with one `error:` line, never a traceback. The commands and their options come from the Typer
app (the functions' signatures), not from a list written here; and every number a stage config holds has a range
in `stages/core/limits.py`."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing

import pytest
import typer

import stages.config
from stages.core.limits import LIMITS, numbers_of
from stages.data.synth import SynthConfig
from test_cli import invoke
from wsss_cli.main import app

VALUES = {int: ("0", "-1", "nan", "inf", str(10**12)), float: ("0", "-1", "nan", "inf", "1e30")}
# Arguments a command needs besides its options: a placeholder that fails (after the options are checked).
ARGUMENTS = {("evaluate",): ["cams"], ("data", "voc"): ["{tmp}/no-voc"], ("data", "folder"): ["{tmp}/no-folder"],
             ("data", "coco"): ["{tmp}/no-coco"],
             ("predict",): ["{tmp}/no-image.jpg", "--out", "{tmp}/out", "--checkpoint", "{tmp}/no-checkpoint.pt"]}
# data synth makes data when its values are legal: tiny data, so a legal case costs nothing.
BASE = {("data", "synth"): ["--num-train", "2", "--num-val", "1", "--image-size", "32", "--workers", "1"]}


def commands() -> list[tuple[tuple[str, ...], typing.Callable]]:
    found = [((info.name,), info.callback) for info in app.registered_commands]
    for group in app.registered_groups:
        found += [((group.name, info.name), info.callback) for info in group.typer_instance.registered_commands]
    return found


def numeric_options(callback) -> list[tuple[str, type, typer.models.OptionInfo | None]]:
    options = []
    for parameter in inspect.signature(callback, eval_str=True).parameters.values():
        annotation = parameter.annotation
        kind, extras = (typing.get_args(annotation)[0], typing.get_args(annotation)[1:]) \
            if typing.get_origin(annotation) is typing.Annotated else (annotation, ())
        if kind not in (int, float):
            continue
        info = next((extra for extra in extras if isinstance(extra, typer.models.OptionInfo)), None)
        declared = [d for d in (info.param_decls or ()) if d.startswith("--")] if info else []
        options.append((declared[0] if declared else "--" + parameter.name.replace("_", "-"), kind, info))
    return options


CASES = [(command, flag, value) for command, callback in commands() for flag, kind, _ in numeric_options(callback)
         for value in VALUES[kind]]
OPTIONS = {(command, flag): (kind, info) for command, callback in commands()
           for flag, kind, info in numeric_options(callback)}
FIELDS = {limit.flag or "--" + name.replace("_", "-"): name for name, limit in LIMITS.items()}


def legal(command, flag: str, value: str) -> bool:
    """Whether the value should pass. No option takes a negative, non-finite or huge number; 0 passes where the
    option's own min/max and its config field's range (the table) allow it."""
    if value != "0":
        return False
    kind, info = OPTIONS[command, flag]
    try:
        number = kind(value)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    if info is not None and ((info.min is not None and number < info.min) or
                             (info.max is not None and number > info.max)):
        return False
    return LIMITS[FIELDS[flag]].holds(number)


def test_the_walk_covers_the_options_it_should():
    flags = {(command, flag) for command, flag, _ in CASES}
    assert (("train-cam",), "--lr") in flags and (("segment",), "--crop-size") in flags
    assert (("data", "synth"), "--noise-std") in flags and (("pseudo-label",), "--fg-threshold") in flags
    assert len(CASES) >= 5 * 50  # 55 numeric options when this was written


@pytest.mark.parametrize("command, flag, value", CASES, ids=[f"{' '.join(c)} {f}={v}" for c, f, v in CASES])
def test_numeric_option_value_is_accepted_or_refused_in_one_line(command, flag, value, tmp_path):
    arguments = [a.format(tmp=tmp_path) for a in ARGUMENTS.get(command, [])]
    run = ["--run", tmp_path / "run"] if "run" in inspect.signature(dict(commands())[command]).parameters else []
    result = invoke(*command, *arguments, *run, *BASE.get(command, []), flag, value)
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 0:
        return
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    # A refused value is named in the error; a legal one gets past the options to the missing run's inputs.
    assert (flag in errors[0]) is not legal(command, flag, value), errors[0]


def test_every_numeric_option_has_a_range():
    assert {flag for _, flag in OPTIONS} <= set(FIELDS), "add the option's field to stages/core/limits.py LIMITS"


def config_classes() -> list[type]:
    found = [SynthConfig]
    for value in vars(stages.config).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            found.append(value)
    return found


@pytest.mark.parametrize("config_class", config_classes(), ids=lambda c: c.__name__)
def test_every_number_a_config_holds_has_a_range(config_class):
    config = config_class()
    unlimited = [field.name for field in dataclasses.fields(config)
                 if numbers_of(getattr(config, field.name)) and field.name not in LIMITS]
    assert not unlimited, f"{config_class.__name__}: add {unlimited} to stages/core/limits.py LIMITS"
