"""A sweep's results store: files under one folder or URI, every write atomic.

Local paths and anything pyarrow's filesystems accept (``file://``, ``s3://``, ``gs://``)
work the same. A write goes to a temporary name in the same folder and is then renamed, so a
reader in another process sees the old file or the new one, never half of one (on object
stores, where a rename is a copy, the final object still appears whole). This is the one
atomic-write helper of the project: the tables, ``fits.json``, ``emergence.json``, the
report, sample grids and the training loop's file cache all go through it.

Like ``analysis.records``, it needs no torch and no Ray, and every layer may import it.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from analysis.errors import UserError

WRITE_ATTEMPTS = 4  # a write that fails (OSError) is tried again, after 1, 2, 3 s
RETRY_WAIT_S = 1.0


def storage_uri(path: str | Path) -> str:
    """A URI that pyarrow and Ray accept: local paths made absolute, URIs kept."""
    path = str(path)
    return path if "://" in path else str(Path(path).expanduser().resolve())


class ResultsStore:
    """Files under ``uri`` (a folder or a URI); names are relative, with ``/``."""

    def __init__(self, uri: str | Path) -> None:
        self.uri = storage_uri(uri)
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise UserError(f"storage: cannot open {str(uri)!r}: {exc}") from None

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}" if name else self.root

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def makedirs(self, name: str = "") -> None:
        self.fs.create_dir(self.path(name), recursive=True)

    def check_reachable(self) -> None:
        """Raise UserError when the store cannot be listed (an object store out of reach, bad
        credentials): before a sweep starts anything."""
        try:
            self.fs.get_file_info(self.root)
        except OSError as exc:
            raise UserError(f"storage: cannot reach {self.uri}: {str(exc).strip().splitlines()[0][:300]}; check the "
                            "endpoint, network and credentials (for S3: the AWS_* environment variables)") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomically: a temporary file beside the target, then a rename. A failed attempt
        (an object store's transient error) is retried, WRITE_ATTEMPTS in all; the target is
        only ever the old file or the whole new one."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._write_once(name, data)
                return
            except OSError:
                if attempt == WRITE_ATTEMPTS:
                    raise
                time.sleep(RETRY_WAIT_S * attempt)

    def _write_once(self, name: str, data: bytes) -> None:
        folder, _, base = name.rpartition("/")
        self.makedirs(folder)
        tmp = self.path(f"{folder + '/' if folder else ''}.{base}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, self.path(name))
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_json(self, name: str, document: Any) -> None:
        self.write_bytes(name, json.dumps(document, indent=1).encode())

    def read_json(self, name: str, default: Any = None) -> Any:
        if not self.exists(name):
            return default
        return json.loads(self.read_bytes(name))

    def write_table(self, name: str, df) -> None:
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        self.write_bytes(name, buffer.getvalue())

    def read_table(self, name: str):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.read_bytes(name))).to_pandas()

    def listdir(self, name: str = "") -> list[str]:
        """Names of the entries directly under ``name`` (none when it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(name), allow_not_found=True))
        return sorted(Path(i.path).name for i in infos)

    def is_dir(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.Directory

    def modified(self, name: str) -> float | None:
        """Last modification time (seconds since the epoch), None when unknown or absent."""
        info = self.fs.get_file_info(self.path(name))
        return None if info.mtime is None else info.mtime.timestamp()

    def delete_dir(self, name: str) -> None:
        self.fs.delete_dir(self.path(name))
