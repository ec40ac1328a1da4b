"""The DB environment's MySQL-compatible engine: a throw-away MariaDB server, for AgentBench fidelity.

AgentBench runs its DB tasks on MySQL 8; SQLite cannot imitate everything MySQL does (case- and
accent-insensitive `=`, backslash escapes in strings, digit-leading names, `INSERT ... SET`,
integer vs decimal division, strict-mode errors), so gold SQL written for MySQL can leave a
different table. This engine runs the same statements on a real server:

* the server is Debian's `mariadb-server` (`mariadbd` and `mariadb-install-db`; install with
  `apt-get install mariadb-server`), started on first use in a fresh temporary data directory,
  with networking off (`--skip-networking`: a unix socket inside that directory is the only way
  in) and no option files read; it is stopped and its directory removed when the process exits
  (or at `MariaDBServer.stop()`);
* it is configured like AgentBench's `mysql:8`: MySQL 8's default `sql_mode` (strict),
  `utf8mb4` with an accent- and case-insensitive Unicode collation, `group_concat_max_len` 1024
  (MariaDB's default is 1 MiB: AgentBench's hash of a large table would differ);
* each episode gets its own database, built by an administrative connection (opened for each
  administrative step, so that a live episode holds one connection: the agent's) exactly as AgentBench
  builds it (`CREATE TABLE IF NOT EXISTS` with TEXT columns, one `INSERT` of `str(v)` values); the
  agent's SQL runs as the episode's own user, with rights on the episode's database only (no FILE,
  PROCESS or SUPER privilege, no CREATE DATABASE: no files, no other episode's database, no server
  settings), one statement per call, its result limited by `sql_select_limit` and its time by
  `max_statement_time` and, since the agent can lift that (`SET STATEMENT max_statement_time=0
  FOR ...`), by a watchdog that kills the statement from the administrative side (`KILL QUERY`);
* a connection the agent loses (`KILL CONNECTION_ID()`, a server-side timeout) is reopened for
  the next statement, with the episode's settings.

The Python driver is PyMySQL (`pip install 'agentflan[mysql]'`).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import hashlib
import itertools
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from agentflan.envs.db_engine import (
    Engine,
    Result,
    TableBuildError,
    TableStateError,
    check_widths,
    quote_name,
    table_rows,
)
from agentflan.errors import AgentflanError, ConfigError, MissingDependencyError, require

MYSQL8_SQL_MODE = ("ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                   "NO_ENGINE_SUBSTITUTION")
COLLATIONS = ("utf8mb4_uca1400_ai_ci", "utf8mb4_unicode_520_ci", "utf8mb4_general_ci")
"""Closest to MySQL 8's `utf8mb4_0900_ai_ci` first (UCA-based, accent- and case-insensitive)."""
WATCHDOG_GRACE_S = 0.5
"""How long past the time limit the watchdog waits before it kills a statement the server let run."""
MAX_CONNECTIONS = 1024
"""The server's connection limit: a live episode holds one (the agent's), administrative steps and
watchdogs open one for a moment, and a lockstep run keeps up to 4 x the batch size live."""
ER_CON_COUNT_ERROR = 1040  # "Too many connections"


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin")
                                            if (p := Path(d) / name).is_file()), None)
        if found:
            return found
    return None


def server_binaries() -> tuple[str, str] | None:
    """`(mariadbd, mariadb-install-db)` if a MariaDB server is installed, else None."""
    server, install = _find("mariadbd", "mysqld"), _find("mariadb-install-db", "mysql_install_db")
    return (server, install) if server and install else None


def _qp(name: str) -> str:
    """A quoted identifier for a statement with parameters: PyMySQL formats those with `%`, so it is doubled."""
    return quote_name(name).replace("%", "%%")


class MariaDBServer:
    """A private MariaDB server in a temporary directory (see the module docstring)."""

    _shared: ClassVar[MariaDBServer | None] = None

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.collation = COLLATIONS[-1]
        self.live: set[str] = set()  # the episodes' names in use
        self.names_lock = threading.Lock()

    def claim(self, key: str) -> str:
        """An episode's name: `<digest of key>_<k>` with the least k no live episode has (a task
        played alone is always `_0`, so its database and user names, which the agent sees in
        `SELECT DATABASE()` and in error messages, are the same in every run and in `score`)."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        with self.names_lock:
            k = next(k for k in itertools.count() if f"{digest}_{k}" not in self.live)
            self.live.add(f"{digest}_{k}")
        return f"{digest}_{k}"

    def release(self, name: str) -> None:
        with self.names_lock:
            self.live.discard(name)

    @classmethod
    def shared(cls) -> MariaDBServer:
        """The process's server, started on first use and stopped at exit."""
        if cls._shared is None or not cls._shared.running:
            server = cls()
            server.start()
            cls._shared = server
        return cls._shared

    def __enter__(self) -> MariaDBServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def socket(self) -> str:
        assert self.dir is not None
        return str(self.dir / "mysqld.sock")

    def start(self, timeout_s: float = 60.0) -> None:
        require("pymysql", "mysql")
        binaries = server_binaries()
        if binaries is None:
            raise MissingDependencyError("the mysql engine needs a MariaDB server (mariadbd, mariadb-install-db): "
                                         "apt-get install mariadb-server")
        mariadbd, install_db = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="agentflan-mariadb-"))
        atexit.register(self.stop)  # whatever happens next, the server and its folder go with the process
        data, user = self.dir / "data", getpass.getuser()
        (self.dir / "files").mkdir()
        try:
            subprocess.run([install_db, "--no-defaults", f"--datadir={data}", f"--user={user}",
                            "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
                           check=True, capture_output=True, timeout=timeout_s)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            out = getattr(e, "stderr", b"") or b""
            self.stop()
            raise AgentflanError(f"mariadb-install-db failed: {out.decode(errors='replace')[-800:]}") from e
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={self.socket}", "--skip-networking",
             f"--pid-file={self.dir / 'mysqld.pid'}", f"--user={user}", f"--log-error={self.dir / 'error.log'}",
             f"--tmpdir={self.dir}", f"--secure-file-priv={self.dir / 'files'}", "--local-infile=0",
             "--skip-log-bin", "--skip-symbolic-links", "--innodb-buffer-pool-size=32M",
             f"--max-connections={MAX_CONNECTIONS}",
             "--character-set-server=utf8mb4", f"--sql-mode={MYSQL8_SQL_MODE}", "--group-concat-max-len=1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn = self.connect()
                break
            except Exception as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "error.log").read_text(errors="replace")[-1500:] if (
                        self.dir / "error.log").exists() else ""
                    self.stop()
                    raise AgentflanError(f"the MariaDB server did not start ({e}); its log ends:\n{log}") from e
                time.sleep(0.1)
        with conn.cursor() as cur:
            cur.execute("SHOW COLLATION WHERE Charset = 'utf8mb4'")
            known = {row[0] for row in cur.fetchall()}
            self.collation = next(c for c in COLLATIONS if c in known)
        conn.close()

    def connect(self, database: str | None = None, user: str = "root", password: str = "") -> Any:
        """A connection (autocommit), as root unless `user` is given.

        Raises:
            AgentflanError: The server has `MAX_CONNECTIONS` open (too many episodes at once).
        """
        import pymysql

        try:
            return pymysql.connect(unix_socket=self.socket, user=user, password=password, database=database,
                                   charset="utf8mb4", autocommit=True, connect_timeout=10, read_timeout=60,
                                   write_timeout=60)
        except pymysql.err.OperationalError as e:
            if e.args and e.args[0] == ER_CON_COUNT_ERROR:
                raise AgentflanError(f"the MariaDB server refused a connection: {MAX_CONNECTIONS} are open, one "
                                     "per episode in play; play fewer episodes at once (a smaller --batch-size)") from None
            raise

    def stop(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if MariaDBServer._shared is self:
            MariaDBServer._shared = None


class MySQLEngine(Engine):
    """One episode database on the shared MariaDB server."""

    name: ClassVar[str] = "mysql"

    def __init__(self, server: MariaDBServer | None = None, sql_mode: str | None = None, key: str = "") -> None:
        """
        Args:
            server: The server (default: the process's shared one).
            key: What names the episode's database and user (the task's id): the same key gives the
                same names in every run (`MariaDBServer.claim`), as long as no live episode has them.
            sql_mode: The episode's `sql_mode` (default: MySQL 8's, strict, what AgentBench's
                `mysql:8` server runs). AgentBench's `answer_md5` labels were evidently computed
                without strict mode (two gold UPDATEs of `standard.jsonl` that compare a text
                column with a number fail in strict mode, yet their labels show the update made):
                pass `"NO_ENGINE_SUBSTITUTION"` to reproduce labels rather than the evaluation.
        """
        self.server = server or MariaDBServer.shared()
        self.sql_mode = sql_mode
        self._name, self._closed = self.server.claim(key), False
        self.database = f"dbbench_{self._name}"
        self.user, self._password = f"ep_{self._name}", secrets.token_hex(16)
        try:
            with self._admin(database=False) as admin, admin.cursor() as cur:
                # what an earlier episode of this name left behind if its close failed
                cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                cur.execute(f"DROP USER IF EXISTS '{self.user}'@'localhost'")
                cur.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE {self.server.collation}")
                cur.execute(f"CREATE USER '{self.user}'@'localhost' IDENTIFIED BY %s", (self._password,))
                # this database only (`_` is a wildcard in a grant: escaped, or `dbbenchX1Y2` would be
                # the agent's to create); no FILE, PROCESS, SUPER, nothing on mysql.* or other episodes
                pattern = self.database.replace("_", "\\_")
                cur.execute(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{self.user}'@'localhost'")
        except BaseException:
            self.server.release(self._name)
            raise
        self.agent = self._agent_connection()

    @contextlib.contextmanager
    def _admin(self, database: bool = True) -> Iterator[Any]:
        """A root connection for one administrative step (in the episode's database), then closed."""
        conn = self.server.connect(self.database if database else None)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _agent_connection(self) -> Any:
        import pymysql

        conn = self.server.connect(self.database, user=self.user, password=self._password)
        if self.sql_mode is not None:
            try:
                with conn.cursor() as cur:
                    cur.execute("SET SESSION sql_mode = %s", (self.sql_mode,))
            except pymysql.err.MySQLError as e:
                conn.close()
                self.close()
                raise ConfigError(f"sql_mode {self.sql_mode!r}: MariaDB refused it ({_message(e)})") from None
        return conn

    def build(self, table: dict[str, Any]) -> None:
        import pymysql

        check_widths(table)
        name, cols = table["name"], [c["name"] for c in table["columns"]]
        rows = table_rows(table)
        try:
            with self._admin() as admin, admin.cursor() as cur:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {quote_name(name)} ({','.join(f'{quote_name(c)} TEXT' for c in cols)})")
                if rows:
                    marks = ",".join("(" + ",".join(["%s"] * len(cols)) + ")" for _ in rows)
                    cur.execute(f"INSERT INTO {_qp(name)} ({','.join(_qp(c) for c in cols)}) VALUES {marks}",
                                [v for row in rows for v in row])
        except pymysql.err.MySQLError as e:
            raise TableBuildError(f"mysql: {_message(e)}") from e

    def execute(self, sql: str, max_rows: int, time_limit_s: float) -> Result:
        import pymysql

        watchdog = _Watchdog(self.server, self.agent.thread_id(), time_limit_s + WATCHDOG_GRACE_S)
        result: Result | None = None
        try:
            with self.agent.cursor() as cur:
                # set before every statement: the agent may have changed its session's limits
                cur.execute(f"SET SESSION max_statement_time = {time_limit_s:g}, sql_select_limit = {max_rows + 1}")
                watchdog.start()
                cur.execute(sql)
                if cur.description is None:
                    result = Result(rowcount=max(cur.rowcount, 0))
                else:
                    rows = [tuple(r) for r in cur.fetchall()]
                    result = Result(rows=rows[:max_rows], more=len(rows) > max_rows)
        except (pymysql.err.MySQLError, OSError) as e:
            result = Result(error=_message(e))
        finally:
            killed = watchdog.stop()
        if (result is None or result.error is not None) and not self._alive():
            # the agent lost its connection (a lost connection is always an error): a fresh one for the next call
            with contextlib.suppress(Exception):
                self.agent.close()
            self.agent = self._agent_connection()
            return Result(error=f"connection lost ({result.error if result and result.error else 'closed'}); "
                                "reconnected for the next statement")
        if killed:  # the statement outlived the limit the agent tried to lift: stopped from outside
            return Result(error=f"statement stopped after the {time_limit_s:g} s time limit")
        assert result is not None  # set by the statement, or by its error
        return result

    def _alive(self) -> bool:
        try:
            self.agent.ping(reconnect=False)
        except Exception:
            return False
        return True

    def table_hash(self, table: str, columns: list[str]) -> str:
        """AgentBench's own hash query, run on the server, printed as mysql-connector's
        `str(cursor.fetchall())` prints it (a list of tuples)."""
        import pymysql

        cols = ",".join(quote_name(c) for c in columns)
        try:
            with self._admin() as admin, admin.cursor() as cur:
                cur.execute("SET SESSION group_concat_max_len = 1024")
                cur.execute(f"select md5(group_concat(rowhash order by rowhash)) as hash from( SELECT "
                            f"substring(MD5(CONCAT_WS(',', {cols})), 1, 5) AS rowhash FROM {quote_name(table)}) "
                            "as sub;")
                return str(list(cur.fetchall()))
        except pymysql.err.MySQLError as e:  # the agent dropped or renamed the table (or its database)
            raise TableStateError(f"mysql: {_message(e)}") from e

    def close(self) -> None:
        if self._closed:  # once: the name may belong to a later episode by now
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.agent.close()
        with contextlib.suppress(Exception), self._admin(database=False) as admin, admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
            cur.execute(f"DROP USER IF EXISTS '{self.user}'@'localhost'")
        self.server.release(self._name)


class _Watchdog:
    """Kills the agent's running statement (`KILL QUERY`, from a root connection of its own) once it
    has run `after_s` seconds; `stop()` says whether it did. The lock orders a kill before the
    statement's end is noted, so a kill never reaches the agent's next statement."""

    def __init__(self, server: MariaDBServer, thread_id: int, after_s: float) -> None:
        self.server, self.thread_id = server, thread_id
        self.lock = threading.Lock()
        self.done = self.killed = False
        self.timer = threading.Timer(after_s, self._kill)
        self.timer.daemon = True

    def start(self) -> None:
        self.timer.start()

    def _kill(self) -> None:
        with self.lock:
            if self.done:
                return
            with contextlib.suppress(Exception), self.server.connect() as conn, conn.cursor() as cur:
                cur.execute(f"KILL QUERY {int(self.thread_id)}")
                self.killed = True

    def stop(self) -> bool:
        self.timer.cancel()
        with self.lock:
            self.done = True
        return self.killed


def _die_with_parent() -> None:
    """In the server's process before exec: on Linux, be sent SIGTERM when the process that started it
    dies, even by SIGKILL (atexit handlers do not run then)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _message(e: Exception) -> str:
    """A server error as mysql-connector prints it (`1064 (42000): ...` without the SQLSTATE)."""
    args: tuple[Any, ...] = tuple(getattr(e, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[0]}: {args[1]}"
    return str(e)
