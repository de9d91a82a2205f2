"""Several processes under torchrun (gloo on CPU): they see the same data per step as one process, their
synchronised BatchNorm computes the whole batch's statistics, and their results match a single process's."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stages.core.distributed import Processes
from stages.core.sync_batchnorm import CpuSyncBatchNorm
from stages.core.io import load_mask
from stages.core.training import training_loader

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAINING = ["--epochs", "2", "--batch-size", "8", "--base-size", "48", "--crop-size", "40", "--workers", "0",
            "--device", "cpu", "--no-amp", "--lr", "0.01", "--sync-bn"]


class Indices(torch.utils.data.Dataset):
    epoch = 0

    def __len__(self):
        return 70

    def __getitem__(self, index):
        return index


def batches(procs: Processes, epoch: int) -> list[list[int]]:
    loader = training_loader(Indices(), 8, 0, torch.device("cpu"), seed=3, procs=procs)
    loader.sampler.set_epoch(epoch)
    return [batch.tolist() for batch in loader]


def test_n_processes_share_each_global_batch_of_one_process():
    for epoch in (0, 1):
        single = batches(Processes(), epoch)
        ranks = [batches(Processes(rank, 2), epoch) for rank in (0, 1)]
        assert len(single) == len(ranks[0]) == len(ranks[1]) == 70 // 8
        for step, batch in enumerate(single):
            assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
            assert len(ranks[0][step]) == len(ranks[1][step]) == 4
    assert batches(Processes(), 0) != batches(Processes(), 1)  # each epoch its own order, from (seed, epoch) alone


class Epochs(Indices):
    def __getitem__(self, index):
        return self.epoch


def test_loader_workers_see_the_current_epoch():
    """The augmentation of an image depends on (seed, epoch, index): worker processes must get each epoch's value
    (persistent workers kept the first epoch's copy of the dataset)."""
    loader = training_loader(Epochs(), 8, 2, torch.device("cpu"), seed=0, procs=Processes())
    for epoch in range(3):
        loader.dataset.epoch = epoch
        assert {value for batch in loader for value in batch.tolist()} == {epoch}


def test_a_batch_that_does_not_split_evenly_is_refused():
    from stages.core.errors import UserError

    with pytest.raises(UserError, match="does not split evenly over 3 processes"):
        training_loader(Indices(), 8, 0, torch.device("cpu"), seed=0, procs=Processes(0, 3))


def _sync_bn_worker(rank: int, store: str, inputs: torch.Tensor, weights: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    layer = CpuSyncBatchNorm(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    x = inputs.chunk(2)[rank].clone().requires_grad_()
    y = layer(x)
    (y * weights.chunk(2)[rank]).sum().backward()
    torch.save({"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad,
                "running_mean": layer.running_mean, "running_var": layer.running_var}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_over_the_whole_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(6, 3, 5, 4, generator=generator) * 3 + 1
    weights = torch.randn(6, 3, 5, 4, generator=generator)
    mp.spawn(_sync_bn_worker, args=(str(tmp_path / "store"), inputs, weights, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        reference.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    x = inputs.clone().requires_grad_()
    y = reference(x)
    (y * weights).sum().backward()

    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, rtol=1e-4, atol=1e-5)
    # each process holds its share of the parameter gradients; DDP sums (averages) them
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], reference.weight.grad)
    torch.testing.assert_close(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], reference.bias.grad)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], reference.running_mean)
        torch.testing.assert_close(r["running_var"], reference.running_var)


def wsss(*args, processes: int = 1) -> None:
    module = ["-m", "wsss_cli.main"]
    if processes > 1:  # `--` keeps torchrun from reading the command's options (--run) as its own
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(processes), *module, "--", *map(str, args)]
    else:
        command = [sys.executable, *module, *map(str, args)]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same stages in one process and in two."""
    root = tmp_path_factory.mktemp("distributed")
    single, double = root / "one", root / "two"
    wsss("data", "synth", "--run", single, "--num-train", 64, "--num-val", 16, "--image-size", 48, "--workers", 1)
    shutil.copytree(single, double)
    for run, processes in ((single, 1), (double, 2)):
        wsss("train-cam", "--run", run, *TRAINING, processes=processes)
        wsss("segment", "--run", run, "--labels", "gt", "--predict", "val", *TRAINING, processes=processes)
    # Inference from one classifier in both, so the sharding alone is compared.
    shutil.copy(double / "cam" / "checkpoint.pt", root / "two-process-classifier.pt")
    shutil.copy(single / "cam" / "checkpoint.pt", double / "cam" / "checkpoint.pt")
    for run, processes in ((single, 1), (double, 2)):
        wsss("infer-cam", "--run", run, "--scales", "1.0,0.5", "--part-size", 8, "--workers", 0, "--device", "cpu",
             processes=processes)
        wsss("pseudo-label", "--run", run, "--refine", "crf", "--workers", 1, processes=processes)
    return single, double


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_two_processes_train_the_classifier_like_one(runs):
    """The loss is a mean over images and the model has no dropout, so two processes' averaged gradient is one
    process's up to float summation order (and the synchronised BatchNorm's), which 16 steps amplify a little."""
    one, two = weights(runs[0] / "cam/checkpoint.pt"), weights(runs[0].parent / "two-process-classifier.pt")
    assert one.keys() == two.keys()
    for key in one:
        if one[key].is_floating_point():
            assert (one[key] - two[key]).abs().max() / one[key].abs().max().clamp_min(1e-3) < 0.02, key
    first_epoch = torch.load(runs[0].parent / "two-process-classifier.pt", weights_only=True)["metrics"]["epochs"][0]
    assert abs(first_epoch["val_map"] - torch.load(runs[0] / "cam/checkpoint.pt", weights_only=True)[
        "metrics"]["epochs"][0]["val_map"]) < 0.02


def test_two_processes_segment_and_predict_every_image_once(runs):
    for run in runs:
        assert len(list((run / "segment/gt/pred_val").glob("*.png"))) == 16
        assert torch.load(run / "segment/gt/checkpoint.pt", weights_only=True)["kind"] == "segmenter"


def segmenter_step(procs: Processes, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """One DDP step's gradients of the segmenter training method on this process's share of the batch."""
    from stages.config import SegModelConfig
    from stages.core.device import seed_everything
    from stages.core.sync_batchnorm import synchronise_batchnorm
    from stages.core.training import distributed
    from stages.methods import build_segment_method
    from stages.models.deeplab import DeepLab

    seed_everything(0)
    method = build_segment_method("deeplab", {}, "", {}, DeepLab(SegModelConfig(), 3), 3, 1)
    method.segmenter.aspp.project[1].p = 0.0  # no dropout: its random masks cannot match across process counts
    method = synchronise_batchnorm(method, torch.device("cpu"))
    step = distributed(method.train(), torch.device("cpu"), procs)
    share = slice(procs.rank * 4 // procs.world_size, (procs.rank + 1) * 4 // procs.world_size)
    terms = step({"image": images[share], "mask": masks[share]}, 0)
    sum(terms.values()).backward()
    return {name: p.grad for name, p in method.named_parameters() if p.grad is not None}


def _segmenter_worker(rank: int, store: str, images, masks, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    gradients = segmenter_step(Processes(rank, 2), images, masks)
    if rank == 0:
        torch.save(gradients, f"{out}/gradients.pt")
    dist.destroy_process_group()


def test_a_ddp_segmenter_step_has_the_gradient_of_one_process(tmp_path):
    """With as many labelled pixels in each process's share, the mean over each share's pixels averaged over
    processes is the mean over the batch's pixels: the DDP gradient (synchronised BatchNorm) is one process's."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 40, 40, generator=generator)
    masks = torch.randint(0, 3, (4, 40, 40), generator=generator)
    masks[:, :5] = 255  # ignored rows, the same number in every image
    mp.spawn(_segmenter_worker, args=(str(tmp_path / "store"), images, masks, str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "gradients.pt")
    one = segmenter_step(Processes(), images, masks)
    assert one.keys() == two.keys() and len(one) > 50
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-5)


def test_sharded_cams_and_pseudo_masks_equal_one_process(runs):
    one, two = runs
    with h5py.File(one / "cams/train.h5") as a, h5py.File(two / "cams/train.h5") as b:
        assert sorted(a["cams"]) == sorted(b["cams"]) and len(a["cams"]) == 64
        for key in a["cams"]:
            assert np.array_equal(a["cams"][key][()], b["cams"][key][()])
    names = sorted(p.name for p in (one / "pseudo/crf").glob("*.png"))
    assert len(names) == 64
    assert all(np.array_equal(load_mask(one / "pseudo/crf" / n), load_mask(two / "pseudo/crf" / n)) for n in names)
