"""Build planning and manifests (pure), and the real build when a source is at hand."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import PINNED_COMMIT
from harness.build import CONFIGURE_FLAGS, VARIANT_LAYERS, is_up_to_date, sha256_file, variant_patches
from harness.source import series_key

ROOT = Path(__file__).resolve().parent.parent


def _fake_build(tmp_path: Path, inputs: dict) -> Path:
    build_dir = tmp_path / "build"
    binary = build_dir / "x86_64-softmmu" / "qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"\x7fELF fake")
    manifest = {"status": "ok", "binary_sha256": sha256_file(binary), **inputs}
    (build_dir / "manifest.json").write_text(json.dumps(manifest))
    return build_dir


def test_remembered_digest_follows_a_rewritten_file(tmp_path):
    """remote ships with remember=True: a file changed since must not keep its old digest."""
    path = tmp_path / "binary"
    path.write_bytes(b"first")
    assert sha256_file(path, remember=True) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"the second")
    assert sha256_file(path, remember=True) == hashlib.sha256(b"the second").hexdigest()
    assert sha256_file(path) == sha256_file(path, remember=True)


def test_manifest_decides_up_to_date(tmp_path):
    inputs = {"source_commit": PINNED_COMMIT, "series_key": "k", "configure_flags": list(CONFIGURE_FLAGS),
              "compiler": "gcc 12"}
    build_dir = _fake_build(tmp_path, inputs)
    assert is_up_to_date(build_dir, inputs)
    assert not is_up_to_date(build_dir, {**inputs, "series_key": "other"})
    assert not is_up_to_date(build_dir, {**inputs, "compiler": "gcc 13"})
    (build_dir / "x86_64-softmmu" / "qemu-system-x86_64").write_bytes(b"changed")
    assert not is_up_to_date(build_dir, inputs)


def test_interrupted_build_manifest_is_not_up_to_date(tmp_path):
    inputs = {"series_key": "k"}
    build_dir = _fake_build(tmp_path, inputs)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    (build_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "building"}))
    assert not is_up_to_date(build_dir, inputs)


def test_series_key_depends_on_order_and_content(tmp_path):
    from harness.source import PatchFile
    a, b = PatchFile(Path("a"), "1" * 64), PatchFile(Path("b"), "2" * 64)
    assert series_key("c", [a, b]) != series_key("c", [b, a])
    assert series_key("c", [a]) != series_key("d", [a])


def test_variant_layers_use_the_shipped_patches():
    baseline = variant_patches("baseline")
    assert baseline and all(p.path.parent.name == "compat" for p in baseline)
    assert VARIANT_LAYERS["dataplane"][:1] == ("compat",)
    dataplane, poll = variant_patches("dataplane"), variant_patches("poll")
    assert dataplane is not None and poll is not None, "patches/dataplane and patches/beyond ship"
    assert dataplane[: len(baseline)] == baseline and poll[: len(dataplane)] == dataplane
    assert len(dataplane) - len(baseline) == 27  # the RFC's 27 patches


def _harness(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=3600)


def test_cli_rejects_unknown_variant():
    result = _harness("build", "--variant", "turbo", "--dry-run")
    assert result.returncode == 2, result.stderr  # the user must change something
    assert "'turbo' is not one of 'baseline', 'dataplane', 'poll'" in result.stderr


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_real_build_then_noop(source_or_skip, tmp_path):
    """Builds every variant from a real qemu-kvm source (a no-op on a filled cache)."""
    import os
    env = {**os.environ, "HARNESS_SOURCE": source_or_skip}
    dry = _harness("build", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "git am compat/0001" in dry.stdout
    first = _harness("build", env=env)
    assert first.returncode == 0, first.stderr + first.stdout
    started = time.monotonic()
    second = _harness("build", env=env)
    assert second.returncode == 0 and time.monotonic() - started < 10
    assert "up to date" in second.stdout and "built " not in second.stdout
    from harness.paths import cache_dir
    for variant in ("baseline", "dataplane", "poll"):
        manifest = json.loads((cache_dir() / "build" / variant / "manifest.json").read_text())
        assert manifest["source_commit"] == PINNED_COMMIT and manifest["status"] == "ok"
        version = subprocess.run([manifest["binary"], "-version"], capture_output=True, text=True)
        assert "1.0.50" in version.stdout and manifest["version"] in version.stdout
        assert sha256_file(Path(manifest["binary"])) == manifest["binary_sha256"]


def test_missing_tools_name_debian_packages(monkeypatch, tmp_path):
    from harness.build import check_prerequisites
    from harness.errors import UserError

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no gcc, make, pkg-config
    with pytest.raises(UserError) as info:
        check_prerequisites()
    message = str(info.value)
    assert "gcc" in message and "apt-get install" in message and "build-essential" in message
    assert "\n" not in message


def _files_created(patch: Path) -> dict[str, list[str]]:
    """The files a mailbox patch creates, with their added lines."""
    created: dict[str, list[str]] = {}
    current = None
    lines = patch.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("new file mode") and i >= 1:
            current = lines[i - 1].split(" b/", 1)[1]
            created[current] = []
        elif current and line.startswith("+") and not line.startswith("+++"):
            created[current].append(line[1:])
    return created


def test_files_we_wrote_carry_our_notice():
    """Issue 21 item 8: the files our series creates (hw/dataplane/*.h) carry this
    project's notice, GPL-2.0-or-later, and no copyright of IBM or Red Hat."""
    root = Path(__file__).resolve().parent.parent / "patches"
    created: dict[str, list[str]] = {}
    for layer in ("dataplane", "beyond"):
        for patch in sorted((root / layer).glob("*.patch")):
            for name, added in _files_created(patch).items():
                created[name] = added
    headers = {name: added for name, added in created.items() if name.startswith("hw/dataplane/")}
    assert headers, "the series creates no hw/dataplane/ files: has the layout changed?"
    for name, added in headers.items():
        head = "\n".join(added[:12])
        assert "SPDX-License-Identifier: GPL-2.0-or-later" in head, f"{name}: no SPDX notice:\n{head}"
        assert "IBM" not in head and "Red Hat" not in head, f"{name}: someone else's notice:\n{head}"
