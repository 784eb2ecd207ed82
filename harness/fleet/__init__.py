"""A run spread over its hosts: below `harness bench`, beside the runners (both take
the run's state, runstate.py; neither imports the other).

* prepare.py — a run's share on one host: connect, check, ship, disks, accel → its `Run`;
* scheduler.py — units of work across hosts, failover, a lost host brought back.

hosts/ is how a command reaches a machine (and sits low: vm and the runners use its
executor); this package decides what each host runs, so it imports the run's state.
"""
