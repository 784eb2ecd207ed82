"""The two kinds of error the harness raises.

UserError: the input is wrong (config, command line, a patch, a missing package);
the message says what to change.  InfraError: the machine or a tool failed
(QEMU crashed, a guest did not boot); the message says where the log is.
The CLI maps them to exit codes 2 and 3 and prints them on one line.
"""


class HarnessError(Exception):
    exit_code = 1


class UserError(HarnessError):
    exit_code = 2


class InfraError(HarnessError):
    exit_code = 3
