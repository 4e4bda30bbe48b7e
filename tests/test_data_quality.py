"""The Great Expectations project in gx/: committed suites, a kept validation history with run
names, and Data Docs that render offline (checked in headless Chromium with no network)."""

from __future__ import annotations

import dataclasses
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codec.data import gx_project
from codec.data.data_docs import remote_loads
from codec.data.validate import ValidateParams, _checks, suite_parameters, validate
from codec.errors import DataQualityError, UserError
from tests.conftest import REPO, run_cli

GX = REPO / "gx"


def write_manifests(root: Path, mode: str, seed: int, n: int = 24) -> Path:
    """data/raw and data/normalized manifests as ingest and normalize write them (levels only)."""
    rng = np.random.default_rng(seed)
    ids = [f"spk{i % 4}_utt{i:02d}" for i in range(n)]
    raw = pd.DataFrame(
        {
            "id": ids,
            "path": [f"{i}.wav" for i in ids],
            "duration_s": rng.uniform(1.0, 4.0, n).round(3),
            "sample_rate": 16000,
            "source_sample_rate": rng.choice([16000, 48000], n),
            "peak_dbfs": rng.uniform(-20.0, -1.0, n),
            "rms_dbfs": rng.normal(-30.0, 7.0, n),
            "lufs": rng.normal(-28.0, 7.0, n),
            "clipped_fraction": 0.0,
        }
    )
    norm = raw[["id", "path", "duration_s", "sample_rate"]].copy()
    if mode == "peak":  # each clip scaled to its own peak: the levels keep the raw spread
        norm["lufs"] = raw["lufs"] - raw["peak_dbfs"] - 1.0
        norm["rms_dbfs"] = raw["rms_dbfs"] - raw["peak_dbfs"] - 1.0
    else:
        norm["lufs"] = -16.0 + rng.normal(0.0, 0.03, n)
        norm["rms_dbfs"] = -19.0 + rng.normal(0.0, 0.6, n)
    norm["peak_dbfs"] = -1.2
    norm["clipped_fraction"] = 0.0
    for name, df in (("raw", raw), ("normalized", norm)):
        (root / name).mkdir(parents=True, exist_ok=True)
        df.to_csv(root / name / "manifest.csv", index=False)
    return root


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- The committed suites -----------------------------------------------------------------


def test_the_committed_gate_suite_is_the_gate_and_its_thresholds_come_from_params() -> None:
    suite = json.loads((GX / "expectations" / "normalized_audio.json").read_text())
    checks = [e["meta"]["check"] for e in suite["expectations"]]
    assert sorted(checks) == sorted(_checks(ValidateParams())), "each check of validate.py is one expectation"
    used = set(re.findall(r'"\$PARAMETER": "(\w+)"', json.dumps(suite)))
    assert used == set(suite_parameters(ValidateParams())), "every threshold is a suite parameter the stage fills"
    assert all(e["severity"] == "critical" for e in suite["expectations"])
    # The numbers live in params.yaml only: none of the limits is written into the suite.
    rms = next(e for e in suite["expectations"] if e["meta"]["check"] == "rms_spread")
    assert rms["kwargs"]["max_value"] == {"$PARAMETER": "max_rms_spread_db"}

    checkpoint = json.loads((GX / "checkpoints" / "normalized_audio_gate.json").read_text())
    (definition,) = checkpoint["validation_definitions"]
    assert json.loads((GX / "validation_definitions" / f"{definition['name']}.json").read_text())["suite"] == {
        "id": suite["id"],
        "name": "normalized_audio",
    }


def test_the_raw_profile_suite_is_information_that_cannot_fail() -> None:
    suite = json.loads((GX / "expectations" / "raw_audio_profile.json").read_text())
    assert suite["meta"]["role"] == "information" and suite["notes"].startswith("Information only")
    assert len(suite["expectations"]) >= 10
    for e in suite["expectations"]:
        bounds = {k: v for k, v in e["kwargs"].items() if k in ("min_value", "max_value", "value_set")}
        assert all(v in (None, []) for v in bounds.values()), e  # reports the observed value, no limit
        assert e["severity"] == "info"
    assert "rms_spread" in {e["meta"]["check"] for e in suite["expectations"]}


# --- History, run names, offline Data Docs ------------------------------------------------


@dataclasses.dataclass
class Site:
    docs: Path
    history: Path
    names: list[str]  # run names, oldest first
    failure: DataQualityError
    summary: dict[str, tp.Any]  # of the failed run


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """Three runs of the stage (pass, pass, the seed's peak bug) with a history of two."""
    root = tmp_path_factory.mktemp("gx_history")
    history, docs = root / "history", root / "docs"
    before = tree(GX)
    names, failure = [], None
    for i, mode in enumerate(["lufs", "lufs", "peak"]):
        data = write_manifests(root / f"data{i}", mode, seed=i)
        names.append(gx_project.run_name(data / "normalized"))
        shutil.rmtree(docs, ignore_errors=True)  # as `codec validate` (and DVC) clear the site
        try:
            validate(
                data / "normalized",
                data / "raw",
                ValidateParams(min_files=20, mode=mode),
                root / "summary.json",
                docs,
                gx_dir=GX,
                history_dir=history,
                keep_runs=2,
            )
        except DataQualityError as e:
            failure = e
    assert tree(GX) == before, "a run writes nothing into gx/"
    assert failure is not None
    return Site(docs, history, names, failure, json.loads((root / "summary.json").read_text()))


def test_runs_are_kept_by_name_and_the_history_is_bounded(site: Site) -> None:
    assert len(set(site.names)) == 3
    assert all(re.fullmatch(r"data-[0-9a-f]{8}_git-unknown", n) for n in site.names)  # no git in a temp dir
    stored = sorted(site.history.glob("*/*/*/*.json"))  # suite/run name/run time/batch
    assert sorted({p.parts[-3] for p in stored}) == sorted(site.names[1:])  # the oldest run was dropped
    assert sorted({p.parts[-4] for p in stored}) == ["normalized_audio", "raw_audio_profile"]
    assert len(stored) == 4
    # The gate failed as before the suites moved to files: same message, same exit code.
    msg = str(site.failure)
    assert site.failure.exit_code == 3
    assert "rms_spread [expect_column_stdev_to_be_between, column rms_dbfs]" in msg and "limit std <= 1.5 dB" in msg
    assert "worst files:" in msg and "normalize.mode: lufs" in msg


def test_data_docs_load_nothing_from_the_network(site: Site) -> None:
    pages = sorted(site.docs.rglob("*.html"))
    assert len(pages) == 1 + 2 + 4  # index, two suites, two runs of two suites
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert remote_loads(text) == [], page
        assert "bootstrapTable(" not in text and "cdn." not in text, page
    for sheet in site.docs.rglob("*.css"):
        assert "url(http" not in sheet.read_text(encoding="utf-8"), sheet


def test_the_rms_spread_gate_is_named_and_explained_right_after_the_overview(site: Site) -> None:
    """Issue 26: the gate that catches per-clip peak normalization showed as ``rms_dbfs``,
    "standard deviation must be >= 0.0 and <= 1.5", at the bottom of the page. On the failed
    run's page it is the first section after the overview, named, with its unit and meaning."""
    (page,) = [p for p in site.docs.rglob("*.html") if "normalized_audio" in p.parts and site.names[-1] in str(p)]
    html = page.read_text(encoding="utf-8")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    headings = (" Overview ", " rms_dbfs ", " Table-Level Expectations ", " clipped_fraction ")
    toc = text.find(" Table of Contents ")
    body = text.find(" Overview ", toc + 30)  # past the table of contents, which lists them in that order too
    in_toc = [text.find(h, toc) for h in headings]
    assert -1 < toc < in_toc[0] and in_toc == sorted(in_toc) and in_toc[-1] < body, in_toc
    sections = [text.find(h, body - 1) for h in headings]
    assert -1 not in sections and sections == sorted(sections), sections
    described = text.find("rms_spread: the spread of the clips' levels")
    assert sections[1] < described < sections[2]
    # Nothing lost or doubled: each section once, each linked from the table of contents once.
    ids = re.findall(r'<div id="section-(\d+)" class="ge-section', html)
    links = re.findall(r'class="nav-link ge-navigation-sidebar-link[^"]*" href="#section-(\d+)"', html)
    assert sorted(ids) == sorted(set(ids)) == sorted(links), (ids, links)
    assert "in dB, must be at most validate.max_rms_spread_db" in text and "per-clip peak normalization" in text


# --- In a browser with no network ---------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def browse(page: Path, *extra: str) -> str:
    """Chromium, headless and cut off from the network, on ``page``; its stdout."""
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not found (apt-get install -y chromium); the offline Data Docs check needs it")
    # A network namespace of its own where the system allows one (root, as in CI).
    unshare = shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    isolate = ["unshare", "-n"] if unshare else []
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            *isolate,
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # and without unshare: no name resolves,
            "--proxy-server=127.0.0.1:9",  # nothing connects
            "--window-size=1400,1000",
            *extra,
            page.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@dataclasses.dataclass
class Row:
    attrs: dict[str, str]
    text: str
    classes: set[str]
    links: list[str]


class Rows(html.parser.HTMLParser):
    """The ``<tr>`` rows of a page: attributes, text, classes and links inside."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self._row: Row | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr":
            self._row = Row(a, "", set(), [])
            self.rows.append(self._row)
        elif self._row is not None:
            self._row.classes |= set(a.get("class", "").split())
            if tag == "a" and a.get("href"):
                self._row.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self._row.text += data


def rows_of(dom: str) -> list[Row]:
    parser = Rows()
    parser.feed(dom)
    for r in parser.rows:
        r.text = " ".join(r.text.split())
    return parser.rows


def test_data_docs_render_offline_in_a_headless_browser(site: Site, tmp_path: Path) -> None:
    index = site.docs / "index.html"
    runs = [r for r in rows_of(browse(index, "--dump-dom")) if "data-suite" in r.attrs and "data-status" in r.attrs]
    assert len(runs) == 4
    newest, older = site.names[2], site.names[1]
    by = {(r.attrs["data-suite"], next(n for n in site.names if n in r.text)): r for r in runs}
    assert by[("normalized_audio", newest)].attrs["data-status"] == "failed"  # the peak-mode run
    assert "Failed" in by[("normalized_audio", newest)].text
    assert by[("normalized_audio", older)].attrs["data-status"] == "passed"
    for name in (newest, older):  # the raw profile reads as information, never as failed
        raw = by[("raw_audio_profile", name)]
        assert raw.attrs["data-status"] == "information" and "Information" in raw.text and "Failed" not in raw.text
    assert [r.attrs["data-suite"] for r in runs] == ["normalized_audio", "raw_audio_profile"] * 2  # newest first
    for r in runs:  # each row links to its validation page, which exists
        assert any((site.docs / link).is_file() for link in r.links if link.startswith("validations/"))

    failed_page = site.docs / next(
        link for link in by[("normalized_audio", newest)].links if link.startswith("validations/")
    )
    rows = rows_of(browse(failed_page, "--dump-dom"))
    spread = next(r for r in rows if "rms_spread: the spread of the clips' levels" in r.text)
    assert "fa-times" in spread.classes and "1.5" in spread.text
    shown = re.search(r"≈?(\d+\.\d+)\s*$", spread.text)  # the observed value, last cell
    assert shown and float(shown.group(1)) == pytest.approx(site.summary["expectations"]["rms_spread"]["observed"])
    assert any("fa-check-circle" in r.classes and "values must never be null" in r.text for r in rows)

    raw_page = site.docs / next(link for link in by[("raw_audio_profile", newest)].links if "validations/" in link)
    dom = browse(raw_page, "--dump-dom")
    assert re.search(r"Status:</span>\s*<i class=\"fas fa-info-circle text-info\"[^>]*></i>\s*Information only", dom)
    marks = [r.classes & {"fa-info-circle", "fa-check-circle", "fa-times"} for r in rows_of(dom)]
    assert [m for m in marks if m] == [{"fa-info-circle"}] * 13  # each profile expectation: information

    for page, shot in ((index, tmp_path / "index.png"), (failed_page, tmp_path / "validation.png")):
        browse(page, f"--screenshot={shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# --- Mistakes a user can make -------------------------------------------------------------


def test_a_suite_that_asks_for_what_the_stage_does_not_have_is_a_clear_error(tmp_path: Path) -> None:
    data = write_manifests(tmp_path / "data", "lufs", seed=0)
    project = tmp_path / "gx"
    shutil.copytree(GX, project)
    suite_file = project / "expectations" / "normalized_audio.json"
    suite_file.write_text(suite_file.read_text().replace('"max_rms_spread_db"', '"max_spread"'))
    with pytest.raises(UserError, match=r"normalized_audio\.json: suite parameter\(s\) max_spread are not supplied"):
        validate(data / "normalized", data / "raw", ValidateParams(), tmp_path / "s.json", None, gx_dir=project)

    # An expectation added to the suite file gates at once, reported by its type and column.
    suite = json.loads(suite_file.read_text().replace('"max_spread"', '"max_rms_spread_db"'))
    suite["expectations"].append(
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "lufs", "max_value": -20.0}, "meta": {}}
    )
    suite_file.write_text(json.dumps(suite, indent=2))
    with pytest.raises(DataQualityError, match=r"expect_column_mean_to_be_between:lufs .*limit max_value=-20\.0"):
        validate(data / "normalized", data / "raw", ValidateParams(), tmp_path / "s.json", None, gx_dir=project)

    norm = pd.read_csv(data / "normalized" / "manifest.csv").drop(columns=["rms_dbfs"])
    norm.to_csv(data / "normalized" / "manifest.csv", index=False)
    with pytest.raises(UserError, match=r"manifest\.csv .*lacks column\(s\) rms_dbfs that .*normalized_audio\.json"):
        validate(data / "normalized", data / "raw", ValidateParams(), tmp_path / "s.json", None, gx_dir=GX)


def test_the_command_refuses_a_foreign_history_folder_and_a_missing_project(tmp_path: Path) -> None:
    data = write_manifests(tmp_path / "data", "lufs", seed=0)
    (tmp_path / "params.yaml").write_text("validate:\n  min_files: 1\n")
    base = ["codec", "validate", "--in", str(data / "normalized"), "--raw", str(data / "raw")]
    base += ["--summary", str(tmp_path / "s.json"), "--params", str(tmp_path / "params.yaml")]
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    proc = run_cli(*base, "--gx", str(GX), "--history", str(mine), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--history" in proc.stderr and "not a validation history (e.g. 'todo.txt')" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["todo.txt"]

    proc = run_cli(*base, cwd=tmp_path)  # --gx defaults to ./gx, which this folder lacks
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no great_expectations.yml" in proc.stderr
    assert not os.path.exists(tmp_path / "s.json")
