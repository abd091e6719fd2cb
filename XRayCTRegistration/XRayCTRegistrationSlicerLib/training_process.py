"""Training the initialiser out of process: the command line, its progress lines, and the process driver.

``xrayctreg train --progress-lines`` prints ``PROGRESS <fraction> <message>`` lines on stdout.
:class:`TrainingProcess` runs it in a ``qt.QProcess`` (or any object with the same few methods, so
tests can drive it), cuts its output into lines, reports progress, and on exit says whether the
model was trained, the training was cancelled (the last checkpoint stays, ``--resume`` continues it)
or it failed (with the last lines of its output).
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.names import MODEL_KINDS

PROGRESS_PREFIX = "PROGRESS"
"""Start of the progress lines printed by ``xrayctreg train``: ``PROGRESS <fraction> <message>``."""

LOG_LINES = 20
"""Lines of the process's other output kept for an error report."""

NORMAL_EXIT = 0
"""``QProcess::NormalExit``: the process ended by itself (not killed or crashed)."""


def pythonExecutable() -> str:
    """Python that runs the training: PythonSlicer inside Slicer (found on PATH), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def trainCommand(ctPath: str, geometryPath: str, modelPath: str, method: str = "regressor",
                 timeBudgetS: float | None = None, iterations: int | None = None, resume: bool = False,
                 threads: int | None = None, python: str | None = None, physicsKvp: tuple[float, float] | None = None,
                 extraArgs: Sequence[str] = ()) -> list[str]:
    """Command line that trains a model out of process: ``xrayctreg train ...`` run by Python.

    ``method``: a model kind of ``names.MODEL_KINDS`` (an initialiser, or ``sopi-fine``).

    The program is ``python`` (default: :func:`pythonExecutable`) running the library's CLI module, so
    no console script needs to be on PATH. The process prints ``PROGRESS <fraction> <message>`` lines
    on stdout (see :func:`parseProgressLine`) and writes the model file ``modelPath`` (checkpoints
    while it runs, so a killed training can be continued with ``resume``). ``timeBudgetS`` is the
    total training time in seconds, ``iterations`` the total number of steps (either or both).
    ``physicsKvp`` ``(low, high)``: train on physics X-rays, each at a tube voltage (kV) drawn in that range
    (``--physics-kvp``; the CLI's default scatter range).
    """
    for name, value in (("ctPath", ctPath), ("geometryPath", geometryPath), ("modelPath", modelPath)):
        if not value:
            raise InputError(f"train: '{name}' is empty")
    if method not in MODEL_KINDS:
        raise InputError(f"train: method {method!r} is not one of {', '.join(MODEL_KINDS)}")
    if timeBudgetS is not None and not (math.isfinite(timeBudgetS) and timeBudgetS > 0):
        raise InputError(f"train: time budget must be > 0 s, got {timeBudgetS}")
    if iterations is not None and iterations < 1:
        raise InputError(f"train: iterations must be >= 1, got {iterations}")
    command = [python or pythonExecutable(), "-m", "XRayCTRegistrationLib.cli", "train",
               "--ct", str(ctPath), "--geometry", str(geometryPath), "--model", method, "--out", str(modelPath),
               "--progress-lines", "--quiet"]
    if timeBudgetS is not None:
        command += ["--time-budget", f"{float(timeBudgetS):g}"]
    if iterations is not None:
        command += ["--iterations", str(int(iterations))]
    if resume:
        command.append("--resume")
    if threads is not None:
        command += ["--threads", str(int(threads))]
    if physicsKvp is not None:
        low, high = (float(v) for v in physicsKvp)
        if not (20.0 <= low <= high <= 150.0):
            raise InputError(f"train: physics tube voltages must satisfy 20 <= low <= high <= 150 kV, got {low:g}, "
                             f"{high:g}")
        command += ["--physics-kvp", f"{low:g}", f"{high:g}"]
    return command + [str(a) for a in extraArgs]


def trainEnvironment(libraryFolder: str) -> dict[str, str]:
    """Environment additions for the training process: ``libraryFolder`` (holding the library) on PYTHONPATH."""
    current = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": libraryFolder + (os.pathsep + current if current else "")}


def commandText(command: Sequence[str]) -> str:
    """A command line as one shell-quoted string, for logs."""
    return " ".join(shlex.quote(c) for c in command)


def parseProgressLine(line: str) -> tuple[float, str] | None:
    """``(fraction, message)`` of a ``PROGRESS <fraction> <message>`` line, None for any other line.

    The fraction is clamped to [0, 1]; the message may be empty.
    """
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    if not math.isfinite(fraction):
        return None
    return min(1.0, max(0.0, fraction)), parts[2] if len(parts) > 2 else ""


def childPids() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process this user can see (``/proc`` on Linux, ``ps`` elsewhere)."""
    children: dict[int, list[int]] = {}
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # ended meanwhile
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
            children.setdefault(ppid, []).append(int(entry))
        return children
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    return children


def descendantPids(pid: int) -> list[int]:
    """Every process started by ``pid``, directly or not (children before grandchildren)."""
    children, out, todo = childPids(), [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def killProcessTree(pid: int) -> None:
    """Kill ``pid`` and every process it started (a launcher such as PythonSlicer starts the real Python).

    Windows: ``taskkill /T /F``. Elsewhere the descendants are listed first (a killed parent's children are
    re-parented and could no longer be found), then each gets SIGKILL; processes already gone are skipped.
    """
    if pid <= 0:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
        return
    for target in [pid, *descendantPids(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class TrainingOutcome:
    """How a training process ended.

    state: ``"trained"``, ``"cancelled"`` or ``"failed"``.
    modelPath: the model file it writes.
    exitCode: the process's exit code.
    log: the last :data:`LOG_LINES` lines of its output that were not progress lines.
    summary: its ``trained ...`` line, "" when none.
    checkpointKept: (cancelled) True when the model file exists, so a new training can continue it.
    """

    state: str
    modelPath: str
    exitCode: int = 0
    log: list[str] = field(default_factory=list)
    summary: str = ""
    checkpointKept: bool = False


def _qtProcess(environment: dict[str, str]):
    """A ``qt.QProcess`` with the system environment plus ``environment`` and stdout/stderr merged."""
    import qt

    process = qt.QProcess()
    env = qt.QProcessEnvironment.systemEnvironment()
    for key, value in environment.items():
        env.insert(key, value)
    process.setProcessEnvironment(env)
    process.setProcessChannelMode(qt.QProcess.MergedChannels)
    return process


class TrainingProcess:
    """Runs a training command out of process and reports progress and the outcome.

    ``onProgress(fraction, message)`` is called for each progress line, ``onFinished(outcome)`` once
    when the process ends. ``processFactory(environment)`` makes the process (default: a
    ``qt.QProcess``); it needs ``connect(signal, slot)``, ``start(program, args)``,
    ``waitForStarted(ms)``, ``readAllStandardOutput()``, ``processId()``, ``kill()``, ``waitForFinished(ms)``
    and ``errorString()``.
    """

    def __init__(self, onProgress: Callable[[float, str], None], onFinished: Callable[[TrainingOutcome], None],
                 processFactory: Callable[[dict[str, str]], object] | None = None) -> None:
        self.onProgress, self.onFinished = onProgress, onFinished
        self.processFactory = processFactory or _qtProcess
        self.process = None
        self.modelPath = ""
        self.cancelled = False
        self._pending = ""
        self._log: list[str] = []

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the process has ended."""
        return self.process is not None

    def start(self, command: Sequence[str], environment: dict[str, str], modelPath: str,
              timeoutMs: int = 10000) -> None:
        """Start ``command``; raises RuntimeError when it cannot be started."""
        if self.running:
            raise RuntimeError("a training is already running")
        process = self.processFactory(environment)
        process.connect("readyReadStandardOutput()", self._onOutput)
        process.connect("finished(int,QProcess::ExitStatus)", self._onFinished)
        self.process, self.modelPath, self.cancelled, self._pending, self._log = process, modelPath, False, "", []
        process.start(command[0], list(command[1:]))
        if not process.waitForStarted(timeoutMs):
            self.process = None
            raise RuntimeError(f"Could not start {command[0]}: {process.errorString()}")

    def cancel(self) -> None:
        """Kill the training and every process it started; its last checkpoint stays (the outcome says so)."""
        if self.process is not None:
            self.cancelled = True
            killProcessTree(int(self.process.processId()))
            self.process.kill()

    def stop(self, waitMs: int = 3000) -> None:
        """Cancel and wait for the process to end (when the module is closed)."""
        process = self.process
        self.cancel()
        if process is not None:
            process.waitForFinished(waitMs)

    def feed(self, text: str) -> None:
        """Take more output: complete lines are parsed, a partial last line waits for the rest."""
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            parsed = parseProgressLine(line)
            if parsed is not None:
                self.onProgress(*parsed)
            elif line.strip():
                self._log = (self._log + [line.rstrip()])[-LOG_LINES:]

    def _onOutput(self) -> None:
        if self.process is not None:
            data = self.process.readAllStandardOutput()
            raw = data.data() if hasattr(data, "data") else data
            self.feed(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw))

    def _onFinished(self, exitCode: int, exitStatus: int) -> None:
        self._onOutput()
        if self._pending.strip():
            self.feed("\n")
        self.process = None
        summary = next((line for line in reversed(self._log) if line.startswith("trained ")), "")
        if self.cancelled:
            state = "cancelled"
        elif exitCode != 0 or exitStatus != NORMAL_EXIT:
            state = "failed"
        else:
            state = "trained"
        self.onFinished(TrainingOutcome(state, self.modelPath, int(exitCode), list(self._log), summary,
                                        os.path.isfile(self.modelPath)))


class InitialiserCache:
    """Loads trained initialisers (``training.load_initialiser``), keeping the last one until its file changes."""

    def __init__(self) -> None:
        self._key = None
        self._model = None

    def load(self, modelPath) -> object:
        """The ``Initialiser`` of a model file; re-read when the path, mtime or size changes."""
        from XRayCTRegistrationLib.training import load_initialiser

        text = str(modelPath) if modelPath is not None else ""
        if text in ("", "."):
            raise InputError("initialiser model: no model file chosen; train one first (Train initialiser)")
        path = os.path.abspath(text)
        if not os.path.isfile(path):
            raise InputError(f"{path}: model file not found")
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            self._model, self._key = load_initialiser(path), key
        return self._model
