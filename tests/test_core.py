"""Atomic writes, masks, the HDF5 CAM store, checkpoints and the dataset index."""

import h5py
import numpy as np
import pytest
import torch

from stages.core.camstore import CamReader, CamWriter
from stages.core.checkpoint import load_checkpoint, load_state, save_checkpoint
from stages.core.errors import UserError
from stages.core.io import atomic_path, load_image, load_mask, save_mask, write_json, read_json
from stages.core.history import loss_terms, stage_seconds, timing_metrics
from stages.core.runs import Run, Stage
from stages.data.index import DatasetIndex, Sample, check_sample_id
from PIL import Image


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_existing_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_mask_round_trip_keeps_indices_and_palette(tmp_path):
    mask = np.array([[0, 1, 2], [255, 20, 0]], dtype=np.uint8)
    save_mask(tmp_path / "m.png", mask)
    assert np.array_equal(load_mask(tmp_path / "m.png"), mask)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1


def test_load_image_converts_modes_and_rejects_garbage(tmp_path):
    Image.new("L", (4, 3), 7).save(tmp_path / "gray.png")
    Image.new("RGBA", (4, 3), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "gray.png").shape == (3, 4, 3)
    assert load_image(tmp_path / "rgba.png")[0, 0].tolist() == [1, 2, 3]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(UserError, match="not found"):
        load_image(tmp_path / "missing.jpg")


def test_cam_store_round_trip_and_attributes(tmp_path):
    path = tmp_path / "cams.h5"
    cams = np.random.default_rng(0).random((2, 5, 6)).astype(np.float32)
    with CamWriter(path, class_names=["background", "a", "b"], split="train", scales=[1.0, 0.5],
                   config={"k": 1}) as writer:
        writer.write("img1", cams, np.array([1, 2]))
        writer.write("img2", np.zeros((0, 5, 6), np.float32), np.array([], dtype=np.int64))
    with CamReader(path) as reader:
        assert reader.ids() == ["img1", "img2"] and len(reader) == 2
        assert reader.class_names == ["background", "a", "b"] and reader.scales == [1.0, 0.5]
        assert reader.config == {"k": 1} and reader.split == "train"
        read, classes = reader.read("img1")
        assert classes.tolist() == [1, 2]
        np.testing.assert_allclose(read, cams, atol=1e-3)  # float16 storage
        assert reader.read("img2")[0].shape == (0, 5, 6)
        with pytest.raises(UserError, match="nope"):
            reader.read("nope")
    with h5py.File(path) as file:
        assert file["cams/img1"].dtype == np.float16 and file["cams/img1"].compression == "gzip"


def test_cam_writer_failure_leaves_no_file(tmp_path):
    path = tmp_path / "cams.h5"
    with pytest.raises(RuntimeError):
        with CamWriter(path, class_names=["background", "a"], split="train", scales=[1.0], config={}) as writer:
            writer.write("x", np.zeros((1, 2, 2), np.float32), np.array([1]))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_cam_reader_rejects_other_schema(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.attrs["schema"] = "something else"
    with pytest.raises(UserError, match="not a wsss CAM file"):
        CamReader(tmp_path / "other.h5")
    with pytest.raises(UserError, match="infer-cam"):
        CamReader(tmp_path / "absent.h5")


def test_checkpoint_round_trip_and_kind_check(tmp_path):
    from stages.core.normalization import Normalization
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c.pt", kind="cam", config={"lr": 0.1}, class_names=["background", "a"],
                    model=model, normalization=Normalization(), metrics={"m": 1.0})
    payload = load_checkpoint(tmp_path / "c.pt", "cam")
    assert payload["config"] == {"lr": 0.1}
    other = torch.nn.Linear(3, 2)
    load_state(other, payload, tmp_path / "c.pt")
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(UserError, match="cam checkpoint, expected a segmenter"):
        load_checkpoint(tmp_path / "c.pt", "segmenter")
    with pytest.raises(UserError, match="does not fit"):
        load_state(torch.nn.Linear(4, 2), payload, tmp_path / "c.pt")


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"version": 1, "kind": "cam", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt", "cam")


def test_dataset_index_round_trip(tmp_path):
    index = DatasetIndex("d", "synth", str(tmp_path), ["background", "a"],
                         {"train": [Sample("x", "/i/x.jpg", None, (1,))]})
    index.save(tmp_path / "dataset.json")
    loaded = DatasetIndex.load(tmp_path / "dataset.json")
    assert loaded == index
    with pytest.raises(UserError, match="unknown split 'val'"):
        loaded.split("val")
    with pytest.raises(UserError, match="unknown class 'zebra'"):
        loaded.class_index("zebra")


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b"])
def test_sample_ids_cannot_escape_folders(bad):
    with pytest.raises(UserError, match="invalid image id"):
        check_sample_id(bad)


def test_manifest_records_successful_stages_only(tmp_path):
    run = Run(tmp_path)

    def write() -> dict:
        (tmp_path / "out.txt").write_text("x")
        return {"x": 0.5}

    def fail() -> dict:
        raise ValueError("failed")

    assert run.execute(Stage("first", {"a": 1}, [], [tmp_path / "out.txt"], write)) == {"x": 0.5}
    with pytest.raises(ValueError):
        run.execute(Stage("second", {}, [], [], fail))
    stages = run.manifest()["stages"]
    assert list(stages) == ["first"]
    assert stages["first"]["outputs"] == ["out.txt"] and stages["first"]["metrics"] == {"x": 0.5}
    assert 10 < stages["first"]["peak_rss_mib"] < 64 * 1024  # MiB: this process, torch imported
    with pytest.raises(UserError, match="wsss data synth"):
        run.dataset()


def test_an_up_to_date_stage_is_skipped_and_a_changed_input_or_output_runs_it_again(tmp_path, capsys):
    run = Run(tmp_path)
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a")
    calls = []

    def copy() -> dict:
        calls.append(1)
        output.write_text(source.read_text())
        return {"runs": len(calls)}

    def stage(config: dict) -> Stage:
        return Stage("copy", config, [source], [output], copy)

    assert run.execute(stage({"k": 1})) == {"runs": 1}
    assert capsys.readouterr().err.splitlines()[-1] == f"copy wrote {output}"  # the last line says where
    assert run.execute(stage({"k": 1})) == {"runs": 1} and len(calls) == 1  # skipped, recorded metrics
    said = capsys.readouterr().err.splitlines()
    assert said[0].startswith("copy: up to date") and said[-1] == f"copy is in {output}"
    assert run.execute(stage({"k": 1, "workers": 8})) == {"runs": 1}  # execution-only keys do not count
    assert run.execute(stage({"k": 2}))["runs"] == 2  # another config
    source.write_text("b")
    assert run.execute(stage({"k": 2}))["runs"] == 3  # a changed input
    output.write_text("edited")
    assert run.execute(stage({"k": 2}))["runs"] == 4  # an output changed by hand
    assert run.execute(stage({"k": 2}), force=True)["runs"] == 5
    assert output.read_text() == "b"


def test_mask_size_check_names_the_file(tmp_path):
    from stages.data.loading import check_mask_sizes

    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    save_mask(tmp_path / "a.png", np.zeros((6, 8), np.uint8))
    save_mask(tmp_path / "b.png", np.zeros((5, 8), np.uint8))
    sample = Sample("a", str(tmp_path / "a.jpg"), str(tmp_path / "a.png"), (1,))
    check_mask_sizes([sample], lambda s: s.mask)  # same size: no error
    with pytest.raises(UserError, match="b.png is 8x5 but image .*a.jpg is 8x6"):
        check_mask_sizes([sample], lambda s: str(tmp_path / "b.png"))
    with pytest.raises(UserError, match="cannot read mask or image of 'a'"):
        check_mask_sizes([sample], lambda s: str(tmp_path / "missing.png"))


def test_an_epochs_timings_are_not_loss_terms_and_the_data_wait_share_is_over_all_epochs():
    history = [{"cls": 0.5, "val_map": 0.9, "seconds": 10.0, "data_seconds": 1.0},
               {"cls": 0.3, "aux": 0.1, "val_map": 0.95, "seconds": 30.0, "data_seconds": 1.0}]
    assert loss_terms(history[1]) == {"cls": 0.3, "aux": 0.1}
    assert timing_metrics(history) == {"epoch_seconds": 20.0, "data_wait_share": 0.05}  # 2 s of 40
    # a training state saved before the wait was recorded counts its epochs as not waiting
    assert timing_metrics([{"cls": 1.0, "seconds": 4.0}]) == {"epoch_seconds": 4.0, "data_wait_share": 0.0}


def test_a_resumed_training_stage_counts_the_epochs_of_its_earlier_invocations():
    resumed = {"seconds": 250.0, "metrics": {"history": [{"seconds": 120.0}, {"seconds": 110.0}, {"seconds": 115.0}]}}
    assert stage_seconds(resumed) == 345.0
    # an uninterrupted stage also validated and saved: its own clock is longer than its epochs
    assert stage_seconds({"seconds": 400.0, "metrics": {"history": [{"seconds": 150.0}] * 2}}) == 400.0
    assert stage_seconds({"seconds": 100.0, "metrics": {"miou": 0.5}}) == 100.0  # not a training stage
