"""manifest.json of a run, read into a typed model: the facts a report states.

bench writes the manifest (config, host, variants and their builds, accelerator,
notices, the host's CPU time during the run, and from schema version 2 a
top-level `schema_version`).  This module only reads it.  A manifest without
`schema_version` is version 1 (the committed reference runs) and has the same
shape; fields this model does not name are ignored, fields it names are checked,
so a report never states a fact it found by guessing at key names.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError
from .results import SCHEMA_VERSION


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BuildFacts(_Model):
    """The part of a variant's build manifest (build/<variant>/manifest.json) a report names."""

    version: str = ""
    worktree_head: str = ""
    source_commit: str = ""
    compiler: str = ""


class VariantFacts(_Model):
    binary: str = ""
    qemu_version: str = ""
    build: BuildFacts | None = None

    def describe(self, name: str) -> str:
        """'baseline: QEMU emulator version 1.0.50 (commit 2767ce4f5d2b)'."""
        version = self.qemu_version or (self.build.version if self.build else "") \
            or "version unknown"
        head = self.build.worktree_head if self.build else ""
        return f"{name}: {version}" + (f" (commit {head[:12]})" if head else "")


class HostFacts(_Model):
    cpu_model: str = ""
    cores: int | None = None
    kernel: str = ""
    os: str = ""
    memory_bytes: int | None = None
    kvm_device: bool | None = None


class CpuShare(_Model):
    """The host's CPU time during the run, from /proc/stat at start and end."""

    busy_pct: float
    steal_pct: float
    idle_pct: float


class Precision(_Model):
    """Adaptive repetitions: the target and the ratios that did not reach it."""

    target: float
    off_target: list[str] = Field(default_factory=list)


class HostCheck(_Model):
    """What the host check found (bench._check_quiet, rounds.py); absent before schema 4."""

    threshold_pct: float | None = None
    quiet_at_start: str = ""
    disturbers: list[str] = Field(default_factory=list)
    reruns: int = 0
    precision: Precision | None = None


class DiskFacts(_Model):
    name: str = "disk"
    path: str = "?"
    size: str = "?"


class ConfigFacts(_Model):
    name: str = ""
    baseline: str = "baseline"
    disks: list[DiskFacts] = Field(default_factory=list)


class Manifest(_Model):
    schema_version: int = 1
    run_id: str = ""
    status: str = ""
    harness_version: str = ""
    accel: str = ""
    notices: list[str] = Field(default_factory=list)
    guest: str = ""
    host: HostFacts = Field(default_factory=HostFacts)
    variants: dict[str, VariantFacts] = Field(default_factory=dict)
    config: ConfigFacts = Field(default_factory=ConfigFacts)
    host_cpu_during_run: CpuShare | None = None
    host_check: HostCheck | None = None
    started_at: str = ""
    updated_at: str = ""

    def qemu_text(self) -> str:
        return "; ".join(v.describe(name) for name, v in self.variants.items())

    def storage_text(self) -> str:
        return "; ".join(f"{d.name}: raw image {d.path} ({d.size})" for d in self.config.disks)

    def host_load_text(self) -> str:
        share = self.host_cpu_during_run
        if share is None:
            return "not recorded"
        return (f"busy {share.busy_pct}%, stolen by the hypervisor {share.steal_pct}%, "
                f"idle {share.idle_pct}%")


def read_manifest(run_dir: Path | str) -> Manifest | None:
    """run_dir/manifest.json as a Manifest; None when there is none.

    A file that is not JSON, has a field of the wrong type, or is newer than this
    harness is a UserError naming the file and what to change.
    """
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}): fix it or move it away") from exc
    return parse_manifest(data, str(path))


def parse_manifest(data: object, where: str = "manifest.json") -> Manifest:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version", 1)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {version}, newer than this harness reads "
                        f"({SCHEMA_VERSION}): upgrade the harness")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise UserError(f"{where}: field {field!r}: {error['msg']}") from exc
