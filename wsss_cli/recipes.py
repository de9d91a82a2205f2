"""`wsss reproduce`: a paper's chain of commands from a recipe in `recipes/`.

A recipe is a config file (see `config_file`) whose `[reproduce]` table lists the chain as `steps`, one `wsss`
command line each, without `wsss`, `--config` and `--run` (added to every step); `{data}` stands for the dataset
root given to `wsss reproduce`. Each step runs as its own process, as `make` would run it, and the chain stops at
the first step that fails, with that step's exit status.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from stages.core.errors import UserError

from .config_file import CHAIN, ConfigFileError, read_toml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES.glob("*.toml"))


def recipe_file(recipe: str) -> Path:
    """A shipped recipe's name (`irn-voc`) or the path of a .toml file."""
    if recipe.endswith(".toml"):
        if not Path(recipe).is_file():
            raise UserError(f"recipe file not found: {recipe}")
        return Path(recipe)
    shipped = RECIPES / f"{recipe}.toml"
    if not shipped.is_file():
        raise UserError(f"unknown recipe {recipe!r}: choose one of {', '.join(shipped_recipes())} or give a "
                        f"TOML file")
    return shipped.relative_to(Path.cwd()) if shipped.is_relative_to(Path.cwd()) else shipped


def recipe_steps(recipe: Path, data: str, run: Path) -> list[list[str]]:
    """The chain's command lines (arguments after `wsss`), each with the recipe as its --config and the run."""
    try:
        steps = read_toml(recipe).get(CHAIN, {}).get("steps")
    except ConfigFileError as error:
        raise UserError(error.message) from None
    if not (isinstance(steps, list) and steps and all(isinstance(step, str) and step.strip() for step in steps)):
        raise UserError(f"{recipe} [{CHAIN}] steps: needs a list of command lines, e.g. steps = [\"train-cam\", "
                        f"\"infer-cam --split train\"]")
    return [[word.replace("{data}", data) for word in shlex.split(step)] + ["--config", str(recipe), "--run",
                                                                          str(run)] for step in steps]


def step_context(args: list[str]):
    """The Click context of one command line (arguments after `wsss`), parsed, its --config file read and checked,
    but not run: `.params` holds every option's resolved value, `.info_name` the command's name."""
    import typer.main

    from .main import app

    command = typer.main.get_command(app)
    context = command.context_class(command, info_name="wsss")
    args = list(args)
    while hasattr(command, "commands"):
        name = args.pop(0)
        command = command.commands[name]
        if hasattr(command, "commands"):
            context = command.context_class(command, info_name=name, parent=context)
    return command.make_context(command.name, args, parent=context)


def reproduce(recipe: str, data: str, run: Path, dry_run: bool) -> int:
    """Run (or with `dry_run` print) the recipe's chain; the exit status of the first step that fails, else 0."""
    steps = recipe_steps(recipe_file(recipe), data, run)
    for number, step in enumerate(steps, 1):
        print(shlex.join(["wsss", *step]), flush=True)
        if dry_run:
            continue
        status = subprocess.run([sys.executable, "-m", "wsss_cli.main", *step]).returncode
        if status != 0:
            print(f"reproduce: stopped at step {number} of {len(steps)}", file=sys.stderr)
            return status
    return 0
