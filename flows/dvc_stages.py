"""The pipeline as DVC describes it, and one DVC stage run as a subprocess.

The flow never knows the stage list: :func:`pipeline_stages` reads it from DVC's own
stage graph (``Repo.index.graph``), so a stage added to ``dvc.yaml`` becomes a task
without a change here. :func:`repro_stage` runs ``dvc repro --single-item <stage>``,
so DVC still decides whether the stage is up to date and records ``dvc.lock``.

A failed stage is classified by the exit code of the stage's command, which DVC
reports as ``failed to run: <cmd>, exited with N``. The codes come from
:mod:`codec.errors` (the one place they are defined):

* 2 (``UserError``), 3 (``DataQualityError``), 4 (``GateError``): permanent. The data
  or the model was judged and refused; running it again gives the same answer.
* any other code (a traceback from an ``OSError``, a busy SQLite database, a worker
  killed by the OOM killer: exit 1, -9, 130 ...): transient, worth a retry.

When DVC itself fails before the command runs, only a busy repository (DVC's lock, or
an output locked by another DVC process) and an OS-level error count as transient;
anything else (a bad ``dvc.yaml``, a missing dependency) is a configuration problem
that a retry would only repeat.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import typing as tp
from collections import deque
from pathlib import Path

from codec.errors import DataQualityError, GateError, UserError

PERMANENT_EXIT_CODES: dict[int, str] = {
    UserError.exit_code: "user error",
    DataQualityError.exit_code: "data-quality gate failed",
    GateError.exit_code: "promotion gate failed",
}
# DVC's own messages for a repository or an output that another DVC process holds.
_BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")
_OS_ERROR = re.compile(r"\[Errno \d+\]|Input/output error|Resource temporarily unavailable")
_EXITED = re.compile(r"failed to run: .*, exited with (-?\d+)")
TAIL_LINES = 60


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """One pipeline stage as DVC declares it (paths relative to the repository root)."""

    name: str  # the target for ``dvc repro`` (``stage`` or ``sub/dvc.yaml:stage``)
    cmd: str
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    plots: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What one ``dvc repro --single-item`` did."""

    stage: str
    ran: bool  # False when DVC found the stage up to date and skipped it
    seconds: float


class StageFailed(Exception):
    """A stage failed; the message names the stage and quotes what its command said."""

    transient: bool = False

    def __init__(self, stage: str, exit_code: int | None, detail: str, kind: str = "failed") -> None:
        self.stage = stage
        self.exit_code = exit_code
        self.detail = detail
        self.kind = kind
        code = f" (exit code {exit_code})" if exit_code is not None else ""
        super().__init__(f"stage '{stage}' {kind}{code}:\n{detail}")


class TransientStageError(StageFailed):
    """Worth a retry: an I/O error, a busy lock or database, a killed worker."""

    transient = True


class StageRefused(StageFailed):
    """The stage judged its input and refused it (user error, data-quality gate, promotion gate)."""


class DataQualityFailure(StageRefused):
    """The validate stage's gate refused the data (exit code 3)."""


class GateFailure(StageRefused):
    """A promotion gate failed and ``promote.fail_on_gate`` asked to stop (exit code 4)."""


class PipelineConfigError(StageFailed):
    """DVC could not run the stage at all (bad dvc.yaml, missing dependency, unknown stage)."""


def pipeline_stages(repo: Path) -> list[StageInfo]:
    """The pipeline's stages in the order to run them: DVC's graph, ties broken by dvc.yaml order.

    Only stages with a command are returned (a ``.dvc`` file for added data is not a step).
    """
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(os.fspath(repo)) as dvc_repo:
        index = dvc_repo.index
        stages = [s for s in index.stages if isinstance(s, PipelineStage)]
        position = {s: i for i, s in enumerate(stages)}
        # Edges point from a stage to the stages it depends on: reverse them to get run order.
        graph = index.graph.subgraph(stages).reverse(copy=True)
        ordered = nx.lexicographical_topological_sort(graph, key=lambda s: position[s])
        root = Path(dvc_repo.root_dir)
        return [
            StageInfo(
                name=_address(s, root),
                cmd=" && ".join(s.cmd) if isinstance(s.cmd, list) else str(s.cmd),
                outs=tuple(_rel(o.fs_path, root) for o in s.outs),
                metrics=tuple(_rel(o.fs_path, root) for o in s.outs if o.metric),
                plots=tuple(_rel(o.fs_path, root) for o in s.outs if o.plot),
            )
            for s in ordered
        ]


def _address(stage: tp.Any, root: Path) -> str:
    """The stage's ``dvc repro`` target from the repository root (``Stage.addressing`` is relative to the cwd)."""
    dvcfile = _rel(stage.dvcfile.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _rel(path: str, root: Path) -> str:
    return os.path.relpath(path, root)


def stage_env() -> dict[str, str]:
    """The environment for DVC and the stage commands: this interpreter's ``bin`` first on PATH.

    Stage commands call the ``codec`` console script; a served flow started from a shell
    without the venv activated still finds it.
    """
    env = os.environ.copy()
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    return env


def retry_env(attempt: int) -> dict[str, str]:
    """Extra environment for a stage's ``attempt``-th run (1 = first): a retry of a failed
    ``train`` continues from its last checkpoint when that checkpoint is from a run of the
    same params (``CODEC_TRAIN_RESUME``, see :func:`codec.training.stage.resumable`), instead
    of starting again from step 0."""
    return {"CODEC_TRAIN_RESUME": "1"} if attempt > 1 else {}


def repro_stage(
    repo: Path,
    stage: str,
    force: bool = False,
    log: tp.Callable[[str], None] | None = None,
    extra_env: tp.Mapping[str, str] | None = None,
) -> StageResult:
    """Run ``dvc repro --single-item [--force] <stage>`` in ``repo``; raise a :class:`StageFailed` on failure.

    Output is streamed line by line to ``log`` (the Prefect run logger in the flow).
    """
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    ran = False
    with subprocess.Popen(
        cmd,
        cwd=repo,
        env={**stage_env(), **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n").rsplit("\r", 1)[-1]  # a progress bar's last state only
            tail.append(line)
            ran = ran or line.startswith("Running stage ")
            if log is not None and line.strip():
                log(line)
        returncode = proc.wait()
    seconds = time.perf_counter() - start
    if returncode == 0:
        return StageResult(stage=stage, ran=ran, seconds=round(seconds, 3))
    raise classify_failure(stage, returncode, list(tail))


def classify_failure(stage: str, dvc_returncode: int, lines: list[str]) -> StageFailed:
    """Turn a failed ``dvc repro`` into the error the flow raises (see the module docstring)."""
    text = "\n".join(lines)
    matches = list(_EXITED.finditer(text))
    if matches:
        match = matches[-1]  # the last one: DVC's own summary line for the failed command
        code = int(match.group(1))
        detail = _command_error(lines) or text
        if code == DataQualityError.exit_code:
            return DataQualityFailure(stage, code, detail, PERMANENT_EXIT_CODES[code])
        if code == GateError.exit_code:
            return GateFailure(stage, code, detail, PERMANENT_EXIT_CODES[code])
        if code in PERMANENT_EXIT_CODES:
            return StageRefused(stage, code, detail, PERMANENT_EXIT_CODES[code])
        return TransientStageError(stage, code, detail, "failed (transient, will be retried)")
    if any(b in text for b in _BUSY) or _OS_ERROR.search(text):
        kind = f"could not start: DVC exited with {dvc_returncode} (busy or I/O, will be retried)"
        return TransientStageError(stage, None, text, kind)
    return PipelineConfigError(stage, None, text, f"could not be run by DVC (exit code {dvc_returncode})")


def _command_error(lines: list[str]) -> str:
    """The stage command's own error block (``codec <stage>: error: ...``) without DVC's trailer."""
    start = next((i for i, line in enumerate(lines) if re.match(r"^codec \S+: error:", line)), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("ERROR: ")), len(lines))
    return "\n".join(lines[start:end]).strip()
