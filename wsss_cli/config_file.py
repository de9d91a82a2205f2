"""`--config FILE`: option values from a TOML file, under the command line's.

The file has one table per command, named as the command is typed after `wsss` (`[train-cam]`, `[pseudo-label]`;
a sub-command's words joined by a dot: `[data.voc]`), and a `[common]` table whose keys apply to every command
that has the option (`seed`, `device`, `backbone`). A key is the option's name as typed, without the dashes
(`batch-size`, `scale-range`, `sync-bn`; `amp = false` for `--no-amp`). A list is written as a TOML array (`scales
= [1.0, 0.5]`, the same as `--scales 1.0,0.5`); a repeatable option takes an array of its values (`option =
["view_scale=0.3"]`, `-o view_scale=0.3` once per element). `[reproduce]` holds a recipe's chain of commands (read
by `wsss reproduce`, ignored by the stages). Options that say where a run is or how to run it this once (`--run`,
`--out`, `--force`, `--resume`, `--dry-run`) are not read from files.

Precedence: the command line, then the command's table, then `[common]`, then the built-in default. The values go
into the command's Click `default_map` from an eager `--config` option, so an option typed on the command line
wins without further code. The whole file is checked on every use, so a typo in `[segment]` is reported by
`train-cam` already: an unknown table or key, or a value of the wrong type, is one `error:` line naming the file
and the key (exit 2). A value of the right type that a stage config refuses (`lr = -1`) is reported by the config's
check, with the file and key added (`config_source`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from stages.core.errors import UserError

from .click_api import BadParameter, ClickException, ParameterSource

COMMON = "common"
CHAIN = "reproduce"  # a recipe's chain of commands, for `wsss reproduce`
NOT_IN_FILES = ("run", "out", "config", "force", "resume", "dry-run", "help", "version")
_SOURCES = "wsss.config_sources"  # ctx.meta key: option name -> "FILE [TABLE] KEY" for the values a file set


class ConfigFileError(ClickException):
    """A config file that cannot be used: one `error:` line, exit status 2 like every user error."""

    exit_code = 2


def option_key(param) -> str:
    """The key of an option in a config file: its long name as typed, without the dashes."""
    longest = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
    return longest.lstrip("-")


def settable_options(command) -> dict[str, Any]:
    """A command's options a config file may set, by key."""
    return {option_key(param): param for param in command.params
            if getattr(param, "param_type_name", "") == "option" and option_key(param) not in NOT_IN_FILES}


def command_tables(group, prefix: str = "") -> dict[str, Any]:
    """Every command below `group` that has settable options, by its table name (`train-cam`, `data.voc`)."""
    tables = {}
    for name, command in group.commands.items():
        table = f"{prefix}{name}"
        if hasattr(command, "commands"):
            tables.update(command_tables(command, f"{table}."))
        elif settable_options(command):
            tables[table] = command
    return tables


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigFileError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigFileError(f"config file {path} is a folder") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(f"{path} is not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"cannot read config file {path}: {error}") from None


def file_tables(document: dict, path: Path, commands: dict[str, Any], prefix: str = "") -> dict[str, dict]:
    """The file's tables by name (`[data.voc]` nests in TOML: flattened here), each checked to be a known one."""
    tables = {}
    groups = {name.rsplit(".", 1)[0] for name in commands if "." in name}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigFileError(f"{path}: key '{name}' is outside any table: put it under [{COMMON}] or the "
                                  f"table of a command, e.g. [train-cam]")
        if name in groups:
            tables.update(file_tables(value, path, commands, f"{name}."))
        elif name in commands or (name in (COMMON, CHAIN) and not prefix):
            tables[name] = value
        else:
            known = [COMMON, CHAIN, *commands]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise ConfigFileError(f"{path}: unknown table [{name}] ({hint}tables: {', '.join(known)})")
    return tables


def _where(path: Path, table: str, key: str) -> str:
    return f"{path} [{table}] {key}"


def _unknown_key(path: Path, table: str, key: str, commands: dict[str, Any]) -> str:
    """The error for a key the table's command (or, for [common], every command) lacks, with a hint: the tables
    whose command has it, else the closest key."""
    owners = [name for name, command in commands.items() if key in settable_options(command)]
    if owners:
        hint = f"it is an option of [{'], ['.join(owners)}]"
    else:
        keys = {k for command in (commands.values() if table == COMMON else [commands[table]])
                for k in settable_options(command)}
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see the command's --help"
    what = "no command has" if table == COMMON else f"{table.replace('.', ' ')} has no"
    return f"{_where(path, table, key)}: {what} option --{key} ({hint})"


def python_type(param) -> type:
    """The type an option's value has once parsed: Typer's annotation (Typer 0.2x), else Click's type's."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return descriptor.annotation
    return {"integer": int, "integer range": int, "float": float, "float range": float,
            "boolean": bool}.get(param.type.name, str)


def checked_value(ctx, param, value: Any, where: str) -> Any:
    """The file's value in the form the option takes from a command line, or a one-line error naming `where`."""
    if param.multiple:
        if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ConfigFileError(f"{where}: takes an array of strings, e.g. [\"KEY=VALUE\"], got {value!r}")
        return value
    kind = python_type(param)
    if kind is bool:
        expected, ok = "true or false", isinstance(value, bool)
    elif kind is int:
        expected, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        expected, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # text: a string, a number, or an array of them for a comma-separated option
        items = value if isinstance(value, list) else [value]
        expected = "a string (or an array of values for a comma-separated option)"
        ok = all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items)
        value = ",".join(str(item) for item in items) if ok else value
    if not ok:
        raise ConfigFileError(f"{where}: takes {expected}, got {value!r}")
    try:
        param.process_value(ctx, value)  # the option's own checks (a choice, --epochs' minimum)
    except BadParameter as error:
        raise ConfigFileError(f"{where}: {error.message}") from None
    return value


def load_config_file(ctx: typer.Context, path: Optional[Path]) -> None:
    """The eager `--config` option's callback: check the whole file and put the command's values into its
    default_map, under whatever the command line gives."""
    if path is None:
        return
    commands = command_tables(ctx.find_root().command)
    tables = file_tables(read_toml(path), path, commands)
    names, context = [], ctx
    while context.parent is not None:
        names.insert(0, context.info_name)
        context = context.parent
    this_table = ".".join(names)
    values, sources = {}, {}
    for table in [COMMON] + [name for name in tables if name not in (COMMON, CHAIN)]:
        for key, value in tables.get(table, {}).items():
            owners = [commands[table]] if table != COMMON else \
                [command for command in commands.values() if key in settable_options(command)]
            if not owners or key not in settable_options(owners[0]):
                raise ConfigFileError(_unknown_key(path, table, key, commands))
            mine = settable_options(ctx.command).get(key) if table in (COMMON, this_table) else None
            param = mine or settable_options(owners[0])[key]
            value = checked_value(ctx, param, value, _where(path, table, key))
            if mine is not None:  # the command's own table comes after [common], so it wins
                values[param.name], sources[param.name] = value, _where(path, table, key)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[_SOURCES] = sources


def config_source(ctx, message: str) -> str:
    """`message` with the file and key appended when it names an option whose value came from a config file."""
    for name, where in ctx.meta.get(_SOURCES, {}).items():
        if ctx.get_parameter_source(name) != ParameterSource.DEFAULT_MAP:
            continue  # the command line gave it
        param = next(param for param in ctx.command.params if param.name == name)
        if any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", message) for opt in param.opts):
            return f"{message} (set by {where})"
    return message


ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", is_eager=True, callback=load_config_file, metavar="FILE",
    help="TOML file of option values: a table per command ([train-cam], [data.voc]) and [common] for every "
         "command; keys are option names without the dashes (batch-size). The command line wins over the file.")]


def config_file_option(command: Callable) -> Callable:
    """Give a command `--config FILE`; a value the stage's config refuses then names the file and key it came
    from."""
    signature = inspect.signature(command, eval_str=True)
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOption)
    parameters = list(signature.parameters.values()) + [config, context]

    @functools.wraps(command)
    def wrapper(*args, ctx, config, **values):
        try:
            return command(*args, **values)
        except UserError as error:
            noted = config_source(ctx, str(error))
            if noted == str(error):
                raise
            raise UserError(noted) from None

    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must see the new signature, not the command's
    return wrapper
