"""A live run holds its folder, so that a second process (a `--resume` of a run still training, a requeued job
beside the old one) cannot train into it too.

    RUN/.hold    {"host", "pid", "started", "command"} of the holder; empty when no one holds it

The holder keeps an exclusive `flock` on the file for its whole life and touches it every `HEARTBEAT_S`
seconds. A lock dies with its process, so on one host a held lock means a live holder. Across hosts a shared
file system may not carry locks, so the heartbeat decides there: a hold from another host untouched for
`STALE_S` seconds is taken for dead. A stale hold (the holder was killed, or its host went away) is taken
over and said so; a live one is refused, naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from llm_runs.config import ConfigError

HOLD = ".hold"
HEARTBEAT_S = 30.0  # how often the holder touches the file
STALE_S = 300.0  # a hold from another host untouched this long is taken for dead


class HeldError(ConfigError):
    """The run folder is held by a live run."""


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


class RunHold:
    """`with RunHold(run_dir):` holds `run_dir` for the block (HeldError if a live run holds it)."""

    def __init__(self, run_dir: str | Path, say=lambda line: print(line, file=sys.stderr)):
        self.run_dir, self.path, self.say = Path(run_dir), Path(run_dir) / HOLD, say
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "RunHold":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise HeldError(f"{self.run_dir} is held by a live run ({self._describe(holder)}): wait for it to end or "
                            f"stop it; two processes training into one run folder would corrupt it") from None
        try:
            self._take_over(self._read(fd))
        except BaseException:
            os.close(fd)  # the lock goes with it
            raise
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd
        self._beat = threading.Thread(target=self._heartbeat, name="run-hold-heartbeat", daemon=True)
        self._beat.start()

    def _take_over(self, holder: dict | None) -> None:
        """Decide on the previous holder's record, with the lock already ours: refuse a live holder on
        another host, say so when a stale hold is taken over."""
        if not holder:
            return
        age = time.time() - self.path.stat().st_mtime
        if holder.get("host") != socket.gethostname():
            if age < STALE_S:
                raise HeldError(f"{self.run_dir} is held by a run on another host ({self._describe(holder)}), "
                                f"refreshed {age:.0f} s ago: it may still be training. If it is dead, wait "
                                f"{STALE_S - age:.0f} s (a hold unrefreshed for {STALE_S:.0f} s is taken over) or "
                                f"delete {self.path}")
            self.say(f"{self.run_dir}: taking over a stale hold ({self._describe(holder)}, not refreshed for "
                     f"{age:.0f} s: its host stopped or lost the file system)")
        elif holder.get("pid") != os.getpid():
            self.say(f"{self.run_dir}: taking over the hold of a run that is no longer running "
                     f"({self._describe(holder)})")

    @staticmethod
    def _read(fd: int) -> dict | None:
        raw = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"host": "?", "pid": "?", "command": f"an unreadable hold file: {raw[:80]!r}"}

    @staticmethod
    def _describe(holder: dict | None) -> str:
        if not holder:
            return "no record"
        started = holder.get("started")
        since = f", since {_when(started)}" if isinstance(started, (int, float)) else ""
        return f"pid {holder.get('pid')} on {holder.get('host')}{since}: {holder.get('command', '')}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # the file system hiccuped: the next beat tries again
                pass

    def release(self) -> None:
        """Give the folder up: the record emptied (the file stays, so no second inode can be locked), unlocked."""
        if self._fd is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None
