"""configure + make of each variant → a build manifest.

Both variants are built out of tree with the same compiler and the same
configure flags, so the two binaries differ only by the patch series.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import PINNED_COMMIT, __version__
from .config import BUILT_VARIANTS
from .errors import InfraError, UserError
from .files import sha256_file, write_json_atomic
from .paths import cache_dir, patches_dir
from .proc import run
from .qemuinfo import qemu_info
from .source import Checkout, PatchFile, SourceCache, is_local, patch_series, series_key
from .trace_build import TRACE_FLAGS, TRACE_LAYERS, base_variant, is_traced
from .util import Say, now_iso

# Which patch directories make each variant, in application order.
VARIANT_LAYERS: dict[str, tuple[str, ...]] = {
    "baseline": ("compat",),
    "dataplane": ("compat", "dataplane"),
    "poll": ("compat", "dataplane", "beyond"),
}
assert tuple(VARIANT_LAYERS) == BUILT_VARIANTS, "config.BuildName and VARIANT_LAYERS disagree"
#: `harness check-series --layer`: the series to build patch by patch, on top of its base.
SERIES_LAYERS: dict[str, tuple[str, ...]] = {
    "dataplane": ("compat", "dataplane"),
    "beyond": ("compat", "dataplane", "beyond"),
}

CONFIGURE_FLAGS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu",
    "--python=python3",
    "--enable-linux-aio",
    "--disable-werror",
    "--disable-smartcard",
    "--disable-smartcard-nss",
    "--disable-guest-agent",
    "--disable-opengl",
    "--disable-sdl",
    "--disable-vnc-tls",
    "--disable-vnc-sasl",
    "--disable-curses",
    "--disable-docs",
    "--disable-spice",
    "--disable-xen",
    "--audio-drv-list=",
    "--disable-strip",
)

BINARY = Path("x86_64-softmmu") / "qemu-system-x86_64"

# tool or header → the Debian package that provides it
REQUIRED_TOOLS = {"gcc": "build-essential", "make": "build-essential",
                  "pkg-config": "pkg-config", "python3": "python3", "git": "git"}
REQUIRED_PKGCONFIG = {"glib-2.0": "libglib2.0-dev", "zlib": "zlib1g-dev"}
REQUIRED_HEADERS = {"libaio.h": "libaio-dev"}


@dataclass(frozen=True)
class VariantPlan:
    name: str
    patches: tuple[PatchFile, ...]
    worktree: Path
    build_dir: Path
    up_to_date: bool

    @property
    def binary(self) -> Path:
        return self.build_dir / BINARY


@dataclass
class BuildOutcome:
    name: str
    manifest: dict
    rebuilt: bool
    skipped_reason: str | None = None
    notices: list[str] = field(default_factory=list)


def variant_layers(name: str) -> tuple[str, ...]:
    """The patch directories of a variant or of its trace flavour (`poll+trace`)."""
    base = base_variant(name)
    return VARIANT_LAYERS[base] + (TRACE_LAYERS[base] if is_traced(name) else ())


def configure_flags(name: str) -> tuple[str, ...]:
    """The same flags for every variant; a trace flavour adds the simple trace backend."""
    return CONFIGURE_FLAGS + (TRACE_FLAGS if is_traced(name) else ())


def variant_patches(name: str, root: Path | None = None) -> list[PatchFile] | None:
    """The variant's patches in order, or None if one of its layers has no patches yet."""
    root = root or patches_dir()
    patches: list[PatchFile] = []
    for layer in variant_layers(name):
        found = patch_series(root / layer)
        if not found:
            return None
        patches += found
    return patches


def check_prerequisites() -> None:
    """Every missing tool or header at once, as the Debian packages to install."""
    missing: dict[str, str] = {}
    for tool, package in REQUIRED_TOOLS.items():
        if not shutil.which(tool):
            missing[tool] = package
    if shutil.which("pkg-config"):
        for module, package in REQUIRED_PKGCONFIG.items():
            if run(["pkg-config", "--exists", module], check=False).returncode != 0:
                missing[module] = package
    for header, package in REQUIRED_HEADERS.items():
        if not any(Path(d, header).exists() for d in ("/usr/include", "/usr/local/include")):
            missing[header] = package
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise UserError(f"missing {', '.join(missing)}; install with: apt-get install {packages}")


def compiler_version() -> str:
    return run(["gcc", "--version"]).output.splitlines()[0].strip()


def manifest_path(build_dir: Path) -> Path:
    return build_dir / "manifest.json"


def read_manifest(build_dir: Path) -> dict | None:
    try:
        return json.loads(manifest_path(build_dir).read_text())
    except (OSError, ValueError):
        return None


def _inputs(cache: SourceCache, patches: tuple[PatchFile, ...] | list[PatchFile],
            compiler: str, flags: tuple[str, ...] = CONFIGURE_FLAGS) -> dict:
    """What a build depends on; equal inputs and an intact binary mean nothing to do."""
    return {
        "source_commit": cache.commit,
        "series_key": series_key(cache.commit, patches),
        "configure_flags": list(flags),
        "compiler": compiler,
    }


def is_up_to_date(build_dir: Path, inputs: dict) -> bool:
    manifest = read_manifest(build_dir)
    if not manifest or manifest.get("status") != "ok":
        return False
    if any(manifest.get(key) != value for key, value in inputs.items()):
        return False
    binary = build_dir / BINARY
    return binary.exists() and sha256_file(binary) == manifest.get("binary_sha256")


class Builder:
    """Plans and builds the variants of one source into one cache."""

    def __init__(self, cache: SourceCache, jobs: int | None = None,
                 progress: Say | None = None):
        self.cache = cache
        self.jobs = jobs or max(1, os.cpu_count() or 1)
        self.progress = progress or (lambda message: None)
        self._compiler: str | None = None

    @property
    def compiler(self) -> str:
        if self._compiler is None:
            self._compiler = compiler_version()
        return self._compiler

    def build_dir(self, name: str) -> Path:
        return self.cache.cache / "build" / name

    def plan(self, names: list[str]) -> tuple[list[VariantPlan], list[str]]:
        """The variants that can be built now, and a notice for each that cannot."""
        plans, notices = [], []
        for name in names:
            patches = variant_patches(name)
            if patches is None:
                missing = [layer for layer in variant_layers(name) if not patch_series(patches_dir() / layer)]
                notices.append(f"{name}: not built: patches/{missing[0]} has no patches yet")
                continue
            build_dir = self.build_dir(name)
            inputs = _inputs(self.cache, patches, self.compiler, configure_flags(name))
            plans.append(VariantPlan(name, tuple(patches), self.cache.worktrees / name,
                                     build_dir, is_up_to_date(build_dir, inputs)))
        return plans, notices

    def build(self, plan: VariantPlan, repo) -> BuildOutcome:
        inputs = _inputs(self.cache, plan.patches, self.compiler, configure_flags(plan.name))
        if plan.up_to_date:
            return BuildOutcome(plan.name, read_manifest(plan.build_dir) or {}, rebuilt=False)
        checkout = self.cache.checkout(repo, plan.name, list(plan.patches), self.progress)
        started = time.monotonic()
        manifest = self._manifest(plan, checkout, inputs, status="building")
        write_json_atomic(manifest_path(plan.build_dir), manifest)
        self._configure(plan, checkout)
        self._make(plan)
        manifest.update(
            status="ok",
            binary_sha256=sha256_file(plan.binary),
            build_seconds=round(time.monotonic() - started, 1),
            version=qemu_info(plan.binary).version,
            finished_at=now_iso(),
        )
        write_json_atomic(manifest_path(plan.build_dir), manifest)
        return BuildOutcome(plan.name, manifest, rebuilt=True)

    def _manifest(self, plan: VariantPlan, checkout: Checkout, inputs: dict, status: str) -> dict:
        return {
            "variant": plan.name,
            "status": status,
            "source_url": self.cache.source,
            **inputs,
            "patches": [{"file": f"{p.path.parent.name}/{p.path.name}", "sha256": p.sha256}
                        for p in plan.patches],
            "worktree_head": checkout.head,
            "worktree_branch": checkout.branch,
            "configure_command": configure_argv(checkout.path, configure_flags(plan.name)),
            "make_command": ["make", f"-j{self.jobs}"],
            "binary": str(plan.binary),
            "harness_version": __version__,
            "started_at": now_iso(),
        }

    def _configure(self, plan: VariantPlan, checkout: Checkout) -> None:
        """Configure again only if the flags or the worktree path changed."""
        plan.build_dir.mkdir(parents=True, exist_ok=True)
        argv = configure_argv(checkout.path, configure_flags(plan.name))
        stamp = plan.build_dir / "configure.stamp"
        if (plan.build_dir / "config-host.mak").exists() and stamp.exists() \
                and stamp.read_text() == shlex.join(argv):
            return
        stamp.unlink(missing_ok=True)
        self.progress(f"{plan.name}: configure")
        run(argv, cwd=plan.build_dir, log_file=plan.build_dir / "build.log",
            what=f"configure {plan.name}", timeout=600)
        stamp.write_text(shlex.join(argv))

    def _make(self, plan: VariantPlan) -> None:
        self.progress(f"{plan.name}: make -j{self.jobs} (a cold build takes a minute or two)")
        log_file = plan.build_dir / "build.log"
        run(["make", f"-j{self.jobs}"], cwd=plan.build_dir, log_file=log_file,
            what=f"make {plan.name}", timeout=3600)
        if not plan.binary.exists():
            raise InfraError(f"make {plan.name} finished but {plan.binary} is missing (log: {log_file})")


def configure_argv(worktree: Path, flags: tuple[str, ...] = CONFIGURE_FLAGS) -> list[str]:
    return [str(worktree / "configure"), *flags]


def built_binary(cache_root: Path, name: str) -> Path:
    """The binary of a built variant, or a UserError that says how to build it."""
    manifest = read_manifest(cache_root / "build" / name)
    binary = cache_root / "build" / name / BINARY
    if not manifest or manifest.get("status") != "ok" or not binary.exists():
        raise UserError(f"variant {name!r} is not built; run: harness build --variant {name}")
    return binary


__all__ = ["Builder", "VariantPlan", "BuildOutcome", "VARIANT_LAYERS", "CONFIGURE_FLAGS",
           "check_prerequisites", "built_binary", "variant_patches", "PINNED_COMMIT"]


def check_series(builder: Builder, repo, layers: tuple[str, ...] = ("compat", "dataplane"),
                 report: Callable[[str, bool, str], None] | None = None) -> list[tuple[str, bool]]:
    """Build the last layer patch by patch (bisectability): [(patch file, compiled?)].

    Uses its own worktree and build directory ("series-check"); each step
    applies one more patch (the earlier ones stay applied) and runs make, so
    only the first step is a cold build.  Stops at the first patch that does
    not compile.
    """
    base: list[PatchFile] = []
    for layer in layers[:-1]:
        base += patch_series(patches_dir() / layer)
    series = patch_series(patches_dir() / layers[-1])
    if not series:
        raise UserError(f"patches/{layers[-1]} has no patches to check")
    name = "series-check"
    build_dir = builder.build_dir(name)
    outcomes: list[tuple[str, bool]] = []
    for count in range(len(series) + 1):
        patches = base + series[:count]
        label = series[count - 1].path.name if count else "(base)"
        checkout = builder.cache.checkout(repo, name, patches, builder.progress)
        plan = VariantPlan(name, tuple(patches), checkout.path, build_dir, up_to_date=False)
        try:
            builder._configure(plan, checkout)
            builder._make(plan)
        except InfraError as exc:
            outcomes.append((label, False))
            if report:
                report(label, False, str(exc).splitlines()[-1] if str(exc) else "")
            break
        outcomes.append((label, True))
        if report:
            report(label, True, "")
    return outcomes


def portable(manifest: dict, run_dir: Path | None = None) -> dict:
    """The manifest without this machine's paths, so that a run can be shared."""
    text = json.dumps(manifest)
    if run_dir is not None:
        text = text.replace(json.dumps(str(run_dir.resolve()))[1:-1], "$RUN_DIR")
    text = text.replace(json.dumps(str(cache_dir()))[1:-1], "$HARNESS_CACHE")
    for source in _local_sources(manifest):
        text = text.replace(json.dumps(source)[1:-1], "(local clone)")
    return json.loads(text)


def _local_sources(manifest: dict) -> set[str]:
    found = set()
    for variant in manifest.get("variants", {}).values():
        url = ((variant or {}).get("build") or {}).get("source_url")
        if url and is_local(url):
            found.add(url)
    return found
