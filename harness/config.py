"""Benchmark configuration: YAML → validated, frozen specs.

All validation lives here, so that a malformed file fails before anything is
built or booted, with one line naming the field and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .hosts.spec import HostSpec

# Each set of names is defined once, here; the tuples are derived from the types.
BuildName = Literal["baseline", "dataplane", "poll"]  # our builds (build.VARIANT_LAYERS)
AccelName = Literal["kvm", "tcg", "kvm-nested"]  # what a run uses and its rows record (accel.ACCELS)
AccelChoice = Literal["auto", AccelName]  # what a config or --accel may ask for
WaitMode = Literal["poll", "irq", "intx", "poll-irq-on"]  # how the micro-guest waits for completions
KickMode = Literal["honour", "every"]  # when the micro-guest notifies the device
RwMode = Literal["randread", "randwrite", "read", "write", "randrw"]
AioMode = Literal["native", "io_uring", "threads"]
GuestKind = Literal["fio", "microguest", "custom"]
IothreadMode = Literal["shared", "per-disk"]  # a system QEMU's iothreads when a point has N disks
BUILT_VARIANTS: tuple[str, ...] = get_args(BuildName)
ACCEL_CHOICES: tuple[str, ...] = get_args(AccelChoice)
WAIT_MODES: tuple[str, ...] = get_args(WaitMode)
KICK_MODES: tuple[str, ...] = get_args(KickMode)
#: test devices one boot may attach (each takes a PCI slot; the guest sees vda…vdp)
MAX_DEVICES = 16
#: of them, what the micro-guest drives (harness/microguest: MG_MAX_DISKS, cmdline.MAX_DISKS)
MAX_MICRO_DEVICES = 8
_SIZE_RE = re.compile(r"^(\d+)([kKmMgG]?)$")


def parse_size(text: str | int) -> int:
    """'4k' → 4096, '1G' → 1 GiB, 512 → 512 (bytes)."""
    match = _SIZE_RE.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (use e.g. 512, 4k, 64M, 1G)")
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit.lower()]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantSpec(_Spec):
    """One QEMU to compare: a build of ours, or a QEMU binary on the system."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    build: BuildName | None = None
    binary: str | None = None
    #: true (= shared): one iothread for all the point's disks; per-disk: one each
    iothread: bool | IothreadMode = False
    aio: AioMode = "native"
    device_props: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict) and not value.get("build") and not value.get("binary"):
            if value.get("name") in BUILT_VARIANTS:
                value = {**value, "build": value["name"]}
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if not self.build and not self.binary:
            close = difflib.get_close_matches(self.name, BUILT_VARIANTS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown variant {self.name!r}: {hint}our builds are "
                f"{', '.join(BUILT_VARIANTS)}; for a QEMU on this system give "
                f"{{name: {self.name}, binary: qemu-system-x86_64}}")
        if bool(self.build) == bool(self.binary):
            raise ValueError(
                f"variant {self.name!r}: give exactly one of 'build' "
                f"({', '.join(BUILT_VARIANTS)}) or 'binary' (a QEMU on this system)"
            )
        if self.build and self.iothread:
            raise ValueError(f"variant {self.name!r}: iothread= needs a system QEMU ('binary'); "
                             "the 2012 tree has no iothread objects")
        if self.build and self.aio != "native":
            raise ValueError(f"variant {self.name!r}: the 2012 tree supports only aio: native")
        return self

    @property
    def iothread_mode(self) -> str | None:
        """None (the main loop), "shared" or "per-disk"."""
        if self.iothread is True:
            return "shared"
        return self.iothread or None


class DiskSpec(_Spec):
    """A preallocated raw test image; several disks form a matrix dimension."""

    name: str = Field(default="disk", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: Path
    size: str = "1G"

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) < (16 << 20):
            raise ValueError("size must be at least 16M")
        return value

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)


class GuestSpec(_Spec):
    kind: GuestKind = "fio"
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    memory_mb: int = Field(default=512, ge=64, le=16384)
    vcpus: int = Field(default=1, ge=1, le=64)
    # custom guests: the user's own kernel/initrd or disk image with an SSH login
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    image: Path | None = None
    ssh_user: str = "root"
    ssh_key: Path | None = None
    # micro-guest: how it waits for completions
    wait: WaitMode = "poll"
    # micro-guest: kick once per batch honouring NO_NOTIFY/EVENT_IDX, or on every request
    kick: KickMode = "honour"
    # repetitions for this guest (default: the run's); cheap guests can afford more
    repetitions: int | None = Field(default=None, ge=1, le=100)
    # also run each point on the variant's trace flavour and keep its trace (runners/trace.py)
    trace: bool = False
    # a matrix dimension: how many virtio-blk test devices each boot attaches (devices.py)
    disks_per_guest: list[int] = Field(default_factory=lambda: [1], min_length=1)

    @field_validator("disks_per_guest")
    @classmethod
    def _device_counts(cls, values: list[int]) -> list[int]:
        if any(v < 1 or v > MAX_DEVICES for v in values) or len(set(values)) != len(values):
            raise ValueError(f"give distinct numbers of disks from 1 to {MAX_DEVICES}, "
                             "e.g. [1, 2, 4]")
        return values

    @property
    def id(self) -> str:
        """The guest column of result rows: the name, else the kind (+ wait mode for the micro-guest)."""
        if self.name:
            return self.name
        if self.kind != "microguest":
            return self.kind
        return f"microguest-{self.wait}" + ("-kick-every" if self.kick == "every" else "")

    @model_validator(mode="after")
    def _custom_needs(self):
        if self.kind == "custom" and not (self.kernel or self.image):
            raise ValueError("guest.kind 'custom' needs guest.kernel (with initrd) or guest.image")
        if self.kind == "custom" and not self.ssh_key:
            raise ValueError("guest.kind 'custom' needs guest.ssh_key (the private key to log in)")
        if self.kind == "microguest" and max(self.disks_per_guest) > MAX_MICRO_DEVICES:
            raise ValueError(f"guest {self.id!r}: the micro-guest drives at most "
                             f"{MAX_MICRO_DEVICES} disks; lower disks_per_guest")
        if self.trace and self.disks_per_guest != [1]:
            raise ValueError(f"guest {self.id!r}: trace: true traces one disk; "
                             "set disks_per_guest: [1]")
        if self.trace and self.kind != "microguest":
            raise ValueError(f"guest {self.id!r}: trace: true is for the micro-guest only "
                             "(kind: microguest)")
        return self


class WorkloadSpec(_Spec):
    rw: list[RwMode] = ["randread"]
    bs: list[str] = ["4k"]
    iodepth: list[int] = [1, 16]
    numjobs: list[int] = [1]
    runtime_s: int = Field(default=10, ge=1, le=3600)
    ramp_s: int = Field(default=2, ge=0, le=600)
    requests: int = Field(default=20000, ge=1, description="micro-guest requests per point")

    @field_validator("bs", mode="before")
    @classmethod
    def _bs_text(cls, values):
        return [str(v) for v in values] if isinstance(values, list) else values

    @field_validator("bs")
    @classmethod
    def _bs(cls, values: list[str]) -> list[str]:
        for value in values:
            size = parse_size(value)
            if size < 512 or size % 512:
                raise ValueError(f"bs {value!r} must be a multiple of 512 bytes")
        return values

    @field_validator("iodepth", "numjobs")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 or v > 1024 for v in values):
            raise ValueError("must be a non-empty list of integers from 1 to 1024")
        return values


class TimeoutSpec(_Spec):
    boot_s: int = Field(default=300, ge=5)
    point_s: int = Field(default=180, ge=5)
    shutdown_s: int = Field(default=20, ge=1)


class HostCheckSpec(_Spec):
    """How quiet the host must be (hostload.py): others' CPU in percent of one core."""

    foreign_cpu_pct: float = Field(default=10.0, gt=0, le=1000,
                                   description="a point above this is disturbed")
    retries: int = Field(default=2, ge=0, le=10,
                         description="re-runs of a disturbed point, at the end of its round")
    quiet_wait_s: float = Field(default=60.0, ge=0, le=3600,
                                description="before the run, wait up to this long for quiet")


class AdaptiveRepetitions(_Spec):
    """Rounds until every ratio to the baseline has an interval within ±target (rounds.py)."""

    min: int = Field(ge=2, le=100)
    max: int = Field(ge=2, le=100)
    target: float = Field(gt=0, lt=1, description="e.g. 0.05: the interval within ±5% of the ratio")

    @field_validator("target", mode="before")
    @classmethod
    def _percent(cls, value):
        if isinstance(value, str) and value.strip().endswith("%"):
            return float(value.strip()[:-1]) / 100
        return value

    @model_validator(mode="after")
    def _order(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


#: Time a fio point needs beyond ramp + runtime (start-up, the JSON back over SSH).
POINT_MARGIN_S = 10


class BenchConfig(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    source: str | None = None
    variants: list[VariantSpec]
    baseline: str = "baseline"
    guests: list[GuestSpec] = Field(default_factory=lambda: [GuestSpec()], min_length=1)
    disks: list[DiskSpec]
    workloads: WorkloadSpec = WorkloadSpec()
    repetitions: int | AdaptiveRepetitions = 3
    accel: AccelChoice = "auto"
    host_check: HostCheckSpec = HostCheckSpec()
    timeouts: TimeoutSpec = TimeoutSpec()
    host_ceiling: bool = Field(default=False, description="also run fio on the host on each image")
    hostile: bool = Field(default=False, description="also run the micro-guest's malformed-request cases")
    hosts: list[HostSpec] = Field(default_factory=list, description="remote hosts (none: this machine)")

    @model_validator(mode="before")
    @classmethod
    def _one_guest(cls, value):
        """`guest: {...}` is shorthand for a run with one guest."""
        if isinstance(value, dict) and "guest" in value:
            if "guests" in value:
                raise ValueError("give either 'guest' or 'guests', not both")
            value = {**value, "guests": [value["guest"]]}
            del value["guest"]
        return value

    @field_validator("repetitions", mode="before")
    @classmethod
    def _repetitions(cls, value):
        """A number of rounds, or {min, max, target}: one clear message for either."""
        if isinstance(value, dict):
            try:
                return AdaptiveRepetitions.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}"
                                 if where else first["msg"].removeprefix("Value error, ")) from None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise ValueError(f"{value!r}: give a number of rounds from 1 to 100, or "
                             "{min: N, max: M, target: 0.05} to add rounds until every ratio's "
                             "interval is within ±target")
        return value

    @model_validator(mode="after")
    def _names(self):
        ids = [g.id for g in self.guests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"guests: each guest at most once (give them names), got {ids}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique, got {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the variants {names}")
        if self.accel == "kvm-nested":
            check_kvm_nested(self.variants, self.guests)
        self._fits_in_point_timeout()
        disk_names = [d.name for d in self.disks]
        if len(set(disk_names)) != len(disk_names):
            raise ValueError(f"disks: names must be unique, got {disk_names}")
        return self

    @property
    def min_repetitions(self) -> int:
        """Rounds every run makes (all of them unless repetitions is adaptive)."""
        reps = self.repetitions
        return reps.min if isinstance(reps, AdaptiveRepetitions) else reps

    @property
    def max_repetitions(self) -> int:
        reps = self.repetitions
        return reps.max if isinstance(reps, AdaptiveRepetitions) else reps

    @property
    def target(self) -> float | None:
        """The ±precision adaptive repetitions aim at, or None."""
        reps = self.repetitions
        return reps.target if isinstance(reps, AdaptiveRepetitions) else None

    def _fits_in_point_timeout(self) -> None:
        """A fio run that cannot end within timeouts.point_s would fail every point."""
        if all(g.kind == "microguest" for g in self.guests):
            return
        needed = self.workloads.runtime_s + self.workloads.ramp_s + POINT_MARGIN_S
        if needed > self.timeouts.point_s:
            raise ValueError(
                f"workloads.runtime_s ({self.workloads.runtime_s}) + ramp_s "
                f"({self.workloads.ramp_s}) do not fit in timeouts.point_s "
                f"({self.timeouts.point_s}): every fio point would time out; set "
                f"timeouts.point_s to at least {needed}")

    def guest(self, guest_id: str) -> GuestSpec:
        for guest in self.guests:
            if guest.id == guest_id:
                return guest
        raise UserError(f"no guest {guest_id!r} in the config; it has {[g.id for g in self.guests]}")

    def differences(self, other: "BenchConfig") -> list[str]:
        """The fields (dotted paths) whose values differ, except those a resumed run may
        change because they do not change what is measured (RESUMABLE_CHANGES)."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        for name in RESUMABLE_CHANGES:
            mine.pop(name, None)
            theirs.pop(name, None)
        return _differing_paths(mine, theirs, "")

    def variant(self, name: str) -> VariantSpec:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise UserError(f"unknown variant {name!r}; the config has {[v.name for v in self.variants]}")


#: how a config names the one system QEMU carried into L1 (nested/hosttools.py): Debian's
L1_SYSTEM_QEMU = ("qemu-system-x86_64", "/usr/bin/qemu-system-x86_64")


def check_kvm_nested(variants: list[VariantSpec], guests: list[GuestSpec]) -> None:
    """accel kvm-nested carries our builds and our guests into L1 (harness/nested/)."""
    for variant in variants:
        if not variant.build and variant.binary not in L1_SYSTEM_QEMU:
            raise ValueError(f"variant {variant.name!r}: accel kvm-nested runs built variants "
                             f"({', '.join(BUILT_VARIANTS)}) and Debian's qemu-system-x86_64; "
                             f"{variant.binary!r} is not carried into L1")
    for guest in guests:
        if guest.kind == "custom":
            raise ValueError(f"guest {guest.id!r}: accel kvm-nested runs the fio guest and the "
                             "micro-guest only")
        if guest.trace:
            raise ValueError(f"guest {guest.id!r}: trace: true runs on this host's TCG only, "
                             "not under accel kvm-nested")


#: Fields a `--resume` may change: how long to wait, the prose, where points run
#: (a resumed run may go on on other hosts; each row names its host), and how quiet
#: the host must be (each row records its foreign load).
RESUMABLE_CHANGES = ("description", "timeouts", "hosts", "host_check")


def _differing_paths(a, b, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b), key=str):
            found += _differing_paths(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = []
        for index, (x, y) in enumerate(zip(a, b)):
            found += _differing_paths(x, y, f"{where}[{index}]")
        return found
    return [] if a == b else [where or "(top level)"]


def _field_names(model: type[BaseModel]) -> set[str]:
    """Every field name of a spec and of the specs inside it (for did-you-mean)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for inner in get_args(info.annotation) or (info.annotation,):
            for candidate in get_args(inner) or (inner,):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    names |= _field_names(candidate)
    return names


def _error_text(error: dict) -> str:
    """One validation error in words: where, and what to change."""
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        field = str(error["loc"][-1])
        parent = ".".join(str(p) for p in error["loc"][:-1])
        close = difflib.get_close_matches(field, sorted(_field_names(BenchConfig)), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{parent + ': ' if parent else ''}unknown field {field!r}{hint}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def _one_line(exc: ValidationError, origin: str) -> str:
    """Every error of the file, one a line, each naming the file and the field."""
    return "\n".join(f"{origin}: {_error_text(error)}" for error in exc.errors())


def load_config(path: Path | str) -> BenchConfig:
    """Read and validate a YAML config; any problem is one UserError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from exc
    return parse_config(text, str(path))


def parse_config(text: str, origin: str = "<config>") -> BenchConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{origin}:{line} is not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{origin}: expected a mapping of settings at the top level")
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(exc, origin)) from exc
