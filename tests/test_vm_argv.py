"""Pure command-line tests: QEMU argv, fio argv, and the guest's building blocks."""

from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path

import pytest

from harness.accel import KVM, TCG
from harness.config import GuestSpec, VariantSpec
from harness.errors import InfraError, UserError
from harness.fio_jobs import GuestStalled, fio_argv, guest_cpu_pct, run_fio
from harness.guest import GuestImage, Initramfs, custom_guest, module_order
from harness.hostinfo import ensure_space, host_facts, prepare_disk
from harness.matrix import Workload
from harness.qemuinfo import parse_version
from harness.results import parse_fio_output
from harness.vm import VM, QemuExited, VMSpec, linux_spec, qemu_argv, qmp_path

FIO_DATA = Path(__file__).parent / "data" / "fio"

GUEST = GuestImage(kernel=Path("k/vmlinuz"), initrd=Path("k/initrd.cpio"),
                   append="console=ttyS0 rdinit=/init", ssh_user="root",
                   ssh_key=Path("k/id_rsa"), description="test guest")


def spec(variant: VariantSpec, guest: GuestImage = GUEST, **overrides) -> VMSpec:
    values = dict(binary="qemu", accel=TCG, memory_mb=512, vcpus=2, kernel=guest.kernel,
                  initrd=guest.initrd, append=guest.append, boot_image=guest.boot_image,
                  disk=Path("d/disk.raw"), variant=variant, ssh_port=2222,
                  qmp_socket=Path("r/qmp.sock"), console_log=Path("r/console.log"),
                  legacy=variant.build is not None)
    return VMSpec(**{**values, **overrides})


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_built_variant_uses_the_2012_dialect():
    argv = qemu_argv(spec(VariantSpec(name="baseline")))
    assert argv[:3] == ["qemu", "-machine", "pc,accel=tcg"]
    assert option(argv, "-m") == ["512"] and option(argv, "-smp") == ["2"]
    assert option(argv, "-drive") == [
        "if=none,id=disk0,file=d/disk.raw,format=raw,cache=none,aio=native"]
    assert option(argv, "-device") == ["virtio-blk-pci,drive=disk0",
                                       "virtio-net-pci,netdev=n0,romfile="]
    assert option(argv, "-netdev") == ["user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert option(argv, "-qmp") == ["unix:r/qmp.sock,server,nowait"]
    assert option(argv, "-serial") == ["file:r/console.log"]
    assert option(argv, "-display") == ["none"]
    assert "-object" not in argv
    # the default VGA stays: no -nodefaults, no -vga none
    assert "-nodefaults" not in argv and "-vga" not in argv
    # started paused: the guest runs only once QMP is connected
    assert argv[-1] == "-S" and "-no-reboot" not in argv


def test_boot_arguments_come_from_the_guest_image():
    argv = qemu_argv(spec(VariantSpec(name="baseline")))
    assert option(argv, "-kernel") == ["k/vmlinuz"]
    assert option(argv, "-initrd") == ["k/initrd.cpio"]
    assert option(argv, "-append") == ["console=ttyS0 rdinit=/init"]


def test_system_variant_with_iothread_and_io_uring():
    variant = VariantSpec(name="qemu72", binary="/usr/bin/qemu-system-x86_64",
                          iothread=True, aio="io_uring")
    argv = qemu_argv(spec(variant, binary=variant.binary, accel=KVM))
    assert argv[:3] == ["/usr/bin/qemu-system-x86_64", "-machine", "pc,accel=kvm"]
    assert option(argv, "-object") == ["iothread,id=io0"]
    assert option(argv, "-drive")[0].endswith(",aio=io_uring")
    assert option(argv, "-device")[0] == "virtio-blk-pci,drive=disk0,iothread=io0"
    assert option(argv, "-qmp") == ["unix:r/qmp.sock,server=on,wait=off"]
    # the iothread object must exist before the device that names it
    assert argv.index("-object") < argv.index("-device")


def test_device_props_are_appended_to_the_blk_device():
    variant = VariantSpec(name="dataplane", device_props={"x-data-plane": "on", "scsi": "off"})
    device = option(qemu_argv(spec(variant)), "-device")[0]
    assert device == "virtio-blk-pci,drive=disk0,x-data-plane=on,scsi=off"


def test_legacy_can_be_forced_for_a_system_binary():
    variant = VariantSpec(name="old", binary="/opt/qemu-1.0")
    argv = qemu_argv(spec(variant, legacy=True))
    assert option(argv, "-qmp") == ["unix:r/qmp.sock,server,nowait"]


def test_no_disk_and_a_custom_disk_image():
    image = GuestImage(kernel=None, initrd=None, append="", ssh_user="me",
                       ssh_key=Path("key"), description="img", marker=None,
                       boot_image=Path("img.qcow2"))
    argv = qemu_argv(spec(VariantSpec(name="baseline"), guest=image, disk=None, ssh_port=None))
    assert "-kernel" not in argv
    assert option(argv, "-drive") == ["file=img.qcow2,if=ide,index=0,media=disk,snapshot=on"]
    assert not any(d.startswith("virtio-blk") for d in option(argv, "-device"))
    assert "-netdev" not in argv


def test_commas_in_paths_and_props_are_doubled():
    variant = VariantSpec(name="q", binary="qemu", device_props={"serial": "a,b"})
    argv = qemu_argv(spec(variant, disk=Path("/d/a,b.img")))
    assert option(argv, "-drive") == [
        "if=none,id=disk0,file=/d/a,,b.img,format=raw,cache=none,aio=native"]
    assert option(argv, "-device")[0] == "virtio-blk-pci,drive=disk0,serial=a,,b"


def test_linux_spec_refuses_too_little_memory():
    small = GuestImage(kernel=Path("k"), initrd=Path("i"), append="", ssh_user="root",
                       ssh_key=Path("key"), description="fio guest", min_memory_mb=300)
    with pytest.raises(UserError, match="memory_mb 256 is too small for fio guest"):
        linux_spec("qemu", TCG, small, console_log=Path("c.log"), legacy=True, memory_mb=256)
    assert linux_spec("qemu", TCG, small, console_log=Path("c.log"), legacy=True,
                      memory_mb=512).ssh_port > 0


def test_qemu_version_and_dialect():
    old = parse_version("QEMU emulator version 1.0.50 (qemu-kvm-devel), Copyright (c) 2003")
    new = parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)\nCopyright (c)")
    assert old.legacy and old.major == 1 and "Copyright" not in old.version
    assert not new.legacy and new.version == "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"
    assert parse_version("").version == "unknown"


def test_a_long_qmp_socket_path_gets_a_short_stand_in():
    long_path = Path("results") / ("x" * 120) / "fio.baseline.disk.r1.console.qmp"
    argv = qemu_argv(spec(VariantSpec(name="baseline"), qmp_socket=long_path))
    address = option(argv, "-qmp")[0].removeprefix("unix:").removesuffix(",server,nowait")
    assert len(address) < 100 and address.endswith(".sock")
    assert address == str(qmp_path(spec(VariantSpec(name="baseline"), qmp_socket=long_path)))


def test_argv_is_printable():
    argv = qemu_argv(spec(VariantSpec(name="baseline")))
    assert shlex.split(shlex.join(argv)) == argv


# ------------------------------------------------------------------ VM hooks


def test_drive_options_replace_defaults_and_add_their_own():
    options = {"cache": "directsync", "aio": "threads", "werror": "report", "serial": "a,b"}
    argv = qemu_argv(spec(VariantSpec(name="baseline"), drive_options=options))
    assert option(argv, "-drive") == ["if=none,id=disk0,file=d/disk.raw,format=raw,"
                                      "cache=directsync,aio=threads,werror=report,serial=a,,b"]


class _ExitsAtOnce:
    """A QEMU that has exited as soon as it started (proc.Process's interface)."""

    def __init__(self, starts: list[list[str]], argv: list[str]):
        self.starts, self.argv, self.started = starts, argv, False

    def start(self):
        self.starts.append(self.argv)
        self.started = True
        return self

    @property
    def returncode(self):
        return 1 if self.started else None

    def running(self):
        return False

    def output(self):
        return "no QEMU here"

    def kill(self):
        pass


class _NoQemuHere:
    """An executor that records the command line of every start; no process, no files."""

    is_local = True

    def __init__(self):
        self.starts: list[list[str]] = []

    def spawn(self, argv, log_file):
        return _ExitsAtOnce(self.starts, list(argv))

    def mkdir(self, path):
        pass

    def write_bytes(self, path, data):
        pass

    def unlink(self, path):
        pass


def test_vm_hooks_change_the_command_line_it_starts():
    host = _NoQemuHere()
    vm = VM(spec(VariantSpec(name="baseline")), host=host)
    plain = vm.argv
    assert plain == qemu_argv(vm.spec)
    vm.add_args("-device", "ivshmem,shm=s2,size=1M")
    with_device = plain[:-1] + ["-device", "ivshmem,shm=s2,size=1M", "-S"]
    assert vm.argv == with_device

    seen = []

    def hook(hooked: VM) -> None:
        seen.append((list(hooked.argv), len(host.starts)))
        hooked.add_args("-no-hpet")

    vm.before_launch(hook)
    with pytest.raises(QemuExited, match="no QEMU here"):
        vm.launch()
    assert seen == [(with_device, 0)]  # the hook ran once, before QEMU started
    assert host.starts == [plain[:-1] + ["-device", "ivshmem,shm=s2,size=1M", "-no-hpet", "-S"]]
    with pytest.raises(RuntimeError, match="after launch"):
        vm.add_args("-no-acpi")
    assert vm.argv[-2] == "-no-hpet"


# ------------------------------------------------------------------ fio


def test_fio_argv():
    argv = fio_argv(Workload("randrw", "64k", 16, 2), runtime_s=10, ramp_s=2)
    assert argv[0] == "fio"
    for expected in ("--name=randrw-64k-qd16-j2", "--filename=/dev/vda", "--direct=1",
                     "--ioengine=libaio", "--rw=randrw", "--bs=64k", "--iodepth=16",
                     "--numjobs=2", "--runtime=10", "--ramp_time=2", "--time_based",
                     "--group_reporting", "--randrepeat=0", "--output-format=json"):
        assert expected in argv


def test_guest_cpu_pct_from_proc_stat():
    before = "cpu  100 0 100 800 0 0 0 0 0 0"
    after = "cpu  150 0 200 850 50 0 0 0 0 0"  # busy +150, idle+iowait +100
    assert guest_cpu_pct(f"{before}\nnoise\n{after}\n") == pytest.approx(60.0)
    assert guest_cpu_pct("") != guest_cpu_pct("")  # NaN when the samples are missing


@pytest.mark.parametrize("name", ["randread-4k-qd4-j1", "randrw-4k-qd8-j1", "randread-4k-qd4-j2"])
def test_recorded_guest_fio_json_parses(name):
    text = (FIO_DATA / f"{name}.json").read_text()
    data = parse_fio_output("fio: note: something first\n" + text)
    assert data == json.loads(text)
    job = data["jobs"][0]
    assert job["jobname"] == name and job["read"]["iops"] > 0


class FakeConnection:
    """Stands in for fabric.Connection.run."""

    def __init__(self, stdout="", stderr="", exited=0, raises=None):
        self.result = type("Result", (), {"stdout": stdout, "stderr": stderr, "exited": exited})
        self.raises = raises
        self.commands = []

    def run(self, command, **kwargs):
        self.commands.append((command, kwargs))
        if self.raises:
            raise self.raises
        return self.result


def test_run_fio_parses_output_and_cpu():
    text = (FIO_DATA / "randread-4k-qd4-j1.json").read_text()
    stat = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu  150 0 200 850 50 0 0 0 0 0\n"
    conn = FakeConnection(stdout=text, stderr=stat)
    run = run_fio(conn, Workload("randread", "4k", 4, 1), runtime_s=3, ramp_s=1, timeout=60)
    assert run.data["jobs"][0]["read"]["iops"] > 0 and run.guest_cpu_pct == pytest.approx(60)
    assert run.json_text == text
    command, kwargs = conn.commands[0]
    assert "--output-format=json" in command and kwargs["timeout"] == 60
    assert kwargs["in_stream"] is False


def test_run_fio_failures_are_infra_errors():
    from invoke.exceptions import CommandTimedOut

    workload = Workload("randread", "4k", 1, 1)
    with pytest.raises(InfraError, match="exited with 1: fio .*: fio: no such file"):
        run_fio(FakeConnection(stderr="fio: no such file", exited=1), workload, 3, 0, 60)
    with pytest.raises(GuestStalled, match="did not finish within 60 s"):
        run_fio(FakeConnection(raises=CommandTimedOut(None, 60)), workload, 3, 0, 60)


# ---------------------------------------------------------------- guest parts


def test_module_order_puts_dependencies_first():
    deps = {"virtio_net": ["net_failover", "virtio", "virtio_ring"],
            "net_failover": ["failover"], "virtio_blk": ["virtio", "virtio_ring"],
            "virtio_ring": [], "virtio": [], "failover": []}
    order = module_order(["virtio_blk", "virtio_net"], deps.__getitem__)
    assert sorted(order) == sorted(deps)
    for name, needs in deps.items():
        assert all(order.index(d) < order.index(name) for d in needs)


def test_module_cycle_is_a_user_error():
    with pytest.raises(UserError, match="cycle"):
        module_order(["a"], {"a": ["b"], "b": ["a"]}.__getitem__)


def test_initramfs_is_newc_with_parents_nodes_and_symlinks(tmp_path):
    archive = Initramfs()
    archive.file("usr/bin/tool", b"abc", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.node("dev/console", stat.S_IFCHR | 0o600, 5, 1)
    out = tmp_path / "initrd.cpio"
    archive.write(out)
    data = out.read_bytes()
    assert data.startswith(b"070701") and len(data) % 512 == 0
    names = _cpio_names(data)
    assert names[:2] == ["bin", "bin/sh"] and "usr" in names and "usr/bin" in names
    assert names[-1] == "TRAILER!!!"


def _cpio_names(data: bytes) -> list[str]:
    names, offset = [], 0
    while True:
        header = data[offset:offset + 110]
        size, namesize = int(header[54:62], 16), int(header[94:102], 16)
        name = data[offset + 110:offset + 110 + namesize - 1].decode()
        names.append(name)
        if name == "TRAILER!!!":
            return names
        offset += 110 + namesize
        offset += -offset % 4
        offset += size + (-size % 4)


def test_custom_guest_from_kernel_or_image(tmp_path):
    for name in ("bzImage", "initrd", "disk.qcow2", "key"):
        (tmp_path / name).write_text("x")
    image = custom_guest(GuestSpec(kind="custom", kernel=tmp_path / "bzImage",
                                   initrd=tmp_path / "initrd", ssh_user="me",
                                   ssh_key=tmp_path / "key"))
    assert image.marker is None and image.append == "console=ttyS0" and image.ssh_user == "me"
    image = custom_guest(GuestSpec(kind="custom", image=tmp_path / "disk.qcow2",
                                   ssh_key=tmp_path / "key"))
    assert image.boot_image == tmp_path / "disk.qcow2" and image.kernel is None
    with pytest.raises(UserError, match="guest.kernel: no such file"):
        custom_guest(GuestSpec(kind="custom", kernel=tmp_path / "nope", ssh_key=tmp_path / "key"))


# ------------------------------------------------------------ host and disks


def test_host_facts_have_no_hostname():
    import socket

    facts = host_facts()
    assert facts["cores"] >= 1 and facts["kernel"]
    assert socket.gethostname() not in facts.values()
    assert not any("host" in key and "name" in key for key in facts)


def test_prepare_disk_is_preallocated_and_reused(tmp_path):
    disk = tmp_path / "d.raw"
    messages = []
    prepare_disk(disk, 16 << 20, messages.append)
    st = disk.stat()
    assert st.st_size == 16 << 20 and st.st_blocks * 512 >= 16 << 20
    assert disk.read_bytes()[:4096] != bytes(4096)  # real data, not zeroes
    mtime = st.st_mtime_ns
    prepare_disk(disk, 16 << 20)
    assert disk.stat().st_mtime_ns == mtime  # reused, not rewritten
    prepare_disk(disk, 17 << 20)
    assert disk.stat().st_size == 17 << 20
    assert messages


def test_ensure_space_refuses_an_impossible_disk(tmp_path):
    with pytest.raises(UserError, match="free"):
        ensure_space(tmp_path / "huge.raw", 1 << 60)
