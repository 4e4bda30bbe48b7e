"""``codec promote``: quality gates, then the MLflow model registry.

Reads ``evaluation.json`` (written by ``codec evaluate``), checks the gates of
``params.yaml: promote`` at one bitrate (the top one unless ``bitrate_kbps`` says) on every
evaluation set, compares the candidate with the current ``@champion`` of
``telugu-speech-codec`` on the primary metric, and records the decision:

- every gate passes and the candidate beats the champion (or there is none): a new model
  version, and alias ``champion`` moves to it;
- every gate passes but it does not beat the champion: a new version with alias ``challenger``;
- a gate fails: no version. The candidate stays what it is, an MLflow run, tagged with its
  decision and the gates it failed (``codec models`` lists such runs under the versions).

**Metrics as metrics, a handful of tags.** The numbers the decision rests on (every
evaluation set at the gate bitrate, and the worst set) are logged as metrics of the
candidate's logged model (so the model version page shows them) and of its run, keyed
``<set>/<metric>_<kbps>`` with the evaluation set as their dataset (its fingerprint as the
digest). A version carries five tags: ``decision``, ``gates`` (the summary, with the worst
failing gate when one failed), ``eval_set`` (the fingerprint), ``git_commit``, ``data_version``.

**Comparing on the same evaluation set.** When the champion's worst-set metric was logged
for the candidate's evaluation-set fingerprint (:func:`codec.evaluation.suite.sets_fingerprint`:
clip ids, their samples and the settings that move our metrics), that value is used. Otherwise
(new held-out clips, other evaluation params), the champion's registered model is loaded and
re-evaluated on the candidate's clips at the gate bitrate, so the two numbers always come from
the same audio; if that fails (the model can't be loaded), the candidate cannot be shown to beat
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
import time
import typing as tp
from pathlib import Path

from codec.errors import GateError, UserError
from codec.evaluation.evaluate import evaluate_model
from codec.evaluation.params import EvaluateParams
from codec.evaluation.record import EvaluationRecord, json_number, kbps_key, read_evaluation
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
    Worst,
    beats,
    check_set_gates,
    gate_kbps,
    worst_of,
)
from codec.registry.lock import registry_lock
from codec.registry.record import Decision, PromotionRecord
from codec.registry.transaction import champion_version, register
from codec.tracking import CHAMPION, WORST_SET, describe, metric_key, model_id_of, set_metric_names, tracking_uri

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.exceptions import MlflowException


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


ReEvaluate = tp.Callable[["ModelVersion", float, str], float]  # (version, kbps, metric) -> its value


def compare(
    client: MlflowClient,
    record: EvaluationRecord,
    params: PromoteParams,
    kbps: float,
    re_evaluate: ReEvaluate | None,
) -> Comparison:
    """See the module docstring: its logged metric on the same set, else a re-evaluation of the champion."""
    metric = params.primary_metric
    cand = candidate_value(record, params, kbps)
    cmp = Comparison(metric=metric, direction=params.primary_direction, candidate=cand)
    champ = champion_version(client, params.model_name)
    if champ is None:
        return cmp
    cmp.champion_version = str(champ.version)
    logged = logged_value(client, champ, metric_key(WORST, metric, kbps), record.eval_set_fingerprint)
    if logged is not None:
        cmp.champion, cmp.source = logged, "its logged metric (same evaluation set)"
    elif re_evaluate is None:
        cmp.source, cmp.note = "not compared", "the champion was evaluated on another set and re-evaluation is off"
    else:
        try:
            cmp.champion = re_evaluate(champ, kbps, metric)
            cmp.source = "re-evaluated on this evaluation set"
        except Exception as e:  # any failure to load or run the old model: say so, don't promote over it
            cmp.source, cmp.note = (
                "not compared",
                f"re-evaluating version {champ.version} failed: {type(e).__name__}: {e}",
            )
    cmp.beats = cmp.champion is not None and beats(cand, cmp.champion, params.primary_direction)
    return cmp


def not_compared(record: EvaluationRecord, params: PromoteParams, kbps: float) -> Comparison:
    """The comparison of a candidate that failed a gate: none (it can't beat anything)."""
    return Comparison(
        metric=params.primary_metric,
        direction=params.primary_direction,
        candidate=candidate_value(record, params, kbps),
        source="not compared (a gate failed)",
        beats=False,
    )


# --- the numbers a version shows, as MLflow metrics ---------------------------------------------

SET_METRICS = ("snr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")  # ours', per set

WORST = WORST_SET  # the "set" of the worst-set values (the comparison reads its primary metric)


def registry_metrics(record: EvaluationRecord, params: PromoteParams, kbps: float) -> list[tuple[str, float, str]]:
    """(key, value, evaluation set) for every number a version shows: on every set at ``kbps``,
    :func:`codec.tracking.set_metric_names` (the held-out set's in full: ours with the side
    information, ``model_amplitude_ratio`` without it and ``opus_pesq``; the others' amplitude
    ratio and PESQ: the keys ``codec evaluate`` logged, so at its top bitrate no key is added), and
    the worst set's primary metric and amplitude ratio (finite values only: MLflow stores no NaN
    faithfully)."""
    out: list[tuple[str, float, str]] = []
    for name, metrics in record.sets.items():
        ours, plain = metrics.ours_at(kbps), metrics.no_side_at(kbps)
        values = {m: ours.metric(m) for m in SET_METRICS}
        values["model_amplitude_ratio"] = plain.amplitude_ratio if plain is not None else math.nan
        values["opus_pesq"] = metrics.opus_at(kbps).pesq
        out += [
            (metric_key(name, m, kbps), values[m], name) for m in set_metric_names(name) if math.isfinite(values[m])
        ]
    worst = worst_of(record, params, kbps)
    for m, v in ((params.primary_metric, worst.metric_value), ("amplitude_ratio", worst.amplitude_ratio)):
        if math.isfinite(v):
            out.append((metric_key(WORST, m, kbps), v, WORST))
    return out


def log_registry_metrics(client: MlflowClient, record: EvaluationRecord, params: PromoteParams, kbps: float) -> None:
    """Log :func:`registry_metrics` to the candidate's run and, when the evaluation names it, its
    logged model, each with its evaluation set as the dataset and the fingerprint as its digest."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    model_id = record.model_id
    digest = record.eval_set_fingerprint
    metrics = [
        Metric(
            key,
            value,
            now,
            0,
            model_id=model_id,
            dataset_name=name if model_id else None,
            dataset_digest=digest if model_id else None,
        )
        for key, value, name in registry_metrics(record, params, kbps)
    ]
    client.log_batch(str(record.mlflow_run_id), metrics=metrics)


def link_logged_model(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Tag the logged model with the version made from it (``mlflow.modelVersions``, as
    ``mlflow.register_model`` does), so its page in the MLflow UI lists the version."""
    key = "mlflow.modelVersions"
    model = client.get_logged_model(model_id)
    known = json.loads(model.tags.get(key) or "[]")
    client.set_logged_model_tags(model_id, {key: json.dumps([*known, {"name": name, "version": version}])})


def logged_value(client: MlflowClient, mv: ModelVersion, key: str, digest: str) -> float | None:
    """Metric ``key`` of version ``mv`` as logged for evaluation-set fingerprint ``digest`` (the
    newest such value), or ``None``: from its logged model, or, for a version registered from a
    run alone, from the run when the version's ``eval_set`` tag is ``digest``."""
    values: list[tuple[int, float]] = []
    model_id = model_id_of(mv)
    if model_id:
        model = client.get_logged_model(model_id)
        values = [(m.timestamp, m.value) for m in model.metrics or [] if m.key == key and m.dataset_digest == digest]
    elif mv.run_id and mv.tags.get("eval_set") == digest:
        values = [(m.timestamp, m.value) for m in client.get_metric_history(mv.run_id, key)]
    return float(max(values)[1]) if values else None


def candidate_value(record: EvaluationRecord, params: PromoteParams, kbps: float) -> float:
    """The candidate's primary metric for the comparison: its value on its worst evaluation set."""
    return worst_of(record, params, kbps).metric_value


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


def gates_summary(gates: tp.Sequence[Gate], profile: str, kbps: float) -> str:
    """The ``gates`` tag: how many passed, of which profile, at which bitrate, and the failed ones
    (the worst first: farthest past its limit, relative to it)."""
    n_sets = len({g.eval_set for g in gates})
    where = f"{n_sets} evaluation set{'s' if n_sets > 1 else ''} at {kbps:g} kbps"
    failed = sorted((g for g in gates if not g.passed), key=_shortfall, reverse=True)
    if not failed:
        return f"all {len(gates)} {profile} gates pass on {where}"
    shown = "; ".join(f"{g.name} {g.value:.4g} (required {g.rule})" for g in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} of {len(gates)} {profile} gates fail on {where}: {shown}{more}"[:4900]


def _shortfall(g: Gate) -> float:
    """How far a gate's value is past its limit, relative to the limit (infinite for NaN)."""
    if not math.isfinite(g.value):
        return math.inf
    if isinstance(g.limit, list):
        lo, hi = g.limit
        past = max(lo - g.value, g.value - hi, 0.0)
        return past / max(abs(hi - lo), 1e-9)
    return abs(g.value - g.limit) / max(abs(g.limit), 1e-9)


def version_tags(
    record: EvaluationRecord,
    gates: tp.Sequence[Gate],
    decision: Decision,
    profile: str,
    kbps: float,
    provenance: tp.Mapping[str, str],
) -> dict[str, str]:
    """The five tags of a version (and of the candidate's run): what was decided, the gates in one
    line, which evaluation set, and where model and data came from. The numbers are metrics
    (:func:`registry_metrics`), the whole record ``promotion.json`` and the run's artifacts."""
    return {
        "decision": decision,
        "gates": gates_summary(gates, profile, kbps),
        "eval_set": record.eval_set_fingerprint,
        "git_commit": str(provenance.get("git_commit", "")),
        "data_version": str(provenance.get("data_version", "")),
    }


@dataclasses.dataclass(frozen=True)
class Promotion:
    """What :func:`promote` returns (and ``promotion.json`` holds)."""

    model_name: str
    version: str | None  # None: rejected, no version (the candidate stays a run)
    decision: Decision
    reasons: list[str]
    gates: list[Gate]
    comparison: Comparison
    kbps: float  # the gate bitrate
    mlflow_run_id: str
    model_uri: str
    eval_set_fingerprint: str
    tags: dict[str, str]
    repairs: list[str] = dataclasses.field(default_factory=list)  # what repair() fixed first
    worst: Worst | None = None  # gates.worst_of: set and level
    gate_profile: str = "default"  # promote.gate_profile: which gates these were

    @property
    def all_gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> PromotionRecord:
        def num(v: float | None) -> float | None:
            return None if v is None else json_number(v, 6)

        return {
            "model_name": self.model_name,
            "version": self.version,
            "decision": self.decision,
            "alias": self.decision if self.decision != "rejected" else None,
            "all_gates_passed": self.all_gates_passed,
            "gate_profile": self.gate_profile,
            "failed_gates": [g.name for g in self.gates if not g.passed],
            "reasons": self.reasons,
            "bitrate": kbps_key(self.kbps),
            "gates": [{**dataclasses.asdict(g), "value": num(g.value)} for g in self.gates],
            "comparison": {
                **dataclasses.asdict(self.comparison),
                "candidate": num(self.comparison.candidate),
                "champion": num(self.comparison.champion),
            },
            "mlflow_run_id": self.mlflow_run_id,
            "model_uri": self.model_uri,
            "eval_set_fingerprint": self.eval_set_fingerprint,
            "worst": self.worst.to_json() if self.worst is not None else {},
            "git_commit": self.tags.get("git_commit"),
            "data_version": self.tags.get("data_version"),
        }


def write_promotion(out: Path, promotion: Promotion) -> None:
    """``promotion.json`` (the promotion's last step: on failure, its registry changes are undone)."""
    write_text_atomic(out, json.dumps(promotion.to_dict(), indent=2) + "\n")


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


def logged_run(record: EvaluationRecord) -> tuple[str, str]:
    """(MLflow run id, model URI) of the evaluated model; :class:`PromotionError` without them."""
    if not record.mlflow_run_id or not record.model_uri:
        raise PromotionError(
            f"the evaluation was not logged to MLflow ({record.source} has no mlflow_run_id), so there is no model "
            "to register; re-run codec evaluate without --no-mlflow"
        )
    return record.mlflow_run_id, record.model_uri


def promote(
    client: MlflowClient,
    record: EvaluationRecord,
    params: PromoteParams,
    out: Path,
    *,
    provenance: tp.Mapping[str, str] | None = None,
    re_evaluate: ReEvaluate | None = None,
    say: tp.Callable[[str], None] = lambda line: None,
    wait: tp.Callable[[str], None] | None = None,
) -> Promotion:
    """Gate, compare, register and write ``out`` (``promotion.json``); see the module docstring.
    ``say`` hears what is done besides the decision (a repair, a run left untagged); ``wait`` a
    wait for the registry lock, as it starts (default: ``say``)."""
    from mlflow.exceptions import MlflowException

    run_id, model_uri = logged_run(record)
    kbps = gate_kbps(record.metrics, params)
    gates = check_set_gates(record, params)
    # Before the registry is touched: --out can be written, and the store has the run.
    check_writable(out)
    check_logged(client, run_id, record.model_id)
    uri = registry_uri(client)
    try:
        log_registry_metrics(client, record, params, kbps)
        with registry_lock(uri, say=wait or say) as exclusive:
            repairs = repair(client, params.model_name, exclusive)
            for line in repairs:
                say(line)
            # The champion is read inside the lock: the comparison is against the real current one.
            passed = all(g.passed for g in gates)
            cmp = compare(client, record, params, kbps, re_evaluate) if passed else not_compared(record, params, kbps)
            decision, reasons = decide(gates, cmp, params.gate_profile)
            promotion = Promotion(
                model_name=params.model_name,
                version=None,
                decision=decision,
                reasons=reasons,
                gates=gates,
                comparison=cmp,
                kbps=kbps,
                mlflow_run_id=run_id,
                model_uri=model_uri,
                eval_set_fingerprint=record.eval_set_fingerprint,
                tags=version_tags(record, gates, decision, params.gate_profile, kbps, provenance or {}),
                repairs=repairs,
                worst=worst_of(record, params, kbps),
                gate_profile=params.gate_profile,
            )
            if decision == "rejected":
                # No version: the registry holds candidates that passed, the run keeps the rest.
                tag_run(client, promotion, record.model_id)
                write_promotion(out, promotion)
            else:
                promotion = register_version(client, promotion, record.model_id, out, say)
    except MlflowException as e:
        raise store_refused(uri, e) from e
    return promotion


def store_refused(uri: str, e: MlflowException) -> PromotionError:
    return PromotionError(
        f"the MLflow store at {uri} refused a registry call ({e.error_code}: {e.message}); this promotion's "
        "changes were undone; check the store (codec models) and re-run codec promote"
    )


def tag_run(client: MlflowClient, promotion: Promotion, model_id: str | None = None) -> None:
    """The candidate's run says what became of it (its decision at this promotion; a version's own
    tag follows its alias later, e.g. former-champion)."""
    from mlflow.entities import RunTag

    client.log_batch(promotion.mlflow_run_id, tags=[RunTag(k, v) for k, v in promotion.tags.items()])
    # The description's verdict (the run's and its logged model's): the decision, then why in a line.
    p = promotion
    what = f"version {p.version} of {p.model_name}" if p.version is not None else "no version made"
    why = p.tags.get("gates", "") if p.decision == "rejected" else "; ".join(p.reasons)
    why = why[:1].upper() + why[1:]  # a sentence of its own
    text = f"`codec promote` ({p.gate_profile or 'default'} gates at {p.kbps:g} kbps): {p.decision}, {what}. {why}"
    describe(client, p.mlflow_run_id, "Promotion", text, model_id)


def register_version(
    client: MlflowClient, promotion: Promotion, model_id: str | None, out: Path, say: tp.Callable[[str], None]
) -> Promotion:
    """A version for ``promotion`` with its alias (compare-and-set: the champion must still be the
    one compared against when the alias moves), ``out`` written as its last step, then the run
    tagged; returns the promotion with its version."""
    from mlflow.exceptions import MlflowException

    p = promotion
    version = register(
        client,
        p.model_name,
        # A logged model is registered by its own URI (MLflow 3): the version page then shows its
        # metrics; the run's path otherwise.
        source=f"models:/{model_id}" if model_id else p.model_uri,
        run_id=p.mlflow_run_id,
        tags=p.tags,
        alias=p.decision,
        finish=lambda v: write_promotion(out, dataclasses.replace(p, version=v)),
        model_id=model_id,
        expected={CHAMPION: p.comparison.champion_version},
        description=f"{p.decision} on {time.strftime('%Y-%m-%d', time.gmtime())}: " + "; ".join(p.reasons),
    )
    # After the commit: the registry's decision stands whatever happens to these tags.
    try:
        tag_run(client, dataclasses.replace(p, version=version), model_id)
        if model_id:
            link_logged_model(client, model_id, p.model_name, version)
    except MlflowException as e:
        say(f"run {p.mlflow_run_id} was not tagged with the decision ({e.error_code}); the registry holds it")
    return dataclasses.replace(p, version=version)


# --- re-evaluating the champion ---------------------------------------------------------------


def champion_re_evaluator(record: EvaluationRecord, raw: Path, direction: Direction = "lower") -> ReEvaluate:
    """A :data:`ReEvaluate` that loads a version's weights-only checkpoint artifact (nothing the
    registry holds is unpickled) and measures it on every evaluation set of the record, rebuilt from its
    held-out clips; returns its value on its worst set (``direction``: which way is better)."""

    def run(mv: ModelVersion, kbps: float, metric: str) -> float:
        params = from_dict(EvaluateParams, dict(record.params), f"{record.source}: params")
        # The champion at its own level settings (its checkpoint's), as codec encode runs it.
        loaded = load_model(f"models:/{mv.name}/{mv.version}")
        model, levels = loaded.model, loaded.levels
        rate = int(model.config.sample_rate)
        clips = load_eval_clips(raw, list(record.clip_ids), params.seconds, rate)
        user_sets = [
            load_user_set(name, folder, params, rate)
            for name, folder in user_set_folders(Path(record.user_sets_dir or "data/eval_sets")).items()
            if name in record.sets
        ]
        sets = build_sets(clips, params, user_sets)
        if sets_fingerprint(sets, params) != record.eval_set_fingerprint:
            raise PromotionError(f"the clips in {raw} changed since the evaluation; re-run codec evaluate")
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


# --- what the stage prints ---------------------------------------------------------------------

MAX_LINES = 15  # what codec promote prints by default, at most (the decision first)
MAX_GATES = 10  # failing gates listed by default, the worst first


def worst_first(gates: tp.Iterable[Gate]) -> list[Gate]:
    """The failed ones of ``gates``, the farthest past its limit first (NaN: not measured, first)."""
    return sorted((g for g in gates if not g.passed), key=_shortfall, reverse=True)


def gate_line(g: Gate) -> str:
    return f"  {'pass' if g.passed else 'FAIL'}  {g.name}: {g.value:.4g} (required {g.rule})"


def decision_line(p: Promotion) -> str:
    """``codec promote: rejected (cpu-demo gates): 3 of 133 gates failed at 6 kbps``, or
    ``codec promote: champion: telugu-speech-codec version 4 (all 133 cpu-demo gates passed at 6 kbps)``."""
    n, failed = len(p.gates), sum(not g.passed for g in p.gates)
    if p.decision == "rejected":
        return f"codec promote: rejected ({p.gate_profile} gates): {failed} of {n} gates failed at {p.kbps:g} kbps"
    return (
        f"codec promote: {p.decision}: {p.model_name} version {p.version} "
        f"(all {n} {p.gate_profile} gates passed at {p.kbps:g} kbps)"
    )


def stage_output(p: Promotion, out: str, where: str, notes: tp.Sequence[str] = (), verbose: bool = False) -> list[str]:
    """What ``codec promote`` prints: the decision first; then, by default, the failing gates
    (the worst first, at most :data:`MAX_GATES`) or the reason it was promoted, what was repaired
    on the way (``notes``), and where the rest is (``out``, the MLflow run at ``where``), in at most
    :data:`MAX_LINES` lines; ``verbose``: every gate once (pass and FAIL), the reasons that are
    not a gate's, every note."""
    lines = [decision_line(p)]
    why = [r for r in p.reasons if not r.startswith("gate ")]  # a rejection's reasons are its gates
    rest = f"  details: {out} (every gate and the reasons); MLflow run {p.mlflow_run_id} in {where}"
    if verbose:
        return [*lines, *(gate_line(g) for g in p.gates), *(f"  {r}" for r in why), *(f"  {n}" for n in notes), rest]
    lines += [f"  {n}" for n in notes]
    failed = worst_first(p.gates)
    room = MAX_LINES - len(lines) - len(why) - 1  # the last line says where the rest is
    shown = failed if len(failed) <= min(room, MAX_GATES) else failed[: max(1, min(room - 1, MAX_GATES))]
    lines += [gate_line(g) for g in shown]
    if len(failed) > len(shown):
        lines.append(f"  ... and {len(failed) - len(shown)} more failing gates (the worst first above; --verbose: all)")
    lines += [f"  {r}" for r in why]
    return [*lines, rest]


def gate_error(p: Promotion, out: str, shown: int = 5) -> GateError:
    """The error of ``fail_on_gate``: the worst failing gates (``shown`` of them) and where the rest are."""
    failed = worst_first(p.gates)
    listed = ", ".join(f"{g.name} {g.value:.4g} (required {g.rule})" for g in failed[:shown])
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return GateError(
        f"the candidate (run {p.mlflow_run_id}) failed {len(failed)} of {len(p.gates)} gates: {listed}{more}; "
        f"see {out} and reports/evaluate/report.md (promote.fail_on_gate: true)"
    )


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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"print every gate (passed and failed) and every reason; by default the decision, the worst "
        f"{MAX_GATES} failing gates and where the rest is, in at most {MAX_LINES} lines",
    )


def run(args: argparse.Namespace) -> int:
    import mlflow  # heavy: imported when the stage runs, not for --help
    from mlflow import MlflowClient

    params = load_section(PromoteParams, "promote", args.params)
    record = read_evaluation(args.evaluation)
    root = repo_root()
    provenance = {
        "git_commit": git_commit(root),
        "data_version": data_version(root / "data" / "normalized", root)[0],
        "data_version_raw": data_version(root / "data" / "raw", root)[0],
    }
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    notes: list[str] = []  # said after the decision (the decision is the first line)
    verbose = bool(getattr(args, "verbose", False))
    p = promote(
        client,
        record,
        params,
        Path(args.out),
        provenance=provenance,
        re_evaluate=champion_re_evaluator(record, Path(args.raw), params.primary_direction),
        say=notes.append,
        wait=lambda line: print(f"codec promote: {line}", flush=True),  # as it happens: it may last
    )
    for line in stage_output(p, args.out, mlflow.get_tracking_uri(), notes, verbose):
        print(line)
    if not p.all_gates_passed and params.fail_on_gate:
        raise gate_error(p, args.out)
    return 0
