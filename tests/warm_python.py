"""A warm Python for the tests that start the command line again and again.

One server process per test worker imports the heavy third-party libraries once (torch, torchvision, timm,
hydra, numpy: about 9 s of CPU on the 2-core machine) and then forks a child for each command. The child runs
`python -m MODULE ARGS` the way a fresh interpreter runs it: its own pid (signals reach it, SIGKILL included),
the environment, working directory, stdio and `sys.path` the test gave, `__main__` set by runpy as `-m` sets it,
the normal interpreter exit (atexit, flushing, non-daemon threads), and the exit status reported back like
Popen's (negative for a signal). Our own package is imported afresh in each child: the server never imports it.

What a warm child cannot share with a fresh interpreter is what those libraries read from the environment while
they import; a command whose import-time variables (threads, torch/timm switches, locale, ...) differ from the
server's therefore starts cold, as a plain subprocess. The tests of what the command line imports
(tests/test_startup.py) always start cold.

Run as `python tests/warm_python.py SOCKET`: prints "ready" once the imports are done.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

PRELOAD = ("numpy", "PIL.Image", "torch", "torchvision", "timm", "omegaconf", "hydra", "submitit")
# variables the preloaded libraries (or the interpreter) read while importing: a child whose values differ
# would not be what a fresh process is, so it starts cold
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "TIMM_", "CUDA_",
                        "LD_", "LC_", "LANG", "PYTHON")


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment a warm child inherits from the server instead of reading itself."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k != "PYTHONPATH"}


# ---- the server (runs in its own process) ------------------------------------------------------------------

def _child(request: dict[str, Any], fds: list[int], base_path: list[str]) -> dict[str, Any]:
    """In the forked child: become the process the request describes."""
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *base_path]  # what `python -m` builds: cwd first, then PYTHONPATH
    import numpy as np
    import torch

    np.random.seed()  # a fresh interpreter draws numpy's global state from the OS, not from its parent's
    threads = request["env"].get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else (os.cpu_count() or 1))
    return request


def serve(path: str) -> dict[str, Any]:
    """Answer requests until the parent goes; returns only in a forked child, with its request."""
    for name in PRELOAD:
        __import__(name)
    import gc

    gc.freeze()  # the children's collections skip what the server loaded: no copy-on-write of the whole heap
    own = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    base_path = [p for p in sys.path[1:] if p not in own]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    parent = os.getppid()
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while os.getppid() == parent:  # the test worker is gone: stop (its children are not ours to end)
        for key, _ in sel.select(timeout=1.0):
            if key.data is None:  # a new command
                conn, _ = listener.accept()
                raw, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
                size, raw = int(raw[:10]), raw[10:]  # a length, then the JSON (a large env may come in parts)
                while len(raw) < size:
                    raw += conn.recv(size - len(raw))
                request = json.loads(raw.decode())
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:  # the child keeps none of the server's sockets and other children's handles
                    for other in sel.get_map().values():
                        if other.data is not None:
                            other.data[1].close()
                            os.close(other.fd)
                    sel.close()
                    listener.close()
                    conn.close()
                    return _child(request, fds, base_path)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                sel.register(pidfd, selectors.EVENT_READ, (pid, conn))
                _send(conn, {"pid": pid})
            else:  # a child ended: reap it and tell its client
                pid, conn = key.data
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                _send(conn, {"returncode": os.waitstatus_to_exitcode(status)})
                conn.close()
    sys.exit(0)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the test that asked has gone; nothing to tell
        pass


# ---- the client (in the test process) -----------------------------------------------------------------------

class WarmServer:
    """The test worker's handle on its server: started once, on first use."""

    def __init__(self, python: str, env: dict[str, str], folder: Path) -> None:
        self.python, self.env, self.path = python, env, str(folder / "warm.sock")
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def ensure_started(self) -> None:
        with self.lock:
            if self.proc is None:
                self.proc = subprocess.Popen([self.python, __file__, self.path], env=self.env, stdout=subprocess.PIPE,
                                             stdin=subprocess.DEVNULL, text=True)
                line = self.proc.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"the warm Python did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def accepts(self, cmd: list[str], env: dict[str, str] | None) -> bool:
        """Whether `cmd` (in `env`) can run warm: `python -m MODULE ...` whose import-time variables match."""
        return (len(cmd) >= 3 and cmd[0] == self.python and cmd[1] == "-m"
                and import_time_env(env if env is not None else dict(os.environ)) == import_time_env(self.env))


def _stream_fd(spec: Any, default: int) -> tuple[int, int | None]:
    """(fd the child gets, our read end or None) for Popen's stdout/stderr argument."""
    if spec is None:
        return os.dup(default), None
    if spec == subprocess.DEVNULL:
        return os.open(os.devnull, os.O_RDWR), None
    if spec == subprocess.PIPE:
        read, write = os.pipe()
        return write, read
    if isinstance(spec, int):
        return os.dup(spec), None
    return os.dup(spec.fileno()), None


class WarmProcess:
    """The part of subprocess.Popen the tests use, for a command run by the warm server."""

    def __init__(self, server: WarmServer, cmd: list[str], *, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, stdout: Any = None, stderr: Any = None, text: bool = False,
                 start_new_session: bool = False) -> None:
        server.ensure_started()
        self.args, self.returncode = cmd, None
        out_fd, out_read = _stream_fd(stdout, 1)
        if stderr == subprocess.STDOUT:
            err_fd, err_read = os.dup(out_fd), None
        else:
            err_fd, err_read = _stream_fd(stderr, 2)
        in_fd = os.open(os.devnull, os.O_RDONLY)
        request = {"module": cmd[2], "argv": cmd[3:], "cwd": str(cwd or os.getcwd()), "new_session": start_new_session,
                   "env": dict(env if env is not None else os.environ)}
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.connect(server.path)
        try:
            payload = json.dumps(request).encode()
            message = b"%010d" % len(payload) + payload
            sent = socket.send_fds(self.conn, [message], [in_fd, out_fd, err_fd])
            self.conn.sendall(message[sent:])
        finally:
            for fd in (in_fd, out_fd, err_fd):
                os.close(fd)
        self._buffer = b""
        self.pid = json.loads(self._line(None))["pid"]
        self.pidfd = os.pidfd_open(self.pid)  # signals go to this process, never to a pid reused after it
        mode = "r" if text else "rb"
        self.stdout: IO | None = open(out_read, mode) if out_read is not None else None  # noqa: SIM115
        self.stderr: IO | None = open(err_read, mode) if err_read is not None else None  # noqa: SIM115

    def poll(self) -> int | None:
        return self._status(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                return None
            self.returncode = json.loads(line)["returncode"]
            self.conn.close()
            os.close(self.pidfd)
        return self.returncode

    def _line(self, timeout: float | None) -> str | None:
        """The server's next message, or None when none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.conn], [], [], left)[0]:
                return None
            chunk = self.conn.recv(4096)
            if not chunk:
                raise RuntimeError("the warm Python went away before the command ended")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:  # already ended, not yet reaped
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr to their ends, then the exit status (TimeoutExpired if it takes longer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results: dict[str, Any] = {}
        readers = [threading.Thread(target=lambda n=n, f=f: results.__setitem__(n, f.read()), daemon=True)
                   for n, f in (("out", self.stdout), ("err", self.stderr)) if f is not None]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        return results.get("out"), results.get("err")


def run(server: WarmServer, cmd: list[str], *, timeout: float | None = None, capture_output: bool = False,
        check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run for a warm command: on a timeout the child is killed, as subprocess.run kills it."""
    if capture_output:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = WarmProcess(server, cmd, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def exit_like_python(code: int, by_signal: int | None = None) -> None:
    """End the child as the interpreter ends `python -m`, up to its module teardown: non-daemon threads joined,
    atexit handlers run (logging's and W&B's flushes among them), garbage collected, stdio flushed. The teardown
    itself, freeing every module torch and timm loaded, costs about 3 s of CPU and shows nothing a command could
    rely on (its files are closed by then), so the child leaves there."""
    import atexit
    import gc

    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    gc.collect()  # the child's own garbage only: the server's objects are frozen
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if by_signal is not None:
        signal.signal(by_signal, signal.SIG_DFL)
        os.kill(os.getpid(), by_signal)
    os._exit(code)


def run_child(job: dict[str, Any]) -> None:
    """Run the job's module as `python -m` would, and exit with the status the interpreter would give."""
    import runpy
    import traceback

    sys.argv = [job["module"], *job["argv"]]
    try:
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:  # what the interpreter makes of sys.exit(x)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # uncaught: the traceback, the exit steps, then death by SIGINT (Python 3.8+)
        traceback.print_exc()
        exit_like_python(1, by_signal=signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    exit_like_python(code)


if __name__ == "__main__":
    run_child(serve(sys.argv[1]))  # serve returns in a forked child only
