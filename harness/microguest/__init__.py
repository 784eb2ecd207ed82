"""The micro-guest: a bare-metal virtio-blk driver that measures the host I/O path.

A Linux guest under TCG spends more than 100 µs per request in its own kernel,
which hides the host's I/O path.  The micro-guest (the C sources beside this
file) is a 32-bit multiboot ELF that QEMU boots with -kernel; it finds the
legacy virtio-blk PCI device, keeps qd requests in flight, times them with the
TSC and prints one line on COM1::

    MICROGUEST-RESULT {"ok":1,"rw":"randread","bs":4096,"qd":16,...}

With mode=hostile it submits one malformed request (hostile.HOSTILE_CASES) and
prints a MICROGUEST-HOSTILE line saying what the device did.

The package, one job a module:

* elf      — compile the ELF from the C sources (cached by their hash);
* cmdline  — the guest's -append line and its VM spec (vm.VMSpec);
* output   — parse what it prints; a results row from it;
* run      — one benchmark point: boot, time, parse (through vm.VM);
* hostile  — the malformed-request cases and what QEMU did with each.
"""

from .cmdline import CLEAN_EXITS, guest_cmdline, hostile_cmdline, microguest_spec
from .elf import SOURCE_DIR, build_microguest
from .hostile import HOSTILE_CASES, HOSTILE_COLUMNS, HostileResult, run_hostile_case
from .output import (BEGIN_MARK, END_MARK, HOSTILE_PREFIX, RESULT_PREFIX, MicroResult, churn_faults,
                     find_line, hist_percentile, micro_row, parse_result)
from .run import run_microguest_point

__all__ = ["BEGIN_MARK", "CLEAN_EXITS", "END_MARK", "HOSTILE_CASES", "HOSTILE_COLUMNS",
           "HOSTILE_PREFIX", "RESULT_PREFIX", "SOURCE_DIR", "HostileResult", "MicroResult",
           "build_microguest", "churn_faults", "find_line", "guest_cmdline", "hist_percentile",
           "hostile_cmdline", "micro_row", "microguest_spec", "parse_result",
           "run_hostile_case", "run_microguest_point"]
