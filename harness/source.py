"""The pinned qemu-kvm tree: a cached clone, and one worktree per variant.

All git work goes through GitPython.  The user's own repository (a --source
path) is only ever read: we clone from it into the cache.  Each variant lives
in its own worktree and branch inside the cache clone, with its patches
applied by `git am` so that `git log` in the worktree shows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
import git

from . import PINNED_COMMIT
from .errors import UserError
from .files import write_json_atomic
from .progress import LiveLine
from .util import Say

log = logging.getLogger("harness.source")

AUTHOR = ("Dataplane Harness", "harness@example.invalid")


@dataclass(frozen=True)
class PatchFile:
    path: Path
    sha256: str

    @classmethod
    def read(cls, path: Path) -> "PatchFile":
        return cls(path, hashlib.sha256(path.read_bytes()).hexdigest())


@dataclass(frozen=True)
class Checkout:
    """A variant's worktree: the pinned commit plus its patches, applied."""

    variant: str
    path: Path
    branch: str
    head: str
    patches: tuple[PatchFile, ...]


def patch_series(directory: Path) -> list[PatchFile]:
    """The *.patch files of one directory, in file-name order."""
    if not directory.is_dir():
        return []
    return [PatchFile.read(p) for p in sorted(directory.glob("*.patch"))]


def series_key(commit: str, patches: list[PatchFile] | tuple[PatchFile, ...]) -> str:
    digest = hashlib.sha256(commit.encode())
    for patch in patches:
        digest.update(patch.sha256.encode())
    return digest.hexdigest()


class _CloneProgress(git.RemoteProgress):
    """git's progress as one updating line on a terminal; elsewhere a message per finished stage."""

    def __init__(self, say: Say | None):
        super().__init__()
        self._say = say
        self._line = LiveLine()

    def update(self, op_code, cur_count, max_count=None, message=""):
        text = (self._cur_line or "").strip() or f"{cur_count}/{max_count or '?'}"
        if self._line.live:
            self._line.show(text)
        elif self._say and op_code & self.END:
            self._say(text)

    def close(self) -> None:
        self._line.close()


def is_local(source: str) -> bool:
    return "://" not in source and not re.match(r"^[\w.-]+@[\w.-]+:", source)


class SourceCache:
    """A bare clone of the source in the cache, holding the pinned commit."""

    def __init__(self, cache: Path, source: str, commit: str = PINNED_COMMIT):
        self.cache = cache
        self.source = source
        self.commit = commit
        self.clone_path = cache / "src" / "qemu-kvm.git"
        self.worktrees = cache / "worktrees"

    def ensure(self, progress: Say | None = None) -> git.Repo:
        """Clone once (or fetch if the commit is missing); check the commit is there."""
        if is_local(self.source) and not Path(self.source).exists():
            raise UserError(f"--source {self.source}: no such directory; give a qemu-kvm clone "
                            "or a URL (default: the public upstream qemu-kvm.git)")
        repo = self._open_or_clone(progress)
        if not self._has_commit(repo):
            log.info("commit %s not in the cache clone; fetching from %s", self.commit[:12], self.source)
            self._fetch(repo, progress)
        if not self._has_commit(repo):
            raise UserError(f"source {self.source} does not contain commit {self.commit}; "
                            "give a qemu-kvm.git clone that has it with --source")
        return repo

    def _open_or_clone(self, progress: Say | None) -> git.Repo:
        if (self.clone_path / "HEAD").exists():
            return git.Repo(self.clone_path)
        partial = self.clone_path.with_name(self.clone_path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # an interrupted clone
        partial.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(f"cloning {self.source} (once; later runs reuse the cache)")
        shown = _CloneProgress(progress)
        try:
            git.Repo.clone_from(self.source, partial, bare=True, no_checkout=True, progress=shown)
        except git.GitCommandError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"cannot clone {self.source}: {_git_message(exc)}") from exc
        finally:
            shown.close()
        partial.rename(self.clone_path)
        return git.Repo(self.clone_path)

    def _fetch(self, repo: git.Repo, progress: Say | None) -> None:
        try:
            repo.git.fetch(self.source, "+refs/heads/*:refs/remotes/source/*", "--tags")
        except git.GitCommandError as exc:
            raise UserError(f"cannot fetch from {self.source}: {_git_message(exc)}") from exc

    def _has_commit(self, repo: git.Repo) -> bool:
        try:
            return repo.commit(self.commit).hexsha == self.commit
        except (ValueError, git.BadName, git.BadObject):
            return False

    def checkout(self, repo: git.Repo, variant: str, patches: list[PatchFile],
                 progress: Say | None = None) -> Checkout:
        """The variant's worktree at exactly commit + patches.

        Patches already applied in the same order are kept: only the changed
        patch and those after it are re-applied, so make rebuilds only what
        they touch.
        """
        path = self.worktrees / variant
        branch = f"harness/{variant}"
        stamp = path.with_name(f"{variant}.stamp.json")
        applied = self._applied(path, stamp)
        keep = _common_prefix(applied, patches)
        if keep == len(patches) == len(applied):
            head = git.Repo(path).head.commit.hexsha
            return Checkout(variant, path, branch, head, tuple(patches))
        stamp.unlink(missing_ok=True)
        if keep:
            worktree = git.Repo(path)
            worktree.git.reset("-q", "--hard", applied[keep - 1]["commit"])
        else:
            worktree = self._fresh_worktree(repo, path, branch)
        if progress:
            progress(f"{variant}: applying {len(patches) - keep} patches with git am "
                     f"({keep} already applied)")
        records = applied[:keep] + _apply(worktree, patches[keep:], self.commit)
        head = worktree.head.commit.hexsha
        write_json_atomic(stamp, {"series_key": series_key(self.commit, patches), "head": head,
                                  "applied": records})
        return Checkout(variant, path, branch, head, tuple(patches))

    def _applied(self, path: Path, stamp: Path) -> list[dict]:
        """What the stamp says is applied, if the worktree is still exactly that."""
        if not (path / ".git").exists() or not stamp.exists():
            return []
        try:
            recorded = json.loads(stamp.read_text())
            worktree = git.Repo(path)
            if worktree.is_dirty(untracked_files=False):
                return []
            if worktree.head.commit.hexsha != recorded.get("head"):
                return []
            return list(recorded.get("applied", []))
        except (ValueError, git.GitError, OSError):
            return []

    def _fresh_worktree(self, repo: git.Repo, path: Path, branch: str) -> git.Repo:
        """A worktree at the pinned commit; repairs whatever an interrupted run left."""
        if (path / ".git").exists():
            worktree = git.Repo(path)
            _abort_am(worktree)
            worktree.git.checkout("-q", "-B", branch, self.commit, "--force")
            worktree.git.reset("-q", "--hard", self.commit)
            worktree.git.clean("-q", "-fdx")
            return worktree
        shutil.rmtree(path, ignore_errors=True)
        repo.git.worktree("prune")
        path.parent.mkdir(parents=True, exist_ok=True)
        repo.git.worktree("add", "-q", "--force", "-B", branch, str(path), self.commit)
        return git.Repo(path)


def _common_prefix(applied: list[dict], patches: list[PatchFile]) -> int:
    count = 0
    for record, patch in zip(applied, patches):
        if record.get("sha256") != patch.sha256:
            break
        count += 1
    return count


def _apply(worktree: git.Repo, patches: list[PatchFile], base: str) -> list[dict]:
    """git am each patch; returns [{file, sha256, commit}] for the stamp."""
    records = []
    name, email = AUTHOR
    env = {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
           "GIT_COMMITTER_DATE": "2012-03-06T00:00:00Z"}
    for patch in patches:
        try:
            worktree.git.am("--keep-cr", "--committer-date-is-author-date", str(patch.path), env=env)
        except git.GitCommandError as exc:
            paths = conflicting_paths(_git_message(exc, full=True))
            _abort_am(worktree)
            worktree.git.reset("-q", "--hard", base)
            worktree.git.clean("-q", "-fdx")
            raise UserError(
                f"patch {patch.path.name} does not apply ({', '.join(paths) or 'see git am output'}); "
                f"fix or rebase it onto the previous patches in {patch.path.parent}"
            ) from exc
        records.append({"file": patch.path.name, "sha256": patch.sha256,
                        "commit": worktree.head.commit.hexsha})
    return records


def conflicting_paths(output: str) -> list[str]:
    """Paths git am names in 'patch failed: PATH:LINE' / 'PATH: does not exist' lines."""
    found = re.findall(r"patch failed: (\S+?):\d+", output)
    found += re.findall(r"error: (\S+): (?:does not exist in index|already exists in index|"
                        r"patch does not apply|No such file or directory)", output)
    return list(dict.fromkeys(found))


def _abort_am(worktree: git.Repo) -> None:
    gitdir = Path(worktree.git.rev_parse("--git-dir"))
    if not gitdir.is_absolute():
        gitdir = Path(worktree.working_tree_dir) / gitdir
    if (gitdir / "rebase-apply").exists():
        try:
            worktree.git.am("--abort")
        except git.GitCommandError:
            shutil.rmtree(gitdir / "rebase-apply", ignore_errors=True)


def _git_message(exc: git.GitCommandError, full: bool = False) -> str:
    text = (exc.stderr or "") + (exc.stdout or "")
    text = text.replace("stderr:", "").replace("stdout:", "").strip().strip("'").strip()
    if full:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)

