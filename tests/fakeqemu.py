#!/usr/bin/env python3
"""A stand-in for qemu-system-x86_64 that boots a pretend micro-guest (tests only).

It speaks enough QMP (greeting, any command answered, `cont` starts the
guest, `quit` exits 0) and writes what the micro-guest would print to the
-serial file, so that the harness's whole VM path runs without a real QEMU.
What it does is chosen by environment variables:

  FAKE_QEMU_NOBOOT=1      exit 1 at once, like a QEMU refusing a device property
  FAKE_QEMU_FAIL_IF=PATH  the same while PATH exists (a failure that can be fixed)
  FAKE_QEMU_DELAY=S       the guest takes S seconds to finish
  FAKE_QEMU_KVM=hang      under accel=kvm the guest prints nothing (a broken KVM)
  FAKE_QEMU_PIDS=DIR      write a file named by the pid into DIR
  FAKE_QEMU_VERSION=bad   `-version` fails
"""

import json
import os
import socket
import sys
import time


def option(argv, flag):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag and i + 1 < len(argv)]


def reply(conn, message):
    conn.sendall(json.dumps(message).encode() + b"\n")


def commands(conn):
    """The JSON objects the client sends, however it splits them into lines."""
    decoder, buffer = json.JSONDecoder(), ""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buffer += data.decode()
        while buffer.strip():
            try:
                command, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break
            buffer = buffer.lstrip()[end:]
            yield command


def _noise() -> float:
    """FAKE_QEMU_NOISE=0.3: IOPS drawn uniformly within ±30% (a noisy host), else exact."""
    spread = float(os.environ.get("FAKE_QEMU_NOISE", "0") or 0)
    return 1.0 + spread * (2.0 * int.from_bytes(os.urandom(4), "big") / 0xFFFFFFFF - 1.0)


def guest_output(append, accel):
    """The console text of a run, and whether the guest halts (hostile) or powers off."""
    if accel == "kvm" and os.environ.get("FAKE_QEMU_KVM") == "hang":
        return "", True
    args = dict(item.split("=", 1) for item in append.split() if "=" in item)
    lines = ["MICROGUEST-BOOT tsc_hz=1000000000 ram_mb=127", "MICROGUEST-BEGIN"]
    if args.get("mode") == "hostile":
        verdict = {"case": args.get("case"), "verdict": "error-status", "status": 1, "pre": "ok",
                   "device_ok": 1, "after_reset": 1, "canary_ok": 1}
        lines += ["MICROGUEST-HOSTILE " + json.dumps(verdict), "MICROGUEST-HALT"]
        return "\n".join(lines) + "\n", args.get("halt") == "1"
    n = int(args.get("n", 100))
    result = {"ok": 1, "mode": "bench", "rw": args.get("rw", "randread"),
              "bs": int(args.get("bs", 4096)), "qd": int(args.get("qd", 1)), "n": n, "done": n,
              "wait": args.get("wait", "poll"), "errors": 0, "mismatches": 0, "verified": 0,
              "irqs": 0, "tsc_hz": 1000000000, "elapsed_ns": 50_000_000, "halted_ns": 0,
              "iops": (1000.0 + 10 * int(args.get("qd", 1))) * _noise(),
              "lat_ns": {"mean": 1000, "min": 500, "max": 5000, "p50": 900, "p99": 3000,
                         "p999": 4000},
              "hist": [[500, 1000, n // 2], [1000, 5000, n - n // 2]]}
    lines += ["MICROGUEST-END", "MICROGUEST-RESULT " + json.dumps(result)]
    return "\n".join(lines) + "\n", False


def main(argv):
    if "-version" in argv:
        if os.environ.get("FAKE_QEMU_VERSION") == "bad":
            print("fake: cannot start", file=sys.stderr)
            return 1
        print("QEMU emulator version 7.2.0 (fake)\nCopyright (c) 2003-2022 nobody")
        return 0
    if os.environ.get("FAKE_QEMU_PIDS"):
        open(os.path.join(os.environ["FAKE_QEMU_PIDS"], str(os.getpid())), "w").close()
    fail_if = os.environ.get("FAKE_QEMU_FAIL_IF")
    if os.environ.get("FAKE_QEMU_NOBOOT") or (fail_if and os.path.exists(fail_if)):
        print("qemu-system-x86_64: -device virtio-blk-pci,drive=disk0: Property "
              "'virtio-blk-pci.x-fake' not found", file=sys.stderr)
        return 1
    console = option(argv, "-serial")[0].removeprefix("file:")
    qmp = option(argv, "-qmp")[0].removeprefix("unix:").split(",")[0]
    accel = option(argv, "-machine")[0].split("accel=")[1].split(",")[0]
    open(console, "w").close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(qmp)
    server.listen(1)
    conn, _ = server.accept()
    reply(conn, {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                     "package": "fake"}, "capabilities": []}})
    halts = True
    for command in commands(conn):
        name = command.get("execute")
        answer = {"status": "running", "running": True} if name == "query-status" else {}
        if name == "query-kvm":
            answer = {"enabled": accel == "kvm", "present": True}
        reply(conn, {"return": answer, **({"id": command["id"]} if "id" in command else {})})
        if name == "quit":
            return 0
        if name == "cont":
            text, halts = guest_output(option(argv, "-append")[0], accel)
            time.sleep(float(os.environ.get("FAKE_QEMU_DELAY", "0")))
            with open(console, "a") as out:
                out.write(text)
            if not halts:
                return 33  # isa-debug-exit: the guest powered off, all ok
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
