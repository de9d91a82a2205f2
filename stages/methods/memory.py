"""Per-class feature memories shared by the memory-bank methods: cross-image pixel contrast
(`wsss segment --contrast memory`) and MCIC (`wsss segment --method mcic`).

`ClassQueue` is one first-in-first-out ring buffer per class: a push of n features writes them after the newest
entry and moves the write position by n (the official ContrastiveSeg code moves it by 1 whatever n is, so most of
each push is overwritten by the next one, a bug its authors acknowledged); once full, the oldest are overwritten.
`PixelSegmentMemory` holds the two queues of cross-image pixel contrast: K random pixels and one mean feature
(a "segment") per class per image. The memories are training state: the per-epoch training state carries them
(as their method's extra state), the segmenter's checkpoint does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.io import IGNORE_INDEX


class ClassQueue:
    """`size` entries of `dim` features per class; L2-normalised on entry when `normalize`."""

    def __init__(self, num_classes: int, size: int, dim: int, normalize: bool = True,
                 device: torch.device | str = "cpu"):
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.size = size
        self.normalize = normalize
        self.features = torch.zeros(num_classes, size, dim, device=device)
        self.write_position = [0] * num_classes
        self.count = [0] * num_classes

    @property
    def num_classes(self) -> int:
        return self.features.shape[0]

    def state(self) -> dict[str, torch.Tensor]:
        return {"features": self.features, "write_position": torch.tensor(self.write_position),
                "count": torch.tensor(self.count)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], normalize: bool, device: torch.device | str) -> "ClassQueue":
        num_classes, size, dim = state["features"].shape
        queue = cls(num_classes, size, dim, normalize, device)
        queue.features.copy_(state["features"])
        queue.write_position = state["write_position"].tolist()
        queue.count = state["count"].tolist()
        return queue

    @torch.no_grad()
    def push(self, class_index: int, features: torch.Tensor) -> None:
        """Append (n, dim) features to class `class_index`'s queue, overwriting its oldest entries when full."""
        features = features.detach().float()
        if self.normalize:
            features = F.normalize(features, dim=1)
        features = features[-self.size:]  # a push larger than the queue keeps its newest part
        n = features.shape[0]
        if n == 0:
            return
        start = self.write_position[class_index]
        positions = (start + torch.arange(n, device=self.features.device)) % self.size
        self.features[class_index, positions] = features.to(self.features.device)
        self.write_position[class_index] = (start + n) % self.size
        self.count[class_index] = min(self.count[class_index] + n, self.size)

    def entries(self, class_index: int) -> torch.Tensor:
        """(count, dim): the class's stored features, oldest first."""
        count = self.count[class_index]
        if count < self.size:
            return self.features[class_index, :count]
        return self.features[class_index].roll(-self.write_position[class_index], dims=0)

    def contents(self, classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, dim) features and (M,) class indices of the given classes' entries (all classes by default)."""
        classes = range(self.num_classes) if classes is None else classes
        features = [self.entries(c) for c in classes]
        labels = [torch.full((len(f),), c, dtype=torch.long, device=self.features.device)
                  for c, f in zip(classes, features)]
        if not features:
            return self.features.new_zeros(0, self.features.shape[2]), torch.zeros(0, dtype=torch.long)
        return torch.cat(features), torch.cat(labels)


class PixelSegmentMemory:
    """Cross-image pixel contrast's memory: a pixel queue and a segment queue per class."""

    def __init__(self, num_classes: int, dim: int, pixel_size: int, segment_size: int, pixels_per_class: int,
                 device: torch.device | str = "cpu"):
        self.pixels = ClassQueue(num_classes, pixel_size, dim, device=device)
        self.segments = ClassQueue(num_classes, segment_size, dim, device=device)
        self.pixels_per_class = pixels_per_class

    def state(self) -> dict:
        return {"pixels": self.pixels.state(), "segments": self.segments.state(),
                "pixels_per_class": self.pixels_per_class}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str) -> "PixelSegmentMemory":
        pixels, segments = state["pixels"]["features"], state["segments"]["features"]
        memory = cls(pixels.shape[0], pixels.shape[2], pixels.shape[1], segments.shape[1], state["pixels_per_class"],
                     device)
        memory.pixels = ClassQueue.from_state(state["pixels"], True, device)
        memory.segments = ClassQueue.from_state(state["segments"], True, device)
        return memory

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Per image and per labelled class of (B, h, w) `labels` (ignore excluded): `pixels_per_class` random
        pixels of (B, D, h, w) `embeddings` to the pixel queue, and their class's mean to the segment queue."""
        embeddings = embeddings.detach().float().flatten(2).transpose(1, 2)  # (B, hw, D)
        labels = labels.flatten(1)
        for image_embeddings, image_labels in zip(embeddings, labels):
            for class_index in image_labels.unique().tolist():
                if class_index == IGNORE_INDEX or class_index >= self.pixels.num_classes:
                    continue
                members = image_embeddings[image_labels == class_index]
                chosen = torch.randperm(len(members), device=members.device)[:self.pixels_per_class]
                self.pixels.push(class_index, members[chosen])
                self.segments.push(class_index, members.mean(0, keepdim=True))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, D) entries and (M,) classes: every segment entry, then every pixel entry."""
        segment_features, segment_labels = self.segments.contents()
        pixel_features, pixel_labels = self.pixels.contents()
        return torch.cat([segment_features, pixel_features]), torch.cat([segment_labels, pixel_labels])
