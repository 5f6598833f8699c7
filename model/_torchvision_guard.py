"""Make `import open_clip` work where torchvision's C++ ops cannot load (docs/install.md, "The torchvision guard").

The torchvision 0.28.0 wheel reachable on CPU machines here is a CUDA build: next to the CPU torch its
`_C.so` does not load, and `torchvision/_meta_registrations.py` then fails on
`register_fake("torchvision::nms")` with "operator torchvision::nms does not exist". CLIP needs no
torchvision C++ op, so defining the two schemas that module registers fakes for is enough.

This is the only place that does it, and only when the ops are really missing: if torchvision is already
imported, or its `_C` library loads, nothing is defined (defining them first would clash with the real
registration). Import this module before the first import of torchvision / timm / open_clip.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_LIB = None  # keeps the Library object (and so the schemas) alive


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_ops() -> bool:
    """Define `torchvision::nms` / `torchvision::qnms` if they are missing; True when it defined them."""
    global _LIB
    if _LIB is not None or "torchvision" in sys.modules or _has_op("nms"):
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False  # no torchvision at all: open_clip's own import error will say so
    for so in Path(spec.submodule_search_locations[0]).glob("_C*.so"):
        try:
            torch.ops.load_library(str(so))
        except (OSError, RuntimeError):
            continue
        if _has_op("nms"):
            return False  # the real ops loaded: nothing to do
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib
    return True


ensure_torchvision_ops()
