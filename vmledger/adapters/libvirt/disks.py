"""Root disks of libvirt guests: qcow2 overlays on an image's base file, made with qemu-img;
and the copies and links that move them to another host's disk directory.

A guest's disk is ``<disk_dir>/vmledger-<server id>.qcow2``, a copy-on-write overlay of
the image's base qcow2 file (which is never written). Its virtual size is the flavor's
disk or the base image's size, whichever is larger.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

__all__ = [
    "GIB",
    "DiskError",
    "backing_file",
    "copy",
    "create_blank",
    "create_overlay",
    "flatten",
    "grow",
    "link_or_copy",
    "md5",
    "overlay_path",
    "remove",
    "snapshot_path",
    "virtual_size",
]

GIB = 1024**3
_TIMEOUT = 120.0


class DiskError(Exception):
    """qemu-img failed or is missing."""


def overlay_path(disk_dir: str, server_id: str) -> str:
    return os.path.join(os.path.abspath(disk_dir), f"vmledger-{server_id}.qcow2")


def rescue_path(disk_dir: str, server_id: str) -> str:
    """The overlay of the rescue image a rescued guest boots."""
    return os.path.join(os.path.abspath(disk_dir), f"vmledger-{server_id}.rescue.qcow2")


def console_path(disk_dir: str, server_id: str) -> str:
    """Where a guest's serial console is written (QEMU appends to it)."""
    return os.path.join(os.path.abspath(disk_dir), f"vmledger-{server_id}.console.log")


def console_log(disk_dir: str, server_id: str) -> str:
    """:func:`console_path`, created empty if it is not there (libvirt opens it for
    QEMU and refuses to start a guest whose log file or folder is missing)."""
    path = console_path(disk_dir, server_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab"):
        pass
    return path


def tail(path: str, limit: int) -> str:
    """The last ``limit`` bytes of a text file (whole lines: a cut first line is
    dropped), decoded leniently; ``""`` for a file not written yet."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return ""
    if size > limit:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return data.decode("utf-8", errors="replace")


def snapshot_path(disk_dir: str, image_id: str) -> str:
    """Where a snapshot taken on this host is kept; it is also the base of that image."""
    return os.path.join(os.path.abspath(disk_dir), f"image-{image_id}.qcow2")


def _qemu_img(*args: str) -> str:
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                              timeout=_TIMEOUT, check=False)
    except FileNotFoundError as e:
        raise DiskError("qemu-img not found: apt-get install qemu-utils") from e
    except subprocess.TimeoutExpired as e:
        raise DiskError(f"qemu-img {args[0]} timed out after {_TIMEOUT:.0f} s") from e
    if done.returncode != 0:
        raise DiskError(f"qemu-img {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def virtual_size(path: str) -> int:
    """The disk size a guest sees, in bytes (``-U``: the file may be in use)."""
    info = json.loads(_qemu_img("info", "-U", "--output=json", path))
    return int(info["virtual-size"])


def create_overlay(base: str, path: str, disk_gb: int) -> None:
    """Create (or replace) ``path`` as an overlay of ``base`` of at least ``disk_gb`` GiB."""
    if not os.path.isfile(base):
        raise DiskError(f"image base file {base} does not exist")
    base = os.path.abspath(base)  # qemu-img resolves a relative backing file from ``path``
    size = max(disk_gb * GIB, virtual_size(base))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, path, str(size))


def grow(path: str, disk_gb: int) -> bool:
    """Grow ``path`` to ``disk_gb`` GiB if it is smaller (never shrinks); say if it grew."""
    if disk_gb * GIB <= virtual_size(path):
        return False
    _qemu_img("resize", "-q", "-f", "qcow2", path, str(disk_gb * GIB))
    return True


def flatten(source: str, target: str) -> tuple[int, str]:
    """Write ``source`` and its backing chain as one standalone qcow2 file ``target``
    (atomically: via ``target.tmp``); answer its size in bytes and MD5 (Glance's
    checksum). ``-U``: the source may be open by a paused guest."""
    tmp = target + ".tmp"
    try:
        _qemu_img("convert", "-U", "-f", "qcow2", "-O", "qcow2", source, tmp)
        checksum = md5(tmp)
        os.replace(tmp, target)
    finally:
        remove(tmp)
    return os.path.getsize(target), checksum


def backing_file(path: str) -> str | None:
    """The absolute path of the file ``path`` is an overlay of (None: standalone)."""
    info = json.loads(_qemu_img("info", "-U", "--output=json", path))
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if not backing:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(path)), str(backing))


def create_blank(path: str, size: int, backing: str | None = None) -> None:
    """An empty qcow2 ``path`` of ``size`` bytes, on ``backing`` if given (the target of
    a block migration, which QEMU fills)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    args = ["-F", "qcow2", "-b", backing] if backing is not None else []
    _qemu_img("create", "-q", "-f", "qcow2", *args, path, str(size))


def copy(source: str, target: str) -> None:
    """Copy a file, atomically (via ``target.tmp``): a ``target`` that exists is whole."""
    tmp = target + ".tmp"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise DiskError(f"cannot copy {source} to {target}: {e.strerror or e}") from e
    finally:
        remove(tmp)


def link_or_copy(source: str, target: str) -> str:
    """Make ``target`` the same file as ``source`` (a hard link: both names open the
    one file, as on shared storage) or, across filesystems, a copy; say which."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        if os.path.samefile(source, target):
            return "link"
        remove(target)
    try:
        os.link(source, target)
    except OSError:
        copy(source, target)
        return "copy"
    return "link"


def md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remove(*paths: str) -> list[str]:
    """Delete the files that exist among ``paths``; return the ones deleted."""
    removed = []
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
