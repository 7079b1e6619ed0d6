"""A throw-away PostgreSQL cluster for local runs and tests (Debian's ``postgresql`` package).

``initdb`` + ``pg_ctl`` in a private data folder, listening on 127.0.0.1 only (plus a Unix socket in
that folder), password authentication (scram-sha-256) with a random password. PostgreSQL refuses to
run as root, so when the caller is root the server runs as the ``postgres`` system user through
``runuser`` (the data folder is created under the temp dir and handed to that user).

Examples
--------
>>> from genexflow.stack.postgres import PostgresServer
>>> with PostgresServer() as pg:                     # doctest: +SKIP
...     pg.create_database("mlflow")
...     print(pg.url("mlflow"))    # postgresql://genexflow:***@127.0.0.1:<port>/mlflow
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess  # nosec B404 - fixed argv lists, never a shell
import tempfile
from pathlib import Path

from genexflow.stack._process import LOCALHOST, StackError, free_port

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl``: ``$GENEXFLOW_PG_BIN``, PATH, or Debian's newest
    ``/usr/lib/postgresql/<major>/bin``; None when PostgreSQL is not installed."""
    env = os.environ.get("GENEXFLOW_PG_BIN")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    majors = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return majors[-1].parent if majors else None


class PostgresServer:
    """A local PostgreSQL server in its own data folder.

    Parameters
    ----------
    base_dir : path, optional
        Folder for ``data/``, the socket and ``postgres.log``; default a new temp folder (when running
        as root, any folder given must be reachable by the ``postgres`` user).
    port : int, optional
        TCP port on 127.0.0.1; a free one when None.
    user : str
        Superuser role created by ``initdb``.
    max_connections : int
        ``max_connections`` (MLflow opens a pool per worker process).
    """

    def __init__(self, base_dir: str | Path | None = None, port: int | None = None, *,
                 user: str = "genexflow", max_connections: int = 100):
        self.base_dir = Path(base_dir).absolute() if base_dir else None
        self.port = port
        self.user = user
        self.max_connections = max_connections
        self.password = secrets.token_urlsafe(18)
        self._owned_dir = base_dir is None
        self._started = False

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy/libpq URL of ``database`` (password included)."""
        return f"postgresql://{self.user}:{self.password}@{LOCALHOST}:{self.port}/{database}"

    # -- lifecycle -----------------------------------------------------------------------
    def _runas(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise StackError("running as root and there is no 'postgres' user to run PostgreSQL as; "
                             "install Debian's postgresql package or run as a normal user") from exc
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", "postgres", "--"]

    def _run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self._runas(), *argv], capture_output=True, text=True, **kw)  # nosec B603
        if proc.returncode != 0:
            raise StackError(f"{Path(argv[0]).name} failed ({proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """``initdb`` (first time) and ``pg_ctl start``; waits until it accepts connections."""
        if self._started:
            return self
        bindir = find_pg_bin()
        if bindir is None:
            raise StackError("PostgreSQL binaries (initdb, pg_ctl) not found; "
                             "install them with `apt-get install -y postgresql` (or set GENEXFLOW_PG_BIN)")
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="genexflow-pg-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        self.base_dir.chmod(0o700)
        self.port = self.port or free_port()
        if not (self.data_dir / "PG_VERSION").exists():
            # The password reaches initdb through a 0600 file that we delete straight after.
            fd, pwfile = tempfile.mkstemp(dir=self.base_dir, prefix=".pw")
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            try:
                self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                           f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"])
            finally:
                Path(pwfile).unlink(missing_ok=True)
        else:
            raise StackError(f"{self.data_dir} already holds a cluster whose password this object does not "
                             "know; pass a fresh base_dir")
        opts = (f"-p {self.port} -k {self.base_dir} -c listen_addresses={LOCALHOST} "
                f"-c max_connections={self.max_connections} -c fsync=off -c full_page_writes=off")
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-o", opts, "-w", "-t", str(int(timeout)), "start"])
        self._started = True
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` (lower-case identifier) and return its URL."""
        if not _SAFE_NAME.match(name):
            raise StackError(f"database name {name!r} must be a lower-case identifier")
        # lazy: psycopg2 is only needed for a PostgreSQL store
        import psycopg2

        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')  # nosec B608 - name matched _SAFE_NAME
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; removes the data folder when this object created it."""
        if self._started:
            bindir = find_pg_bin()
            with contextlib.suppress(StackError):
                self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
            self._started = False
        if self._owned_dir and self.base_dir is not None and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, base_dir={str(self.base_dir)!r}, started={self._started})"
