"""A private, throw-away Postfix in front of a content filter, for end-to-end tests.

The Debian ``postfix`` package runs from a directory of its own (config, queue,
data, maillog) on loopback high ports, without touching ``/etc/postfix`` or the
system queue, as the after-queue content filter of Postfix's FILTER_README::

    test client -> smtpd (content_filter) -> queue -> smtp-optgate -> filter_port
    filter (optgate) -> reinject smtpd (no filter) -> queue -> relayhost (a sink)

The optgate-specific lines of ``main.cf`` and ``master.cf`` are read from
``deploy/postfix/*.snippet`` (what the deployment guide ships) with the
production ports replaced, so the tests exercise exactly the documented
configuration.  The rest follows ``bench/postfix_relay.sh`` (shared workspace).

Needs root: the master runs as root and its daemons drop to user ``postfix``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

POSTFIX_COMMAND = Path("/usr/sbin/postfix")
POSTQUEUE_COMMAND = Path("/usr/sbin/postqueue")
POSTCONF_COMMAND = Path("/usr/sbin/postconf")
SNIPPET_DIR = Path(__file__).resolve().parents[2] / "deploy" / "postfix"
LOOPBACK = "127.0.0.1"

# The production addresses written in the snippets (SPEC.md: optgate listens on
# 127.0.0.1:10025 and relays to 127.0.0.1:10026).
SNIPPET_FILTER_DESTINATION = "[127.0.0.1]:10025"
SNIPPET_REINJECT_LISTENER = "127.0.0.1:10026"
SNIPPET_SUBMISSION_SERVICE = re.compile(r"^submission(?=\s+inet\s)")

# Queue subdirectories that hold messages (defer/, bounce/, trace/ hold logs).
MESSAGE_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Settings that only make sense for a test instance: retry a message the filter
# deferred (4xx) within a second or two instead of after five minutes.
TEST_RETRY_SETTINGS: Mapping[str, str] = {
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
    "queue_run_delay": "1s",
}

# master.cf services every instance needs (chroot column "n" everywhere: there
# is no chroot jail to populate).  Verified with Debian 12's Postfix 3.7.
BASE_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """The private Postfix could not be configured, started or stopped."""


@dataclass(frozen=True)
class PostfixPorts:
    """Loopback ports of one private Postfix and its neighbours."""

    smtpd: int  # where a test client submits mail (smtpd with content_filter)
    filter_port: int  # where Postfix hands mail to the content filter (optgate)
    reinject: int  # Postfix's reinjection smtpd (no content_filter), optgate's next hop
    relayhost: int  # where Postfix finally delivers everything (a test sink)

    @classmethod
    def pick(cls) -> PostfixPorts:
        """Four distinct free loopback ports."""
        smtpd, filter_port, reinject, relayhost = free_ports(4)
        return cls(smtpd=smtpd, filter_port=filter_port, reinject=reinject, relayhost=relayhost)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    return free_ports(1)[0]


def postfix_available() -> bool:
    """True when the Postfix package is installed and we are root."""
    if os.geteuid() != 0 or not POSTFIX_COMMAND.is_file():
        return False
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return False
    return True


def daemon_directory() -> Path:
    """Where Postfix's daemons (master, smtpd, ...) are installed."""
    result = subprocess.run(  # noqa: S603 (a fixed Postfix program, our own arguments)
        [str(POSTCONF_COMMAND), "-h", "-d", "daemon_directory"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = result.stdout.strip()
    return Path(found) if result.returncode == 0 and found else Path("/usr/lib/postfix/sbin")


# --- configuration ---------------------------------------------------------


def _substitute(text: str, pattern: re.Pattern[str], replacement: str, *, expected: int) -> str:
    """Replace ``pattern`` on non-comment lines; insist on ``expected`` hits."""
    hits = 0
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):
            line, count = pattern.subn(replacement, line)
            hits += count
        lines.append(line)
    if hits != expected:
        raise PostfixError(
            f"snippet drifted: {pattern.pattern!r} found {hits} times, expected {expected}"
        )
    return "".join(lines)


def _set_parameters(main_cf: str, parameters: Mapping[str, str]) -> str:
    """Set main.cf ``parameters``: replace existing definitions, append the rest."""
    remaining = dict(parameters)
    lines = []
    for line in main_cf.splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+)\s*=", line)
        if match and match.group(1) in parameters:
            name = match.group(1)
            if name not in remaining:
                continue  # a second definition of an overridden parameter
            line = f"{name} = {remaining.pop(name)}"
        lines.append(line)
    lines.extend(f"{name} = {value}" for name, value in remaining.items())
    return "\n".join(lines) + "\n"


def render_master_cf(ports: PostfixPorts, snippet_dir: Path = SNIPPET_DIR) -> str:
    """master.cf of a test instance: base services plus the deployment snippet."""
    snippet = (snippet_dir / "master.cf.snippet").read_text()
    snippet = _substitute(
        snippet, SNIPPET_SUBMISSION_SERVICE, f"{LOOPBACK}:{ports.smtpd}", expected=1
    )
    snippet = _substitute(
        snippet,
        re.compile(re.escape(SNIPPET_FILTER_DESTINATION)),
        f"[{LOOPBACK}]:{ports.filter_port}",
        expected=1,
    )
    snippet = _substitute(
        snippet,
        re.compile("^" + re.escape(SNIPPET_REINJECT_LISTENER) + r"(?=\s)"),
        f"{LOOPBACK}:{ports.reinject}",
        expected=1,
    )
    return BASE_MASTER_CF + snippet


def render_main_cf(
    ports: PostfixPorts,
    directory: Path,
    *,
    daemons: Path,
    extra: Mapping[str, str] | None = None,
    snippet_dir: Path = SNIPPET_DIR,
) -> str:
    """main.cf of a test instance living in ``directory``."""
    base = f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
daemon_directory = {daemons}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.optgate.test
mydomain = optgate.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
relayhost = [{LOOPBACK}]:{ports.relayhost}
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
maillog_file = {directory}/maillog
maillog_file_prefixes = {directory}
"""
    snippet = (snippet_dir / "main.cf.snippet").read_text()
    # The snippet names the filter only in a comment; keep even that truthful.
    snippet = snippet.replace(SNIPPET_FILTER_DESTINATION, f"[{LOOPBACK}]:{ports.filter_port}")
    return _set_parameters(base + snippet, {**TEST_RETRY_SETTINGS, **(extra or {})})


# --- processes ---------------------------------------------------------------


# Runs the master as its child and is a "child subreaper" (prctl), so the
# daemons the master leaves behind when it exits are re-parented to it and
# reaped at once; it exits (with the master's status) when all of them are
# gone.  SIGTERM is passed on to the master, and so is the death of the test
# process (no orphaned Postfix after a killed pytest).  SIGINT (^C in pytest's
# terminal) is ignored: the test's clean-up stops the instance.
_REAPER = """\
import contextlib, ctypes, os, signal, sys, time
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
parent = os.getppid()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
master = os.fork()
if master == 0:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.execv(sys.argv[1], sys.argv[1:])
def stop_master(*_):
    with contextlib.suppress(ProcessLookupError):
        os.kill(master, signal.SIGTERM)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, stop_master)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
status = 1
while True:
    try:
        pid, wait_status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == master:
        status = os.waitstatus_to_exitcode(wait_status)
    elif pid == 0:
        if os.getppid() != parent:
            parent = os.getppid()
            stop_master()
        time.sleep(0.02)
sys.exit(status if status >= 0 else 128 - status)
"""


def _process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat_line = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parens
        fields = stat_line[stat_line.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _smtp_greets(port: int) -> bool:
    """True when an SMTP server on ``port`` answers with a 220 greeting."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            greeting = sock.makefile("rb").readline()
            if greeting.startswith(b"220"):
                sock.sendall(b"QUIT\r\n")
                return True
    except OSError:
        pass
    return False


def _reachable_by_user(path: Path, user: str) -> bool:
    """Can ``user`` traverse every directory down to ``path`` (mode bits only)?"""
    entry = pwd.getpwnam(user)
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not readable)"


class PostfixInstance:
    """A running private Postfix (see :func:`private_postfix`)."""

    def __init__(self, directory: Path, ports: PostfixPorts) -> None:
        self.directory = directory
        self.ports = ports
        self.config_dir = directory / "etc"
        self.queue_dir = directory / "queue"
        self.maillog_path = directory / "maillog"
        self.master_log_path = directory / "master.log"
        self._env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        self._process: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    # -- inspection ---------------------------------------------------------

    def maillog(self) -> str:
        """Everything Postfix logged so far (``maillog_file``, via postlogd)."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue_files(self) -> list[Path]:
        """Messages in the queue (maildrop, incoming, active, deferred, hold)."""
        files: list[Path] = []
        for name in MESSAGE_QUEUES:
            for root, _dirs, names in os.walk(self.queue_dir / name):
                files.extend(Path(root, n) for n in names)
        return files

    def queue_empty(self) -> bool:
        return not self.queue_files()

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Wait until every message left the queue; TimeoutError with details if not."""
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Postfix queue not empty after {timeout}s:\n{self.postqueue()}\n"
                    f"--- maillog (tail) ---\n{_tail(self.maillog_path)}"
                )
            time.sleep(0.05)

    def postqueue(self, *args: str) -> str:
        """Output of ``postqueue -c CONFIG ARGS`` (default ``-p``, the queue listing)."""
        result = subprocess.run(  # noqa: S603 (a fixed Postfix program, our own arguments)
            [str(POSTQUEUE_COMMAND), "-c", str(self.config_dir), *(args or ("-p",))],
            capture_output=True,
            text=True,
            env=self._env,
            check=False,
        )
        return result.stdout + result.stderr

    def flush(self) -> None:
        """Retry deferred mail now (``postqueue -f``)."""
        self.postqueue("-f")

    # -- life cycle ---------------------------------------------------------

    def _configure(
        self, daemons: Path, extra_main: Mapping[str, str] | None, extra_master: str
    ) -> None:
        self.directory.chmod(0o755)
        self.config_dir.mkdir()
        self.queue_dir.mkdir()
        data_dir = self.directory / "data"
        data_dir.mkdir()
        shutil.chown(data_dir, user="postfix")
        main_cf = render_main_cf(self.ports, self.directory, daemons=daemons, extra=extra_main)
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(render_master_cf(self.ports) + extra_master)
        # Postfix re-reads a config file until it is older than the current
        # second (~2 s of sleeping for a freshly written file): backdate them.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))
        # creates the queue directories with Postfix's own ownership rules
        check = subprocess.run(  # noqa: S603 (a fixed Postfix program, our own arguments)
            [str(POSTFIX_COMMAND), "-c", str(self.config_dir), "check"],
            capture_output=True,
            text=True,
            env=self._env,
            check=False,
        )
        if check.returncode != 0:
            raise PostfixError(f"postfix check failed:\n{check.stdout}{check.stderr}")

    def _start(self, daemons: Path, timeout: float) -> None:
        with self.master_log_path.open("wb") as master_log:
            # Without -w the master stays in the foreground (what `postfix
            # start-fg` runs when not PID 1).  It makes itself a session
            # leader, so its daemons share its process group.
            self._process = subprocess.Popen(  # noqa: S603 (a fixed Postfix program, our own arguments)
                [
                    sys.executable,
                    "-c",
                    _REAPER,
                    str(daemons / "master"),
                    "-c",
                    str(self.config_dir),
                    "-s",
                ],
                stdin=subprocess.DEVNULL,
                stdout=master_log,
                stderr=subprocess.STDOUT,
                env=self._env,
            )
        deadline = time.monotonic() + timeout
        while not _smtp_greets(self.ports.smtpd):
            status = self._process.poll()
            if status is not None:
                raise PostfixError(
                    f"postfix master exited with status {status}:\n"
                    f"{_tail(self.master_log_path)}\n{_tail(self.maillog_path)}"
                )
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"postfix smtpd on port {self.ports.smtpd} did not greet within "
                    f"{timeout}s:\n{_tail(self.maillog_path)}"
                )
            time.sleep(0.05)
        master_pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        # never signal our own group (should the master not have called setsid)
        if os.getpgid(master_pid) == master_pid != os.getpgrp():
            self._pgid = master_pid

    def _stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master (it passes the signal on), then SIGKILL stragglers."""
        process = self._process
        if process is not None:
            process.terminate()  # the reaper passes it on to the master
            try:
                # the reaper exits once the master and every daemon are gone
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.kill()
                process.wait()
        if self._pgid is None:
            return
        # Only if the reaper died early (SIGKILL) can postfix processes remain.
        deadline = time.monotonic() + timeout
        self._signal_group(signal.SIGTERM)
        killed = False
        while members := _process_group_members(self._pgid):
            if time.monotonic() > deadline:
                if killed:
                    raise PostfixError(f"postfix processes survived SIGKILL: {members}")
                self._signal_group(signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + timeout
            time.sleep(0.05)

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pgid, signum)


@contextlib.contextmanager
def private_postfix(
    ports: PostfixPorts,
    workdir: Path,
    *,
    extra_main: Mapping[str, str] | None = None,
    extra_master: str = "",
    startup_timeout: float = 30.0,
) -> Iterator[PostfixInstance]:
    """Run a private Postfix on ``ports``; stop it (no process left) on exit.

    The instance lives in a new directory under ``workdir`` when user
    ``postfix`` can reach it, else under /tmp (pytest's ``tmp_path`` is private
    to root); in that case its config and logs are copied into ``workdir``
    afterwards and the directory is removed.  ``extra_main`` sets further
    main.cf parameters, ``extra_master`` further master.cf services.
    """
    if not postfix_available():
        raise PostfixError(
            "a private Postfix needs root and the postfix package (apt-get install postfix)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    in_workdir = _reachable_by_user(workdir, "postfix")
    directory = Path(
        tempfile.mkdtemp(prefix="postfix.", dir=workdir)
        if in_workdir
        else tempfile.mkdtemp(prefix="optgate-postfix.", dir="/tmp")
    )
    instance = PostfixInstance(directory, ports)
    daemons = daemon_directory()
    try:
        instance._configure(daemons, extra_main, extra_master)
        try:
            instance._start(daemons, startup_timeout)
            yield instance
        finally:
            instance._stop()
    finally:
        if not in_workdir:
            keep = workdir / directory.name
            keep.mkdir()
            for source in (instance.maillog_path, instance.master_log_path):
                if source.exists():
                    shutil.copy(source, keep / source.name)
            if instance.config_dir.exists():
                shutil.copytree(instance.config_dir, keep / "etc")
            shutil.rmtree(directory, ignore_errors=True)
