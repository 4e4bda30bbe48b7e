"""``codec_pipeline``: the DVC pipeline as a Prefect flow, one task per stage.

The flow is thin on purpose. It reads the stage order from DVC's graph, applies the
run's param overrides the way ``dvc exp run -S`` does, runs each stage with
``dvc repro --single-item`` (so DVC decides what is up to date and writes
``dvc.lock``), retries transient failures, and publishes what the stages wrote as
Prefect artifacts. It computes nothing about audio.

Command line (``make flow`` runs the first)::

    python -m flows.pipeline run [--set normalize.mode=peak] [--force validate] [--until validate]
    python -m flows.pipeline serve --cron "0 3 * * 1" [--name weekly]

See docs/prefect.md for the server, the UI, work pools and task runners.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import typing as tp
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed, State

from codec.registry.record import read_promotion
from flows import artifacts as art
from flows.dvc_stages import (
    DataQualityFailure,
    StageFailed,
    StageInfo,
    StageRefused,
    StageResult,
    TransientStageError,
    pipeline_stages,
    repro_stage,
    retry_env,
)
from flows.overrides import apply_overrides, collect_overrides, compose_profile, parse_assignment

# Stage names from the project's contract (dvc.yaml's stages); their reports feed the artifacts.
DATA_QUALITY_STAGE = "validate"
EVALUATION_STAGE = "evaluate"
PROMOTION_STAGE = "promote"
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY_S = 30.0
DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: new recordings arrive weekly
# What became of each stage in a run (the run summary's words; publish_artifacts reads them).
RAN, UP_TO_DATE, FAILED, NOT_REACHED, NOT_IN_RUN = "ran", "up to date", "FAILED", "not reached", "not in run"
OUTCOMES = (RAN, UP_TO_DATE, FAILED, NOT_REACHED, NOT_IN_RUN)


def is_transient(task: tp.Any, task_run: TaskRun, state: State[tp.Any]) -> bool:
    """Prefect's retry condition: retry I/O errors and transient stage failures, nothing else.

    A data-quality failure, a promotion gate or a user error would fail the same way
    again, so it fails the run at once with the expectation or gate named.
    """
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # the failed state's exception, to classify it
            exc = e
    return isinstance(exc, TransientStageError | OSError)


@task(
    name="dvc-stage",
    cache_policy=NO_CACHE,  # DVC, not Prefect, decides whether a stage is up to date
    retries=DEFAULT_RETRIES,
    retry_delay_seconds=DEFAULT_RETRY_DELAY_S,
    retry_condition_fn=is_transient,
)
def dvc_stage(repo: str, stage: str, force: bool = False) -> StageResult:
    """Run one DVC stage: ``dvc repro --single-item [--force] <stage>``."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    attempt = int(task_run.run_count or 1)
    env = retry_env(attempt)
    if env:
        logger.info("stage %s: attempt %d, with %s", stage, attempt, env)
    try:
        result = repro_stage(Path(repo), stage, force=force, log=logger.info, extra_env=env)
    except StageRefused as e:
        # The stage judged its input and said why in its output (logged above): a failed state
        # with a one-line message, not an exception with a traceback (and no retry).
        return Failed(message=headline(e), data=e)  # type: ignore[return-value]
    logger.info("stage %s: %s in %.1f s", stage, "ran" if result.ran else "up to date", result.seconds)
    return result


def headline(e: StageFailed) -> str:
    """The first line of a stage failure: ``stage 'validate' data-quality gate failed (exit code 3)``."""
    return str(e).split("\n", 1)[0].rstrip(":")


def select_stages(
    stages: list[StageInfo], only: tp.Sequence[str] | None, until: str | None, force: tp.Sequence[str]
) -> list[StageInfo]:
    """The stages this run executes, in pipeline order: ``only`` (if given), up to ``until`` (inclusive)."""
    names = [s.name for s in stages]
    unknown = sorted({*(only or []), *([until] if until else []), *force} - set(names))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has: {', '.join(names)}")
    chosen = [s for s in stages if only is None or s.name in only]
    if until is not None:
        last = names.index(until)
        chosen = [s for s in chosen if names.index(s.name) <= last]
    return chosen


def _by_name(stages: list[StageInfo], name: str) -> StageInfo | None:
    return next((s for s in stages if s.name.rsplit(":", 1)[-1] == name), None)


def _summary_path(vstage: StageInfo | None) -> str | None:
    """The validate stage's ``summary.json`` among what it declares (or its first JSON metric)."""
    if vstage is None:
        return None
    declared = [*vstage.outs, *vstage.metrics]
    return next((m for m in declared if m.endswith("summary.json")), None) or next(
        (m for m in vstage.metrics if m.endswith(".json")), None
    )


def last_published(key: str, is_report: tp.Callable[[tp.Any], bool]) -> str | None:
    """Where the newest artifact under ``key`` that is a real report (``is_report``) came from:
    ``flow run `<name>` (<id>), <created>``; None when there is none or the API cannot say."""
    try:
        from prefect import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        from prefect.client.schemas.sorting import ArtifactSort

        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=50,
            )
            hit = next((a for a in found if is_report(a)), None)
            if hit is None:
                return None
            run_name = client.read_flow_run(hit.flow_run_id).name if hit.flow_run_id else "?"
    except Exception:  # the note is a courtesy: never fail a run over it
        return None
    created = hit.created.strftime("%Y-%m-%d %H:%M UTC") if hit.created else "an earlier time"
    return f"flow run `{run_name}` ({hit.flow_run_id}), {created}"


def _stale_note(what: str, stage: str, why: str, key: str, is_report: tp.Callable[[tp.Any], bool]) -> str:
    """The artifact of a report this run did not produce: why, and which run the last one is from."""
    previous = last_published(key, is_report)
    where = (
        f"The last `{key}` report is from {previous}: **stale**, not this run's result."
        if previous
        else "Any report of it in the repository is from an earlier run: **stale**, not this run's result."
    )
    return f"# {what}: not from this run\n\n`{stage}` {why}.\n\n{where}\n"


def _report_artifact(
    repo: Path,
    what: str,
    stage: str,
    key: str,
    report: str | None,
    *,
    outcome: str | None,
    started: float | None,
    hint: str,
    publish: tp.Callable[[Path, str], None],
    is_report: tp.Callable[[tp.Any], bool],
) -> None:
    """One report's artifact: ``publish(repo / report, report)`` when this run produced the report
    (its stage ran, or DVC found it up to date, or it failed after writing it); else a note that
    says why not and marks the last published one stale, naming its flow run; or that the report
    is not there yet and ``hint`` says what makes it.

    ``outcome``: ``None`` (publish what is there: a path given by the caller), or one of
    :data:`OUTCOMES`. ``started``: when the stage started (a failed stage's report must be newer).
    """
    path = repo / report if report else None
    if outcome == NOT_IN_RUN:
        why = "was not part of this run (see the run summary); its last report in the repository is from an earlier run"
        create_markdown_artifact(_stale_note(what, stage, why, key, is_report), key=key)
        return
    if outcome == NOT_REACHED:
        why = "was not reached: the run stopped at an earlier stage (see the run summary)"
        create_markdown_artifact(_stale_note(what, stage, why, key, is_report), key=key)
        return
    fresh = path is not None and path.is_file()
    if fresh and outcome == FAILED and path is not None:
        fresh = started is None or path.stat().st_mtime >= started - 1.0
        if not fresh:
            why = "failed before writing its report"
            create_markdown_artifact(_stale_note(what, stage, why, key, is_report), key=key)
            return
    if fresh and path is not None and report is not None:
        publish(path, report)
    else:
        create_markdown_artifact(art.missing_markdown(what, report, hint), key=key)


def _outcome(
    given: str | None, stage: str, outcomes: tp.Mapping[str, str] | None, in_run: tp.Collection[str] | None
) -> str | None:
    """What became of ``stage`` in this run, for a report whose path was not given."""
    if given is not None:
        return None
    if outcomes is not None:
        return outcomes.get(stage, NOT_IN_RUN)
    return NOT_IN_RUN if in_run is not None and stage not in in_run else None


def _data_quality_artifact(summary: dict[str, tp.Any], note: str, path: Path, shown: str) -> None:
    summary.update(art.read_json(path))
    verdict = "passed" if summary.get("success") else "FAILED"
    create_table_artifact(
        art.data_quality_rows(summary),
        key=art.KEY_DATA_QUALITY,
        description=f"Data-quality gate {verdict} on {summary.get('files')} files: levels before (raw) and "
        f"after normalization, and every expectation (from {shown}, {note})",
    )


def _evaluation_artifact(note: str, path: Path, shown: str) -> None:
    create_table_artifact(
        art.evaluation_rows(path),
        key=art.KEY_EVALUATION,
        description=f"Ours vs Opus per bitrate (from {shown}, {note})",
    )


def _promotion_artifact(note: str, path: Path, shown: str) -> None:
    create_markdown_artifact(
        art.promotion_markdown(read_promotion(path), shown),
        key=art.KEY_PROMOTION,
        description=f"Promotion decision, gates and the MLflow run / model version ({note})",
    )


def _is_table(a: tp.Any) -> bool:
    return getattr(a, "type", None) == "table"


def _is_promotion(a: tp.Any) -> bool:
    return (getattr(a, "description", None) or "").startswith("Promotion decision")


def publish_artifacts(
    repo: Path,
    stages: list[StageInfo],
    validate_summary: str | None,
    evaluation_table: str | None,
    promotion_file: str | None,
    in_run: tp.Collection[str] | None = None,
    outcomes: tp.Mapping[str, str] | None = None,
    started: tp.Mapping[str, float] | None = None,
) -> dict[str, tp.Any]:
    """Create the data-quality, evaluation and promotion artifacts; return the validate summary (or {}).

    Only what this run produced is published as its own. ``outcomes`` (stage name -> one of
    :data:`OUTCOMES`): a stage that was not reached (the run failed before it) or not part
    of the run, or that failed before writing its report, gets a note that names the flow
    run the last published report came from, marked stale, never that report's content
    (the reports in ``reports/`` are an earlier run's). ``in_run``: the stages this run
    chose, for callers without ``outcomes``. A report whose path was given is published as
    it is. ``started``: when each stage started (stage name -> ``time.time()``)."""
    summary: dict[str, tp.Any] = {}
    note = f"this run ({_this_run()})"
    spath = validate_summary if validate_summary is not None else _summary_path(_by_name(stages, DATA_QUALITY_STAGE))
    epath = evaluation_table or art.evaluation_table_path(_by_name(stages, EVALUATION_STAGE))
    ppath = promotion_file or art.promotion_path(_by_name(stages, PROMOTION_STAGE))
    reports = (  # what, stage, key, path, given path, hint, publish, is_report
        ("Data quality", DATA_QUALITY_STAGE, art.KEY_DATA_QUALITY, spath, validate_summary,
         "Run the data stages (up to `validate`).", functools.partial(_data_quality_artifact, summary, note),
         _is_table),
        ("Evaluation (ours vs Opus per bitrate)", EVALUATION_STAGE, art.KEY_EVALUATION, epath, evaluation_table,
         "It appears once `evaluate` has run.", functools.partial(_evaluation_artifact, note), _is_table),
        ("Promotion", PROMOTION_STAGE, art.KEY_PROMOTION, ppath, promotion_file,
         "It appears once `promote` has run.", functools.partial(_promotion_artifact, note), _is_promotion),
    )  # fmt: skip
    for what, stage, key, path, given, hint, publish, is_report in reports:
        full = _by_name(stages, stage)
        name = full.name if full is not None else stage
        _report_artifact(
            repo,
            what,
            stage,
            key,
            path,
            outcome=_outcome(given, name, outcomes, in_run) if full is not None else None,
            started=(started or {}).get(name),
            hint=hint,
            publish=publish,
            is_report=is_report,
        )
    return summary


def _this_run() -> str:
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name or '?'}"


@flow(name="codec-pipeline", log_prints=True)
def codec_pipeline(
    repo: str = ".",
    profile: list[str] | None = None,
    set_params: dict[str, tp.Any] | None = None,
    params_file: str | None = None,
    force: list[str] | None = None,
    stages: list[str] | None = None,
    until: str | None = None,
    retries: int = DEFAULT_RETRIES,
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
    validate_summary: str | None = None,
    evaluation_table: str | None = None,
    promotion_file: str | None = None,
) -> list[StageResult]:
    """Run the DVC pipeline in ``repo`` stage by stage.

    Args:
        repo: the DVC repository (the project root).
        profile: Hydra group choices (``["train=gpu", "promote=gpu"]``): params.yaml is composed
            from conf/ with them first, as ``dvc exp run -S train=gpu`` does; none: as it is.
        set_params: dotted overrides written into params.yaml first, like ``dvc exp run -S``
            (``{"normalize.mode": "peak"}``); see :mod:`flows.overrides` for why in place.
        params_file: a YAML file of (partial) params.yaml sections, applied before ``set_params``.
        force: stages to run even if DVC finds them up to date (``dvc repro --force``).
        stages: run only these stages (in pipeline order); default all.
        until: stop after this stage (``validate`` runs the data half only).
        retries, retry_delay_s: for transient failures only (see :mod:`flows.dvc_stages`).
        validate_summary, evaluation_table, promotion_file: report paths for the artifacts;
            by default the files the validate, evaluate and promote stages declare in dvc.yaml.
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    all_stages = pipeline_stages(root)
    force = list(force or [])
    chosen = select_stages(all_stages, stages, until, force)
    logger.info("pipeline (from dvc.yaml): %s; this run: %s", [s.name for s in all_stages], [s.name for s in chosen])
    changed = compose_profile(root, profile or [])
    changed.update(apply_overrides(root, collect_overrides(Path(params_file) if params_file else None, set_params)))
    for key, (old, new) in changed.items():
        logger.info("params.yaml: %s: %r -> %r", key, old, new)

    results: list[StageResult] = []
    failure: StageFailed | None = None
    outcomes: dict[str, str] = {s.name: (NOT_IN_RUN if s not in chosen else NOT_REACHED) for s in all_stages}
    started: dict[str, float] = {}
    try:
        failure = _run_stages(root, chosen, force, retries, retry_delay_s, results, outcomes, started)
    finally:
        # Every run gets its artifacts, a failed one most of all (the gate's numbers); a report
        # this run did not produce is marked stale, with the flow run it is from.
        summary = publish_artifacts(
            root, all_stages, validate_summary, evaluation_table, promotion_file, outcomes=outcomes, started=started
        )
        create_markdown_artifact(
            art.run_summary_markdown(all_stages, results, str(failure) if failure else None, changed),
            key=art.KEY_RUN,
            description="Stages run, skipped as up to date, failed or not reached",
        )
    if failure is None:
        return results
    return _failed(failure, summary)  # type: ignore[return-value]


def _run_stages(
    root: Path,
    chosen: list[StageInfo],
    force: list[str],
    retries: int,
    retry_delay_s: float,
    results: list[StageResult],
    outcomes: dict[str, str],
    started: dict[str, float],
) -> StageFailed | None:
    """Each of ``chosen`` as a task, in order, until one fails (returned); ``results``,
    ``outcomes`` and ``started`` are filled as the stages go (read even when this raises)."""
    for s in chosen:
        run = dvc_stage.with_options(
            name=s.name, task_run_name=s.name, retries=retries, retry_delay_seconds=retry_delay_s
        )
        started[s.name] = time.time()
        st = run(str(root), s.name, force=s.name in force, return_state=True)
        outcome = st.result(raise_on_failure=False) if st.is_final() else None
        if st.is_completed() and isinstance(outcome, StageResult):
            results.append(outcome)
            outcomes[s.name] = RAN if outcome.ran else UP_TO_DATE
            continue
        outcomes[s.name] = FAILED
        if isinstance(outcome, StageFailed):
            return outcome
        return StageFailed(s.name, None, st.message or repr(outcome), f"ended in state {st.name}")
    return None


def _failed(failure: StageFailed, summary: dict[str, tp.Any]) -> State[tp.Any]:
    """The run's end after ``failure``: a Failed state for a gate or a user error (said once,
    without a traceback: the stage's own output and the run summary artifact have the details);
    any other failure is raised. A data-quality failure names its failed expectations."""
    expectations = "; ".join(art.failed_expectations(summary))
    if isinstance(failure, DataQualityFailure) and expectations:
        failure = DataQualityFailure(
            failure.stage, failure.exit_code, f"failed expectations: {expectations}\n{failure.detail}", failure.kind
        )
    if isinstance(failure, StageRefused):
        verdict = headline(failure)
        if isinstance(failure, DataQualityFailure) and expectations:
            verdict += ": " + expectations
        return Failed(message=verdict, data=failure)
    raise failure


def _assignments(values: list[str] | None) -> dict[str, tp.Any]:
    return dict(parse_assignment(v) for v in values or [])


def _flow_parameters(args: argparse.Namespace) -> dict[str, tp.Any]:
    return {
        "repo": str(Path(args.repo).resolve()),
        "profile": args.profile or None,
        "set_params": _assignments(args.set) or None,
        "params_file": args.params_file,
        "force": args.force or None,
        "stages": args.stages or None,
        "until": args.until,
        "retries": args.retries,
        "retry_delay_s": args.retry_delay,
    }


def main(argv: tp.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run once (with a temporary local Prefect server if PREFECT_API_URL is unset)")
    serve_p = sub.add_parser("serve", help="serve the flow on a cron schedule (runs until stopped)")
    for p in (run_p, serve_p):
        p.add_argument("--repo", default=".", help="the DVC repository (default: the current directory)")
        p.add_argument(
            "--profile",
            action="append",
            metavar="GROUP=OPTION",
            help="compose params.yaml from conf/ with this choice first, e.g. train=gpu (repeatable)",
        )
        p.add_argument("--set", "-S", action="append", metavar="KEY=VALUE", help="param override, like dvc exp run -S")
        p.add_argument("--params-file", help="YAML with params.yaml sections to apply before --set")
        p.add_argument("--force", action="append", metavar="STAGE", help="run STAGE even if up to date (repeatable)")
        p.add_argument("--stages", action="append", metavar="STAGE", help="run only these stages (repeatable)")
        p.add_argument("--until", metavar="STAGE", help="stop after STAGE (e.g. validate)")
        p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries of a transient failure")
        p.add_argument("--retry-delay", type=float, default=DEFAULT_RETRY_DELAY_S, help="seconds between retries")
    serve_p.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule (default: %(default)r)")
    serve_p.add_argument("--timezone", default=None, help="time zone of the cron schedule (default: UTC)")
    serve_p.add_argument("--name", default="scheduled", help="deployment name (default: %(default)s)")
    serve_p.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="runs of this deployment at once (default: %(default)s: a scheduled run waits for the previous one)",
    )
    args = parser.parse_args(argv)
    params = _flow_parameters(args)

    if args.command == "serve":
        from prefect.schedules import Cron

        schedule = Cron(args.cron, timezone=args.timezone) if args.timezone else Cron(args.cron)
        codec_pipeline.serve(
            name=args.name,
            schedules=[schedule],
            parameters={k: v for k, v in params.items() if v is not None},
            description="The DVC pipeline (dvc.yaml) on a schedule: one task per stage, retries, artifacts.",
            # One workspace, one params.yaml, one dvc.lock: runs of the deployment never overlap.
            global_limit=args.max_concurrent,
        )
        return 0

    state = codec_pipeline(**params, return_state=True)
    if state.is_completed():
        return 0
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StageRefused):
        # Prefect's log already ends with the verdict ("Finished in state Failed(...)"): no repeat.
        print(f"codec-pipeline: stopped at stage '{exc.stage}' (exit code {exc.exit_code})", file=sys.stderr)
    else:
        print(f"codec-pipeline: {state.message}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, StageFailed) and exc.exit_code in (2, 3, 4) else 1


if __name__ == "__main__":
    sys.exit(main())
