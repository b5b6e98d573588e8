"""Append-only segment log: CRC-framed Arrow record batches, fsync'd, torn tails dropped.

One segment file (segment-00000001.log, -00000002.log, ... in the data directory):
    b"RLHFLOG1"                               8-byte magic
    frame, frame, ...                         <u32 length><u32 crc32(kind + payload)><u8 kind>
                                              then `length` payload bytes
The first two frames of a segment are the Arrow schemas of its task and label batches, so a
segment is readable on its own; every later frame is one Arrow IPC record batch holding all the
rows of one accepted request, so a request is in the log entirely or not at all.

A kill can leave the last frame of the last segment half written (or, after a power loss,
zero-filled). Replay stops at the first frame whose header or CRC does not check out and, in
the last segment only, truncates it away. A bad frame in an earlier segment was fsync'd
before that segment was closed, so it is real corruption: replay refuses to guess.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from rlhf_dist.ingest.schema import LABEL_SCHEMA, TASK_SCHEMA

MAGIC = b"RLHFLOG1"
HEADER = struct.Struct("<IIB")  # payload length, crc32 of kind byte + payload, kind
KIND_TASK_SCHEMA, KIND_LABEL_SCHEMA, KIND_TASKS, KIND_LABELS = 1, 2, 3, 4
MAX_PAYLOAD = 1 << 30           # a larger length field can only be garbage
SEGMENT_PREFIX, SEGMENT_SUFFIX = "segment-", ".log"


class CorruptLog(Exception):
    """The log is damaged somewhere a kill cannot have damaged it."""


@dataclass
class ReplayReport:
    segments: int = 0
    task_batches: int = 0
    label_batches: int = 0
    torn_bytes_dropped: int = 0     # cut from the tail of the last segment
    torn_segment: str = ""


@dataclass
class _Scan:
    frames: list[tuple[int, memoryview]] = field(default_factory=list)
    valid_bytes: int = 0            # offset just past the last good frame
    header_ok: bool = False


def encode_frame(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes([kind])))
    return HEADER.pack(len(payload), crc, kind) + payload


def _scan(data: bytes) -> _Scan:
    """Parse frames until the end or the first one that does not check out."""
    scan = _Scan()
    if data[: len(MAGIC)] != MAGIC:
        return scan
    scan.header_ok, scan.valid_bytes = True, len(MAGIC)
    view, pos = memoryview(data), len(MAGIC)
    while pos + HEADER.size <= len(data):
        length, crc, kind = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length > MAX_PAYLOAD or end > len(data):
            break
        payload = view[pos + HEADER.size: end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            break
        scan.frames.append((kind, payload))
        pos = scan.valid_bytes = end
    return scan


def segment_paths(data_dir: str) -> list[str]:
    names = sorted(n for n in os.listdir(data_dir)
                   if n.startswith(SEGMENT_PREFIX) and n.endswith(SEGMENT_SUFFIX))
    return [os.path.join(data_dir, n) for n in names]


def _decode(path: str, frames: list[tuple[int, memoryview]]) -> list[tuple[int, pa.RecordBatch]]:
    """Frames -> (kind, record batch), reading each batch with the schema its segment names."""
    schemas: dict[int, pa.Schema] = {}
    out = []
    for kind, payload in frames:
        buf = pa.py_buffer(payload)
        if kind == KIND_TASK_SCHEMA:
            schemas[KIND_TASKS] = pa.ipc.read_schema(buf)
        elif kind == KIND_LABEL_SCHEMA:
            schemas[KIND_LABELS] = pa.ipc.read_schema(buf)
        elif kind in schemas:
            out.append((kind, pa.ipc.read_record_batch(buf, schemas[kind])))
        else:
            raise CorruptLog(f"{path}: frame kind {kind} before its schema")
    return out


def replay(data_dir: str, repair: bool) -> tuple[list[tuple[int, pa.RecordBatch]], ReplayReport]:
    """Every intact record batch in log order. With repair, truncate a torn tail for good."""
    report, batches = ReplayReport(), []
    paths = segment_paths(data_dir)
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            data = f.read()
        scan = _scan(data)
        torn = len(data) - scan.valid_bytes
        if torn and i < len(paths) - 1:
            raise CorruptLog(f"{path}: bad frame at byte {scan.valid_bytes} of a closed segment")
        if torn:
            report.torn_bytes_dropped, report.torn_segment = torn, os.path.basename(path)
            if repair:
                _truncate(path, scan.valid_bytes)
        decoded = _decode(path, scan.frames)
        report.segments += 1
        report.task_batches += sum(1 for kind, _ in decoded if kind == KIND_TASKS)
        report.label_batches += sum(1 for kind, _ in decoded if kind == KIND_LABELS)
        batches.extend(decoded)
    return batches, report


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    """Make a created file's directory entry durable, not just its bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_header() -> bytes:
    return (MAGIC
            + encode_frame(KIND_TASK_SCHEMA, TASK_SCHEMA.serialize().to_pybytes())
            + encode_frame(KIND_LABEL_SCHEMA, LABEL_SCHEMA.serialize().to_pybytes()))


class SegmentWriter:
    """Appends frames to the newest segment; a new segment once the current one is full.

    Not thread safe: the store's single committer thread owns it. `fsync` is injectable so a
    test can hold it and check that nothing is acknowledged before it returns.
    """

    def __init__(self, data_dir: str, segment_bytes: int, write_chunk_bytes: int = 0,
                 fsync: Callable[[int], None] = os.fsync):
        self.data_dir = data_dir
        self.segment_bytes = segment_bytes
        self.write_chunk_bytes = write_chunk_bytes  # >0 only to let crash tests land mid-frame
        self._fsync = fsync
        paths = segment_paths(data_dir)
        self._index = int(os.path.basename(paths[-1])[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]) \
            if paths else 0
        self._fd = -1
        self._size = 0
        if paths and _has_schemas(paths[-1]):
            self._fd = os.open(paths[-1], os.O_WRONLY | os.O_APPEND)
            self._size = os.fstat(self._fd).st_size
        else:  # none yet, or a segment torn while its header was being written
            self._start_segment(max(self._index, 1))

    @property
    def segment_count(self) -> int:
        return len(segment_paths(self.data_dir))

    def _start_segment(self, index: int) -> None:
        path = os.path.join(self.data_dir, f"{SEGMENT_PREFIX}{index:08d}{SEGMENT_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        header = _segment_header()
        self._write(fd, header)
        self._fsync(fd)
        _fsync_dir(self.data_dir)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._index, self._size = fd, index, len(header)

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        chunk = self.write_chunk_bytes or len(view)
        while view:
            written = os.write(fd, view[:chunk])
            view = view[written:]

    def append(self, frames: list[bytes]) -> None:
        """Write frames (not yet durable: call sync)."""
        for frame in frames:
            self._write(self._fd, frame)
            self._size += len(frame)

    def sync(self) -> None:
        """Durable once this returns; then start a new segment if this one is full."""
        self._fsync(self._fd)
        if self._size >= self.segment_bytes:
            self._start_segment(self._index + 1)

    def close(self) -> None:
        if self._fd >= 0:
            self._fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _has_schemas(path: str) -> bool:
    with open(path, "rb") as f:
        scan = _scan(f.read(64 * 1024))
    kinds = {kind for kind, _ in scan.frames}
    return {KIND_TASK_SCHEMA, KIND_LABEL_SCHEMA} <= kinds
