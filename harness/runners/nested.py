"""The malformed-request cases under accel kvm-nested, each in an L2 inside an L1.

The points of a kvm-nested run go through the same runners as on any host
(nested/host.py makes L1 one); the hostile cases need what only the L1
machine gives: L2's monitor from here and the QEMU's state after the case.
One L1 boot per variant, one L2 boot per case, an L1 that stops answering
booted again (nested.retry_after_l1_stall).
"""

from __future__ import annotations

from .. import nested
from ..runstate import Advance, Run
from ..util import Say
from .micro import hostile_todo, record_hostile


def _image(run: Run, fio_guest: bool, say: Say) -> nested.L1Image:
    builds = {v.build: run.binaries[v.name] for v in run.config.variants if v.build}
    return nested.prepare_l1_image(builds, fio_guest=fio_guest, say=say)


def _l1(run: Run, image: nested.L1Image, session_key: str, disk: str) -> nested.L1:
    return nested.L1(image, run.disks[disk], run.log_path(f"{session_key}.l1.console.log"),
                     boot_timeout=run.config.timeouts.boot_s)


def run_hostile(run: Run, say: Say, advance: Advance) -> None:
    """Every malformed-request case against every variant in L2 → hostile.csv (resumable):
    one L1 boot per variant, the cases one L2 boot each."""
    disk = next(iter(run.config.disks)).name
    todo = hostile_todo(run)
    image = _image(run, fio_guest=False, say=say)
    for variant in run.config.variants:
        cases = [case for case, name in todo if name == variant.name]
        if cases and not variant.build:  # the hostile L1 carries our builds only
            say(f"hostile: {len(cases)} case(s) on {variant.name} not run: under kvm-nested "
                "they run on built variants")
            for case in cases:
                advance(f"hostile {case} {variant.name}")
            continue
        if not cases:
            continue
        with _l1(run, image, f"hostile.{variant.name}", disk) as l1:
            for case in cases:
                log_file = run.log_path(f"hostile.{case}.{variant.name}.console.log")
                result = nested.retry_after_l1_stall(
                    l1, lambda: nested.run_hostile_case(l1, variant, case, run.disks[disk],
                                                        log_file,
                                                        timeout=run.config.timeouts.point_s),
                    nested.Attempts(), log_file)
                say(f"hostile {case} on {variant.name} (kvm-nested): "
                    f"{record_hostile(run, result, log_file)}")
                advance(f"hostile {case} {variant.name}")
