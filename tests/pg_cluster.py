"""A throw-away PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, on a free port.

The server asks for a password on TCP (scram-sha-256), as a real one does, so that the tests
use the README's URL form ``postgresql://user:password@host:port/database`` and can check the
wrong-password error; the superuser connects only through the cluster's private socket.
Used by the ``postgres``-marked tests. Without the server binaries the tests skip, unless the
environment sets FASTTRICKS_REQUIRE_POSTGRES=1 (CI does), which turns the skip into a failure.
PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` system
user that the distribution package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE_ENV = "FASTTRICKS_REQUIRE_POSTGRES"
USER = "tuner"
PASSWORD = "tuner-Secret-42"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, or the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu keep them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += glob.glob("/usr/pgsql-*/bin") + glob.glob("/usr/local/pgsql/bin")
    for folder in candidates:
        if os.access(Path(folder) / "initdb", os.X_OK) and os.access(Path(folder) / "pg_ctl",
                                                                      os.X_OK):
            return Path(folder)
    return None


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when CI requires PostgreSQL."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1 requires the PostgreSQL tests to run)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demote(uid: int, gid: int):
    def preexec() -> None:
        os.setgid(gid)
        os.setuid(uid)

    return preexec


@contextmanager
def postgres_cluster(database: str = "fasttricks_test") -> Iterator[str]:
    """Start a private PostgreSQL server and yield ``postgresql://tuner:<password>@127.0.0.1:
    <port>/<database>``, a fresh database owned by that user."""
    bindir = find_postgres_bin()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                    "apt-get install postgresql")
    try:
        import psycopg2
    except ImportError:
        unavailable("psycopg2 is not installed (pip install psycopg2-binary)")
    base = Path(tempfile.mkdtemp(prefix="fasttricks-pg-"))
    preexec = None
    env = dict(os.environ, LC_ALL="C", LANG="C")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            unavailable("running as root and there is no 'postgres' system user to run the "
                        "server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        preexec = _demote(user.pw_uid, user.pw_gid)
        env["HOME"] = str(base)
    data = base / "data"
    port = _free_port()

    def run(*cmd: str) -> None:
        result = subprocess.run(cmd, cwd=base, env=env, preexec_fn=preexec,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "--auth-local=trust",
            "--auth-host=scram-sha-256", "-U", "postgres",
            "-E", "UTF8", "--no-sync")
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
            "-t", "60", "-o", options, "start")
        started = True
        # The superuser (trusted on the private socket) makes a password user that owns the
        # test databases, the way a server admin would.
        conn = psycopg2.connect(host=str(base), port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
            cur.execute(f'CREATE DATABASE "{database}" OWNER {USER}')
        conn.close()
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            try:
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(base, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """Create database ``name`` as the URL's user (who may create databases); return its URL."""
    import psycopg2

    rest = url.split("://", 1)[1]
    credentials, location = rest.rsplit("@", 1)
    user, password = credentials.split(":", 1)
    hostport = location.split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    conn = psycopg2.connect(host=host, port=int(port), user=user, password=password,
                            dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"
