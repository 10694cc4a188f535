"""The BGP speaker: one BIRD 2 daemon per node, run and reloaded by `BirdSpeaker`.

Its configuration, control socket, pid file and log live under a state directory. It is
started detached (its own session), so it outlives the agent: a crashed or restarted agent
leaves the routes announced, and a new agent adopts the running daemon instead of starting
another. A new configuration is parse-checked (`bird -p`), written atomically and loaded
with `birdc configure`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

from ...errors import PyxlbError
from .schema import DEFAULT_STATE_DIR
from .settings import BgpError

log = logging.getLogger("pyxlb.announce.bgp")

UNIX_PATH_MAX = 107             # sun_path, less its terminating NUL


class BirdError(PyxlbError):
    """The BIRD daemon refused or did not answer. `retry`: worth trying again later (the
    daemon is starting, hung, or gone) rather than wrong as configured."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


def _binary(name: str) -> str:
    """The path of `name` (bird, birdc): as given when it is a path, else on PATH or in
    the sbin directories (which a non-root PATH may lack)."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        raise BirdError(f"{name}: not an executable file", retry=False)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found:
        return found
    raise BirdError(f"{name} not found on PATH or in /usr/sbin: install BIRD 2 (the Debian "
                    f"package bird2)", retry=False)


def _proc_state(pid: int) -> Optional[str]:
    """The one-letter state of a process (R, S, T, Z, ...) or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _netns_inode(pid: Optional[int] = None) -> Optional[int]:
    path = "/proc/thread-self/ns/net" if pid is None else f"/proc/{pid}/ns/net"
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _one_line(text: str, limit: int = 400) -> str:
    out = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return out[:limit] + ("..." if len(out) > limit else "")


class BirdSpeaker:
    """One BIRD daemon, in the caller's network namespace, with its files under
    `state_dir`: bird.conf (mode 0600: it may hold passwords), bird.ctl (control socket),
    bird.pid, bird.log (its warnings and errors, emptied at each start).

    The daemon runs in its own session and is never tied to this object's life: dropping
    the object, or the process, leaves it announcing. A later BirdSpeaker on the same
    state directory adopts it (its pid file names a live bird serving our socket in this
    network namespace). Every method call that talks to the daemon is bounded by
    `timeout` seconds."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, bird: str = "bird",
                 birdc: str = "birdc", timeout: float = 5.0):
        self.state_dir = os.path.abspath(state_dir)
        self.config_path = os.path.join(self.state_dir, "bird.conf")
        self.socket_path = os.path.join(self.state_dir, "bird.ctl")
        self.pid_path = os.path.join(self.state_dir, "bird.pid")
        self.log_path = os.path.join(self.state_dir, "bird.log")
        if len(self.socket_path.encode()) > UNIX_PATH_MAX:
            raise BgpError(f"bgp.state_dir: {self.state_dir} is too long for a control "
                           f"socket path (at most {UNIX_PATH_MAX - 9} bytes)")
        if '"' in self.state_dir:
            raise BgpError(f"bgp.state_dir: {self.state_dir!r} must not contain a quote")
        self.bird, self.birdc = bird, birdc
        self.timeout = timeout
        self._child: Optional[subprocess.Popen] = None   # a daemon this object started

    def __repr__(self) -> str:
        return f"BirdSpeaker({self.state_dir!r})"

    # -- finding the daemon --------------------------------------------------------------

    def pid(self) -> Optional[int]:
        """The pid of the live daemon of this state directory, or None. BirdError if it
        runs in another network namespace (one state directory per node)."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None                      # ours, and dead: reaped just now
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None                 # none, or empty (a bird that failed at start)
        if _proc_state(pid) in (None, "Z", "X"):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            return None
        if not argv or not os.path.basename(argv[0]).startswith("bird"):
            return None                 # the pid was reused by something else
        sockets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-s"]
        if self.socket_path not in sockets:
            return None
        if _netns_inode(pid) != _netns_inode():
            raise BirdError(f"bird (pid {pid}) of {self.state_dir} runs in another network "
                            f"namespace: one state directory per node", retry=False)
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def running_config(self) -> Optional[str]:
        """The configuration file of the live daemon, or None when none runs."""
        if self.pid() is None:
            return None
        try:
            with open(self.config_path) as f:
                return f.read()
        except OSError:
            return None

    def _answers(self, timeout: float = 0.5) -> bool:
        """Whether something greets on the control socket (BIRD says "0001 ... ready")."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(self.socket_path)
            return s.recv(64).startswith(b"0001")
        except OSError:
            return False
        finally:
            s.close()

    # -- changing what it announces ------------------------------------------------------

    def apply(self, config: str) -> bool:
        """Make the daemon run `config`: check it (`bird -p`), write it atomically, then
        `birdc configure` the live daemon or start one. Returns whether a daemon was
        started. BirdError on any refusal (retry=False: the configuration is at fault)."""
        _binary(self.bird), _binary(self.birdc)      # both there, before anything changes
        pid = self.pid()
        self._write(config)
        if pid is None:
            self._start()
            return True
        self.command("configure", f'"{self.config_path}"')
        return False

    def _write(self, config: str) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        candidate = self.config_path + ".new"
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(config)
            f.flush()
            os.fsync(f.fileno())
        try:
            checked = subprocess.run([_binary(self.bird), "-p", "-c", candidate],
                                     stdin=subprocess.DEVNULL, capture_output=True,
                                     text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BirdError(f"bird -p did not finish within {self.timeout} s") from None
        if checked.returncode != 0:
            raise BirdError(f"BIRD rejects the configuration ({candidate}): "
                            f"{_one_line(checked.stderr or checked.stdout)}", retry=False)
        os.replace(candidate, self.config_path)

    def _start(self) -> None:
        if self._answers():
            raise BirdError(f"a BIRD that its pid file ({self.pid_path}) does not name "
                            f"answers on {self.socket_path}: stop it first", retry=False)
        bird = _binary(self.bird)
        for stale in (self.pid_path, self.socket_path):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        with open(self.log_path, "wb") as logf:
            # a session of its own: no signal meant for the agent (Ctrl-C, a terminal
            # hang-up, the agent's process group) reaches it
            child = subprocess.Popen(
                [bird, "-f", "-c", self.config_path, "-s", self.socket_path,
                 "-P", self.pid_path],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=self.state_dir,
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if child.poll() is not None:
                raise BirdError(f"bird exited at start (status {child.returncode}): "
                                f"{_one_line(self._log_tail()) or 'no message'}")
            if self._pid_file_names(child.pid) and self._answers():
                break       # both: a later pid() must find it, or a second one would start
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise BirdError(f"bird did not write {self.pid_path} and open "
                                f"{self.socket_path} within {self.timeout} s")
            time.sleep(0.01)
        self._child = child
        log.info("started bird (pid %d) in %s", child.pid, self.state_dir)

    def _pid_file_names(self, pid: int) -> bool:
        try:
            with open(self.pid_path) as f:
                return f.read().strip() == str(pid)
        except OSError:
            return False

    def _log_tail(self, size: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def command(self, *words: str) -> str:
        """One birdc command; its answer without reply codes. BirdError when BIRD
        reports an error (a configuration error: retry=False) or does not answer."""
        argv = [_binary(self.birdc), "-v", "-s", self.socket_path, *words]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BirdError(f"bird did not answer `{' '.join(words)}` on {self.socket_path} "
                            f"within {self.timeout} s (hung or stopped?)") from None
        lines, failures = [], []
        for line in done.stdout.splitlines():
            code, text = line[:4], line[5:]
            if code.isdigit():
                if code[0] in "89":
                    failures.append((code, text))
                if code != "0001":          # the greeting
                    lines.append(text)
            else:       # a continuation: the code's place is blank
                lines.append(line[5:] if line[:5] == "     " else line.lstrip(" "))
        if failures:
            code, text = failures[0]
            # 8002: configuration file error; the others are run-time refusals
            raise BirdError(f"birdc {' '.join(words)}: {text}", retry=code != "8002")
        if done.returncode != 0:
            raise BirdError(f"birdc {' '.join(words)}: "
                            f"{_one_line(done.stderr or done.stdout) or 'failed'}")
        return "\n".join(lines)

    # -- stopping -------------------------------------------------------------------------

    def stop(self, timeout: Optional[float] = None) -> None:
        """End the daemon: SIGTERM (BIRD closes its sessions with a Cease notification, so
        the peers drop its routes at once), SIGKILL if it is still there after `timeout`.
        Its pid file and socket are removed either way."""
        timeout = self.timeout if timeout is None else timeout
        pid = self.pid()
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() == pid and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.pid() == pid:
                log.warning("bird (pid %d) ignored SIGTERM for %.1f s: killing it", pid,
                            timeout)
                self._signal(pid, signal.SIGKILL)
                while self.pid() == pid and time.monotonic() < deadline + timeout:
                    time.sleep(0.01)
            log.info("stopped bird (pid %d) of %s", pid, self.state_dir)
        for path in (self.pid_path, self.socket_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
            if _proc_state(pid) == "T":
                os.kill(pid, signal.SIGCONT)    # a stopped process acts on SIGTERM only then
        except ProcessLookupError:
            pass
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
