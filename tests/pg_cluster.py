"""A throw-away PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, on a free port.

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
    """Start a private PostgreSQL server and yield a SQLAlchemy URL to a fresh database."""
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
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync")
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
            "-t", "60", "-o", options, "start")
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            try:
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(base, ignore_errors=True)
