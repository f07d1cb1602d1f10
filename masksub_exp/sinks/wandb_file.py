"""Read W&B offline run files (`run-<id>.wandb`) back: wandb 0.31 ships no reader for them.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (crc32c, uint16 length,
type: 1 full, 2 first, 3 middle, 4 last) that assemble into protobuf `Record`s. A process killed with
SIGKILL leaves a prefix of that log (often the header alone: wandb-core buffers it), possibly torn in
its last chunk; the reader returns the whole records and stops at the tear.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

BLOCK, HEADER, CHUNK_HEADER = 32768, 7, 7


def records(path: Path) -> list[Any]:
    """Every complete record of the file, in order (an empty list for a header-only or foreign file)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        return []
    out, buf, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        end = pos + CHUNK_HEADER + length
        if (length == 0 and kind == 0) or end > len(data) or kind not in (1, 2, 3, 4):
            break  # zero fill, or a chunk torn by a kill: nothing after it can be trusted
        buf += data[pos + CHUNK_HEADER:end]
        pos = end
        if kind in (1, 4):
            record = pb.Record()
            try:
                record.ParseFromString(buf)
            except DecodeError:
                break
            out.append(record)
            buf = b""
    return out


def item_key(item: Any) -> str:
    """A history or summary item's key: wandb 0.31 writes most keys as `nested_key` parts."""
    return item.key or "/".join(item.nested_key)


def history_steps(path: Path) -> list[int]:
    """The `_step` of every history row in the file, in file order."""
    steps = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            steps.extend(int(item.value_json) for item in record.history.item if item_key(item) == "_step")
    return steps


def offline_files(run_dir: Path, run_id: str) -> list[Path]:
    """The offline run files of W&B run `run_id` in `run_dir`, oldest session first."""
    return sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))


def held_steps(run_dir: Path, run_id: str) -> set[int]:
    """The history steps that the run's offline files on disk hold (what `wandb sync` would upload)."""
    return {step for path in offline_files(run_dir, run_id) for step in history_steps(path)}
