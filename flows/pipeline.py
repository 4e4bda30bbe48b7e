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
import sys
import typing as tp
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from codec.registry.record import read_promotion
from flows import artifacts as art
from flows.dvc_stages import (
    DataQualityFailure,
    StageFailed,
    StageInfo,
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
    result = repro_stage(Path(repo), stage, force=force, log=logger.info, extra_env=env)
    logger.info("stage %s: %s in %.1f s", stage, "ran" if result.ran else "up to date", result.seconds)
    return result


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


def _report_artifact(
    repo: Path,
    what: str,
    stage: str,
    key: str,
    report: str | None,
    *,
    not_in_run: bool,
    hint: str,
    publish: tp.Callable[[Path, str], None],
) -> None:
    """One report's artifact: ``publish(repo / report, report)`` when the report is there; else
    a note that ``stage`` was not part of this run (``not_in_run``), or that the report is not
    there yet and ``hint`` says what makes it."""
    if not_in_run:
        create_markdown_artifact(
            f"# {what}\n\n`{stage}` was not part of this run (see the run summary); its last report is "
            "in the repository, from an earlier run.",
            key=key,
        )
    elif report and (repo / report).is_file():
        publish(repo / report, report)
    else:
        create_markdown_artifact(art.missing_markdown(what, report, hint), key=key)


def publish_artifacts(
    repo: Path,
    stages: list[StageInfo],
    validate_summary: str | None,
    evaluation_table: str | None,
    promotion_file: str | None,
    in_run: tp.Collection[str] | None = None,
) -> dict[str, tp.Any]:
    """Create the data-quality, evaluation and promotion artifacts; return the validate summary (or {}).

    ``in_run``: the stages this run chose; a stage outside it gets an artifact saying so, not
    the report an earlier run left (a ``--until validate`` run does not republish an old
    promotion as its own), unless its report's path was given."""

    def not_in_run(given: str | None, stage: str) -> bool:
        return given is None and in_run is not None and stage not in in_run

    summary: dict[str, tp.Any] = {}

    def data_quality(path: Path, shown: str) -> None:
        summary.update(art.read_json(path))
        verdict = "passed" if summary.get("success") else "FAILED"
        create_table_artifact(
            art.data_quality_rows(summary),
            key=art.KEY_DATA_QUALITY,
            description=f"Data-quality gate {verdict} on {summary.get('files')} files: levels before (raw) and "
            f"after normalization, and every expectation (from {shown})",
        )

    def evaluation(path: Path, shown: str) -> None:
        create_table_artifact(
            art.evaluation_rows(path), key=art.KEY_EVALUATION, description=f"Ours vs Opus per bitrate (from {shown})"
        )

    def promotion(path: Path, shown: str) -> None:
        create_markdown_artifact(
            art.promotion_markdown(read_promotion(path), shown),
            key=art.KEY_PROMOTION,
            description="Promotion decision, gates and the MLflow run / model version",
        )

    spath = validate_summary if validate_summary is not None else _summary_path(_by_name(stages, DATA_QUALITY_STAGE))
    epath = evaluation_table or art.evaluation_table_path(_by_name(stages, EVALUATION_STAGE))
    ppath = promotion_file or art.promotion_path(_by_name(stages, PROMOTION_STAGE))
    _report_artifact(
        repo,
        "Data quality",
        DATA_QUALITY_STAGE,
        art.KEY_DATA_QUALITY,
        spath,
        not_in_run=not_in_run(validate_summary, DATA_QUALITY_STAGE),
        hint="Run the data stages (up to `validate`).",
        publish=data_quality,
    )
    _report_artifact(
        repo,
        "Evaluation (ours vs Opus per bitrate)",
        EVALUATION_STAGE,
        art.KEY_EVALUATION,
        epath,
        not_in_run=not_in_run(evaluation_table, EVALUATION_STAGE),
        hint="It appears once `evaluate` has run.",
        publish=evaluation,
    )
    _report_artifact(
        repo,
        "Promotion",
        PROMOTION_STAGE,
        art.KEY_PROMOTION,
        ppath,
        not_in_run=not_in_run(promotion_file, PROMOTION_STAGE),
        hint="It appears once `promote` has run.",
        publish=promotion,
    )
    return summary


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
    try:
        for s in chosen:
            run = dvc_stage.with_options(
                name=s.name, task_run_name=s.name, retries=retries, retry_delay_seconds=retry_delay_s
            )
            results.append(run(str(root), s.name, force=s.name in force))
    except StageFailed as e:
        failure = e
    finally:
        # Every run gets its artifacts, a failed one most of all (the gate's numbers).
        summary = publish_artifacts(
            root, all_stages, validate_summary, evaluation_table, promotion_file, in_run={s.name for s in chosen}
        )
        create_markdown_artifact(
            art.run_summary_markdown(all_stages, results, str(failure) if failure else None, changed),
            key=art.KEY_RUN,
            description="Stages run, skipped as up to date, failed or not reached",
        )
    if failure is not None:
        if isinstance(failure, DataQualityFailure) and art.failed_expectations(summary):
            names = "; ".join(art.failed_expectations(summary))
            raise DataQualityFailure(
                failure.stage, failure.exit_code, f"failed expectations: {names}\n{failure.detail}", failure.kind
            )
        raise failure
    return results


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
    print(f"codec-pipeline: {state.message}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, StageFailed) and exc.exit_code in (2, 3, 4) else 1


if __name__ == "__main__":
    sys.exit(main())
