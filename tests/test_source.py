"""Patch-series handling on a small git repository that the test creates."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import git
import pytest

from harness.errors import UserError
from harness.source import SourceCache, conflicting_paths, patch_series


def _commit(repo: git.Repo, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = Path(repo.working_tree_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        repo.index.add([name])
    return repo.index.commit(message).hexsha


@pytest.fixture
def upstream(tmp_path: Path):
    """A repo with a base commit, and patch files made from two commits on top of it."""
    repo = git.Repo.init(tmp_path / "upstream")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "T").set_value("user", "email", "t@example.invalid")
    base = _commit(repo, {"a.c": "int a;\n", "b.c": "int b;\n"}, "base")
    _commit(repo, {"a.c": "int a;\nint a2;\n"}, "a: add a2")
    _commit(repo, {"b.c": "int b;\nint b2;\n"}, "b: add b2")
    patches = tmp_path / "patches"
    repo.git.format_patch("-o", str(patches), base)
    repo.git.reset("--hard", base)
    return repo, base, patches


def test_checkout_applies_series_and_is_idempotent(tmp_path, upstream):
    repo, base, patches = upstream
    cache = SourceCache(tmp_path / "cache", repo.working_tree_dir, commit=base)
    clone = cache.ensure()
    series = patch_series(patches)
    first = cache.checkout(clone, "v", series)
    log = git.Repo(first.path).git.log("--format=%s")
    assert log.splitlines() == ["b: add b2", "a: add a2", "base"]
    again = cache.checkout(clone, "v", series)
    assert again.head == first.head
    # the user's repository is untouched: no worktrees, no new branches
    assert repo.git.worktree("list").count("\n") == 0
    assert [h.name for h in repo.heads] == [repo.active_branch.name]


def test_changed_patch_reapplies_only_from_there(tmp_path, upstream):
    repo, base, patches = upstream
    cache = SourceCache(tmp_path / "cache", repo.working_tree_dir, commit=base)
    clone = cache.ensure()
    first = cache.checkout(clone, "v", patch_series(patches))
    a_file = first.path / "a.c"
    mtime = a_file.stat().st_mtime_ns
    second = sorted(patches.glob("*.patch"))[1]
    second.write_text(second.read_text().replace("b: add b2", "b: add b2, reworded"))
    result = cache.checkout(clone, "v", patch_series(patches))
    assert git.Repo(result.path).head.commit.summary == "b: add b2, reworded"
    assert a_file.stat().st_mtime_ns == mtime  # the first patch was not re-applied


def test_patch_that_does_not_apply_names_patch_and_path(tmp_path, upstream):
    repo, base, patches = upstream
    first = sorted(patches.glob("*.patch"))[0]
    first.write_text(first.read_text().replace("int a;\n+int a2;", "int zzz;\n+int a2;"))
    cache = SourceCache(tmp_path / "cache", repo.working_tree_dir, commit=base)
    clone = cache.ensure()
    with pytest.raises(UserError) as info:
        cache.checkout(clone, "v", patch_series(patches))
    message = str(info.value)
    assert first.name in message and "a.c" in message
    worktree = git.Repo(cache.worktrees / "v")
    assert worktree.head.commit.hexsha == base and not worktree.is_dirty(untracked_files=True)
    # the next run, with the patch fixed, recovers without manual cleanup
    first.write_text(first.read_text().replace("int zzz;\n+int a2;", "int a;\n+int a2;"))
    assert cache.checkout(clone, "v", patch_series(patches)).head != base


def test_interrupted_am_is_recovered(tmp_path, upstream):
    repo, base, patches = upstream
    cache = SourceCache(tmp_path / "cache", repo.working_tree_dir, commit=base)
    clone = cache.ensure()
    path = cache.checkout(clone, "v", patch_series(patches)).path
    worktree = git.Repo(path)
    worktree.git.reset("--hard", base)
    # a real interrupted `git am`: the first patch applies, the same patch again cannot
    first = str(sorted(patches.glob("*.patch"))[0])
    env = {"GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    applied = subprocess.run(["git", "am", first], cwd=path, capture_output=True, env=env)
    assert applied.returncode == 0, applied.stderr
    again = subprocess.run(["git", "am", first], cwd=path, capture_output=True, env=env)
    assert again.returncode != 0
    rebase_apply = Path(path, worktree.git.rev_parse("--git-path", "rebase-apply"))
    assert rebase_apply.is_dir(), "the test must leave an am session behind"
    (path / "a.c").write_text("dirty\n")
    result = cache.checkout(clone, "v", patch_series(patches))
    recovered = git.Repo(result.path)
    assert recovered.git.log("--format=%s").splitlines() == ["b: add b2", "a: add a2", "base"]
    assert not rebase_apply.exists() and not recovered.is_dirty(untracked_files=True)


def test_missing_commit_and_missing_source(tmp_path, upstream):
    repo, base, _ = upstream
    with pytest.raises(UserError, match="does not contain commit 0123456789abcdef"):
        SourceCache(tmp_path / "c1", repo.working_tree_dir, commit="0123456789abcdef" * 2 + "01234567").ensure()
    with pytest.raises(UserError, match="no such directory"):
        SourceCache(tmp_path / "c2", str(tmp_path / "nowhere"), commit=base).ensure()


def test_conflicting_paths_parser():
    output = ("Applying: x\nerror: patch failed: hw/virtio-blk.c:120\n"
              "error: hw/virtio-blk.c: patch does not apply\nerror: hw/new.h: already exists in index\n")
    assert conflicting_paths(output) == ["hw/virtio-blk.c", "hw/new.h"]
