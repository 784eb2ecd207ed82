"""The runners: how the points of a session become rows of results.csv.

* base.py — the Runner shape and the one point loop with its failure handling;
* registry.py — guest kind → the runner class;
* fio.py — Linux guests (the fio guest, a custom one): one boot per session, fio over SSH;
* micro.py — the bare-metal micro-guest: one boot per point; the hostile cases;
* trace.py — a traced micro-guest point again on the variant's trace flavour;
* ceiling.py — fio on the host against the test images (the host-fio ceiling);
* nested.py — the hostile cases in L2 inside an L1 (accel kvm-nested; its points run
  through fio.py and micro.py, L1 being a host: nested/host.py).

Importing the package registers every runner.
"""

from __future__ import annotations

from . import fio, micro  # noqa: F401 - each registers its runners
from .base import GuestAssets, PointLoop, Runner, SessionEnded, fio_point
from .registry import RUNNERS, make_runner, select

__all__ = ["RUNNERS", "GuestAssets", "PointLoop", "Runner", "SessionEnded", "fio_point",
           "make_runner", "select"]
