"""How wall time and peak memory of each `make all` stage grow with the number of images: the whole chain runs
once per dataset size into a fresh `OUT/n<SIZE>/`, each stage timed and its memory measured, then a line
time = fixed + marginal * images is fitted per stage. Results: `benchmarks/results/scaling.json` and the README
table `bench:scaling`.

    python benchmarks/scaling.py [--sizes 500,1000,2000] [--seed 0] [--out runs/scaling]

A size is the number of training images; the validation split gets a quarter of it. The training stages keep
their default epochs, so a stage's time per image is comparable across sizes. "Per image" means per training
image for every stage (`data synth` also writes the val images, 1.25 images per training image; `segment`
trains on train and predicts val and train) except the val evaluation, which counts val images.

Memory, two numbers per stage:
- peak RSS, process: `ru_maxrss` from `os.wait4` on the stage's process. Linux reports the largest resident set
  of any single process of the tree: the max (not the sum) over the process and the descendants it reaped
  (DataLoader and pool workers are reaped; an orphan that was never waited for is not counted). It also
  includes the RSS of the process that launched it as it was at exec (Popen's vfork shares its memory), which
  is why this script imports nothing heavy before the stages run.
- peak RSS, tree: the sum of RSS over the stage's live process tree (found through the ppid in /proc/*/stat),
  sampled every 0.2 s. Workers are separate processes, so the single-process number misses them; but a page
  shared with the forked parent (torch's ~300 MiB of them, to begin with) counts once per process, so with
  workers this is an upper bound. (PSS would split shared pages, but reading it costs ~6 ms a process a sample,
  ~10 % of a core, which would skew the times.) A spike shorter than 0.2 s can be missed.

A stage "slows down as its artifacts grow" when its marginal cost per image between consecutive sizes rises by
more than 20 %. Where a marginal cost is not positive the stage's time is start-up plus noise and there is no
verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
SAMPLE_SECONDS = 0.2
SLOWDOWN = 1.2  # a marginal cost per image this many times the previous one flags the stage
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20



def make_all_commands(run_dir: Path, seed: int) -> list[list[str]]:
    """The `wsss` commands of the Makefile's `all` recipe for this run and seed, as `make --dry-run` prints them
    (so this benchmark times exactly what `make all` runs)."""
    printed = subprocess.run(["make", "--dry-run", "--always-make", "all", f"RUN={run_dir}", f"SEED={seed}"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [line.split() for line in printed.splitlines() if line.startswith(".venv/bin/wsss ")]


def stage_name(command: list[str]) -> str:
    """The command without the wsss path and the run folder and seed, which every stage has."""
    words = command[1:]
    for option in ("--run", "--seed"):
        if option in words:
            at = words.index(option)
            del words[at:at + 2]
    return " ".join(words)


def process_tree_rss(root: int) -> int:
    """Bytes resident in `root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:  # exited while we looked
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "(comm) ": state, ppid; comm may hold spaces
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


def measure(command: list[str]) -> dict:
    """Runs `command`; its wall seconds, ru_maxrss and peak tree RSS in MiB."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    peak_tree, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while True:
            peak_tree = max(peak_tree, process_tree_rss(process.pid))
            if stop.wait(SAMPLE_SECONDS):
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)  # instead of process.wait(), which drops the rusage
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return {"seconds": round(seconds, 2), "peak_rss_process_mib": round(usage.ru_maxrss * 1024 / MIB, 1),
            "peak_rss_tree_mib": round(peak_tree / MIB, 1)}


def run_size(out: Path, num_train: int, seed: int) -> dict:
    run_dir = out / f"n{num_train}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: every stage does its whole work
    num_val = num_train // 4
    images = {"train": num_train, "val": num_val}
    stages = {}
    for command in make_all_commands(run_dir, seed):
        name = stage_name(command)  # before the size options: the same name at every size
        if command[1:3] == ["data", "synth"]:
            command += ["--num-train", str(num_train), "--num-val", str(num_val)]
        split = "val" if "--split val" in name else "train"
        numbers = measure(command)
        numbers["images"] = images[split]
        numbers["seconds_per_image"] = round(numbers["seconds"] / images[split], 4)
        stages[name] = numbers
        print(f"[scaling n={num_train}] {name}: {json.dumps(numbers)}", flush=True)
    return {"num_train": num_train, "num_val": num_val, "stages": stages}


def fit(images: list[int], seconds: list[float]) -> dict:
    """Least-squares time = fixed + marginal * images, and how the marginal cost moves between sizes."""
    marginal, fixed = statistics.linear_regression(images, seconds)
    steps = [(t1 - t0) / (n1 - n0) for n0, n1, t0, t1 in zip(images, images[1:], seconds, seconds[1:])]
    # Per-image time without the fixed cost, largest size over smallest. The fixed cost here is the intercept
    # through the two smallest sizes, not the fitted one: a stage that slows down bends the least-squares line,
    # whose intercept then drops (even below 0) and hides the slowdown. With two sizes the ratio is 1 by design.
    ratio = slows_down = None
    if len(steps) > 1 and all(step > 0 for step in steps):
        fixed_small = seconds[0] - steps[0] * images[0]
        ratio = (seconds[-1] - fixed_small) / images[-1] / steps[0]
        slows_down = any(later > SLOWDOWN * earlier for earlier, later in zip(steps, steps[1:]))
    return {"marginal_seconds_per_image": round(marginal, 4), "fixed_seconds": round(fixed, 2),
            "marginal_between_sizes": [round(step, 4) for step in steps],
            "per_image_ratio_largest_to_smallest": round(ratio, 3) if ratio is not None else None,
            "slows_down": slows_down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,1000,2000", help="training images per run, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if len(sizes) < 2 or sizes[0] < 16:
        parser.error("--sizes needs at least two different sizes, each >= 16 (the training batch)")
    out = args.out if args.out.is_absolute() else ROOT / args.out

    runs = [run_size(out, n, args.seed) for n in sizes]
    write_results(runs, sizes, args.seed)


def write_results(runs: list[dict], sizes: list[int], seed: int, **provenance) -> None:
    """The fits, the JSON and the table in benchmarks/README.md of the runs' measurements."""
    fits = {}
    for name in runs[0]["stages"]:
        fits[name] = fit([run["stages"][name]["images"] for run in runs],
                         [run["stages"][name]["seconds"] for run in runs])
    fits["make all"] = fit(sizes, [sum(stage["seconds"] for stage in run["stages"].values()) for run in runs])

    result = {
        "machine": machine_info(),
        **provenance,
        "seed": seed,
        "sizes": sizes,
        "runs": runs,
        "fits": fits,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = readme_table(result)
    write_readme_table("scaling", table)
    print(table)


def readme_table(result: dict) -> str:
    sizes, runs, fits = result["sizes"], result["runs"], result["fits"]
    verdict = {True: "no", False: "yes", None: "–"}
    sized = " / ".join(str(n) for n in sizes)
    lines = ["| stage | " + " | ".join(f"s, n={n}" for n in sizes) + " | marginal s / image | fixed s | "
             f"peak RSS tree MiB, n={sized} | largest process MiB, n={sizes[-1]} | linear |",
             "|---|" + "---:|" * len(sizes) + "---:|---:|---:|---:|---|"]
    for name in fits:
        if name == "make all":
            seconds = [sum(stage["seconds"] for stage in run["stages"].values()) for run in runs]
            tree = [max(stage["peak_rss_tree_mib"] for stage in run["stages"].values()) for run in runs]
            process = max(stage["peak_rss_process_mib"] for stage in runs[-1]["stages"].values())
        else:
            seconds = [run["stages"][name]["seconds"] for run in runs]
            tree = [run["stages"][name]["peak_rss_tree_mib"] for run in runs]
            process = runs[-1]["stages"][name]["peak_rss_process_mib"]
        lines.append(f"| {name} | " + " | ".join(f"{s:.1f}" for s in seconds)
                     + f" | {fits[name]['marginal_seconds_per_image']:.4f} | {fits[name]['fixed_seconds']:.1f} | "
                     + " / ".join(f"{m:.0f}" for m in tree)
                     + f" | {process:.0f} | {verdict[fits[name]['slows_down']]} |")
    machine = result["machine"]
    note = (f"\n\nMeasured by `python benchmarks/scaling.py --sizes {','.join(map(str, sizes))}` (seed "
            f"{result['seed']}) on {machine['cores']} CPU cores, torch {machine['torch']}. n = training images, "
            "val = n/4; per image = per training image, the val evaluation per val image. Linear: the marginal "
            f"cost per image between consecutive sizes never rises by more than {100 * (SLOWDOWN - 1):.0f} % "
            "(– where start-up and noise swamp it). Tree RSS: the sum over the stage's processes, sampled every "
            f"{SAMPLE_SECONDS} s, pages shared with forked workers counted in each (an upper bound); the `make all` "
            "row gives the largest stage. Raw numbers in "
            "`benchmarks/results/scaling.json`.")
    return "\n".join(lines) + note


if __name__ == "__main__":
    main()
