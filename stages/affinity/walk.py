"""The random walk of AffinityNet and IRN, on a sparse transition matrix, for one image or a batch.

The official code builds a dense n x n affinity (n pixels of the stride-4 or stride-8 map, with ones on the
diagonal), raises it to beta, normalises it so that each pixel's weights sum to one, squares the matrix `t`
times and multiplies the maps by it: 2^t steps of the walk (irn misc/indexing.py `to_transition_matrix`,
`propagate_to_edge`; psa infer_aff.py). A VOC image at stride 4 has about 12k pixels, so that matrix takes 0.6 GB
and each squaring 1.7e12 multiply-adds. Here the same transition is a sparse matrix of the pairs within the
radius (about 2 x 34 + 1 entries per pixel at radius 5) and the 2^t steps are applied one after the other: the
same result up to rounding, in memory linear in n.

Several images walk together as one block-diagonal matrix (no pair crosses from one image to another), their
maps stacked as the rows of one (pixels, channels) matrix: one sparse product per step for the whole batch, which
is what keeps a GPU busy (a step of one image is far too small a kernel). An image's result does not depend on
the batch it walks in (up to the sparse product's rounding order).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from .pairs import Direction, inside


def transition_matrix(affinities: Sequence[torch.Tensor], directions: tuple[Direction, ...],
                      beta: float) -> torch.Tensor:
    """Sparse block-diagonal transition of several maps, from each map's pair affinities (D, h, w) (maps may
    differ in size): in each map's block, weight a^beta between the two pixels of each pair inside the map (both
    ways), 1 from each pixel to itself, each row divided by its sum. Pixels are numbered map after map, row-major."""
    sources, targets, weights = [], [], []
    offset = 0
    for image_affinities in affinities:
        _, height, width = image_affinities.shape
        device = image_affinities.device
        index = torch.arange(offset, offset + height * width, device=device).view(height, width)
        valid = inside(height, width, directions, device)
        sources += [index.flatten()]
        targets += [index.flatten()]
        weights += [torch.ones(height * width, device=device)]
        for k, (dy, dx) in enumerate(directions):
            source = index[valid[k]]
            target = source + dy * width + dx
            weight = image_affinities[k][valid[k]].float() ** beta
            sources += [source, target]
            targets += [target, source]
            weights += [weight, weight]
        offset += height * width
    rows, columns, values = torch.cat(sources), torch.cat(targets), torch.cat(weights)
    degree = torch.zeros(offset, device=values.device).index_add_(0, rows, values)
    matrix = torch.sparse_coo_tensor(torch.stack([rows, columns]), values / degree[rows], (offset, offset),
                                     check_invariants=False)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": its matrix-vector product is what we use
        warnings.simplefilter("ignore", UserWarning)
        return matrix.coalesce().to_sparse_csr()


def random_walk(maps: Sequence[torch.Tensor], transition: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """`steps` steps of the walk of each map stack (C_i, h_i, w_i), in the order of `transition_matrix`'s maps:
    each step replaces every pixel's values by the transition-weighted mean of its neighbours'. Stacks with
    fewer channels than the most are padded with zero channels, which walk to zero and touch no other channel."""
    channels = max(len(stack) for stack in maps)
    flat = torch.cat([torch.cat([stack.flatten(1), stack.new_zeros(channels - len(stack), stack[0].numel())]).T
                      for stack in maps]).float().contiguous()
    for _ in range(steps):
        flat = transition @ flat
    walked, start = [], 0
    for stack in maps:
        _, height, width = stack.shape
        walked.append(flat[start:start + height * width, :len(stack)].T.reshape(len(stack), height, width))
        start += height * width
    return walked
