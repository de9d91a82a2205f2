"""The report page in a real browser (headless Chromium through selenium): every picture decodes, every plot has
its points and axis titles, and the console logs no error. Skipped, with the reason, where no browser can be had."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsss_cli.main import app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium waits on the network, which an offline machine never answers.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
TINY_TRAINING = ["--epochs", "2", "--batch-size", "8", "--base-size", "64", "--crop-size", "56", "--workers", "0"]
INSTALL_SECONDS = 900

runner = CliRunner()


def wsss(*args) -> None:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output


def install_chromium() -> None:
    """Chromium and its driver from Debian's packages, where this process may install them (root with apt-get);
    otherwise the test is skipped with why."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing and no root apt-get to install packages chromium and "
                    "chromium-driver")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
            subprocess.run(command, check=True, capture_output=True, timeout=INSTALL_SECONDS, env=environment)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"could not install chromium and chromium-driver: {error}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    install_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--window-size=1400,3000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two tiny runs: one through segmentation, with every kind of evaluation and plot; one that stops after the
    classifier's CAMs."""
    full, short = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("short")
    for run in (full, short):
        wsss("data", "synth", "--run", run, "--num-train", 24, "--num-val", 8, "--image-size", 64, "--workers", 1)
        wsss("train-cam", "--run", run, *TINY_TRAINING)
        wsss("infer-cam", "--run", run, "--split", "train", "--workers", 0)
        wsss("evaluate", "cams", "--run", run, "--split", "train")
    wsss("pseudo-label", "--run", full, "--refine", "none")
    wsss("evaluate", "pseudo/none", "--run", full, "--split", "train")
    wsss("segment", "--run", full, "--labels", "pseudo", "--pseudo", "none", "--predict", "train", *TINY_TRAINING)
    wsss("evaluate", "segment/pseudo-none", "--run", full, "--split", "train")
    return [full, short]


def check_page(driver, page: Path) -> int:
    """Load the page and check it as a reader's browser shows it; returns how many plots it has."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.as_uri())
    images = driver.find_elements("css selector", "img")
    assert images
    undecoded = [image.get_attribute("alt") for image in images
                 if not driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)]
    assert not undecoded, undecoded
    plots = driver.find_elements("css selector", "svg.plot")
    for plot in plots:
        title = plot.get_attribute("aria-label")
        assert len(plot.find_elements("css selector", ".point")) >= 2, title
        axis_labels = [label.text for label in plot.find_elements("css selector", "text.axis-label")]
        assert len(axis_labels) == 2 and all(axis_labels), title
    severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
    return len(plots)


def test_a_runs_page_in_a_browser(browser, runs):
    full = runs[0]
    wsss("report", "--run", full, "--samples", 4, "--pseudo", "none", "--segment", "pseudo-none")
    page = full / "report.html"
    # per evaluation (3): a confusion matrix; the CAM curve; the errors chart; loss and validation of train-cam;
    # the segmenter's loss
    assert check_page(browser, page) == 3 + 1 + 1 + 2 + 1
    text = page.read_text()
    assert "no per-epoch history recorded" not in text
    assert text.count("<img ") == 4 * 5 and 'class="missing"' not in text  # every picture of every sample row


def test_several_runs_on_one_page_in_a_browser(browser, runs, tmp_path):
    out = tmp_path / "compare.html"
    wsss("report", "--run", runs[0], "--run", runs[1], "--out", out, "--samples", 2)
    # the overlaid CAM curves, then each run's own plots (the short run: CAM curve, errors, confusion, train-cam's 2)
    assert check_page(browser, out) == 1 + 8 + 5
    text = out.read_text()
    assert all(f"Run {run.name}" in text for run in runs)
