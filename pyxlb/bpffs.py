"""The BPF filesystem, where pinned maps and programs outlive the process that made them."""

import ctypes
import os

from .errors import PyxlbError

BPFFS_ROOT = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11

_libc = ctypes.CDLL(None, use_errno=True)


class _Statfs(ctypes.Structure):
    # struct statfs begins with f_type; the rest is room for the other fields
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]


def is_bpffs(path: str) -> bool:
    """True when `path` is on a bpffs mount."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def ensure_mounted(root: str = BPFFS_ROOT) -> None:
    """Mount bpffs at `root` if nothing is mounted there (a fresh machine has none)."""
    if is_bpffs(root):
        return
    os.makedirs(root, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(root), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise PyxlbError(f"cannot mount bpffs at {root}: {os.strerror(err)}")
