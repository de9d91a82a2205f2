"""Storage of the CAM artifact: wsss's one HDF5 file per split (`stages/core/camstore.py`: float16 (K, H, W) per
image, gzip level 1 + shuffle, one chunk per image) against the way IRN's `step/make_cam.py` keeps CAMs, one `.npy`
per image holding a pickled dict, `np.save(path, {"keys": valid_cat, "cam": strided_cam, "high_res":
highres_cam})`, read back with `np.load(path, allow_pickle=True).item()`. Two plain `.npy` formats of the (K, H, W)
map alone, float32 and float16, separate what the stride-4 map, the dtype and the compression each cost. Results:
`benchmarks/results/storage.json` and the table in benchmarks/README.md `bench:storage`.

    python benchmarks/storage.py [--cams runs/bench/cams/train.h5] [--limit N] [--rounds 3] [--workdir /tmp]

The CAMs of `--cams` are read into memory (float32, as `CamReader.read` gives them) first. Each round, every format
writes all of them into a fresh folder under `--workdir` and reads them all back; the formats take turns, round
after round, and each reports its median over rounds. Nothing is fsynced and no cache is dropped: the writes end
in the page cache and the reads, straight after, are served from it (warm cache), so the times measure encoding,
decoding and system calls, not the disk.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.camstore import CamReader, CamWriter  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "storage.json"
CACHE_NOTE = ("no fsync, no cache dropped: writes end in the page cache and reads, straight after them, are served "
              "from it (warm cache)")


@dataclass
class Cams:
    """The benchmark's input: per image its id, float32 (K, H, W) CAMs and K class indices (1..C)."""
    source: Path
    ids: list[str]
    maps: list[np.ndarray]
    classes: list[np.ndarray]
    meta: dict  # CamWriter's file attributes, copied from the source

    @property
    def payload_bytes(self) -> int:
        return sum(cam.nbytes for cam in self.maps)


def load(path: Path, limit: int | None) -> Cams:
    with CamReader(path) as reader:
        ids = reader.ids()[:limit]
        maps, classes = zip(*(reader.read(image_id) for image_id in ids))
        meta = {"class_names": reader.class_names, "split": reader.split, "scales": reader.scales,
                "config": reader.config}
    return Cams(path, ids, list(maps), list(classes), meta)


# Each format: write(folder, cams), and read(folder, ids) -> per image (float32 CAMs, class indices or None where
# the format keeps none), what a consumer of the CAMs starts from.

def write_hdf5(folder: Path, cams: Cams) -> None:
    with CamWriter(folder / cams.source.name, **cams.meta) as writer:
        for image_id, cam, classes in zip(cams.ids, cams.maps, cams.classes):
            writer.write(image_id, cam, classes)


def read_hdf5(folder: Path, cams: Cams) -> list[tuple[np.ndarray, np.ndarray | None]]:
    with CamReader(folder / cams.source.name) as reader:
        return [reader.read(image_id) for image_id in cams.ids]


def irn_dicts(cams: Cams) -> list[dict]:
    """IRN's dict per image, built before the clock starts, as make_cam.py has it at hand from inference: `keys` a
    torch tensor of 0-based foreground classes, `cam` a torch float32 tensor at stride 4, `high_res` a numpy array.
    The stride-4 map stands in for the network's output by subsampling: same shape (K, ceil(H/4), ceil(W/4)) and
    dtype, and an uncompressed format's size does not depend on the values."""
    return [{"keys": torch.from_numpy(classes - 1), "cam": torch.from_numpy(np.ascontiguousarray(cam[:, ::4, ::4])),
             "high_res": cam} for cam, classes in zip(cams.maps, cams.classes)]


def write_irn(folder: Path, ids: list[str], dicts: list[dict]) -> None:
    for image_id, cam_dict in zip(ids, dicts):
        np.save(folder / f"{image_id}.npy", cam_dict)


def read_irn(folder: Path, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    read = []
    for image_id in ids:
        cam_dict = np.load(folder / f"{image_id}.npy", allow_pickle=True).item()
        read.append((cam_dict["high_res"], cam_dict["keys"].numpy() + 1))
    return read


def write_npy(folder: Path, ids: list[str], maps: list[np.ndarray]) -> None:
    for image_id, cam in zip(ids, maps):
        np.save(folder / f"{image_id}.npy", cam)


def read_npy(folder: Path, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    # astype: float16 files are handed over as float32, as CamReader.read does (a no-op copy=False for float32)
    return [(np.load(folder / f"{image_id}.npy").astype(np.float32, copy=False), None) for image_id in ids]


@dataclass
class Format:
    key: str
    name: str
    write: Callable[[Path], None]
    read: Callable[[Path], list[tuple[np.ndarray, np.ndarray | None]]]
    stored_dtype: type  # what the read-back maps must equal: the input rounded to this dtype


def formats(cams: Cams) -> list[Format]:
    dicts = irn_dicts(cams)
    maps16 = [cam.astype(np.float16) for cam in cams.maps]  # converted before the clock starts, as IRN's dicts are
    return [
        Format("hdf5-f16", "wsss HDF5, float16, gzip 1 + shuffle", lambda folder: write_hdf5(folder, cams),
               lambda folder: read_hdf5(folder, cams), np.float16),
        Format("irn-dict-f32", "IRN dict .npy (keys, stride-4 cam, high_res), float32",
               lambda folder: write_irn(folder, cams.ids, dicts), lambda folder: read_irn(folder, cams.ids),
               np.float32),
        Format("npy-f32", ".npy of the (K, H, W) map, float32", lambda folder: write_npy(folder, cams.ids, cams.maps),
               lambda folder: read_npy(folder, cams.ids), np.float32),
        Format("npy-f16", ".npy of the (K, H, W) map, float16", lambda folder: write_npy(folder, cams.ids, maps16),
               lambda folder: read_npy(folder, cams.ids), np.float16),
    ]


def disk_usage(folder: Path) -> dict[str, int]:
    """Files, their bytes (st_size) and the bytes the filesystem allocated to them (st_blocks, as `du` counts)."""
    stats = [path.stat() for path in folder.iterdir()]
    return {"files": len(stats), "bytes": sum(stat.st_size for stat in stats),
            "allocated_bytes": sum(stat.st_blocks * 512 for stat in stats)}


def check(fmt: Format, read: list[tuple[np.ndarray, np.ndarray | None]], cams: Cams) -> None:
    """Read-back equality, exact: the input rounded to the format's dtype, and the class indices where kept."""
    for image_id, (cam, classes), original, original_classes in zip(cams.ids, read, cams.maps, cams.classes):
        expected = original.astype(fmt.stored_dtype).astype(np.float32)
        if cam.dtype != np.float32 or not np.array_equal(cam, expected):
            raise SystemExit(f"{fmt.name}: image {image_id} read back differs from the input")
        if classes is not None and not np.array_equal(classes, original_classes):
            raise SystemExit(f"{fmt.name}: image {image_id} read back with classes {classes}, not {original_classes}")


def timed(work: Callable[[Path], object], folder: Path) -> tuple[float, object]:
    gc.collect()  # the previous step's garbage is not this step's cost
    started = time.perf_counter()
    result = work(folder)
    return time.perf_counter() - started, result


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (longest matching mount point in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    matching = [(point, kind) for point, kind in mounts
                if resolved == point or resolved.startswith(point.rstrip("/") + "/")]
    return max(matching, key=lambda mount: len(mount[0]))[1] if matching else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cams", type=Path, default=Path("runs/bench/cams/train.h5"))
    parser.add_argument("--limit", type=int, help="only the first N images of the file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where each format's fresh folder is made (and deleted after the round)")
    args = parser.parse_args()
    cams = load(args.cams if args.cams.is_absolute() else ROOT / args.cams, args.limit)
    args.workdir.mkdir(parents=True, exist_ok=True)
    specs = formats(cams)
    samples: dict[str, dict[str, list[float]]] = {fmt.key: {"write": [], "read": []} for fmt in specs}
    usage: dict[str, dict[str, int]] = {}
    print(f"{len(cams.ids)} images, {cams.payload_bytes / 1e6:.1f} MB float32; {CACHE_NOTE}", file=sys.stderr)
    for round_index in range(args.rounds):
        # each round starts one format later, so writeback of the previous format's dirty pages, which
        # lands on whichever format comes next, does not always fall on the same one
        shift = round_index % len(specs)
        for fmt in specs[shift:] + specs[:shift]:
            folder = Path(tempfile.mkdtemp(prefix="wsss-storage-", dir=args.workdir))
            try:
                write_seconds, _ = timed(fmt.write, folder)
                usage[fmt.key] = disk_usage(folder)
                read_seconds, read = timed(fmt.read, folder)
            finally:
                shutil.rmtree(folder)
            check(fmt, read, cams)
            del read
            samples[fmt.key]["write"].append(write_seconds)
            samples[fmt.key]["read"].append(read_seconds)
        print(f"round {round_index + 1}/{args.rounds}: " + "  ".join(
            f"{fmt.key} write {samples[fmt.key]['write'][-1]:.3f}s read {samples[fmt.key]['read'][-1]:.3f}s"
            for fmt in specs), file=sys.stderr)

    images, payload = len(cams.ids), cams.payload_bytes
    hdf5_bytes = usage["hdf5-f16"]["bytes"]
    results = {
        "machine": machine_info(numpy=np.__version__, h5py=h5py.__version__, hdf5=h5py.version.hdf5_version,
                                workdir_filesystem=filesystem(args.workdir),
                                workdir_block_bytes=os.statvfs(args.workdir).f_frsize),
        "cams": str(args.cams), "images": images, "image_size": list(cams.maps[0].shape[1:]),
        "channels_per_image": sum(cam.shape[0] for cam in cams.maps) / images,
        "payload_float32_bytes": payload, "rounds": args.rounds, "cache": CACHE_NOTE,
        "read_back": "exact: float16 formats equal the input rounded to float16, float32 formats the input",
        "formats": {},
    }
    for fmt in specs:
        write_seconds = statistics.median(samples[fmt.key]["write"])
        read_seconds = statistics.median(samples[fmt.key]["read"])
        results["formats"][fmt.key] = {
            "format": fmt.name, **usage[fmt.key],
            "bytes_per_image": usage[fmt.key]["bytes"] / images,
            "size_vs_hdf5": usage[fmt.key]["bytes"] / hdf5_bytes,
            "median_write_seconds": write_seconds, "median_read_seconds": read_seconds,
            "write_images_per_second": images / write_seconds, "read_images_per_second": images / read_seconds,
            "write_mb_per_second": payload / 1e6 / write_seconds, "read_mb_per_second": payload / 1e6 / read_seconds,
            "write_seconds": samples[fmt.key]["write"], "read_seconds": samples[fmt.key]["read"],
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(results)
    print(table, file=sys.stderr)
    write_readme_table("storage", table)


def results_table(results: dict) -> str:
    lines = [("| CAM storage | files | MB | allocated MB | kB / image | size vs. HDF5 | write images/s | write MB/s "
              "| read images/s | read MB/s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for numbers in results["formats"].values():
        lines.append(f"| {numbers['format']} | {numbers['files']} | {numbers['bytes'] / 1e6:.1f} | "
                     f"{numbers['allocated_bytes'] / 1e6:.1f} | {numbers['bytes_per_image'] / 1e3:.1f} | "
                     f"{numbers['size_vs_hdf5']:.2f}x | {numbers['write_images_per_second']:.0f} | "
                     f"{numbers['write_mb_per_second']:.0f} | {numbers['read_images_per_second']:.0f} | "
                     f"{numbers['read_mb_per_second']:.0f} |")
    machine = results["machine"]
    height, width = results["image_size"]
    lines.append(
        f"\n{results['images']} images of {height} x {width} px, {results['channels_per_image']:.2f} class maps each "
        f"({results['payload_float32_bytes'] / 1e6:.1f} MB as float32, what MB/s counts); median of "
        f"{results['rounds']} rounds, formats in turns; {results['cache']}. Read back exactly (float16 formats: the "
        "input rounded to float16; the input comes from a float16 file, so here they lose nothing, and on CAMs in "
        "[0, 1] float16 rounds by at most 2^-12). The plain `.npy` formats keep no class indices. "
        f"{machine['workdir_filesystem']} ({machine['workdir_block_bytes']} B blocks), {machine['cores']} CPU cores, "
        f"numpy {machine['numpy']}, h5py {machine['h5py']} (HDF5 {machine['hdf5']}); "
        "`python benchmarks/storage.py`, raw numbers in `benchmarks/results/storage.json`.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
