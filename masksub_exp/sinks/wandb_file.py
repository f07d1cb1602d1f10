"""Read W&B offline run files (`run-<id>.wandb`) back: wandb 0.31 ships no reader for them.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (crc32c, uint16 length,
type: 1 full, 2 first, 3 middle, 4 last) that assemble into protobuf `Record`s. A process killed with
SIGKILL leaves a prefix of that log (often the header alone: wandb-core buffers it), possibly torn in
its last chunk; the reader returns the whole records and stops at the tear.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK, HEADER, CHUNK_HEADER = 32768, 7, 7
LATE_KINDS = ("eval", "test")  # records drawn against their own `<kind>/epoch` axis, not W&B's step


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


def history_rows(path: Path) -> list[dict[str, str]]:
    """Every history row of the file, in file order: {key: its JSON text}, `_step` included."""
    return [{item_key(item): item.value_json for item in record.history.item}
            for record in records(path) if record.WhichOneof("record_type") == "history"]


def offline_files(run_dir: Path, run_id: str) -> list[Path]:
    """The offline run files of W&B run `run_id` in `run_dir`, oldest session first."""
    return sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))


@dataclass
class Held:
    """What the run's offline files on disk hold (what `wandb sync` would upload): the history steps, and the
    eval/test records by the optimizer step they were taken at (`<kind>/step`; a row without it: its `_step`)."""

    steps: set[int] = field(default_factory=set)
    records: set[tuple[str, int]] = field(default_factory=set)

    @property
    def until(self) -> int:
        return max(self.steps, default=-1)


def held(run_dir: Path, run_id: str) -> Held:
    out = Held()
    for path in offline_files(run_dir, run_id):
        for row in history_rows(path):
            step = int(row["_step"])
            out.steps.add(step)
            for kind in LATE_KINDS:
                if any(key.startswith(f"{kind}/") for key in row):
                    out.records.add((kind, int(row.get(f"{kind}/step", step))))
    return out
