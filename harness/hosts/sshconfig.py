"""Where an SSH connection goes: a host spec read through the user's ~/.ssh/config.

A `--host` or `hosts:` entry may name an alias of ~/.ssh/config
($HARNESS_SSH_CONFIG overrides the path), as `ssh` would take it: its HostName,
User, Port, IdentityFile (and IdentitiesOnly) and ProxyJump apply.  What the
harness was given explicitly (`USER@`, `:PORT`, `identity:`) wins over the
file.  ProxyJump may be a chain (`a,b`: through a, then b); each jump host is
looked up in the file too, but its own ProxyJump is not followed (name the
whole chain instead).  ProxyCommand is not run: a UserError says to use
ProxyJump.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..errors import UserError
from .spec import HostSpec, address_fields

SSH_PORT = 22


@dataclass(frozen=True)
class Endpoint:
    """One SSH server to log in to: the name it was given by and what that resolved to."""

    name: str  # as given: an alias of ~/.ssh/config, or the address itself
    hostname: str
    port: int = SSH_PORT
    user: str | None = None
    identities: tuple[Path, ...] = ()  # none: ssh-agent and ~/.ssh/id_*
    identities_only: bool = False  # only those files, not ssh-agent
    jumps: tuple["Endpoint", ...] = ()  # ProxyJump, the first hop first

    @property
    def address(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.hostname}:{self.port}"

    @property
    def key_name(self) -> str:
        """Its name in a known_hosts file: HOST, or [HOST]:PORT off port 22."""
        return self.hostname if self.port == SSH_PORT else f"[{self.hostname}]:{self.port}"


def ssh_config_path() -> Path:
    """The user's ssh client config; $HARNESS_SSH_CONFIG overrides."""
    explicit = os.environ.get("HARNESS_SSH_CONFIG")
    return Path(explicit) if explicit else Path("~/.ssh/config").expanduser()


def load_ssh_config(path: Path | None = None) -> paramiko.SSHConfig:
    """The ssh config (empty when there is no file); a UserError names a file it cannot read."""
    path = path or ssh_config_path()
    if not path.exists():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise UserError(f"cannot read the ssh config {path}: {exc}") from exc


def resolve(spec: HostSpec, config: paramiko.SSHConfig | None = None) -> Endpoint:
    """The host spec with the ssh config applied; the spec's explicit fields win."""
    config = config if config is not None else load_ssh_config()
    found = _lookup(config, spec.host)
    given = spec.model_fields_set
    explicit = (spec.identity.expanduser(),) if spec.identity else ()
    return Endpoint(name=spec.host, hostname=found["hostname"],
                    port=spec.port if "port" in given else _port(found, spec.host),
                    user=spec.user or found.get("user"),
                    identities=explicit or _identities(found),
                    identities_only=bool(explicit) or found.get("identitiesonly") == "yes",
                    jumps=tuple(_hop(text, config) for text in _jump_list(found, spec.host)))


def _lookup(config: paramiko.SSHConfig, host: str) -> dict:
    try:
        return config.lookup(host)
    except paramiko.SSHException as exc:
        raise UserError(f"host {host}: the ssh config {ssh_config_path()} cannot be applied: "
                        f"{exc}") from exc


def _port(found: dict, host: str) -> int:
    text = found.get("port", str(SSH_PORT))
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UserError(f"host {host}: Port {text!r} in {ssh_config_path()} is not 1-65535")
    return int(text)


def _identities(found: dict) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in found.get("identityfile", []))


def _jump_list(found: dict, host: str) -> list[str]:
    """The ProxyJump hops, first first (none for `none`); a ProxyCommand is refused."""
    jumps = found.get("proxyjump", "none")
    command = found.get("proxycommand", "none")
    if jumps == "none" and command != "none":
        raise UserError(f"host {host}: {ssh_config_path()} gives it a ProxyCommand, which the "
                        "harness does not run: use ProxyJump there instead")
    return [] if jumps == "none" else [hop.strip() for hop in jumps.split(",") if hop.strip()]


def _hop(text: str, config: paramiko.SSHConfig) -> Endpoint:
    """One ProxyJump hop, `[ssh://][USER@]HOST[:PORT]`, itself looked up in the ssh config."""
    try:
        fields = address_fields(text.removeprefix("ssh://").rstrip("/"))
    except UserError as exc:
        raise UserError(f"ProxyJump {text!r} in {ssh_config_path()}: give each hop as "
                        "[USER@]HOST[:PORT]") from exc
    found = _lookup(config, fields["host"])
    return Endpoint(name=fields["host"], hostname=found["hostname"],
                    port=fields.get("port") or _port(found, fields["host"]),
                    user=fields.get("user") or found.get("user"),
                    identities=_identities(found),
                    identities_only=found.get("identitiesonly") == "yes")
