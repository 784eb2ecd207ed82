"""Where a run's points run: the local machine, or remote hosts reached over SSH.

A HostSpec is data only (checked when it is made); connecting is ssh.py's
job, checking check.py's.  On the command line a host is
`[USER@]HOST[:PORT]`; in a config a `hosts:` entry is that string or a
mapping with the same fields plus an identity file, a work folder, an
accelerator, a name for the results' `host` column and whether an unknown
host key may be accepted.  HOST may be an alias of ~/.ssh/config
(sshconfig.py): what is given here explicitly wins over that file.

The `host` column of a local run is LOCAL_HOST ("local"): the machine's name
is deliberately not recorded (results are meant to be shared), and a remote
host is labelled with what the user called it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import UserError

LOCAL_HOST = "local"
DEFAULT_WORKDIR = "~/.cache/dataplane-harness-remote"
_ADDRESS_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
                         r"(?::(?P<port>\d{1,5}))?$")
HostAccel = Literal["auto", "kvm", "tcg"]


class HostSpec(BaseModel):
    """One remote host: how to reach it and where to keep the harness's files there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    identity: Path | None = None  # private key; default: ssh's own (agent, ~/.ssh/id_*)
    workdir: str = DEFAULT_WORKDIR  # on the host; content-addressed files live under it
    accel: HostAccel | None = None  # default: the run's (config accel or --accel)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
    #: extra environment for every command there (say, PATH); the shell's otherwise
    env: dict[str, str] = Field(default_factory=dict)
    #: an unknown host key is recorded and trusted (OpenSSH's StrictHostKeyChecking=accept-new);
    #: default: refused (--accept-new-host-keys sets it for every host of the run)
    accept_new_host_key: bool = False

    @model_validator(mode="before")
    @classmethod
    def _address(cls, value):
        if isinstance(value, str):
            return address_fields(value)
        if isinstance(value, dict) and isinstance(value.get("host"), str) and (
                "@" in value["host"] or ":" in value["host"].strip("[]")):
            return {**value, **address_fields(value["host"])}
        return value

    @property
    def label(self) -> str:
        """The results' `host` column: the name, else HOST or HOST:PORT (PORT when not 22)."""
        if self.name:
            return self.name
        return self.host if self.port == 22 else f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}"


def address_fields(text: str) -> dict:
    """`[USER@]HOST[:PORT]` → {host, user?, port?}; a UserError says the form."""
    match = _ADDRESS_RE.match(text.strip())
    if not match:
        raise UserError(f"host {text!r}: give it as [USER@]HOST[:PORT], e.g. lab@kvm1:2222")
    fields = {"host": match["host"].strip("[]")}
    if match["user"]:
        fields["user"] = match["user"]
    if match["port"]:
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise UserError(f"host {text!r}: port {port} is not 1-65535")
        fields["port"] = port
    return fields


def parse_host(text: str) -> HostSpec:
    """A --host argument as a HostSpec."""
    return HostSpec.model_validate(address_fields(text))


def merge_hosts(from_config: list[HostSpec], from_cli: list[str],
                accept_new_host_keys: bool = False) -> list[HostSpec]:
    """--host replaces the config's hosts: list (a command line names where to run now).

    Labels must be unique: they tell the hosts' rows apart.  accept_new_host_keys
    (--accept-new-host-keys) lets every host's unknown key be accepted.
    """
    hosts = [parse_host(h) for h in from_cli] if from_cli else list(from_config)
    if accept_new_host_keys:
        hosts = [h.model_copy(update={"accept_new_host_key": True}) for h in hosts]
    labels = [h.label for h in hosts]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(f"host {duplicates[0]} is given twice; give each host once "
                        "(or give them distinct `name:`s in the config)")
    return hosts
