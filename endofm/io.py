"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from endofm.errors import InputError


def temporary_beside(path: Path, suffix: str) -> tuple[Path, int]:
    """A new empty file in ``path``'s folder and the permissions a plain ``open(path, "w")`` would leave:
    those of ``path`` where it exists, else ``0o666`` less the umask (``tempfile.mkstemp`` makes ``0o600``,
    which would leave outputs unreadable to the user's group)."""
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE((path if path.exists() else temp).stat().st_mode)
    return temp, mode


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (named with ``suffix``, for writers that
    go by the extension), then rename it onto ``path``.

    A crash or error midway leaves any previous ``path`` untouched and removes the temporary file. The file
    gets the mode of a plain write, whatever ``write`` does to the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a file name")
    tmp, mode = temporary_beside(path, suffix)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # writers that replace the file (safetensors) leave 0o600 otherwise
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


def claim_output(path: str | os.PathLike, overwrite: bool = False, folder: bool = False,
                 option: str = "--out", results: Sequence[str] = ()) -> Path:
    """Check that writing ``path`` (a file, or a ``folder`` of results) replaces no earlier result, before any
    work starts; returns it as a ``Path``.

    An existing file, or a folder holding anything (with ``results``, glob patterns of the names a command
    writes: a folder holding such a name), is refused with an :class:`InputError` naming it and the way out,
    unless ``overwrite`` (``--overwrite``): users' results are never replaced without being asked. A folder
    where a file is expected (or the reverse) is refused whatever ``overwrite`` says.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; expected a folder")
    if not folder and path.is_dir():
        raise InputError(f"{option} {path} is a folder; expected a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {path}: {parent} is a file, not a folder")
            break
    if overwrite or not path.exists():
        return path
    if not folder:
        raise InputError(f"{option} {path} already exists; pass --overwrite to replace it, or choose another name")
    held = sorted(entry.name for entry in path.iterdir()
                  if not results or any(fnmatch.fnmatch(entry.name, pattern) for pattern in results))
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise InputError(f"{option} {path} already holds a result ({shown}); pass --overwrite to replace it, or "
                         "choose another folder")
    return path
