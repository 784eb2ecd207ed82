"""How the harness reaches a host: ~/.ssh/config and host keys, against real sshd on 127.0.0.1.

No QEMU here: each test logs in to test sshd processes (tests/sshd.py) and
runs a shell command.  The ssh config and both known hosts files are the
test's own (own_ssh_files): a Host alias with its HostName, Port, User and
IdentityFile; ProxyJump through one and two jump hosts; a known key that
differs (refused, naming its file and line); an unknown key (refused, or
accepted and recorded with --accept-new-host-keys).
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import paramiko
import pytest
import yaml

from harness.cli import run_cli
from harness.errors import UserError
from harness.hosts.spec import HostSpec, merge_hosts, parse_host
from harness.hosts.ssh import SSHHost
from harness.hosts.sshconfig import resolve
from harness.util import free_port
from sshd import TestSSHD, make_sshd, own_ssh_files, sshd_missing


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Three test sshd: a, b and c, each with its own host key and client key."""
    missing = sshd_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("ssh-hosts")
    started = {name: make_sshd(root / name).start() for name in "abc"}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def files(tmp_path):
    """The test's own ssh config and known hosts (none written yet), restored after."""
    with own_ssh_files(tmp_path) as root:
        yield root


def spec(host: str, files: Path, **fields) -> HostSpec:
    return HostSpec.model_validate({"host": host, "workdir": str(files / "work"), **fields})


def alias(name: str, server: TestSSHD, *more: str) -> str:
    """An ssh config Host block for the server."""
    lines = [f"Host {name}", "  HostName 127.0.0.1", f"  Port {server.port}",
             f"  IdentityFile {server.client_key}", *(f"  {line}" for line in more)]
    return "\n".join(lines) + "\n"


def server_port(host: SSHHost) -> int:
    """The port the session's sshd listens on, as it says ($SSH_CONNECTION)."""
    return int(host.shell("echo $SSH_CONNECTION").output.split()[-1])


def ssh_port_of(client: paramiko.SSHClient) -> int:
    """The same, for a jump host's client."""
    _, stdout, _ = client.exec_command("echo $SSH_CONNECTION")
    return int(stdout.read().split()[-1])


# ------------------------------------------------------------------ ~/.ssh/config


def test_the_ssh_config_is_read_and_what_is_given_explicitly_wins(tmp_path, monkeypatch):
    config = tmp_path / "ssh_config"
    config.write_text("Host lab\n  HostName 10.0.0.7\n  Port 2222\n  User lab\n"
                      "  IdentityFile ~/.ssh/lab_key\n  ProxyJump ssh://jumper@gate:2200,bastion\n"
                      "Host bastion\n  HostName 10.0.0.1\n  User ops\n"
                      "Host old\n  ProxyCommand nc %h %p\n")
    monkeypatch.setenv("HARNESS_SSH_CONFIG", str(config))
    end = resolve(parse_host("lab"))
    assert (end.hostname, end.port, end.user, end.key_name) == ("10.0.0.7", 2222, "lab",
                                                                "[10.0.0.7]:2222")
    assert end.identities == (Path("~/.ssh/lab_key").expanduser(),)
    assert [(j.hostname, j.port, j.user) for j in end.jumps] == [("gate", 2200, "jumper"),
                                                                 ("10.0.0.1", 22, "ops")]
    given = resolve(HostSpec.model_validate({"host": "root@lab:22", "identity": "/k"}))
    assert (given.port, given.user, given.identities, given.identities_only) == \
        (22, "root", (Path("/k"),), True)
    assert resolve(parse_host("elsewhere")).hostname == "elsewhere"
    with pytest.raises(UserError, match="ProxyCommand.*use ProxyJump"):
        resolve(parse_host("old"))


def test_accept_new_host_keys_applies_to_every_host():
    hosts = merge_hosts([parse_host("a"), parse_host("b:2222")], [], accept_new_host_keys=True)
    assert [h.accept_new_host_key for h in hosts] == [True, True]
    assert not any(h.accept_new_host_key for h in merge_hosts([], ["a", "b"]))
    assert HostSpec.model_validate({"host": "a", "accept_new_host_key": True}).accept_new_host_key


@pytest.mark.timeout(60)
def test_a_host_alias_of_the_ssh_config_connects(servers, files):
    a = servers["a"].trust()
    (files / "ssh_config").write_text(alias("lab", a, f"User {getpass.getuser()}")
                                      + alias("lab-as-nobody", a, "User nosuchuser"))
    with SSHHost(spec("lab", files)) as host:
        assert host.label == "lab" and server_port(host) == a.port
    with pytest.raises(UserError, match="login refused for user nosuchuser"):
        SSHHost(spec("lab-as-nobody", files)).connect()
    # USER@ and :PORT given to the harness win over the file
    with SSHHost(spec(f"{getpass.getuser()}@lab-as-nobody", files)) as host:
        assert server_port(host) == a.port
    closed = free_port()
    with pytest.raises(UserError, match=f"host lab:{closed} .*connection refused.*port {closed}"):
        SSHHost(spec(f"lab:{closed}", files)).connect()


# ------------------------------------------------------------------ ProxyJump


@pytest.mark.timeout(60)
def test_proxyjump_goes_through_the_jump_host(files):
    """The target is reached through the jump host: when the jump host goes, so does it."""
    jump = make_sshd(files / "jump").start().trust()
    target = make_sshd(files / "target").start().trust()
    closed = free_port()
    (files / "ssh_config").write_text(
        alias("jump", jump) + alias("inner", target, "ProxyJump jump")
        + alias("nowhere", target, "ProxyJump jump").replace(f"Port {target.port}",
                                                             f"Port {closed}"))
    try:
        with SSHHost(spec("inner", files)) as host:
            assert server_port(host) == target.port
            jump.stop()
            deadline = time.monotonic() + 10
            while host.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not host.alive()
        jump.start()
        with pytest.raises(UserError, match=rf"host nowhere: jump host jump \(127\.0\.0\.1:"
                                            rf"{jump.port}\): cannot reach 127\.0\.0\.1:{closed}"):
            SSHHost(spec("nowhere", files)).connect()
    finally:
        jump.stop()
        target.stop()


@pytest.mark.timeout(60)
def test_a_proxyjump_chain_goes_through_each_jump_host(servers, files):
    a, b, c = (servers[n].trust() for n in "abc")
    (files / "ssh_config").write_text(alias("first", a) + alias("second", b)
                                      + alias("inner", c, "ProxyJump first,second"))
    with SSHHost(spec("inner", files)) as host:
        assert server_port(host) == c.port
        assert [ssh_port_of(jump) for jump in host._jumps] == [a.port, b.port]


# ------------------------------------------------------------------ host keys


@pytest.mark.timeout(60)
@pytest.mark.parametrize("known", ["ssh_known_hosts", "known_hosts"])
def test_a_host_key_that_differs_from_the_known_one_is_refused(servers, files, known):
    """Whichever file knows the host (the user's or the harness's), another key is refused
    with that file and line named, also when new keys may be accepted."""
    a, b = servers["a"], servers["b"]
    (files / known).write_text("# the lab\n" + b.known_hosts_line()
                               + b.known_hosts_line(f"[127.0.0.1]:{a.port}"))
    before = (files / known).read_text()
    with pytest.raises(UserError) as caught:
        SSHHost(spec(f"127.0.0.1:{a.port}", files, identity=str(a.client_key),
                     accept_new_host_key=True)).connect()
    message = str(caught.value)
    assert f"differs from the one known for [127.0.0.1]:{a.port} in {files / known} line 3" \
        in message and "\n" not in message
    # nothing recorded: the file as it was, the other one not written
    other = "known_hosts" if known == "ssh_known_hosts" else "ssh_known_hosts"
    assert (files / known).read_text() == before and not (files / other).exists()


@pytest.mark.timeout(60)
def test_a_hashed_known_host_is_recognised(servers, files):
    a = servers["a"]
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{a.port}")
    (files / "ssh_known_hosts").write_text(a.known_hosts_line(hashed))
    with SSHHost(spec(f"127.0.0.1:{a.port}", files, identity=str(a.client_key))) as host:
        assert server_port(host) == a.port
    assert not (files / "known_hosts").exists()


@pytest.mark.timeout(60)
def test_an_unknown_host_key_is_refused_unless_accepted_then_it_is_recorded(servers, files):
    a = servers["a"]
    fields = {"identity": str(a.client_key)}
    with pytest.raises(UserError, match=r"its host key \(ssh-ed25519 SHA256:\S+\) is not known "
                                        r"in .*--accept-new-host-keys"):
        SSHHost(spec(f"127.0.0.1:{a.port}", files, **fields)).connect()
    assert not (files / "known_hosts").exists()
    said: list[str] = []
    with SSHHost(spec(f"127.0.0.1:{a.port}", files, accept_new_host_key=True, **fields),
                 said.append) as host:
        assert server_port(host) == a.port
    assert len(said) == 1 and said[0].startswith(f"host 127.0.0.1:{a.port} (127.0.0.1:{a.port}): "
                                                 "new host key ssh-ed25519 SHA256:")
    assert said[0].endswith(f"accepted and recorded in {files / 'known_hosts'} line 1")
    assert (files / "known_hosts").read_text() == a.known_hosts_line()
    # known from now on: no flag needed, nothing said
    said.clear()
    with SSHHost(spec(f"127.0.0.1:{a.port}", files, **fields), said.append) as host:
        assert server_port(host) == a.port
    assert said == []


@pytest.mark.timeout(60)
def test_the_command_line_flag_accepts_a_new_host_key(servers, files, capsys):
    a = servers["a"]
    config = files / "lab.yaml"
    config.write_text(yaml.safe_dump({
        "name": "lab", "variants": ["baseline", "dataplane"],
        "disks": [{"path": str(files / "disk.img"), "size": "16M"}],
        "hosts": [a.host_yaml(files / "work")]}))
    assert run_cli(["hosts", "check", "--config", str(config)]) == 2
    refused = capsys.readouterr().err
    assert "is not known" in refused and "--accept-new-host-keys" in refused
    run_cli(["hosts", "check", "--config", str(config), "--accept-new-host-keys"])
    said = capsys.readouterr().err
    assert f"accepted and recorded in {files / 'known_hosts'} line 1" in " ".join(said.split())
    assert (files / "known_hosts").read_text() == a.known_hosts_line()
