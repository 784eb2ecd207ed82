"""The kinds of error the harness raises, and the exit codes they map to.

UserError: the input is wrong (config, command line, a patch, a missing
package); the message says what to change.  InfraError: the machine or a tool
failed (QEMU crashed, a guest did not boot); the message says where the log
is.  PointsFailed: a run finished, but some of its points did not.  The CLI
prints each as one line and exits with its code (EXIT_CODES).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INFRA = 1
EXIT_USER = 2
EXIT_POINTS_FAILED = 3
EXIT_REGRESSION = 4      # harness compare --fail-on-regression: a workload regressed
EXIT_INCONCLUSIVE = 5    # harness compare --fail-on-inconclusive: a workload could not be judged
EXIT_INTERRUPTED = 130

#: What `harness --help` and the README say about exit codes.
EXIT_CODES_HELP = (
    "Exit codes: 0 every point ok; 1 infrastructure failure (a tool or the machine); "
    "2 you must change something (config, command line, patch, missing package); "
    "3 the run finished but points failed (named on stderr, one line each); "
    "4 `compare --fail-on-regression` found a regression; "
    "5 `compare --fail-on-inconclusive` found a workload it could not judge (and none regressed); "
    "130 interrupted (finished points are kept)."
)


class HarnessError(Exception):
    exit_code = EXIT_INFRA


class UserError(HarnessError):
    exit_code = EXIT_USER


class InfraError(HarnessError):
    exit_code = EXIT_INFRA


class HostLost(InfraError):
    """The connection to a remote host dropped: its unfinished points can move elsewhere."""


class PointsFailed(HarnessError):
    """The run went to the end, but these points failed: [(point key, error)]."""

    exit_code = EXIT_POINTS_FAILED

    def __init__(self, run_dir, failed: list[tuple[str, str]]):
        self.run_dir = run_dir
        self.failed = failed
        super().__init__(f"{len(failed)} point(s) failed in {run_dir}")
