"""Which SSH host keys are trusted: the user's known_hosts, then the harness's own.

A host's key is looked up (by HOST, or [HOST]:PORT off port 22, hashed names
too) in ~/.ssh/known_hosts ($HARNESS_SSH_KNOWN_HOSTS overrides) and in the
harness's file ($HARNESS_KNOWN_HOSTS, else the cache's known_hosts).  A key
that differs from a known one is refused, naming the file and line of the
known key.  An unknown key is refused too, unless the host accepts new keys
(`--accept-new-host-keys`, `accept_new_host_key:` in hosts:, like OpenSSH's
StrictHostKeyChecking=accept-new): then it is appended to the harness's file
and the run says so.  The user's file is only read.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey

from ..errors import UserError
from ..paths import cache_dir
from ..util import Say

log = logging.getLogger("harness.hosts.keys")


@dataclass(frozen=True)
class KnownKey:
    """A host key from a known_hosts file, with where it was found."""

    path: Path
    line: int
    key: paramiko.PKey


def user_known_hosts_path() -> Path:
    """The user's OpenSSH known hosts; $HARNESS_SSH_KNOWN_HOSTS overrides."""
    explicit = os.environ.get("HARNESS_SSH_KNOWN_HOSTS")
    return Path(explicit) if explicit else Path("~/.ssh/known_hosts").expanduser()


def known_hosts_path() -> Path:
    """Host keys the harness accepted (--accept-new-host-keys); $HARNESS_KNOWN_HOSTS overrides."""
    explicit = os.environ.get("HARNESS_KNOWN_HOSTS")
    return Path(explicit) if explicit else cache_dir() / "known_hosts"


def describe(key: paramiko.PKey) -> str:
    """A key as `ssh -v` shows it: its type and SHA256 fingerprint."""
    return f"{key.get_name()} {key.fingerprint}"


def known_keys(name: str) -> list[KnownKey]:
    """The keys known for name: the harness's file first, then the user's."""
    return [*_keys_in(known_hosts_path(), name), *_keys_in(user_known_hosts_path(), name)]


def _keys_in(path: Path, name: str) -> list[KnownKey]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"cannot read the known hosts file {path}: {exc}") from exc
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = _entry(line.strip(), number)
        if entry is not None and _names_match(entry.hostnames, name):
            found.append(KnownKey(path, number, entry.key))
    return found


def _entry(line: str, number: int) -> HostKeyEntry | None:
    """A known_hosts line's entry; None for comments, markers (@revoked…) and keys not understood."""
    if not line or line.startswith(("#", "@")):
        return None
    try:
        entry = HostKeyEntry.from_line(line, number)
    except InvalidHostKey:
        log.info("known_hosts line %d: not a key", number)
        return None
    return entry if entry is not None and entry.key is not None else None


def _names_match(names: list[str], name: str) -> bool:
    """name is one of a line's names, written out or hashed (|1|salt|hash)."""
    return any(given == name or given.startswith("|1|")
               and hmac.compare_digest(HostKeys.hash_host(name, given), given) for given in names)


def record(name: str, key: paramiko.PKey) -> tuple[Path, int]:
    """Append the key to the harness's known hosts; the file and the line it is on."""
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text() if path.exists() else ""
    lead = "\n" if before and not before.endswith("\n") else ""
    with open(path, "a") as handle:
        handle.write(f"{lead}{name} {key.get_name()} {key.get_base64()}\n")
    return path, len((before + lead).splitlines()) + 1


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """An unknown key: refused, or (accept_new) recorded in the harness's file and said."""

    def __init__(self, where: str, accept_new: bool, say: Say):
        self.where = where
        self.accept_new = accept_new
        self.say = say

    def missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise UserError(
                f"{self.where}: its host key ({describe(key)}) is not known in "
                f"{user_known_hosts_path()} or {known_hosts_path()}: check that fingerprint "
                "with the host's admin, then connect once with ssh, or give "
                "--accept-new-host-keys (accept_new_host_key: true in hosts:)")
        path, line = record(hostname, key)
        self.say(f"{self.where}: new host key {describe(key)} accepted and recorded in "
                 f"{path} line {line}")


def trust(client: paramiko.SSHClient, name: str, where: str, accept_new: bool,
          say: Say) -> list[KnownKey]:
    """Give the client the keys known for name and the policy for an unknown one; those keys.

    paramiko then prefers the known key's type and raises BadHostKeyException
    for another key (changed_key_problem says which line it differs from).
    """
    known = known_keys(name)
    for each in known:  # the user's file last: its key wins over the harness's of that type
        client.get_host_keys().add(name, each.key.get_name(), each.key)
    client.set_missing_host_key_policy(HostKeyPolicy(where, accept_new, say))
    return known


def changed_key_problem(where: str, name: str, exc: paramiko.BadHostKeyException,
                        known: list[KnownKey]) -> str:
    """One line: the key differs from the known one, in which file and line."""
    expected = [k for k in known if k.key.asbytes() == exc.expected_key.asbytes()] or known
    at = expected[-1]
    return (f"{where}: its host key ({describe(exc.key)}) differs from the one known for "
            f"{name} in {at.path} line {at.line} ({describe(at.key)}): refused, it may be "
            f"an impersonation; if the host's key changed on purpose, remove that line "
            f"(ssh-keygen -R '{name}' -f {at.path})")
