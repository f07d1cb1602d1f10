"""Reading weights files without running their code.

A `.pt`/`.pth` file is a pickle, and a pickle can call any function while it loads. Every file a run
reads (a `model.checkpoint=` release, a run's own `checkpoints/last.pt`) therefore goes through torch's
`weights_only` unpickler, which builds tensors, containers and plain values and refuses every other
global. What the supported formats legitimately hold beyond that is allowed here by name
(`ALLOWED_GLOBALS`, through torch's `safe_globals`), nothing else. A user who trusts a file that needs
more lists the refused names in `model.trust_checkpoint_globals`.

A refused file is found before anything is built: `refused_globals` lists the pickle's globals by
reading its opcodes (torch's own scanner), without unpickling anything.

OpenAI's CLIP releases are TorchScript archives, which `torch.load(weights_only=True)` refuses and
`torch.jit.load` would run. `load_torchscript_weights` reads such an archive's `data.pkl` with the same
weights_only unpickler instead: every `__torch__.*` class of the archive becomes an inert record of its
attributes, so the tensors come out and the archive's code (`code/`) is never compiled or run.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import _weights_only_unpickler  # torch's restricted unpickler (what weights_only=True uses)
from torch.jit import _pickle as jit_pickle

from .config import ConfigError

try:
    from numpy._core import multiarray as _np_multiarray  # numpy 2
except ImportError:  # numpy 1.x (the oldest supported environment)
    from numpy.core import multiarray as _np_multiarray

TRUST_KEY = "model.trust_checkpoint_globals"

# name in the pickle -> object. MAE, DeiT and timm training checkpoints keep their argparse arguments;
# our checkpoints keep numpy's RNG state (an ndarray); numpy scalars appear in metrics saved beside
# weights. numpy 1.x pickles name the `numpy.core` module, numpy 2.x `numpy._core`: both map to the same
# function. Each of these only rebuilds data; none calls back into the file.
ALLOWED_GLOBALS: dict[str, Any] = {
    "argparse.Namespace": argparse.Namespace,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    "numpy._core.multiarray._reconstruct": _np_multiarray._reconstruct,
    "numpy.core.multiarray._reconstruct": _np_multiarray._reconstruct,
    "numpy._core.multiarray.scalar": _np_multiarray.scalar,
    "numpy.core.multiarray.scalar": _np_multiarray.scalar,
}
# a dtype is rebuilt by numpy.dtype(...) and then set up by its class's __setstate__: the numeric classes
# (numpy.dtypes.Float64DType, ...) must be allowed too, though no pickle names them
ALLOWED_GLOBALS |= {f"{type(d).__module__}.{type(d).__name__}": type(d) for d in map(np.dtype, (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64", "complex64", "complex128"))}
# TorchScript's pickler tags typed lists and dicts with these; each returns its argument unchanged
# modules torch refuses in a weights_only load even when a name is allowlisted
_BLOCKED_MODULES = set(getattr(_weights_only_unpickler, "_blocklisted_modules", ("sys", "os", "posix", "nt")))
_TORCHSCRIPT_GLOBALS: dict[str, Any] = {
    f"torch.jit._pickle.{name}": getattr(jit_pickle, name)
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
}
# how torch's weights_only reader names what it refused: a global of the pickle, or the class of an object
_REFUSED_IN_ERROR = re.compile(r"GLOBAL (\S+)|but got <class '([^']+)'>")


class UnsafeCheckpointError(ConfigError):
    """A weights file that needs a global outside the allowlist; the message names the file and the global."""


def _refusal(label: str, names: Sequence[str], resume: bool) -> UnsafeCheckpointError:
    names = sorted(set(names))
    what = ("this project's checkpoints never hold it" if resume else
            "the allowlist holds tensors, containers, numbers, strings, argparse.Namespace, numpy arrays and scalars")
    way_out = "; or start over with train.resume=never (the old files are kept aside)" if resume else ""
    blocked = sorted({n.split(".")[0] for n in names} & _BLOCKED_MODULES)
    if blocked:  # torch refuses these modules even when allowlisted: saying how to allow them would be a lie
        how = (f"torch never lets a weights file use the module {', '.join(blocked)} (no setting allows it): "
               "this is not a weights file")
    else:
        how = f"If you trust this file, allow it by name: {TRUST_KEY}=[{','.join(names)}]"
    return UnsafeCheckpointError(
        f"{label}: refused to load it: it needs {', '.join(names)}, which a weights file may not load "
        f"({what}); nothing of the file ran. {how}{way_out}")


def resolve_trusted(names: Sequence[str]) -> dict[str, Any]:
    """`module.Qualname` strings (as a refusal message writes them) -> the objects, imported by name."""
    found: dict[str, Any] = {}
    for name in names:
        parts = str(name).split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            found[str(name)] = obj
            break
        else:
            raise ConfigError(f"{TRUST_KEY}: cannot import {name!r}; write module.Name as a refusal message names it")
    return found


def _allowed(trusted: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**ALLOWED_GLOBALS, **(extra or {}), **resolve_trusted(trusted)}


@contextmanager
def _safe_globals(allowed: dict[str, Any]) -> Iterator[None]:
    # (object, name) pairs: a global is matched by the name the pickle writes, so numpy's old module
    # names and TorchScript's `__torch__` names resolve to the objects chosen here
    with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
        yield


def _archive_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []  # not a zip: a legacy (pre-1.6) torch.save file or a plain pickle


def is_torchscript_archive(path: str | Path) -> bool:
    """A TorchScript archive (torch.jit.save, OpenAI's CLIP releases): a zip whose top folder holds
    `constants.pkl` and `code/`, which torch.save archives never have."""
    return any(re.fullmatch(r"[^/]+/(constants\.pkl|code/.*)", name) for name in _archive_names(Path(path)))


def _torchscript_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n))
        return archive.read(name)


def refused_globals(path: str | Path, trusted: Sequence[str] = ()) -> list[str]:
    """The globals of the file's pickle outside the allowlist, found by reading its opcodes (nothing is
    unpickled). A legacy non-zip file gives []: it is checked while `safe_torch_load` reads it. Raises
    pickle.UnpicklingError for an opcode torch's weights_only reader cannot read."""
    path = Path(path)
    if is_torchscript_archive(path):
        names = _weights_only_unpickler.get_globals_in_pkl(io.BytesIO(_torchscript_pickle(path)))
        allowed = set(_allowed(trusted, _TORCHSCRIPT_GLOBALS)) | set(_weights_only_unpickler._get_allowed_globals())
        return sorted(n for n in names if n not in allowed and not n.startswith("__torch__."))
    if not _archive_names(path):
        return []
    with _safe_globals(_allowed(trusted)):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def _refused(exc: pickle.UnpicklingError, label: str, resume: bool) -> UnsafeCheckpointError:
    match = _REFUSED_IN_ERROR.search(str(exc))
    if match:
        return _refusal(label, [match.group(1) or match.group(2)], resume)
    found = re.search(r"Unsupported operand \d+", str(exc))
    if not found:
        words = " ".join(str(exc).split("WeightsUnpickler error:")[-1].split()[:30])
        return UnsafeCheckpointError(f"{label}: refused to load it: torch's weights_only reader stopped at: {words}")
    # an opcode torch.save never writes (pickle protocol 4+: STACK_GLOBAL, FRAME, ...), which torch's
    # weights_only reader cannot read at all, so no allowlist entry would help
    detail = found.group(0)
    return UnsafeCheckpointError(
        f"{label}: refused to load it: its pickle uses an instruction that torch's weights_only reader does not "
        f"read ({detail}; pickle protocol 4 or newer), and reading it any other way could run code; nothing of the "
        "file ran. If you trust the file, re-save its tensors with torch.save's default protocol or as .safetensors")


def check_file(path: str | Path, *, label: str, trusted: Sequence[str] = (), resume: bool = False) -> None:
    """Raise UnsafeCheckpointError (one line: file, refused globals, how to allow them) if the file needs
    anything outside the allowlist."""
    try:
        refused = refused_globals(path, trusted)
    except pickle.UnpicklingError as exc:
        raise _refused(exc, label, resume) from None
    if refused:
        raise _refusal(label, refused, resume)


def safe_torch_load(path: str | Path, *, label: str, trusted: Sequence[str] = (), mmap: bool = False,
                    resume: bool = False) -> Any:
    """torch.load(weights_only=True) on the CPU with the allowlist (+ `trusted`); a refusal is one line."""
    check_file(path, label=label, trusted=trusted, resume=resume)
    try:
        with _safe_globals(_allowed(trusted)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # what the opcode scan cannot see (a legacy file, a blocked module)
        raise _refused(exc, label, resume) from None


# newer torch tells `_load` that it reads with the weights_only unpickler (torch 2.6 has no such argument)
_LOAD_FLAGS = {"weights_only": True} if "weights_only" in inspect.signature(torch.serialization._load).parameters \
    else {}


class ScriptObject:
    """An inert stand-in for one `__torch__.*` class of a TorchScript archive: it keeps the attributes
    the archive pickled for it (submodules, tensors, plain values) and has no other behaviour."""

    script_type = ""

    def __setstate__(self, state: Any) -> None:  # called by the weights_only unpickler's BUILD
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _stand_ins(names: set[str]) -> dict[str, Any]:
    return {n: type(n.rsplit(".", 1)[-1], (ScriptObject,), {"script_type": n}) for n in names
            if n.startswith("__torch__.")}


def _tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:  # a submodule reachable twice is read once, under its first name
        return
    seen.add(id(obj))
    for name, value in getattr(obj, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()
        elif isinstance(value, ScriptObject):
            _tensors(value, f"{prefix}{name}.", out, seen)


def load_torchscript_weights(path: str | Path, *, label: str, trusted: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by attribute path (the names
    `torch.jit.load(path).state_dict()` gives its parameters and buffers), without running its code."""
    path = Path(path)
    check_file(path, label=label, trusted=trusted)
    stand_ins = _stand_ins(_weights_only_unpickler.get_globals_in_pkl(io.BytesIO(_torchscript_pickle(path))))
    reader = torch._C.PyTorchFileReader(str(path))
    try:
        with _safe_globals(_allowed(trusted, {**_TORCHSCRIPT_GLOBALS, **stand_ins})):
            # torch.load's own zip reader and storage loading, with the weights_only unpickler; torch.load
            # itself refuses TorchScript archives under weights_only=True and would hand them to torch.jit.load
            root = torch.serialization._load(reader, "cpu", _weights_only_unpickler, encoding="utf-8", **_LOAD_FLAGS)
    except pickle.UnpicklingError as exc:
        raise _refused(exc, label, False) from None
    out: dict[str, torch.Tensor] = {}
    _tensors(root, "", out, set())
    return out
