"""Atomic writes: a crash or a full disk never leaves a half-written file under the final name."""
import contextlib
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import Coco4Error


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The temporary file lives in the same folder so the final ``os.replace`` is a rename on one
    file system, which POSIX makes atomic: readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path.parent, f".{path.name}.", suffix + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise Coco4Error(f"could not write {path}: {e.strerror or e}; "
                         "check free disk space and write permission (the previous file, "
                         "if any, is untouched)") from e
    except BaseException:
        _remove_quietly(tmp)
        raise


def _new_file(folder, prefix, suffix):
    """Create a new, empty file with the permissions any new file gets (0666 less the umask):
    the kernel applies the umask, so nothing reads or changes the process-wide umask, which a
    background checkpoint write would otherwise race with the main thread's writes. Its name
    carries this machine and process, so a later run can tell a temporary file that a killed
    process left behind from one that a live process is still writing."""
    while True:
        tmp = Path(folder) / f"{prefix}{_owner()}-{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _owner(host: str | None = None, pid: int | None = None) -> str:
    return f"{_host(host)}-{pid or os.getpid()}"


def _host(host: str | None = None) -> str:
    """This machine's name (or ``host``) as it appears in temporary file names."""
    return re.sub(r"[^A-Za-z0-9]", "_", host or socket.gethostname())


def remove_stale_temporaries(folder: str | Path, say: Callable[[str], None]) -> int:
    """Delete the temporary files in ``folder`` that a coco4 process of this machine, no longer
    running (killed mid-write), left behind: a checkpoint's or a cache's, up to a gigabyte
    each. Files of live processes and of other machines are left alone. Returns the count."""
    host = re.escape(_host())
    stale = []
    for tmp in Path(folder).glob(".*.tmp"):
        found = re.fullmatch(rf"\..+\.{host}-(\d+)-[0-9a-f]{{8}}.*\.tmp", tmp.name)
        if found and not _running(int(found.group(1))):
            stale.append(tmp)
    size = 0
    for tmp in stale:
        with contextlib.suppress(OSError):
            size += tmp.stat().st_size
            tmp.unlink()
    if stale:
        say(f"removed {len(stale)} temporary file(s), {size / 2**20:,.0f} MB, that an "
            f"interrupted coco4 run left in {folder}")
    return len(stale)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # never the locale's: every reader expects it


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def check_writable(folder: str | Path) -> None:
    """Fail before hours of work if ``folder`` cannot take the files we will write there.

    Leaves nothing behind (what it tries is removed at once): a run that fails later on bad
    input must not leave empty folders behind.
    """
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"no write permission on {existing}"
    else:  # permission bits are not all: a read-only mount, /proc, a full inode table
        try:
            if existing == folder:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                    pass
            else:  # the folder will be made in ``existing``: try making one there
                os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-test-"))
        except OSError as e:
            problem = e.strerror or str(e)
    if problem:
        raise Coco4Error(f"cannot write to {folder}: {problem}; choose another folder or fix "
                         "its permissions")


def check_outputs_are_not_inputs(outputs: list[tuple[str, Path]],
                                 inputs: list[tuple[str, Path]]) -> None:
    """Refuse a command whose output path is, or resolves to, one of its inputs: writing it
    would destroy the input before it is read (an image truncated, a checkpoint replaced by a
    CSV). Each is (what the user calls it, e.g. ``--out``, ``an input image``; its path);
    made before anything is opened for writing."""
    seen = {}
    for what, path in inputs:
        seen.setdefault(_identity(path), what)
    for what, path in outputs:
        found = seen.get(_identity(path))
        if found:
            raise Coco4Error(f"{what} {path} is also {found}: writing it would destroy it; "
                             "choose another output path")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (through links, or spelled differently)."""
    return _identity(Path(a)) == _identity(Path(b))


def _identity(path: Path) -> tuple:
    """What names one file: its device and inode where it exists (hard links, symlinks), else
    its resolved path."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return (os.path.realpath(path),)


SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula: one starting with = + - @ (or a tab
    or carriage return) gets a leading apostrophe, as OWASP advises for CSV files; other
    cells, and numbers, are left as they are."""
    return "'" + text if text.startswith(SPREADSHEET_FORMULA) else text


def printable(path: str | Path) -> str:
    """A path as text that can be written anywhere: a file name that is not valid UTF-8
    (Python keeps its bytes as surrogates) with those bytes as \\x escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")
