"""The one place that imports torchvision.

torchvision wheels built for CUDA fail to import on a CPU-only torch: their compiled ops library does not load,
and `torchvision/_meta_registrations.py` then registers fake kernels for `torchvision::nms` / `qnms`, operators
that were never defined, raising `RuntimeError: operator torchvision::nms does not exist`. When (and only when)
that happens we define the two operator schemas without any kernel and import again. Nothing in wsss calls nms;
models, transforms and `ops.roi_align` work as usual (roi_align then takes torchvision's pure-PyTorch path,
which it compiles with torch.compile on first use: about 20 s once per process on this CPU). On a matching
CUDA or CPU install the first import succeeds and this shim does nothing.

Imported on first use, not with wsss: torchvision's import (all its models, datasets and transforms) takes about
2 s, which every `wsss` command not building a network (evaluate, pseudo-label, report...) would otherwise pay.
"""

from __future__ import annotations

import functools
import sys

import torch

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_schemas = None  # keeps the Library object (and so the schemas) alive


@functools.cache
def torchvision():
    """The torchvision module."""
    global _schemas
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _schemas = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OPS:
            _schemas.define(schema)
        import torchvision
    return torchvision
