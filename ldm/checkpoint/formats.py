"""What a checkpoint file is, from its content: checks before a file is opened (`_check_file`: special
files, directories and empty files are named for what they are, never read) and the format from the
first bytes (`_sniff_format`: torch's zip format, its legacy pickle format, safetensors, or a tar archive),
whatever the file's name; and the storage records of a zip checkpoint (`_zip_contents`)."""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

from ldm.checkpoint.errors import InvalidCheckpointError
from ldm.checkpoint.hints import download_hint

SAFETENSORS_SUFFIX = ".safetensors"


def _hint(path: Path) -> str:
    """`download_hint` for ``path`` as the end of an error message: a space and the hint, or nothing."""
    hint = download_hint(path)
    return f" {hint}" if hint else ""


_SPECIAL_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_file(path: Path) -> int:
    """The size of the regular file ``path``; a clear error for anything else. Special files are never opened
    (reading a FIFO blocks, ``/dev/zero`` never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}.{_hint(path)}") from None
    except OSError as err:
        raise InvalidCheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"expected a checkpoint file, got the directory {path}")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _SPECIAL_FILE_KINDS if test(st.st_mode)), "a special file")
        raise InvalidCheckpointError(f"{path} is {kind}, not a regular file; a checkpoint must be a file on disk")
    if st.st_size == 0:
        raise InvalidCheckpointError(f"checkpoint {path} is empty (0 bytes); an interrupted download or save? "
                                     f"Download or save it again.{_hint(path)}")
    if not os.access(path, os.R_OK):
        raise InvalidCheckpointError(f"cannot read checkpoint {path}: permission denied")
    return st.st_size


def _sniff_format(path: Path, size: int) -> str:
    """'zip' (torch's format), 'safetensors', 'tar' or 'pickle' (torch's legacy format or a plain pickle),
    from the file's first bytes, whatever its name."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return "safetensors"
    if size >= 512 and tarfile.is_tarfile(path):
        return "tar"
    return "pickle"


def _zip_contents(path: Path, size: int) -> tuple[bool, dict[str, int] | None]:
    """Whether the zip file ``path`` is a TorchScript archive, and the bytes of each storage record
    (``<archive>/data/<key>`` -> size) when every one is stored once, uncompressed, inside the file's
    ``size`` bytes, so that it can be mapped from the file as it lies (else None)."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        return True, None
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        return False, None
    prefix = pickles[0][:-len("data.pkl")] + "data/"
    records = {}
    for info in infos:
        if info.filename.startswith(prefix):
            key = info.filename[len(prefix):]
            if (info.compress_type != zipfile.ZIP_STORED or info.header_offset + info.file_size > size
                    or key in records):
                return False, None
            records[key] = info.file_size
    return False, records
