"""Pixel pairs within a radius, their affinity labels, and IRN's boundary-to-affinity line maximum.

A pair is a pixel p of a (h, w) map and p + d for a direction d of `search_directions(radius)`, the half-disc
IRN and AffinityNet both use (jiwoon-ahn/irn misc/indexing.py `PathIndex.get_search_paths_dst`, jiwoon-ahn/psa
tool/pyutils.py `get_indices_of_pairs`): (0, 1) .. (0, r-1), then every (dy, dx) with 1 <= dy < r,
|dx| < r and dy^2 + dx^2 < r^2. Each unordered pair appears once. Per-pair maps are (..., D, h, w): entry
[k, y, x] is the pair of (y, x) and (y + dy_k, x + dx_k); `inside(...)` says which of them lie in the map.
Unlike the official index tables, which only take sources at least r-1 cells from the left, right and bottom
borders, every pair with both ends in the map counts here.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..core.io import IGNORE_INDEX

Direction = tuple[int, int]


@lru_cache(maxsize=None)
def search_directions(radius: int) -> tuple[Direction, ...]:
    """The (dy, dx) offsets of the pairs within `radius`, in the official order."""
    if radius < 2:
        raise ValueError(f"the pair radius must be at least 2, got {radius}")
    directions = [(0, dx) for dx in range(1, radius)]
    directions += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
                   if dy * dy + dx * dx < radius * radius]
    return tuple(directions)


def shifted(values: torch.Tensor, direction: Direction, fill: float) -> torch.Tensor:
    """values[..., y + dy, x + dx] for every (y, x) of the map, `fill` where that falls outside it."""
    dy, dx = direction
    height, width = values.shape[-2:]
    padded = F.pad(values, (max(-dx, 0), max(dx, 0), 0, dy), value=fill)
    left = max(dx, 0)
    return padded[..., dy:dy + height, left:left + width]


def inside(height: int, width: int, directions: tuple[Direction, ...], device=None) -> torch.Tensor:
    """(D, h, w) bool: whether p + d lies in the map."""
    ones = torch.ones(1, height, width, device=device)
    return torch.cat([shifted(ones, d, 0.0) for d in directions]).bool()


def pair_labels(labels: torch.Tensor, directions: tuple[Direction, ...]) -> tuple[torch.Tensor, ...]:
    """AffinityNet's and IRN's three pair labels from a label map (N, h, w) (0 background, 255 unknown), each
    (N, D, h, w) float: both background; both the same foreground class; different classes, neither unknown
    (psa voc12/data.py `ExtractAffinityLabelInRadius`, irn voc12/dataloader.py `GetAffinityLabelFromIndices`)."""
    source = labels[:, None]
    target = torch.stack([shifted(labels, d, IGNORE_INDEX) for d in directions], dim=1)
    known = (source != IGNORE_INDEX) & (target != IGNORE_INDEX)
    same = source == target
    background = same & (source == 0)
    foreground = same & (source != 0) & known
    different = ~same & known
    return background.float(), foreground.float(), different.float()


@lru_cache(maxsize=None)
def line_paths(radius: int) -> tuple[tuple[Direction, ...], ...]:
    """For each direction, the cells of the line from (0, 0) to it (IRN `get_search_paths_dst`): every cell of
    the bounding box closer than 1 to the line, both ends included."""
    paths = []
    for dy, dx in search_directions(radius):
        length_sq = dy * dy + dx * dx
        cells = [(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
                 if (dy * x - dx * y) ** 2 / length_sq < 1]
        paths.append(tuple(cells))
    return tuple(paths)


def boundary_affinities(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """IRN's affinity of each pair: 1 - the largest class-boundary score on the line between them
    (irn `to_affinity` / `edge_to_affinity`). boundary (N, h, w) in [0, 1] → (N, D, h, w); pairs that leave
    the map get 0 (the official code pads the boundary map with 1)."""
    affinities = []
    for path in line_paths(radius):
        on_line = torch.stack([shifted(boundary, cell, 1.0) for cell in path])
        affinities.append(1 - on_line.amax(dim=0))
    return torch.stack(affinities, dim=1)


def feature_affinities(features: torch.Tensor, radius: int) -> torch.Tensor:
    """AffinityNet's affinity of each pair: exp(-mean over channels of |f_p - f_q|) (psa network/resnet38_aff.py;
    the paper's L1 distance, which the code averages over channels). features (N, C, h, w) → (N, D, h, w);
    pairs that leave the map get 0."""
    directions = search_directions(radius)
    affinities = []
    for direction in directions:
        distance = (features - shifted(features, direction, 0.0)).abs().mean(dim=1)
        affinities.append(torch.exp(-distance))
    height, width = features.shape[-2:]
    return torch.stack(affinities, dim=1) * inside(height, width, directions, features.device)
