"""Reading and writing files safely.

- `torch_load`: .pt files are read with `weights_only=True`, so a file from elsewhere cannot run
  code when it is loaded; `trusting_pickles(path)` (the CLI's --trust-checkpoint) lifts that for the
  named files only, the ones the user vouches for.
- `atomic_write`: a temporary file in the same folder, fsync, rename; a crash leaves the old file
  or the new one, never half of one. Files get the mode the umask gives any new file.
- `RunLock`: one training per run folder at a time.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from pixelwise.errors import OutputError, PixelwiseError, TrainingError

__all__ = ["RunLock", "atomic_write", "clean_stale_temporaries", "ensure_dir", "torch_load", "trusting_pickles", "is_trusted",
           "same_file", "write_json", "write_text"]

_TRUSTED: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar("pixelwise_trusted", default=frozenset())
TRUST_HINT = ("If you made this file yourself or trust where it came from, pass --trust-checkpoint with it as "
              "--checkpoint / --resume (or load it inside pixelwise.files.trusting_pickles(path)) to read it anyway")


@contextlib.contextmanager
def trusting_pickles(*paths: str | Path) -> Iterator[None]:
    """Within this block torch_load also unpickles arbitrary objects from these files, and from no other."""
    token = _TRUSTED.set(_TRUSTED.get() | {Path(p).expanduser().resolve() for p in paths})
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def is_trusted(path: str | Path) -> bool:
    """True when the user vouched for this very file (``--trust-checkpoint``)."""
    return Path(path).expanduser().resolve() in _TRUSTED.get()


def _numpy_globals() -> list:
    # Checkpoints of pixelwise 0.1 hold numpy's RNG state as a uint32 array; these rebuild numeric arrays
    # only (an object array is still refused).
    import numpy as np

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def torch_load(path: str | Path, *, what: str, map_location: Any = "cpu",
               error: type[PixelwiseError] = PixelwiseError, mmap: bool = False) -> Any:
    """torch.load without unpickling code; every failure is `error` naming `what` and the file.

    mmap=True maps the tensors instead of reading them (for a look at a checkpoint's config)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        where = " (it is a folder)" if path.is_dir() else ""
        raise error(f"{what} {str(path)!r} does not exist{where}")
    # Only the very file the user vouched for (--trust-checkpoint, or trusting_pickles(path)) is unpickled in full;
    # every other file goes through the weights-only reader.
    trusted = is_trusted(path)
    try:
        with contextlib.nullcontext() if trusted else torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=not trusted, mmap=mmap)
    except pickle.UnpicklingError as e:
        if trusted:
            raise error(f"{what} {str(path)!r} could not be read ({type(e).__name__}: {e})") from None
        # Told apart by what the file is, not by torch's wording (which changes between releases): a PyTorch
        # archive (or a legacy pickle) that the weights-only unpickler refuses holds other objects.
        if not _is_pickle_archive(path):
            raise error(f"{what} {str(path)!r} could not be read as a PyTorch file (it is neither a PyTorch "
                        "archive nor a pickle)") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        detail = f"it refers to {found[1]}" if found else "an object the weights-only reader does not allow"
        raise error(f"{what} {str(path)!r} holds Python objects besides tensors and plain values ({detail}); it was "
                    f"not loaded, because unpickling such objects can run arbitrary code. {TRUST_HINT}") from None
    except Exception as e:  # not a zip / pickle at all, truncated, wrong magic number ...
        raise error(f"{what} {str(path)!r} could not be read as a PyTorch file ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def _is_pickle_archive(path: Path) -> bool:
    """A PyTorch zip archive, or a legacy pickle (protocol 2+)."""
    import zipfile

    try:
        with path.open("rb") as f:
            head = f.read(2)
        return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
    except OSError:
        return False


def _mode() -> int:
    """The mode the umask gives a new file (0o644 under the usual umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_dir(path: str | Path, *, what: str) -> Path:
    """Create folder `path` (and parents) or raise OutputError naming it and why it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {str(path)!r} is a file, not a folder; expected a folder to write into") from None
    except OSError as e:
        raise OutputError(f"{what} {str(path)!r} cannot be created: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {str(path)!r} is not writable")
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths name one existing file, whatever the path (links, hard links, `..`)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _write_failure(e: BaseException) -> str | None:
    """Why writing failed, when `e` is a failed write (torch.save raises RuntimeError on a full disk)."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, RuntimeError) and ("write failed" in str(e) or "PytorchStreamWriter" in str(e)):
        return f"torch.save failed ({str(e).strip().splitlines()[-1].split('] ')[-1].strip(' .')}; is the disk full?)"
    return None


def _free(folder: Path) -> str:
    with contextlib.suppress(OSError):
        return f"; {shutil.disk_usage(folder).free / 2**20:.0f} MB free in {str(folder)!r}"
    return ""


def atomic_write(path: str | Path, write: Callable[[IO], None], *, what: str, binary: bool = True) -> Path:
    """Write a file through `write(f)` so that a crash at any moment leaves the old file or the new one.

    The temporary file, `.NAME.PID.XXXXXXXX.tmp` beside the target, is removed on any error; one left
    by a killed process is removed by `clean_stale_temporaries`. A link at `path` is refused: the
    file it points to is not this write's to replace.
    """
    path = Path(path)
    ensure_dir(path.parent, what=f"folder of the {what}")
    if path.is_symlink() or path.is_dir():
        kind = "a link" if path.is_symlink() else "a folder"
        raise OutputError(f"cannot write {what} {str(path)!r}: it is {kind}, which pixelwise does not replace; "
                          "remove it or choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {what} {str(path)!r}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, _mode())  # mkstemp creates 0600; a checkpoint or log is an ordinary file
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        why = _write_failure(e)
        if why is None:
            raise
        raise OutputError(f"cannot write {what} {str(path)!r}: {why}{_free(path.parent)}; the previous file, if "
                          "any, is unchanged") from None
    return path


def write_text(path: str | Path, text: str, *, what: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), what=what, binary=False)


def write_json(path: str | Path, value: Any, *, what: str) -> Path:
    return write_text(path, json.dumps(value, indent=2) + "\n", what=what)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# Exactly the names atomic_write gives its temporaries: ".NAME.PID.XXXXXXXX.tmp" (mkstemp's 8 characters;
# pixelwise 0.1 wrote ".NAME.XXXXXXXX.tmp").
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")


def clean_stale_temporaries(folder: str | Path, names: Sequence[str]) -> list[Path]:
    """Remove temporaries of atomic_write for the files `names` whose writer is gone (killed during a save).

    Only pixelwise's own temporaries of those files are touched: any other file (a user's `.notes.tmp`) stays."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        m = _TEMPORARY.match(p.name)
        if m is None or m["name"] not in names or p.is_symlink() or not p.is_file():
            continue
        pid = int(m["pid"]) if m["pid"] else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


class RunLock:
    """An exclusive lock on a run folder, held while a training writes into it.

    The lock is an flock on RUN/.lock, so the system releases it when the process dies, however it
    dies; the file records who holds it, for the message a second run gets.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        ensure_dir(self.path.parent, what="run folder")
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not locked there
            return self
        try:  # O_NOFOLLOW: a link named .lock is not followed to a file elsewhere
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), _mode())
        except OSError as e:
            raise OutputError(f"cannot lock run folder {str(self.path.parent)!r}: {str(self.path)!r} "
                              f"{'is a link' if e.errno == errno.ELOOP else e.strerror or e}; expected pixelwise's "
                              "lock file (or none): remove it or choose another output_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TrainingError(f"run folder {str(self.path.parent)!r} is in use by another training "
                                f"({self._holder()}); wait for it to finish, or choose another output_dir "
                                "(--output-dir)") from None
        if not self._is_lock_file(fd):  # checked under the lock: a holder may be writing its record
            os.close(fd)
            raise OutputError(f"cannot lock run folder {str(self.path.parent)!r}: {str(self.path)!r} is not "
                              "pixelwise's lock file and is left as it is; move it or choose another output_dir")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    @staticmethod
    def _is_lock_file(fd: int) -> bool:
        """Empty, or the record a RunLock writes: never truncate a file of the user's."""
        data = os.pread(fd, 4096, 0)
        if not data:
            return True
        with contextlib.suppress(ValueError, TypeError):
            return {"pid", "host", "started", "command"} <= set(json.loads(data))
        return False

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
