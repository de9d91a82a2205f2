"""The Makefile's pretrained target runs the regime benchmarks/regimes.py measured, option for option."""

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_make_all_pretrained_is_the_measured_pretrained_regime():
    from regimes import REGIMES

    data, cam, segment = REGIMES["lite0-imagenet-224"]
    printed = subprocess.run(["make", "-n", "-W", ".venv/.installed", "all-pretrained", "RUN=runs/x"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    stages = {words[1]: words[2:] for words in (shlex.split(line) for line in printed.splitlines()
                                                 if line.startswith(".venv/bin/wsss "))}

    def extra(stage: str, fixed: list[str]) -> dict[str, str]:
        """The options (each with its value) the target adds to `make all`'s own for `stage`."""
        words = stages[stage]
        assert words[:len(fixed)] == fixed, words
        return pairs(words[len(fixed):])

    def pairs(words: list[str]) -> dict[str, str]:
        return dict(zip(words[::2], words[1::2]))

    assert extra("data", ["synth", "--run", "runs/x", "--seed", "0"]) == pairs(data.split())
    assert extra("train-cam", ["--run", "runs/x", "--seed", "0"]) == pairs(cam.split())
    segment_fixed = ["--run", "runs/x", "--labels", "pseudo", "--pseudo", "crf", "--predict", "val,train", "--seed", "0"]
    assert extra("segment", segment_fixed) == pairs(segment.split())
