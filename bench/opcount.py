"""Compute operations dispatched by torch, counted with a `TorchDispatchMode` (bench/step_time.py,
bench/fold_stack.py).

Every ATen operation that reaches the Python dispatch key is counted once (an operation a kernel calls
inside itself is not: a `_foreach_add_` over 147 tensors is one), except the view-like operations in
`VIEW_OPS`: they only make a new tensor header over the same storage (no kernel runs on a GPU), so they
cost no launch. Everything else counts, allocations (`empty`, `zeros`), copies (`clone`, `_to_copy`,
`contiguous` copies) and in-place updates included. The list, exactly:
"""
from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

# schema names (func._schema.name) of the operations not counted: views and aliases of their input
VIEW_OPS = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::view_as",
    "aten::expand", "aten::expand_as", "aten::t", "aten::transpose", "aten::permute", "aten::movedim",
    "aten::slice", "aten::select", "aten::narrow", "aten::unbind", "aten::split", "aten::split_with_sizes",
    "aten::chunk", "aten::unsqueeze", "aten::squeeze", "aten::flatten", "aten::unflatten", "aten::as_strided",
    "aten::diagonal", "aten::detach", "aten::alias", "aten::lift_fresh",
})


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as c: ...` -> c.total (compute operations), c.counts {schema name: n}; `c.mark()`
    returns the total so far (for counting the parts of a step in one pass)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        (self.views if name in VIEW_OPS else self.counts)[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def mark(self) -> int:
        return self.total


__doc__ += "\n" + "\n".join(f"    {n}" for n in sorted(VIEW_OPS)) + "\n"
