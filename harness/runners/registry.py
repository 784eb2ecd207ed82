"""Which runner runs a guest: one table from (guest kind, where it runs) to a runner class.

A runner module registers its class for the guest kinds it runs; adding a
guest kind is one new module with one `@register(...)` line (and its import in
runners/__init__.py).  "where" is `HOST`: a QEMU started on this machine or on
a remote host, the run's executor tells which; an L1 under accel kvm-nested is
such a host (nested/host.py).  It is the table's second key so that a guest
kind that can only run somewhere else has a place.
"""

from __future__ import annotations

from typing import Callable

from ..config import GuestSpec
from ..errors import UserError
from ..runstate import Run
from ..util import Say
from .base import GuestAssets, Runner

HOST = "host"

RunnerFactory = Callable[[Run, GuestSpec, Say, GuestAssets], Runner]
RUNNERS: dict[tuple[str, str], RunnerFactory] = {}


def register(*kinds: str, where: str = HOST) -> Callable[[RunnerFactory], RunnerFactory]:
    """Class decorator: this runner runs guests of these kinds, there."""
    def add(factory: RunnerFactory) -> RunnerFactory:
        for kind in kinds:
            if (kind, where) in RUNNERS:
                raise ValueError(f"two runners for guest kind {kind!r} on {where}")
            RUNNERS[(kind, where)] = factory
        return factory
    return add


def select(kind: str, where: str) -> RunnerFactory:
    """The runner class for a guest kind; a UserError names the kinds that can run there."""
    try:
        return RUNNERS[(kind, where)]
    except KeyError:
        kinds = sorted(k for k, w in RUNNERS if w == where)
        raise UserError(f"a guest of kind {kind!r} cannot run here: "
                        f"use one of {', '.join(kinds)}") from None


def make_runner(run: Run, guest: GuestSpec, assets: GuestAssets, say: Say) -> Runner:
    return select(guest.kind, HOST)(run, guest, say, assets)
