"""Writing a file so that a process killed mid-write leaves the old file or the new one, never half of one.

    write_atomically(path, lambda temporary: save_file(tensors, str(temporary)))
    write_text_atomically(path, json.dumps(record))
    path.write_text(json_text(results))   # results.json: strict JSON, a rate over no images as null

Every file robgen writes whole goes through here: checkpoints and trainer state, synthesis seeds, the stage cache
of `reproduce` and `adaptive`, ablation rows, reports, figures (`robgen.plots.save_figure`) and images (a training
log is appended a line at a time instead, and written again on resume). The new content
is written to `<name>.<pid>-<random>.partial` beside the target, flushed to the disk and renamed over it
(`os.replace`, atomic on one file system), so a reader sees either the complete old file or the complete new one.
Every results.json is written as `json_text` gives it: strict JSON, which any reader parses.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

PARTIAL_SUFFIX = ".partial"
_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process's umask now (Linux: read from /proc, which changes nothing; elsewhere set and put back at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _usual_permissions(temporary: Path, path: Path) -> None:
    """Give the new content of `path` the permissions a plain `open(path, "w")` would: the permissions `path` has
    when it exists (a checkpoint kept private with chmod 600 stays so), else those the umask gives a new file.
    safetensors writes its files readable by their owner alone (0600), which would hide a new checkpoint from the
    other users of a shared machine or a Space's server process."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # no such file yet (or not one this user may read the mode of)
        mode = 0o666 & ~_current_umask()
    os.chmod(temporary, mode)


def _flush_to_disk(path: Path) -> None:
    """Wait until the content written to `path` is on the disk, not only in the system's cache: a rename is
    recorded by the file system on its own schedule, so without this a power cut soon after it can leave the new
    name holding an empty or partial file, the one thing this module promises never happens. Opened to read where
    the system flushes a file so opened (POSIX): under umask 0222 the file is read-only from its creation, and
    only root may open it for writing; Windows refuses to flush a file opened to read."""
    with open(path, "r+b" if os.name == "nt" else "rb") as written:
        os.fsync(written.fileno())


_NAME_BYTES = 255  # the longest file name most file systems take (ext4, APFS, NTFS: 255 bytes or characters)


def partial_path(path: Union[str, Path]) -> Path:
    """Where the new content of `path` is written before it replaces `path`: `<name>.<pid>-<random>.partial`, a
    new name at each call, so that two processes writing the same file at once (the CLI and the app converting
    one model on first use) neither rename nor delete each other's half-written file. The last rename wins.
    A name near the file system's limit is shortened there, so that any name `path` may have can be written."""
    path = Path(path)
    suffix = f".{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    name = path.name
    if len(name.encode("utf-8", "surrogateescape")) + len(suffix) > _NAME_BYTES:
        name = name.encode("utf-8", "surrogateescape")[:_NAME_BYTES - len(suffix)].decode("utf-8", "ignore")
    return path.with_name(name + suffix)


def write_atomically(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call `write(temporary)` to write the whole new content, then rename it to `path`; returns `path`."""
    path = Path(path)
    if not path.parent.is_dir():  # else the error named the temporary file ("...png.4242-1f2e3d4c.partial")
        raise FileNotFoundError(f"cannot write {path}: its folder {path.parent} does not exist")
    temporary = partial_path(path)
    try:
        write(temporary)
        _flush_to_disk(temporary)
        _usual_permissions(temporary, path)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a failed write leaves no stray .partial file beside the target
        raise
    return path


def write_together(writes: Dict[Path, Callable[[Path], None]],
                   before_renaming: Optional[Callable[[], None]] = None) -> None:
    """Several files that belong together (a checkpoint's weights and config): every new content is written
    to its temporary file first, and only then are they renamed, one after the other, so a failed write
    replaces none of them. `before_renaming()`: called once every content is written, just before the renames
    (to remove files the new contents make wrong: not when a write fails). A failure anywhere leaves no
    temporary file behind."""
    temporaries = {Path(path): partial_path(path) for path in writes}
    try:
        for path, write in writes.items():
            write(temporaries[Path(path)])
            _flush_to_disk(temporaries[Path(path)])
            _usual_permissions(temporaries[Path(path)], Path(path))
        if before_renaming is not None:
            before_renaming()
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
        raise


def unwritable_folder(path: Union[str, Path]) -> Optional[str]:
    """Why the folder `path` cannot be made or written into, in words ("is a file", "has a file on its way (...)",
    "...: not writable by this user"), or None when it can: the check before work whose first write is at its end."""
    path = Path(path).expanduser()
    for place in [path, *path.parents]:
        if place.exists():
            if not place.is_dir():
                return "is a file" if place == path else f"has a file on its way ({place})"
            if not os.access(place, os.W_OK | os.X_OK):
                return f"{place} is not writable by this user"
            return None
    return None


def write_text_atomically(path: Union[str, Path], text: str) -> Path:
    """`path` replaced by `text` (UTF-8) in one step; see `write_atomically`."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def without_nan(value: Any) -> Any:
    """`value` with every float NaN (a rate or mean over no images) or infinity as None, through dicts, lists and
    tuples: what strict JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return value


def json_text(value: Any, **options: Any) -> str:
    """A results.json's text: indented, strict JSON (a NaN or infinity, which `json.dumps` writes as the
    non-standard `NaN` or `Infinity` that strict readers refuse, becomes null), ending in a newline. `options`: more `json.dumps` arguments
    (`default=str` for values JSON has no type for)."""
    return json.dumps(without_nan(value), indent=2, allow_nan=False, **options) + "\n"


def first_missing(path: Union[str, Path]) -> Optional[Path]:
    """The topmost folder of `path` (or `path` itself) that does not exist yet: what making `path` creates."""
    missing = None
    for place in [Path(path), *Path(path).parents]:
        if place.exists():
            break
        missing = place
    return missing


def remove_if_empty(folder: Optional[Path]) -> None:
    """Remove `folder`, made by a command or a download that was refused or failed, when it holds no file (only
    empty folders, if any: nothing in it to keep)."""
    if folder is not None and folder.is_dir() and not folder.is_symlink() and not any(
            not path.is_dir() for path in folder.rglob("*")):
        import shutil

        shutil.rmtree(folder)
