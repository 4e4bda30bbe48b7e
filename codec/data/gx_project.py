"""The project's Great Expectations context: suites from ``gx/``, a kept validation history,
offline Data Docs.

``gx/`` is a GX 1.x file context committed with the code: ``expectations/`` (the suites),
``validation_definitions/``, ``checkpoints/``, ``great_expectations.yml``. A run writes
nothing there. The validation results go to a history folder and the Data Docs to a site
folder, both given by the validate stage's command (dvc.yaml); they reach GX as the config
variables ``${validation_history}`` and ``${data_docs}`` of ``great_expectations.yml``.

Thresholds are GX suite parameters: a suite file holds ``{"$PARAMETER": "max_rms_spread_db"}``
and the stage supplies the values from params.yaml at run time. Why not write the numbers
into the suite files: params.yaml stays the one place a threshold is set (``dvc exp run -S
validate.max_rms_spread_db=2`` works with the committed suites untouched, and DVC sees a
param change, not a code change), and each stored result still records the values it was
checked against, so an old run's page shows the limit in force then.

Great Expectations is imported inside the functions (2-3 s): only the validate stage pays.
"""

from __future__ import annotations

import datetime
import typing as tp
from pathlib import Path

from codec.data.data_docs import make_offline
from codec.errors import UserError
from codec.provenance import data_version, git_commit, repo_root

# The validation history keeps this many runs (each run validates both suites), newest first;
# `codec validate --keep-runs N` changes it. The Data Docs of 30 runs (60 pages) build in about 1.5 s.
KEEP_RUNS = 30
SITE = "local_site"  # the Data Docs site of gx/great_expectations.yml

if tp.TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core import ExpectationSuite, ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context import FileDataContext


def open_context(project: Path, history: Path, docs: Path) -> FileDataContext:
    """The file context in ``project`` (``gx/``), storing results in ``history`` and Data Docs in ``docs``."""
    if not (project / "great_expectations.yml").is_file():
        raise UserError(
            f"--gx {project}: no great_expectations.yml there; point --gx at the project's "
            "Great Expectations folder (gx/ at the repository root, which holds the suites)"
        )
    import great_expectations as gx
    from great_expectations.exceptions import GreatExpectationsError

    try:
        return gx.get_context(
            context_root_dir=str(project),
            runtime_environment={
                # GX joins store keys onto these as text: they must end with a separator.
                "validation_history": f"{history.resolve()}/",
                "data_docs": f"{docs.resolve()}/",
            },
        )
    except (GreatExpectationsError, ValueError) as e:
        config = project / "great_expectations.yml"
        raise UserError(f"{config}: Great Expectations cannot load it ({_first_line(e)}); see git diff gx/") from None


def run_checkpoint(
    ctx: FileDataContext,
    name: str,
    frame: pd.DataFrame,
    parameters: tp.Mapping[str, tp.Any],
    run_id: RunIdentifier,
    where: str,
) -> ExpectationSuiteValidationResult:
    """Run checkpoint ``name`` (one validation definition) over ``frame``; the result is kept in the history.

    Refused before anything runs, with a message naming the file: a suite parameter the
    stage does not supply, or a column the suite checks that ``frame`` (read from ``where``) lacks.
    """
    from great_expectations.exceptions import GreatExpectationsError

    project = Path(ctx.root_directory)
    try:
        checkpoint = ctx.checkpoints.get(name)
        (definition,) = checkpoint.validation_definitions
        suite = definition.suite
    except (GreatExpectationsError, ValueError) as e:
        raise UserError(
            f"{project / 'checkpoints' / name}.json: Great Expectations cannot load the checkpoint, its one "
            f"validation definition or its suite ({_first_line(e)}); restore gx/ from git"
        ) from None
    suite_file = project / "expectations" / f"{suite.name}.json"
    unknown = sorted(suite_parameters(suite) - set(parameters))
    if unknown:
        raise UserError(
            f"{suite_file}: suite parameter(s) {', '.join(unknown)} are not supplied by codec validate "
            f"(it supplies: {', '.join(sorted(parameters)) or 'none'}); use one of those names"
        )
    missing = sorted({c for c in suite_columns(suite) if c not in frame.columns})
    if missing:
        raise UserError(
            f"{where} lacks column(s) {', '.join(missing)} that {suite_file} checks; "
            "re-run the stage that writes it (dvc repro), or fix the suite"
        )
    result = checkpoint.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=dict(parameters), run_id=run_id
    )
    (validation,) = result.run_results.values()
    return validation


def suite_parameters(suite: ExpectationSuite) -> set[str]:
    """The ``$PARAMETER`` names a suite's expectations use."""
    found: set[str] = set()

    def walk(v: tp.Any) -> None:
        if isinstance(v, dict):
            if "$PARAMETER" in v:
                found.add(str(v["$PARAMETER"]))
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for e in suite.expectations:
        walk(e.configuration.kwargs)
    return found


def suite_columns(suite: ExpectationSuite) -> set[str]:
    return {str(e.configuration.kwargs["column"]) for e in suite.expectations if "column" in e.configuration.kwargs}


def information_suites(ctx: FileDataContext) -> dict[str, str]:
    """Suites marked ``"role": "information"`` in their meta, with their notes."""
    out = {}
    for suite in ctx.suites.all():
        if (suite.meta or {}).get("role") == "information":
            notes = suite.notes if isinstance(suite.notes, str) else " ".join(suite.notes or [])
            out[suite.name] = notes
    return out


def run_name(data: Path) -> str:
    """``data-<DVC hash of the folder, 8>_git-<commit, 7>[-dirty]``: which data, checked by which code."""
    root = repo_root(data.resolve())
    version, _ = data_version(data, root)
    commit = git_commit(root)
    sha, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    return f"data-{version.removesuffix('.dir')[:8]}_git-{sha[:7]}" + ("-dirty" if dirty else "")


def run_identifier(name: str) -> RunIdentifier:
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=name, run_time=datetime.datetime.now(datetime.UTC))


def prune_history(ctx: FileDataContext, history: Path, keep: int) -> int:
    """Delete all but the newest ``keep`` runs from the history; return how many runs went."""
    store = ctx.validation_results_store
    keys = store.list_keys()
    runs = sorted({(k.run_id.run_time, k.run_id.run_name) for k in keys}, reverse=True)  # type: ignore[attr-defined]
    gone = set(runs[max(keep, 1) :])
    for key in keys:
        if (key.run_id.run_time, key.run_id.run_name) in gone:  # type: ignore[attr-defined]
            store.remove_key(key)
    for folder in sorted((p for p in history.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return len(gone)


def build_docs(ctx: FileDataContext, docs: Path) -> Path:
    """Build the Data Docs site from the whole history, made to work offline; return its index page."""
    ctx.build_data_docs(site_names=[SITE])
    make_offline(docs, information_suites(ctx))
    return docs / "index.html"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
