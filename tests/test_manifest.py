"""manifest.json through the typed model: the committed runs (v1 and later), v2, and bad manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.manifest import parse_manifest, read_manifest
from harness.results import SCHEMA_VERSION as MANIFEST_SCHEMA_VERSION

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.mark.parametrize("run", sorted(p.parent.name for p in RESULTS.glob("*/manifest.json")))
def test_committed_manifests_are_read(run):
    manifest = read_manifest(RESULTS / run)
    assert 1 <= manifest.schema_version <= MANIFEST_SCHEMA_VERSION and manifest.run_id == run
    assert manifest.host.cores == 2 and manifest.host.cpu_model
    assert "QEMU emulator version 1.0.50 (qemu-kvm-devel)" in manifest.qemu_text()
    if "baseline" in manifest.variants:  # a built variant names its build commit
        assert manifest.qemu_text().startswith(
            "baseline: QEMU emulator version 1.0.50 (qemu-kvm-devel) (commit ")
    assert manifest.config.disks and "raw image" in manifest.storage_text()
    assert manifest.host_load_text().startswith("busy ")


def test_a_v2_manifest_and_unknown_fields():
    manifest = parse_manifest({"schema_version": 2, "run_id": "r", "added_later": {"x": 1},
                               "variants": {"poll": {"qemu_version": "QEMU 1.0.50"}}})
    assert manifest.schema_version == 2 and manifest.qemu_text() == "poll: QEMU 1.0.50"
    assert manifest.host_load_text() == "not recorded" and manifest.storage_text() == ""


def test_no_manifest_is_none(tmp_path):
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not readable JSON"),
    (json.dumps([1, 2]), "expected a JSON object, found list"),
    (json.dumps({"host": {"cores": "two"}}), "field 'host.cores'"),
    (json.dumps({"schema_version": 9}), "schema_version 9, newer than this harness reads"),
])
def test_bad_manifests_are_user_errors(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(UserError, match=message):
        read_manifest(tmp_path)
