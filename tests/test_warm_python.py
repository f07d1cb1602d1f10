"""The warm Python (tests/warm_python.py) runs a command as a fresh interpreter would: same observable process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import warm_python
from .conftest import command_env

PROBE = """
import atexit, json, os, sys, threading, time
import torch
atexit.register(lambda: print("atexit handlers run"))
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[:2], "name": __name__,
                  "probe": os.environ.get("PROBE"), "threads": torch.get_num_threads(),
                  "main": sys.modules["__main__"].__spec__.name}))
print("to stderr", file=sys.stderr)
threading.Thread(target=lambda: print("a non-daemon thread ends before exit")).start()
if sys.argv[1] == "wait":
    time.sleep(600)
if sys.argv[1] == "interrupt":
    raise KeyboardInterrupt
if sys.argv[1] == "crash":
    raise ValueError("a crash")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[warm_python.WarmServer]:
    server = warm_python.WarmServer(sys.executable, command_env(), tmp_path_factory.mktemp("warm"))
    yield server
    server.stop()


def probe_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "probe_mod.py").write_text(PROBE)
    env = command_env()
    return {**env, "PYTHONPATH": f"{tmp_path}:{env['PYTHONPATH']}", "PROBE": "yes", **extra}


@pytest.mark.parametrize("end", ["3", "crash", "interrupt"])
def test_a_warm_command_is_what_a_fresh_interpreter_is(server: warm_python.WarmServer, tmp_path: Path,
                                                       end: str) -> None:
    env, cwd = probe_env(tmp_path), tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "probe_mod", end]
    assert server.accepts(cmd, env)
    cold = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    warm = warm_python.run(server, cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert warm.returncode == cold.returncode == {"3": 3, "crash": 1, "interrupt": -signal.SIGINT}[end]
    assert warm.stdout == cold.stdout
    assert "atexit handlers run" in warm.stdout and "non-daemon thread ends" in warm.stdout
    last = lambda err: err.strip().splitlines()[-1]  # noqa: E731  (the traceback's frames differ: runpy's)
    assert last(warm.stderr) == last(cold.stderr) and ("Traceback" in warm.stderr) == (end != "3")
    seen = json.loads(warm.stdout.splitlines()[0])
    assert seen["cwd"] == str(cwd) and seen["probe"] == "yes" and seen["name"] == "__main__"
    assert seen["main"] == "probe_mod" and seen["path0"] == [str(cwd), str(tmp_path)]


def test_signals_reach_the_command_and_its_end_is_reported_like_popens(server: warm_python.WarmServer,
                                                                       tmp_path: Path) -> None:
    env = probe_env(tmp_path)
    proc = warm_python.WarmProcess(server, [sys.executable, "-m", "probe_mod", "wait"], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)
    assert json.loads(proc.stdout.readline())["argv"][1] == "wait"  # it runs: now kill it
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL and proc.poll() == -signal.SIGKILL


def test_other_import_time_settings_start_cold(server: warm_python.WarmServer, tmp_path: Path) -> None:
    """Threads are read while torch imports: a command asking for other threads than the server's runs cold."""
    cmd = [sys.executable, "-m", "probe_mod", "0"]
    assert server.accepts(cmd, probe_env(tmp_path, MASKSUB_UNRELATED="1"))
    assert not server.accepts(cmd, probe_env(tmp_path, OMP_NUM_THREADS="7"))
    assert not server.accepts(cmd, probe_env(tmp_path, TIMM_FUSED_ATTN="0"))
    assert not server.accepts([sys.executable, "-c", "pass"], probe_env(tmp_path))
