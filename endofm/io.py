"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def _temporary_beside(path: Path, suffix: str) -> Path:
    """A new empty file in ``path``'s folder, with the permissions a plain ``open(path, "w")`` would leave:
    those of ``path`` where it exists, else ``0o666`` less the umask (``tempfile.mkstemp`` makes ``0o600``,
    which would leave outputs unreadable to the user's group)."""
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    if path.exists():
        os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
    return temp


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (named with ``suffix``, for writers that
    go by the extension), then rename it onto ``path``.

    A crash or error midway leaves any previous ``path`` untouched and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path, suffix)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_of(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (to record or compare a downloaded checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
