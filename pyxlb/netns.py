"""Enter a network namespace for a block of code, without touching the mount namespace.

`ip netns exec` also remounts /sys, which hides /sys/fs/bpf (and so every pinned map);
setns(CLONE_NEWNET) on the calling thread changes only which interfaces it sees.
"""

import contextlib
import ctypes
import ctypes.util
import os
import threading

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at `fd` (for a process
    that moves once, before it starts any thread, so that every thread lives there)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def path_of(name: str) -> str:
    """The bind-mount path of a named namespace (as `ip netns add` makes it)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


@contextlib.contextmanager
def enter(name: str):
    """Run the block in network namespace `name` (this thread only), then return."""
    try:
        target = os.open(path_of(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(2, f"no network namespace named {name!r}") from None
    try:
        # this thread's own namespace, which may differ from the process's
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                       os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(target)
        raise
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)
