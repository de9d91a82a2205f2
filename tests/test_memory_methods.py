"""Memory-bank methods: the class queues, cross-image pixel contrast (InfoNCE by hand, hard anchors, warm-up)
and MCIC (seeds, fusion, attention over the memory, the warm-up schedule, stop-gradient)."""

import math

import pytest
import torch
import torch.nn.functional as F

from stages.config import SegModelConfig
from stages.core.io import IGNORE_INDEX
from stages.methods.mcic import (ContextAttention, McicOptions, McicTrainer, cam_seeds, context_seeds, frozen,
                                 fuse_seeds, rampup)
from stages.methods.memory import ClassQueue, PixelSegmentMemory
from stages.methods.pixel_contrast import MemoryContrastOptions, MemoryPixelContrast, memory_contrast, sample_anchors
from stages.models.deeplab import DeepLab

I = IGNORE_INDEX


# ------------------------------------------------------------------------------------------------ class queues
def numbered(first: int, n: int) -> torch.Tensor:
    """n one-dimensional features first, first+1, ... (unnormalised, so they stay recognisable)."""
    return torch.arange(first, first + n, dtype=torch.float32)[:, None]


def test_queue_holds_exactly_the_newest_entries_oldest_first():
    queue = ClassQueue(num_classes=2, size=5, dim=1, normalize=False)
    queue.push(0, numbered(0, 3))
    assert queue.entries(0).flatten().tolist() == [0, 1, 2]
    queue.push(0, numbered(3, 3))  # 6 pushed into 5: the first is gone
    assert queue.entries(0).flatten().tolist() == [1, 2, 3, 4, 5]
    queue.push(0, numbered(6, 4))  # the write position moved by K each time, not by 1
    assert queue.entries(0).flatten().tolist() == [5, 6, 7, 8, 9]
    queue.push(0, numbered(10, 7))  # more than the queue holds: its newest 5
    assert queue.entries(0).flatten().tolist() == [12, 13, 14, 15, 16]
    assert queue.entries(1).shape == (0, 1)  # the other class is untouched


def test_queue_normalises_and_reports_contents_with_their_classes():
    queue = ClassQueue(num_classes=3, size=4, dim=2)
    queue.push(2, torch.tensor([[3.0, 4.0]]))
    queue.push(0, torch.tensor([[0.0, 2.0], [5.0, 0.0]]))
    features, labels = queue.contents()
    assert labels.tolist() == [0, 0, 2]
    assert features.flatten().tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0, 0.6, 0.8])
    assert queue.contents([2])[1].tolist() == [2]


def test_pixel_segment_memory_enqueues_k_pixels_and_one_mean_per_class_and_image():
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(2, 4, 3, 3), dim=1)
    labels = torch.tensor([[[0, 0, 0], [0, 1, 1], [1, 1, I]],
                           [[2, 2, 2], [2, 2, 2], [2, 2, 2]]])
    memory = PixelSegmentMemory(num_classes=3, dim=4, pixel_size=100, segment_size=100, pixels_per_class=2)
    memory.enqueue(embeddings, labels)
    assert memory.pixels.count == [2, 2, 2] and memory.segments.count == [1, 1, 1]
    class_one = embeddings[0].flatten(1).T[labels[0].flatten() == 1]
    expected_mean = F.normalize(class_one.mean(0), dim=0)
    assert memory.segments.entries(1)[0].tolist() == pytest.approx(expected_mean.tolist(), abs=1e-6)
    for pixel in memory.pixels.entries(1):  # the sampled pixels are class-1 pixels
        assert (class_one - pixel).abs().sum(1).min() < 1e-6


# ------------------------------------------------------------------------------------------- pixel contrast
def test_memory_contrast_equals_the_hand_computed_infonce():
    # tau 0.5, base 0.5. Anchor (1, 0) of class 0; memory: (1, 0) class 0, (0, 1) class 0, (0.6, 0.8) class 1.
    # Logits 2, 0, 1.2 (the max, 2, is subtracted and cancels). Negatives: e^1.2.
    # Positive 1: -log(e^2 / (e^2 + e^1.2)); positive 2: -log(e^0 / (e^0 + e^1.2)); the loss is their mean.
    anchor = torch.tensor([[1.0, 0.0]])
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    expected = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(1.2))) / 2
    value = memory_contrast(anchor, torch.tensor([0]), memory, torch.tensor([0, 0, 1]), 0.5, 0.5)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    # tau / base_tau scales it; an anchor whose class is not in the memory is left out of the mean.
    two = memory_contrast(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 5]), memory,
                          torch.tensor([0, 0, 1]), 0.5, 1.0)
    assert two.item() == pytest.approx(expected / 2, abs=1e-6)


def test_hard_anchors_are_half_of_each_class_and_all_mispredicted():
    torch.manual_seed(0)
    labels = torch.tensor([[0] * 10 + [1] * 10 + [I] * 4])
    predictions = labels.clone()
    predictions[0, 0:6] = 1  # six background pixels predicted as class 1: hard
    predictions[0, 10:12] = 0  # two class-1 pixels predicted as background: hard
    predictions[0, 20:] = 0
    indices, anchor_labels = sample_anchors(labels, predictions, max_anchors=8, max_per_class=100)
    assert len(indices) == 8  # 8 // 2 classes = 4 per class
    for c, hard_pixels in ((0, set(range(6))), (1, {10, 11})):
        chosen = indices[anchor_labels == c].tolist()
        assert len(chosen) == 4 and len(set(chosen)) == 4
        assert all(labels[0, i] == c for i in chosen)
        assert len(hard_pixels & set(chosen)) >= min(2, len(hard_pixels))
    assert len(set(range(6)) & set(indices[anchor_labels == 0].tolist())) >= 2  # half hard when there are enough
    assert {10, 11} <= set(indices[anchor_labels == 1].tolist())  # every hard one when there are fewer


def test_anchors_are_counted_per_image_and_offset_into_the_flattened_batch():
    labels = torch.tensor([[0, 0, 0, 0], [1, 1, 0, I]])
    indices, anchor_labels = sample_anchors(labels, labels.clone(), max_anchors=100, max_per_class=3)
    pairs = sorted(zip((indices // 4).tolist(), anchor_labels.tolist()))
    assert pairs == [(0, 0)] * 3 + [(1, 1)] * 2  # image 1's single background pixel is too few
    assert all(labels.flatten()[i] == c for i, c in zip(indices.tolist(), anchor_labels.tolist()))


def test_contrast_is_zero_during_warm_up_but_fills_the_memory_then_trains_the_features():
    torch.manual_seed(0)
    options = MemoryContrastOptions(dim=8, warmup_epochs=1, pixel_memory=50, segment_memory=50)
    contrast = MemoryPixelContrast(feature_channels=6, num_classes=3, options=options, steps_per_epoch=1)
    features = torch.randn(2, 6, 4, 4, requires_grad=True)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 16, 16))
    assert contrast(features, logits, labels, step=0)["contrast"].item() == 0
    assert sum(contrast.memory.pixels.count) > 0
    loss = contrast(features, logits, labels, step=1)["contrast"]
    assert loss.item() > 0
    loss.backward()
    assert features.grad.abs().sum() > 0
    assert all(p.grad is not None for p in contrast.projection.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------------ MCIC
def test_rampup_follows_the_polynomial_schedule():
    assert rampup(0, 100) == 0.0
    assert rampup(50, 100) == pytest.approx((-2 * 0.125 + 3 * 0.25) ** 2)  # 0.25
    assert rampup(100, 100) == rampup(500, 100) == 1.0
    values = [rampup(step, 100) for step in range(101)]
    assert values == sorted(values)


def test_cam_seeds_take_background_from_saliency_and_ignore_weak_pixels():
    cams = torch.tensor([[[[4.0, 2.0, 0.2, 0.0]], [[0.0, 3.0, 0.0, 0.0]]]])  # 2 classes, 1x4 map
    labels = torch.tensor([[1.0, 1.0]])
    saliency = torch.tensor([[[0.9, 0.9, 0.9, 0.05]]])
    # normalised: class 1 (1, .5, .05, 0), class 2 (0, 1, 0, 0); background only where saliency < 0.1
    assert cam_seeds(cams, labels, saliency, 0.1).tolist() == [[[1, 2, I, 0]]]
    # an absent class is masked out
    assert cam_seeds(cams, torch.tensor([[1.0, 0.0]]), saliency, 0.1).tolist() == [[[1, 1, I, 0]]]


def test_context_seeds_mix_saliency_into_background():
    logits = torch.log(torch.tensor([[[[0.7]], [[0.2]], [[0.1]]]]))  # background, class 1, class 2 at one pixel
    labels = torch.tensor([[1.0, 0.0]])
    # background 0.5 * (1 - 0.9) + 0.5 * 0.7 = 0.4 > 0.2: background; with saliency 0.1 → 0.8.
    assert context_seeds(logits, labels, torch.tensor([[[0.9]]]), 0.1, 0.5).item() == 0
    # with a salient pixel, saliency weight 1: background 0.0, class 1 0.2 wins
    assert context_seeds(logits, labels, torch.tensor([[[1.0]]]), 0.1, 1.0).item() == 1


def test_fused_seeds_take_foreground_union_and_background_intersection():
    cam = torch.tensor([0, 0, 1, 1, 0, I, 2])
    context = torch.tensor([0, 1, 1, 2, I, I, 0])
    assert fuse_seeds(cam, context, num_classes=3).tolist() == [0, 1, 1, I, I, I, 2]


def test_attention_rows_sum_to_one_over_allowed_entries_and_an_image_without_memory_gets_nothing():
    torch.manual_seed(0)
    attention = ContextAttention(channels=4)
    features = torch.randn(2, 4, 3, 3)
    memory = torch.randn(5, 4)
    allowed = torch.tensor([[True, False, True, True, False], [False] * 5])
    context, weights = attention(features, memory, allowed)
    assert weights.shape == (2, 9, 5)
    assert weights[0].sum(-1).tolist() == pytest.approx([1.0] * 9)
    assert weights[0][:, ~allowed[0]].abs().sum() == 0
    assert weights[1].abs().sum() == 0 and context[1].abs().sum() == 0
    assert torch.isfinite(context).all()
    empty_context, empty_weights = attention(features, memory[:0], allowed[:, :0])  # an empty memory
    assert empty_context.abs().sum() == 0 and empty_weights.shape == (2, 9, 0)


def tiny_mcic(steps_per_epoch=10, **options):
    torch.manual_seed(0)
    segmenter = DeepLab(SegModelConfig(), num_classes=3)
    return McicTrainer(segmenter, 3, McicOptions(rampup_epochs=1, **options), steps_per_epoch)


def mcic_batch():
    torch.manual_seed(1)
    return {"image": torch.randn(2, 3, 64, 64), "labels": torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
            "saliency": torch.rand(2, 64, 64)}


def test_mcic_contexts_are_confidence_weighted_means_and_enter_after_the_read():
    trainer = tiny_mcic()
    trainer.memory = ClassQueue(3, 64, 2, normalize=False)
    features = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # (1, C=2, 1, 2)
    logits = torch.tensor([[[[0.0, 0.0]], [[2.0, 4.0]], [[0.0, 0.0]]]])  # class 1 wins both pixels
    trainer.enqueue(features, logits, torch.tensor([[1.0, 1.0, 1.0]]))
    # class-1 confidence 0.5 and 1.0: only the second passes > 0.5 → sum 1.0, not > 1: nothing enters
    assert trainer.memory.count == [0, 0, 0]
    trainer.enqueue(features.repeat(1, 1, 1, 2), logits.repeat(1, 1, 1, 2), torch.tensor([[1.0, 1.0, 1.0]]))
    # two pixels of confidence 1.0 (feature (3, 2)) and two of 0.5 (left out): the mean is (3, 2)
    assert trainer.memory.count == [0, 1, 0]
    assert trainer.memory.entries(1).tolist() == [[3.0, 2.0]]
    # the first batch reads an empty memory, so it has no attention to take the entropy of
    fresh = tiny_mcic(entropy_weight=1.0)
    terms = fresh(mcic_batch(), step=5)
    assert terms["entropy"].item() == 0
    assert sum(fresh.memory.count) >= 0 and set(terms) == {"cls", "seg", "entropy"}


def test_mcic_follows_the_official_defaults_no_entropy_term_and_the_three_layer_cam_head():
    trainer = tiny_mcic()
    assert set(trainer(mcic_batch(), step=5)) == {"cls", "seg"}  # official: entropy only with --use-entropy
    convs = [m for m in trainer.classifier if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((3, 3), 1024), ((1, 1), 1024), ((1, 1), 2)]
    assert [m.p for m in trainer.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert convs[-1].bias.abs().sum() == 0 and 0.005 < convs[-1].weight.std().item() < 0.015
    trainer.eval()
    maps = trainer.branches(mcic_batch()["image"], mcic_batch()["labels"])["class_maps"]
    assert maps.shape == (2, 2, 4, 4)  # one map per foreground class at the backbone's stride 16


def test_mcic_context_path_trains_the_attention_but_never_the_segmenter():
    trainer = tiny_mcic()
    trainer(mcic_batch(), step=0)  # fills the memory
    trainer.memory.push(0, torch.randn(1, trainer.memory.features.shape[2]))  # make sure there is something
    outputs = trainer.branches(mcic_batch()["image"], mcic_batch()["labels"])
    outputs["context_logits"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trainer.segmenter.parameters())
    assert trainer.attention.query.weight.grad.abs().sum() > 0
    assert trainer.attention.value.weight.grad.abs().sum() > 0


def test_mcic_loss_weights_follow_the_warm_up_and_the_segmenter_runs_alone():
    trainer = tiny_mcic(steps_per_epoch=10)
    batch = mcic_batch()
    assert trainer(batch, step=0)["seg"].item() == 0  # lambda(0) = 0
    late = trainer(batch, step=10)
    assert late["seg"].item() > 0 and late["cls"].item() > 0
    trainer.eval()
    assert trainer.segmenter(batch["image"]).shape == (2, 3, 64, 64)  # test time: no memory, no labels
    seeds = trainer.seeds(batch["image"], batch["labels"], batch["saliency"])
    assert seeds.shape == (2, 64, 64)
    assert set(seeds.unique().tolist()) <= {0, 1, 2, I}
    assert not (seeds[0] == 2).any()  # image 0 is not labelled with class 2


def test_frozen_modules_pass_gradients_to_their_input_only_and_keep_batchnorm_statistics():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2)).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    frozen(module, x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
