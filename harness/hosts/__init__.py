"""How a command reaches a machine: this one or a remote host over SSH.

* spec.py — `HostSpec`: a remote host as data, `[USER@]HOST[:PORT]`, the `host` column's label;
* executor.py — the executor proc and vm go through: `LocalHost` and its interface;
* sshconfig.py, keys.py — a host as `ssh` would reach it (~/.ssh/config, ProxyJump) and
  its host key checked against the user's and the harness's known hosts;
* ssh.py — `SSHHost`: commands, QEMU under a watchdog, SFTP, forwards, shipping; `HostLost`;
* sshcmd.py — a command over a fabric connection that Ctrl-C stops;
* check.py — a host's facts and the checks, one line per problem.

What each host runs (a run prepared there, units scheduled over hosts) is fleet/'s.

Nothing is imported here: importing `harness.hosts.spec` (the config does) loads no SSH.
"""
