"""A disk image that holds its reads: a tiny FUSE file system on /dev/fuse.

Slow storage on demand, for tests that need requests to stay in flight
(tests/test_slow_storage.py).  The mount holds one file, ``disk.img``, of zeros
(writes are accepted and dropped).  Reads are answered at once until
``hold()``; from then until ``release()`` every READ is held, unanswered, by
the server.  (QEMU reads the disk's first sector itself while it starts, to
guess a geometry: hold only once it is up.)
The kernel is asked for asynchronous direct I/O (FUSE_ASYNC_DIO), so an
O_DIRECT read submitted with Linux AIO returns from io_submit() at once and
completes only when the server answers it: storage whose requests are in
flight for as long as the test wants.

The server speaks the FUSE protocol itself (no libfuse): the few operations a
QEMU opening and reading one file needs.  Mounting needs CAP_SYS_ADMIN (root),
as dm-delay or a loop device would; ``mount_or_skip`` says why it cannot.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import threading
import time
from pathlib import Path

FILE_NAME = "disk.img"
ROOT_ID = 1
FILE_ID = 2

# opcodes (include/uapi/linux/fuse.h)
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC, FLUSH, INIT = 14, 15, 16, 17, 18, 20, 25, 26
OPENDIR, READDIR, RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET = 27, 28, 29, 36, 38, 42
NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)

FUSE_ASYNC_READ = 1 << 0
FUSE_BIG_WRITES = 1 << 5
FUSE_ASYNC_DIO = 1 << 15

IN_HEADER = struct.Struct("<IIQQIIII")      # len opcode unique nodeid uid gid pid pad
OUT_HEADER = struct.Struct("<IiQ")          # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")   # fuse_attr, 88 bytes
INIT_IN = struct.Struct("<IIII")            # major minor max_readahead flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # 64 bytes
READ_IN = struct.Struct("<QQII")            # fh offset size read_flags (the rest unused)
WRITE_IN = struct.Struct("<QQIIQII")        # 40 bytes, then the data

MAX_WRITE = 128 << 10
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class SlowFuse:
    """Mount at mountpoint; a file of size bytes whose reads wait between hold()
    and release().

    hold_s bounds the hold (a test that forgets release() cannot wedge QEMU:
    a process with AIO in flight does not exit until it completes)."""

    def __init__(self, mountpoint: Path, size: int, hold_s: float = 120.0) -> None:
        self.mountpoint = Path(mountpoint)
        self.size = size
        self.hold_s = hold_s
        self.path = self.mountpoint / FILE_NAME
        self.reads = 0              # READ requests seen
        self.held: list[tuple[float, int, int]] = []   # (arrival, unique, size)
        self._released = threading.Event()
        self._released.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._fd = -1
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._mounted = False

    # ------------------------------------------------------------ lifecycle

    def mount(self) -> "SlowFuse":
        libc = ctypes.CDLL(None, use_errno=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        opts = (f"fd={self._fd},rootmode=40000,user_id={os.getuid()},"
                f"group_id={os.getgid()},allow_other").encode()
        if libc.mount(b"slowfuse", str(self.mountpoint).encode(), b"fuse.slowfuse",
                      MS_NOSUID | MS_NODEV, opts) != 0:
            err = ctypes.get_errno()
            self._close_fds()
            raise OSError(err, f"mount fuse on {self.mountpoint}: {os.strerror(err)}")
        self._mounted = True
        self._thread = threading.Thread(target=self._serve, name="slowfuse", daemon=True)
        self._thread.start()
        return self

    def hold(self) -> None:
        """Hold every read from now on, until release()."""
        self._released.clear()

    def release(self) -> None:
        """Answer the held reads, and every read from now on at once."""
        self._released.set()
        self._wake()

    def held_count(self) -> int:
        with self._lock:
            return len(self.held)

    def close(self) -> None:
        """Answer what is held, unmount, stop the server.  Call it after the
        processes using the file have exited; the unmount is lazy anyway."""
        self.release()
        if self._mounted:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.umount2(str(self.mountpoint).encode(), MNT_DETACH)
            self._mounted = False
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
        self._close_fds()

    def __enter__(self) -> "SlowFuse":
        return self.mount()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _close_fds(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------ the server

    def _serve(self) -> None:
        while not self._stop.is_set():
            timeout = 1.0
            with self._lock:
                if self.held and (self._released.is_set()
                                  or time.monotonic() - self.held[0][0] > self.hold_s):
                    held, self.held = self.held, []
                else:
                    held = []
            for _, unique, size in held:
                self._reply(unique, b"\0" * size)
            try:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            if self._fd not in ready:
                continue
            try:
                request = os.read(self._fd, MAX_WRITE + 4096)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue        # interrupted before we read it
                return              # ENODEV: unmounted
            self._handle(request)

    def _reply(self, unique: int, payload: bytes = b"", error: int = 0) -> None:
        try:
            os.write(self._fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique)
                     + payload)
        except OSError:
            pass                    # the request was interrupted, or the mount is gone

    def _attr(self, node: int) -> bytes:
        now = int(time.time())
        if node == ROOT_ID:
            mode, size, nlink = stat.S_IFDIR | 0o755, 0, 2
        else:
            mode, size, nlink = stat.S_IFREG | 0o644, self.size, 1
        return ATTR.pack(node, size, (size + 511) // 512, now, now, now, 0, 0, 0, mode, nlink,
                         os.getuid(), os.getgid(), 0, 4096, 0)

    def _handle(self, request: bytes) -> None:
        _, opcode, unique, node, *_ = IN_HEADER.unpack_from(request)
        body = request[IN_HEADER.size:]
        if opcode in NO_REPLY:
            return
        if opcode == INIT:
            major, minor, readahead, _flags = INIT_IN.unpack_from(body)
            self._reply(unique, INIT_OUT.pack(7, min(minor, 31), readahead,
                                              FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO,
                                              256, 192, MAX_WRITE, 1, 0, 0, 0))
        elif opcode == LOOKUP:
            if node == ROOT_ID and body.rstrip(b"\0") == FILE_NAME.encode():
                self._reply(unique, struct.pack("<QQQQII", FILE_ID, 0, 1, 1, 0, 0)
                            + self._attr(FILE_ID))
            else:
                self._reply(unique, error=errno.ENOENT)
        elif opcode in (GETATTR, SETATTR):
            if node in (ROOT_ID, FILE_ID):
                self._reply(unique, struct.pack("<QII", 1, 0, 0) + self._attr(node))
            else:
                self._reply(unique, error=errno.ENOENT)
        elif opcode in (OPEN, OPENDIR):
            self._reply(unique, struct.pack("<QII", 0, 0, 0))
        elif opcode == READ:
            _fh, offset, size, _ = READ_IN.unpack_from(body)
            size = max(0, min(size, self.size - offset))
            with self._lock:
                self.reads += 1
                if not self._released.is_set():
                    self.held.append((time.monotonic(), unique, size))
                    return
            self._reply(unique, b"\0" * size)
        elif opcode == WRITE:
            size = WRITE_IN.unpack_from(body)[2]
            self._reply(unique, struct.pack("<II", size, 0))
        elif opcode == READDIR:
            self._reply(unique)
        elif opcode in (RELEASE, RELEASEDIR, FSYNC, FLUSH, DESTROY):
            self._reply(unique)
        elif opcode == STATFS:
            self._reply(unique, struct.pack("<QQQQQIII28x", self.size // 4096, 0, 0, 2, 0,
                                            4096, 255, 4096))
        else:
            self._reply(unique, error=errno.ENOSYS)
