"""The random walk of AffinityNet and IRN, on a sparse transition matrix.

The official code builds a dense n x n affinity (n pixels of the stride-4 or stride-8 map, with ones on the
diagonal), raises it to beta, normalises it so that each pixel's weights sum to one, squares the matrix `t`
times and multiplies the maps by it: 2^t steps of the walk (irn misc/indexing.py `to_transition_matrix`,
`propagate_to_edge`; psa infer_aff.py). A VOC image at stride 4 has about 12k pixels, so that matrix takes 0.6 GB
and each squaring 1.7e12 multiply-adds. Here the same transition is a sparse matrix of the pairs within the
radius (about 2 x 34 + 1 entries per pixel at radius 5) and the 2^t steps are applied one after the other: the
same result up to rounding, in memory linear in n.
"""

from __future__ import annotations

import warnings

import torch

from .pairs import Direction, inside


def transition_matrix(affinities: torch.Tensor, directions: tuple[Direction, ...], beta: float) -> torch.Tensor:
    """Sparse (n, n) transition from the pair affinities (D, h, w) of a (h, w) map: weight a^beta between the two
    pixels of each pair inside the map (both ways), 1 from each pixel to itself, each row divided by its sum."""
    count, height, width = affinities.shape
    device = affinities.device
    index = torch.arange(height * width, device=device).view(height, width)
    valid = inside(height, width, directions, device)
    sources, targets, weights = [index.flatten()], [index.flatten()], [torch.ones(height * width, device=device)]
    for k, (dy, dx) in enumerate(directions):
        source = index[valid[k]]
        target = source + dy * width + dx
        weight = affinities[k][valid[k]].float() ** beta
        sources += [source, target]
        targets += [target, source]
        weights += [weight, weight]
    rows, columns, values = torch.cat(sources), torch.cat(targets), torch.cat(weights)
    degree = torch.zeros(height * width, device=device).index_add_(0, rows, values)
    matrix = torch.sparse_coo_tensor(torch.stack([rows, columns]), values / degree[rows],
                                     (height * width, height * width), check_invariants=False)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": its matrix-vector product is what we use
        warnings.simplefilter("ignore", UserWarning)
        return matrix.coalesce().to_sparse_csr()


def random_walk(maps: torch.Tensor, transition: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` steps of the walk: each step replaces every pixel's values (C, h, w) by the transition-weighted
    mean of its neighbours'."""
    channels, height, width = maps.shape
    flat = maps.reshape(channels, height * width).T.float().contiguous()
    for _ in range(steps):
        flat = transition @ flat
    return flat.T.reshape(channels, height, width)
