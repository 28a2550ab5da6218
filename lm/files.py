import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path` and rename, so `path` is either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
