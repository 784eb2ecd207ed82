"""The shell that runs in L1, kept as files beside this module (sh/*.sh).

Each file is a script with @NAME@ where a value of the harness goes: the
paths and markers that L1 and the harness must agree on, defined once here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ..guest import GUEST_GW, GUEST_IP

L1_READY = "HARNESS-L1-READY"
L1_KVM = "HARNESS-L1-KVM"
OPT = "/opt/harness"            # in L1: binaries, pc-bios, guests
L2_DIR = "/tmp/l2"              # in L1: the running L2's console, stderr, pid, exit status
L1_FREEZES = "/tmp/l1-freezes"  # in L1: one line per gap in its one-second heartbeat
L1_FREEZE_S = 5                 # a heartbeat gap this long (L1's own clock) is a freeze

_VALUES = {"GUEST_IP": GUEST_IP, "GUEST_GW": GUEST_GW, "L1_READY": L1_READY, "L1_KVM": L1_KVM,
           "L2_DIR": L2_DIR, "L1_FREEZES": L1_FREEZES, "L1_FREEZE_S": L1_FREEZE_S}
SH_DIR = Path(__file__).resolve().parent / "sh"


@cache
def script(name: str) -> str:
    """sh/NAME.sh with the harness's values in place of its @NAME@s."""
    text = (SH_DIR / f"{name}.sh").read_text()
    for key, value in _VALUES.items():
        text = text.replace(f"@{key}@", str(value))
    return text


L1_INIT = script("l1-init")        # L1's /init
L2_START = script("l2-start")      # bin/l2-start DIR ARGV...: a QEMU in the background
L2_WAIT = script("l2-wait")        # bin/l2-wait DIR TIMEOUT_S [PATTERN]
L1_DIAGNOSE = script("l1-diagnose")  # what a hung L2 looks like from L1
