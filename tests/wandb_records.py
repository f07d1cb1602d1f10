"""Read an offline W&B run file (`run-<id>.wandb`) back: wandb 0.31 ships no reader for it.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (crc32, length,
type: 1 full, 2 first, 3 middle, 4 last) that assemble into protobuf `Record`s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, CHUNK_HEADER = 32768, 7, 7


def records(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, buf, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if length == 0 and kind == 0:
            break
        buf += data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def kinds(path: Path) -> list[str]:
    """The record types in the file, in order ("run", "history", ..., "exit")."""
    return [record.WhichOneof("record_type") for record in records(path)]


def exit_code(path: Path) -> int:
    """The exit code the run's `finish()` wrote (its exit record, which must be there)."""
    exits = [record.exit.exit_code for record in records(path) if record.WhichOneof("record_type") == "exit"]
    assert exits, f"{path} has no exit record (records: {kinds(path)}, {path.stat().st_size} bytes)"
    return exits[-1]


def run_info(path: Path) -> dict[str, Any]:
    """The run record's id, group, job type, name and config, plus every logged history key."""
    info: dict[str, Any] = {"history_keys": set()}
    found = records(path)
    assert any(r.WhichOneof("record_type") == "run" for r in found), (
        f"{path} holds no run record ({len(found)} records, {path.stat().st_size} bytes): is the file complete?")
    for record in found:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info.update(id=record.run.run_id, group=record.run.run_group, job_type=record.run.job_type,
                        name=record.run.display_name,
                        config={i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            info["history_keys"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
    return info
