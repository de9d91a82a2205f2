"""Checkpoints: a state dict plus the config and class names that made it, loadable with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .errors import UserError
from .normalization import Normalization
from .io import atomic_path

CHECKPOINT_VERSION = 2  # 2: records the input normalization


def save_checkpoint(path: str | Path, *, kind: str, config: dict[str, Any], class_names: list[str],
                    model: torch.nn.Module, normalization: Normalization, metrics: dict[str, Any]) -> None:
    """`normalization` (what the model's backbone expects of its input) is recorded for every stage that reads
    the checkpoint (`checkpoint_normalization`)."""
    payload = {
        "normalization": normalization.record(),
        "kind": kind,
        "version": CHECKPOINT_VERSION,
        "wsss_version": __version__,
        "config": config,
        "class_names": class_names,
        "metrics": metrics,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def safe_load(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True, so a file can never run code; unreadable → one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusals, truncated zips, wrong formats: all "cannot read"
        raise UserError(f"cannot read {what} {path}: {_reason(error)}") from None


# Torch's refusal advises loading the file unsafely (weights_only=False) or allow-listing what it refused; wsss
# never runs a file's code, so only the reason is passed on.
_ADVICE = ("weights_only", "Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(error: Exception) -> str:
    """One line saying why torch could not read the file, without its advice."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # what the safe unpickler refused, before its allow-listing advice
        text = text.split("WeightsUnpickler error:", 1)[1].split(" Please use", 1)[0]
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not any(advice in line for advice in _ADVICE)]
    return (f"not a file wsss can load without running code in it "
            f"({type(error).__name__}{': ' + lines[0] if lines else ''})")


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint of `kind` ("cam" or "segmenter")."""
    payload = safe_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} is not a wsss checkpoint of version {CHECKPOINT_VERSION}")
    if payload.get("kind") != kind:
        raise UserError(f"{path} is a {payload.get('kind')} checkpoint, expected a {kind} checkpoint")
    expected = {"config": dict, "class_names": list, "state_dict": dict, "normalization": dict}
    broken = [key for key, kind_of in expected.items() if not isinstance(payload.get(key), kind_of)]
    if broken:
        raise UserError(f"checkpoint {path} is incomplete: its {broken[0]!r} is missing or of the wrong type")
    return payload


def checkpoint_normalization(payload: dict[str, Any], path: str | Path) -> Normalization:
    """The input normalization a loaded checkpoint's model was trained with."""
    return Normalization.from_record(payload["normalization"], f"checkpoint {path}")


def model_config(config_class, payload: dict[str, Any], path: str | Path):
    """The model config a loaded checkpoint was trained with; no pretrained weights are fetched, since the
    checkpoint's own weights replace them."""
    try:
        return config_class(**{**payload["config"]["model"], "pretrained": "none"})
    except (KeyError, TypeError) as error:
        raise UserError(f"checkpoint {path} has no usable model config: {type(error).__name__} {error}") from None


def load_state(model: torch.nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit this model: {first}") from None
