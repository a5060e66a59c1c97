"""A Patroni cluster on loopback: etcd, PostgreSQL 15 nodes, synchronous replication.

Used by the failover suite (``tests/ha``) and by ``bench/failover.py``. Every piece is a
real process from Debian's packages (``postgresql``, ``patroni``, ``etcd-server``,
``pgbouncer``), listening on 127.0.0.1 only, under a temporary directory that is removed
at the end:

- :class:`Etcd`: one etcd member, the DCS that holds Patroni's leader lease.
- :class:`PatroniNode`: ``patroni`` with its own PostgreSQL; ``crash`` SIGKILLs the
  Patroni process and the whole PostgreSQL process group (the host is lost, its disk
  is not), ``start`` brings the node back, and Patroni rejoins it as a replica.
- :class:`PatroniCluster`: the lot, with a multi-host DSN for the bridge.
- :class:`PgBouncer`: pgbouncer in transaction pooling mode in front of one server.

PostgreSQL refuses to run as root, so under root every process runs as the ``postgres``
user that Debian's package creates. A missing binary is an error naming the package,
never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.services import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER, SUPERUSER_PASSWORD = "postgres", "ha-super-secret"
REPLICATOR, REPLICATOR_PASSWORD = "replicator", "ha-replication-secret"
SCOPE = "bridge-ha"
#: Patroni's timing: the leader lease lasts TTL seconds and is renewed every LOOP_WAIT;
#: a primary that dies is replaced at most TTL (+ one loop) seconds later.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 3


def require(binary: str, package: str) -> str:
    """The path of ``binary``, or an error saying which Debian package brings it."""
    found = shutil.which(binary) or next(
        (str(p) for p in (PG_BIN / binary, Path("/usr/sbin") / binary) if p.exists()), None
    )
    if found is None:
        raise RuntimeError(
            f"{binary} is missing: the failover suite needs Debian's {package} "
            f"(apt-get install {package})"
        )
    return found


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _owned(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    return path


def _env(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(HOME=str(home), PGPASSFILE=str(home / "pgpass"), PYTHONUNBUFFERED="1")
    return env


def _stop(proc: subprocess.Popen[bytes] | None, *, group: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Etcd:
    """One etcd member on loopback (the DCS that holds Patroni's leader lease)."""

    def __init__(self, root: Path) -> None:
        self.port, self._peer = free_port(), free_port()
        self._dir = _owned(root / "etcd")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require("etcd", "etcd-server")
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self._peer}"
        log = (self._dir / "etcd.log").open("ab")
        self._proc = subprocess.Popen(
            [
                binary,
                "--name=ha",
                f"--data-dir={self._dir / 'data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=ha={peer}",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env(self._dir),
            **_run_as(),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{client}/health", timeout=1) as answer,
            ):
                if json.loads(answer.read()).get("health") == "true":
                    return
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy:\n{self.log()}")

    def log(self) -> str:
        path = self._dir / "etcd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        _stop(self._proc, group=True)


class PatroniNode:
    """``patroni`` and the PostgreSQL 15 it manages; crash-able and restartable."""

    def __init__(self, root: Path, name: str, etcd_port: int, sync: dict[str, Any]) -> None:
        self.name = name
        self.port, self.rest_port = free_port(), free_port()
        self.home = _owned(root / name)
        self.data_dir = self.home / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        self.config_file = self.home / "patroni.yml"
        self.config_file.write_text(yaml.safe_dump(self._config(etcd_port, sync)))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.config_file, user.pw_uid, user.pw_gid)

    def _config(self, etcd_port: int, sync: dict[str, Any]) -> dict[str, Any]:
        return {
            "scope": SCOPE,
            "name": self.name,
            "log": {"level": "WARNING"},
            "restapi": {
                "listen": f"127.0.0.1:{self.rest_port}",
                "connect_address": f"127.0.0.1:{self.rest_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    # A replica further behind than this is never promoted.
                    "maximum_lag_on_failover": 1048576,
                    **sync,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "max_connections": 60,
                            "shared_buffers": "32MB",
                            "synchronous_commit": "on",
                            "fsync": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
                "pg_hba": [
                    f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                    "local all all trust",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.port}",
                "connect_address": f"127.0.0.1:{self.port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.home / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {"username": REPLICATOR, "password": REPLICATOR_PASSWORD},
                    "rewind": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                },
                "parameters": {"unix_socket_directories": str(self.home)},
            },
        }

    def start(self) -> None:
        binary = require("patroni", "patroni")
        require("postgres", "postgresql")
        log = (self.home / "patroni.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, str(self.config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env(self.home),
            **_run_as(),
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def crash(self) -> None:
        """SIGKILL Patroni and every PostgreSQL process of this node, as a lost host."""
        pid = self.postmaster_pid()
        _stop(self._proc, group=True)  # first, so that nothing restarts PostgreSQL
        if pid is None:
            return
        # Patroni detaches the postmaster (setsid) and every backend calls setsid too:
        # no process group holds them all, so the tree is collected first, then killed.
        with contextlib.suppress(psutil.Error):
            postmaster = psutil.Process(pid)
            if str(self.data_dir) not in " ".join(postmaster.cmdline()):
                return  # a stale pid file naming someone else's process
            tree = [postmaster, *postmaster.children(recursive=True)]
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(tree, timeout=10)

    def rest(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """A call to this node's Patroni REST API (GET, or PATCH with ``body``)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rest_port}/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "PATCH",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=3) as answer:
            return json.loads(answer.read())

    def log(self) -> str:
        path = self.home / "patroni.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class PatroniCluster:
    """etcd and ``size`` Patroni nodes; the first to bootstrap becomes the primary."""

    def __init__(self, size: int = 3, *, strict: bool = True) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bridge-ha-", dir="/tmp"))
        self.root.chmod(0o755)  # the postgres user walks into its own subdirectories
        self.etcd = Etcd(self.root)
        self.strict = strict
        sync = {
            "synchronous_mode": True,
            "synchronous_mode_strict": strict,
            "synchronous_node_count": 1,
        }
        self.nodes = [
            PatroniNode(self.root, f"pg{i + 1}", self.etcd.port, sync) for i in range(size)
        ]

    def start(self, timeout: float = 120.0) -> None:
        self.etcd.start()
        self.nodes[0].start()  # one node bootstraps; the others clone it
        self.wait_primary(timeout)
        for node in self.nodes[1:]:
            node.start()
        self.wait_members(len(self.nodes), timeout, sync=True)

    def dsn(self, database: str = "postgres", *, user: str = SUPERUSER) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return (
            f"postgresql://{user}:{SUPERUSER_PASSWORD}@{hosts}/{database}"
            "?target_session_attrs=read-write"
        )

    def node_dsn(self, node: PatroniNode, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{node.port}/{database}"

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster, from any node that answers."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(OSError, ValueError):
                members: list[dict[str, Any]] = node.rest("cluster")["members"]
                return members
        return []

    def primary(self) -> PatroniNode | None:
        for member in self.members():
            if member["role"] == "leader" and member["state"] == "running":
                return next(n for n in self.nodes if n.name == member["name"])
        return None

    def wait_primary(self, timeout: float, *, not_: PatroniNode | None = None) -> PatroniNode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.primary()
            if node is not None and node is not not_:
                return node
            time.sleep(0.2)
        raise RuntimeError(f"no primary within {timeout:.0f} s:\n{self.logs()}")

    def wait_members(self, count: int, timeout: float, *, sync: bool) -> None:
        """Until ``count`` members run, one a leader and (``sync``) one a sync standby."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            members = self.members()
            running = [m for m in members if m["state"] in ("running", "streaming")]
            roles = {m["role"] for m in running}
            if (
                len(running) >= count
                and "leader" in roles
                and (not sync or "sync_standby" in roles)
            ):
                return
            time.sleep(0.3)
        raise RuntimeError(
            f"the cluster did not reach {count} running members within {timeout:.0f} s: "
            f"{self.members()}\n{self.logs()}"
        )

    def role_of(self, node: PatroniNode) -> str:
        for member in self.members():
            if member["name"] == node.name:
                return f"{member['role']} ({member['state']})"
        return "absent"

    def wait_member_streaming(self, node: PatroniNode, timeout: float) -> None:
        """Until ``node`` runs as a replica again (after a restart of a lost primary)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members():
                if (
                    member["name"] == node.name
                    and member["role"] in ("replica", "sync_standby")
                    and member["state"] in ("running", "streaming")
                ):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{node.name} did not rejoin within {timeout:.0f} s:\n{self.logs()}")

    def set_synchronous(self, on: bool, timeout: float = 30.0) -> None:
        """Turn synchronous replication on or off (Patroni's dynamic configuration)."""
        primary = self.wait_primary(timeout)
        primary.rest(
            "config", {"synchronous_mode": on, "synchronous_mode_strict": on and self.strict}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            roles = {m["role"] for m in self.members()}
            if ("sync_standby" in roles) == on:
                # The DCS says so; PostgreSQL's synchronous_standby_names follows on the
                # primary's next loop: give it that loop.
                time.sleep(LOOP_WAIT + 1)
                return
            time.sleep(0.2)
        raise RuntimeError(f"synchronous_mode={on} did not take effect: {self.members()}")

    def logs(self) -> str:
        parts = [f"--- etcd\n{self.etcd.log()}"]
        parts += [f"--- {n.name}\n{n.log()}" for n in self.nodes]
        return "\n".join(parts)

    def close(self) -> None:
        for node in self.nodes:
            node.crash()
        self.etcd.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def patroni_cluster(size: int = 3, *, strict: bool = True) -> Iterator[PatroniCluster]:
    cluster = PatroniCluster(size, strict=strict)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


async def in_thread(func: Any, *args: Any) -> Any:
    """Run one of the blocking cluster calls without stopping the event loop."""
    return await asyncio.to_thread(func, *args)


class Postgres15:
    """A standalone PostgreSQL 15 from Debian on a loopback TCP port (password login)."""

    def __init__(self) -> None:
        require("initdb", "postgresql")
        self.port = free_port()
        self.home = _owned(Path(tempfile.mkdtemp(prefix="bridge-pg15-", dir="/tmp")))
        self.data_dir = self.home / "data"
        self.log = self.home / "postgres.log"

    def _run(self, *args: str) -> None:
        subprocess.run(
            list(args),
            check=True,
            capture_output=True,
            env=_env(self.home),
            timeout=120,
            **_run_as(),
        )

    def start(self) -> None:
        pwfile = self.home / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop")
        shutil.rmtree(self.home, ignore_errors=True)


class PgBouncer:
    """pgbouncer in transaction pooling mode on a free loopback port, in front of one server."""

    def __init__(self, host: str, port: int, user: str, password: str, *, pool_size: int = 2):
        require("pgbouncer", "pgbouncer")
        self.port = free_port()
        self.home = _owned(Path(tempfile.mkdtemp(prefix="bridge-pgb-", dir="/tmp")))
        (self.home / "users.txt").write_text(f'"{user}" "{password}"\n')
        (self.home / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.home}\n"
            # The plain password in the auth file lets pgbouncer log in to PostgreSQL
            # with SCRAM on the client's behalf.
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.home / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            # asyncpg sends this at connect; pgbouncer refuses unknown startup parameters.
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.home / 'pgbouncer.log'}\n"
        )
        if os.geteuid() == 0:
            user_info = pwd.getpwnam("postgres")
            for path in self.home.iterdir():
                os.chown(path, user_info.pw_uid, user_info.pw_gid)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [require("pgbouncer", "pgbouncer"), str(self.home / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=_env(self.home),
            **_run_as(),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                import socket  # noqa: PLC0415

                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")

    def log(self) -> str:
        path = self.home / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        _stop(self._proc, group=True)
        shutil.rmtree(self.home, ignore_errors=True)
