"""The trace flavour of a variant: `<variant>+trace`.

A traced build is the variant's own patch layers plus our trace points
(patches/trace for every variant, patches/trace-dataplane for the data-plane
ones), configured with the pinned tree's simple trace backend so that the
events can be switched on at run time (`-trace events=FILE,file=FILE`).  It is
built into its own worktree and build directory; the normal variants' builds,
patches and configure flags are untouched, so their numbers are not perturbed.

Pure data: build.py asks here which layers and flags a name stands for.
"""

from __future__ import annotations

SUFFIX = "+trace"
#: configure option of the pinned tree (configure: --enable-trace-backend=B)
TRACE_FLAGS: tuple[str, ...] = ("--enable-trace-backend=simple",)
#: layers added on top of each variant's own, in application order
TRACE_LAYERS: dict[str, tuple[str, ...]] = {
    "baseline": ("trace",),
    "dataplane": ("trace", "trace-dataplane"),
    "poll": ("trace", "trace-dataplane"),
}


def is_traced(name: str) -> bool:
    return name.endswith(SUFFIX)


def traced(name: str) -> str:
    """'poll' → 'poll+trace'."""
    return name if is_traced(name) else name + SUFFIX


def base_variant(name: str) -> str:
    """'poll+trace' → 'poll'; a normal name unchanged."""
    return name[: -len(SUFFIX)] if is_traced(name) else name
