"""``codec promote``: quality gates, then the MLflow model registry.

Reads ``evaluation.json`` (written by ``codec evaluate``), checks the gates of
``params.yaml: promote`` at one bitrate (the top one unless ``bitrate_kbps`` says),
compares the candidate with the current ``@champion`` of ``telugu-speech-codec`` on the
primary metric, and registers a model version with the evidence as tags:

- every gate passes and the candidate beats the champion (or there is none):
  alias ``champion`` moves to the new version;
- every gate passes but it does not beat the champion: alias ``challenger``;
- a gate fails: tag ``rejected=true`` with the reasons (no alias).

**Comparing on the same evaluation set.** Each version carries the fingerprint of the
set it was measured on (:func:`codec.evaluation.sets.eval_set_fingerprint`: clip ids, their
samples and the settings that move our metrics). When the champion's fingerprint equals
the candidate's, its tagged metric is used. When it differs (new held-out clips, other
evaluation params), the champion's registered model is loaded and re-evaluated on the
candidate's clips at the gate bitrate, so the two numbers always come from the same
audio; if that fails (the model can't be loaded), the candidate cannot be shown to beat
it and is at most ``challenger``, with the reason in ``promotion.json``.

**One decision at a time, all or nothing.** Before the registry is touched, ``--out`` must be
writable and the evaluation's MLflow run (and logged model) must be in the store. Then, under
:func:`codec.registry.lock.registry_lock` (a file lock beside the SQLite store; see that module
for a remote tracking server), the stage repairs what a killed promotion left
(:func:`codec.registry.consistency.repair`, said on stdout), reads the champion, compares,
and changes the registry only inside :func:`codec.registry.transaction.register`: the version
is created ``decision=pending`` and tagged with its decision only once it holds its alias, and
on any exception (including writing ``promotion.json``, the last step) that promotion's own
changes are undone.

Exit status: 0 whatever the decision, unless ``fail_on_gate`` is true and a gate failed
(:class:`codec.errors.GateError`, exit code 4), after everything is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import typing as tp
from pathlib import Path

from codec.errors import GateError, UserError
from codec.evaluation.evaluate import evaluate_model
from codec.evaluation.params import EvaluateParams, LevelSettings
from codec.evaluation.sets import load_eval_clips
from codec.evaluation.suite import build_sets, load_user_set, sets_fingerprint, user_set_folders
from codec.files import write_text_atomic
from codec.inference.model_source import load_model
from codec.params import PARAMS_FILE, from_dict, load_section
from codec.provenance import data_version, git_commit, repo_root
from codec.registry.consistency import repair
from codec.registry.gates import (
    Direction,
    Gate,
    PromoteParams,
    PromotionError,
    _value,
    beats,
    check_set_gates,
    gate_kbps,
    worst_of,
)
from codec.registry.lock import registry_lock
from codec.registry.record import Decision, PromotionRecord
from codec.registry.transaction import champion_version, register
from codec.tracking import CHAMPION, tracking_uri

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


@dataclasses.dataclass
class Comparison:
    """The candidate against the champion on the primary metric at the gate bitrate."""

    metric: str
    direction: Direction
    candidate: float
    champion: float | None = None
    champion_version: str | None = None
    source: str = "no champion yet"
    beats: bool = True
    note: str = ""


ReEvaluate = tp.Callable[["ModelVersion", str, str], float]


def compare(
    client: MlflowClient,
    record: tp.Mapping[str, tp.Any],
    params: PromoteParams,
    k: str,
    re_evaluate: ReEvaluate | None,
) -> Comparison:
    """See the module docstring: tags on the same set, else a re-evaluation of the champion."""
    metric = params.primary_metric
    cand = candidate_value(record, params, k)
    cmp = Comparison(metric, params.primary_direction, cand)
    champ = champion_version(client, params.model_name)
    if champ is None:
        return cmp
    cmp.champion_version = str(champ.version)
    tag = champ.tags.get(f"worst.{k}.{metric}")
    if champ.tags.get("eval_set_fingerprint") == record["eval_set_fingerprint"] and tag is not None:
        cmp.champion, cmp.source = float(tag), "its tags (same evaluation set)"
    elif re_evaluate is None:
        cmp.source, cmp.note = "not compared", "the champion was evaluated on another set and re-evaluation is off"
    else:
        try:
            cmp.champion = re_evaluate(champ, k, metric)
            cmp.source = "re-evaluated on this evaluation set"
        except Exception as e:  # any failure to load or run the old model: say so, don't promote over it
            cmp.source, cmp.note = (
                "not compared",
                f"re-evaluating version {champ.version} failed: {type(e).__name__}: {e}",
            )
    cmp.beats = cmp.champion is not None and beats(cand, cmp.champion, params.primary_direction)
    return cmp


def candidate_value(record: tp.Mapping[str, tp.Any], params: PromoteParams, k: str) -> float:
    """The candidate's primary metric for the comparison: its value on its worst evaluation set."""
    worst = worst_of(record, params, k).get("primary_metric")
    return _value(worst["value"]) if worst else math.nan


def decide(gates: tp.Sequence[Gate], cmp: Comparison, profile: str = "") -> tuple[Decision, list[str]]:
    """The decision and the reasons for it, in words (``profile``: the gates' name, promote.gate_profile)."""
    failed = [g for g in gates if not g.passed]
    if failed:
        return "rejected", [f"gate {g.name}: {g.metric} = {g.value:.4g}, required {g.rule}" for g in failed]
    every = f"every {profile} gate passed" if profile else "every gate passed"
    if cmp.beats:
        if cmp.champion is None:
            return "champion", [f"{every}; there was no champion"]
        return "champion", [
            f"{every} and {cmp.metric} {cmp.candidate:.4g} beats the champion's {cmp.champion:.4g} "
            f"(version {cmp.champion_version}, {cmp.direction} is better, {cmp.source})"
        ]
    if cmp.champion is None:
        return "challenger", [f"{every}, but it was not compared with the champion: {cmp.note}"]
    return "challenger", [
        f"{every}, but {cmp.metric} {cmp.candidate:.4g} does not beat the champion's {cmp.champion:.4g} "
        f"(version {cmp.champion_version}, {cmp.direction} is better, {cmp.source})"
    ]


def version_tags(
    record: tp.Mapping[str, tp.Any],
    gates: tp.Sequence[Gate],
    decision: Decision,
    reasons: tp.Sequence[str],
    k: str,
    extra: tp.Mapping[str, str],
    worst: tp.Mapping[str, tp.Any] | None = None,
) -> dict[str, str]:
    """Tags of the new version: every metric of every codec and bitrate, the gates, the provenance."""
    tags: dict[str, str] = {}
    worst = worst or {}
    metrics = record["metrics"]
    # Only the gate bitrate's metrics (ours and each baseline): the version's run holds every
    # metric of every bitrate, set and level; tags are what the registry page and codec models show.
    for codec, by_rate in metrics.items():
        if codec in ("levels", "sets") or not isinstance(by_rate, dict) or not isinstance(by_rate.get(k), dict):
            continue
        for name, v in by_rate[k].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tags[f"{codec}.{k}.{name}"] = f"{v:.6g}"
    for g in gates:
        if g.eval_set == "held_out" or not g.passed:  # the other sets' passes are in promotion.json
            tags[f"gate.{g.name}"] = f"{'pass' if g.passed else 'fail'}: {g.value:.4g} {g.rule}"
    primary, amplitude = worst.get("primary_metric"), worst.get("amplitude_ratio")
    if primary:
        tags[f"worst.{k}.{primary['metric']}"] = f"{primary['value']:.6g}"
        tags["worst_set"] = str(primary["set"])
    if amplitude:
        tags["worst_amplitude"] = f"{amplitude['value']:.4g} ({amplitude['set']}, {amplitude['level']})"
    failed = [g.name for g in gates if not g.passed]
    tags["failed_gates"] = ", ".join(failed)[:4900] if failed else "none"
    n_sets = len({g.eval_set for g in gates})
    plural = "s" if n_sets > 1 else ""
    summary = f"{len(gates) - len(failed)}/{len(gates)} pass on {n_sets} evaluation set{plural}"
    tags["gates"] = (summary + (f" (fail: {', '.join(failed)})" if failed else ""))[:4900]
    tags.update(
        {
            "decision": decision,
            "reasons": " | ".join(reasons)[:4900],
            "gate_kbps": k,
            "eval_set_fingerprint": str(record["eval_set_fingerprint"]),
            "model_fingerprint": str(record.get("model_fingerprint", "")),
            "eval_run_id": str(record["mlflow_run_id"]),
            "all_gates_passed": str(all(g.passed for g in gates)).lower(),
            **extra,
        }
    )
    if decision == "rejected":
        tags["rejected"] = "true"
    return tags


@dataclasses.dataclass
class Promotion:
    """What :func:`promote` returns (and ``promotion.json`` holds)."""

    model_name: str
    version: str
    decision: Decision
    reasons: list[str]
    gates: list[Gate]
    comparison: Comparison
    bitrate: str
    mlflow_run_id: str
    model_uri: str
    eval_set_fingerprint: str
    tags: dict[str, str]
    repairs: list[str] = dataclasses.field(default_factory=list)  # what repair() fixed first
    worst: dict[str, tp.Any] = dataclasses.field(default_factory=dict)  # gates.worst_of: set and level
    gate_profile: str = "default"  # promote.gate_profile: which gates these were

    @property
    def all_gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> PromotionRecord:
        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(v, 6)

        return {
            "model_name": self.model_name,
            "version": self.version,
            "decision": self.decision,
            "alias": self.decision if self.decision != "rejected" else None,
            "all_gates_passed": self.all_gates_passed,
            "gate_profile": self.gate_profile,
            "failed_gates": [g.name for g in self.gates if not g.passed],
            "reasons": self.reasons,
            "bitrate": self.bitrate,
            "gates": [{**dataclasses.asdict(g), "value": num(g.value)} for g in self.gates],
            "comparison": {
                **dataclasses.asdict(self.comparison),
                "candidate": num(self.comparison.candidate),
                "champion": num(self.comparison.champion),
            },
            "mlflow_run_id": self.mlflow_run_id,
            "model_uri": self.model_uri,
            "eval_set_fingerprint": self.eval_set_fingerprint,
            "worst": {key: {**entry, "value": num(_value(entry.get("value")))} for key, entry in self.worst.items()},
            "git_commit": self.tags.get("git_commit"),
            "data_version": self.tags.get("data_version"),
        }


def check_writable(out: Path) -> None:
    """:class:`UserError` unless a file can be written at ``out``: checked before the registry is
    touched, so an unwritable ``--out`` leaves nothing half-done."""
    if out.is_dir():
        raise UserError(
            f"--out {out} is a folder; give the path of the file to write, such as {out / 'promotion.json'} "
            "(nothing was registered)"
        )
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(
            f"can't write --out {out}: {blocker} is a file, not a folder; choose another --out (nothing was registered)"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"can't write --out {out}: {e.strerror or e} ({e.filename or out.parent}); choose another --out or "
            f"make {out.parent} writable (nothing was registered)"
        ) from None


def registry_uri(client: MlflowClient) -> str:
    # MlflowClient keeps its registry URI private; it defaults to the tracking URI.
    return str(getattr(client, "_registry_uri", None) or client.tracking_uri)


def check_logged(client: MlflowClient, run_id: str, model_id: str | None) -> None:
    """:class:`UserError` unless the evaluation's run (and logged model) are in the store."""
    from mlflow.exceptions import MlflowException

    where = registry_uri(client)
    what: list[tuple[str, str, tp.Callable[[str], object]]] = [("run", run_id, client.get_run)]
    if model_id:
        what.append(("logged model", model_id, client.get_logged_model))
    for kind, ident, get in what:
        try:
            get(ident)
        except MlflowException as e:
            first = e.message.splitlines()[0] if e.message else str(e)
            raise PromotionError(
                f"evaluation.json names MLflow {kind} {ident}, which the store at {where} can't give "
                f"({e.error_code}: {first}); run codec promote against the store codec evaluate logged to "
                "(MLFLOW_TRACKING_URI), or re-run codec evaluate (nothing was registered)"
            ) from None


def promote(
    client: MlflowClient,
    record: tp.Mapping[str, tp.Any],
    params: PromoteParams,
    out: Path,
    *,
    provenance: tp.Mapping[str, str] | None = None,
    re_evaluate: ReEvaluate | None = None,
    say: tp.Callable[[str], None] | None = None,
) -> Promotion:
    """Gate, compare, register and write ``out`` (``promotion.json``); see the module docstring.
    ``say`` hears what is done besides the decision (a wait for the lock, a repair)."""
    from mlflow.exceptions import MlflowException

    run_id, source = record.get("mlflow_run_id"), record.get("model_uri")
    if not run_id or not source:
        raise PromotionError(
            "the evaluation was not logged to MLflow (evaluation.json has no mlflow_run_id), so there is no model "
            "to register; re-run codec evaluate without --no-mlflow"
        )
    k = gate_kbps(record["metrics"], params)
    gates = check_set_gates(record, params)
    worst = worst_of(record, params, k)
    check_writable(out)
    check_logged(client, str(run_id), record.get("model_id"))
    uri = registry_uri(client)
    result: list[Promotion] = []
    try:
        with registry_lock(uri, say=say) as exclusive:
            repairs = repair(client, params.model_name, exclusive)
            for line in repairs:
                if say is not None:
                    say(line)
            # The champion is read inside the lock: the comparison is against the real current one.
            passed = all(g.passed for g in gates)
            cmp = (
                compare(client, record, params, k, re_evaluate)
                if passed
                else Comparison(
                    params.primary_metric,
                    params.primary_direction,
                    candidate_value(record, params, k),
                    source="not compared (a gate failed)",
                    beats=False,
                )
            )
            decision, reasons = decide(gates, cmp, params.gate_profile)
            extra = {**(provenance or {}), "gate_profile": params.gate_profile}
            tags = version_tags(record, gates, decision, reasons, k, extra, worst)

            def finish(version: str) -> None:
                p = Promotion(
                    params.model_name,
                    version,
                    decision,
                    reasons,
                    gates,
                    cmp,
                    k,
                    str(run_id),
                    str(source),
                    str(record["eval_set_fingerprint"]),
                    tags,
                    repairs,
                    worst,
                    params.gate_profile,
                )
                write_text_atomic(out, json.dumps(p.to_dict(), indent=2) + "\n")
                result.append(p)

            alias = None if decision == "rejected" else decision
            # Compare-and-set: the champion must still be the one compared against when the alias moves.
            expected = {CHAMPION: cmp.champion_version} if passed else {}
            register(
                client,
                params.model_name,
                str(source),
                str(run_id),
                tags,
                alias,
                finish,
                record.get("model_id"),
                expected,
            )
    except MlflowException as e:
        raise PromotionError(
            f"the MLflow store at {uri} refused a registry call ({e.error_code}: {e.message}); this promotion's "
            "changes were undone; check the store (codec models) and re-run codec promote"
        ) from e
    return result[0]


# --- re-evaluating the champion ---------------------------------------------------------------


def champion_re_evaluator(record: tp.Mapping[str, tp.Any], raw: Path, direction: Direction = "lower") -> ReEvaluate:
    """A :data:`ReEvaluate` that loads a version's weights-only checkpoint artifact (nothing the
    registry holds is unpickled) and measures it on every evaluation set of the record, rebuilt from its
    held-out clips; returns its value on its worst set (``direction``: which way is better)."""

    def run(mv: ModelVersion, k: str, metric: str) -> float:
        params = from_dict(EvaluateParams, record["params"], "evaluation.json: params")
        levels = from_dict(LevelSettings, record["level_settings"], "evaluation.json: level_settings")
        model = load_model(f"models:/{mv.name}/{mv.version}").model
        rate = int(model.config.sample_rate)
        clips = load_eval_clips(raw, record["clip_ids"], params.seconds, rate)
        user_sets = [
            load_user_set(name, folder, params, rate)
            for name, folder in user_set_folders(Path(str(record.get("user_sets_dir") or "data/eval_sets"))).items()
            if name in (record.get("sets") or {})
        ]
        sets = build_sets(clips, params, user_sets)
        if sets_fingerprint(sets, params, levels) != record["eval_set_fingerprint"]:
            raise PromotionError(f"the clips in {raw} changed since the evaluation; re-run codec evaluate")
        kbps = float(k.removesuffix("kbps"))
        values = []
        for set_clips in sets.values():
            ev = evaluate_model(model, set_clips, params, levels, bitrates_kbps=[kbps], opus=False, sweep=False)
            values.append(ev.row("ours", kbps).metrics[metric])
        # The champion's value on its worst set, as the candidate's (gates.worst_of).
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) < len(values):
            return math.nan
        return max(finite) if direction == "lower" else min(finite)

    return run


# --- the stage entry ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evaluation",
        default="reports/evaluate/evaluation.json",
        help="codec evaluate's results (default: %(default)s)",
    )
    parser.add_argument("--raw", default="data/raw", help="clips, to re-evaluate the champion (default: %(default)s)")
    parser.add_argument("--out", default="reports/promote/promotion.json", help="decision JSON (default: %(default)s)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import mlflow  # heavy: imported when the stage runs, not for --help
    from mlflow import MlflowClient

    params = load_section(PromoteParams, "promote", args.params)
    path = Path(args.evaluation)
    if not path.is_file():
        raise UserError(f"{path} not found; run codec evaluate first (dvc repro evaluate)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run codec evaluate") from None
    root = repo_root()
    provenance = {
        "git_commit": git_commit(root),
        "data_version": data_version(root / "data" / "normalized", root)[0],
        "data_version_raw": data_version(root / "data" / "raw", root)[0],
    }
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    p = promote(
        client,
        record,
        params,
        Path(args.out),
        provenance=provenance,
        re_evaluate=champion_re_evaluator(record, Path(args.raw), params.primary_direction),
        say=lambda line: print(f"codec promote: {line}", flush=True),
    )
    print(f"{params.model_name} version {p.version}: {p.decision} ({params.gate_profile} gates)")
    for g in p.gates:
        print(f"  {'pass' if g.passed else 'FAIL'}  {g.name}: {g.value:.4g} (required {g.rule})")
    for r in p.reasons:
        print(f"  {r}")
    if not p.all_gates_passed and params.fail_on_gate:
        failed = ", ".join(f"{g.name} {g.value:.4g} (required {g.rule})" for g in p.gates if not g.passed)
        raise GateError(
            f"version {p.version} failed the gates: {failed}; see {args.out} and reports/evaluate/report.md "
            "(promote.fail_on_gate: true)"
        )
    return 0
