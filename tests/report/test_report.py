from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from mbsearch.cli.app import app
from mbsearch.results.baselines import baseline_frame
from mbsearch.results.finished import open_finished

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str, profile) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_path(tiny_study):
    """The tiny study's report, its proxy baselines made first as `verify` makes them (report makes none)."""
    from typer.testing import CliRunner

    from mbsearch.results.baselines import study_baselines

    runs, name, _ = tiny_study
    study_baselines(open_finished(name, runs, None), runs)
    result = CliRunner().invoke(app, ["report", name, "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    return runs / name / "report.html"


def test_report_is_self_contained_with_all_sections(report_path) -> None:
    page = report_path.read_text()
    assert "<script src=" not in page.replace('<script src="data:', "")  # no CDN: plotly.js is inlined
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    for div in ("pareto-plot", "cost-plot", "history-plot"):
        assert f'id="{div}"' in page
    assert "ir_r1_" in page or "ds_r1_" in page  # hover text carries the timm strings
    assert "The front dominates" in page and "mobilenet_v3_large" in page
    assert '"name":"MobileNet baselines"' in page  # the trace the stored baselines are drawn as
    assert "Pareto front" in page and "(knee)" in page


def test_baselines_are_cached(tiny_study) -> None:
    runs, name, _ = tiny_study
    finished = open_finished(name, runs, None)
    names = ["mobilenet_v3_small_050", "mobilenet_v2_050"]
    first = baseline_frame(finished.settings, runs, names=names)
    calls = []
    second = baseline_frame(finished.settings, runs, names=names, on_progress=lambda n, _: calls.append(n))
    assert calls == []  # computed by the report already: nothing is trained again
    assert first.equals(second)
    assert (first["val_accuracy"] > 0).all() and (first["latency_ms"] > 0).all()
    assert first.set_index("name").loc["mobilenet_v2_050", "params"] > 0


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs Debian's chromium)")
def test_pareto_plot_renders_points_in_a_real_browser(report_path, tmp_path, tiny_study) -> None:
    _, _, result = tiny_study
    dom = _chromium("--virtual-time-budget=20000", "--dump-dom", report_path.as_uri(), profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.index('id="pareto-plot"')
    end = dom.stdout.index('id="cost-plot"')
    pareto = dom.stdout[start:end]
    assert "main-svg" in pareto  # plotly drew its SVG
    points = len(re.findall(r'class="point"', pareto))
    complete = len([t for t in result.study.trials if t.state.name == "COMPLETE"])
    assert points >= complete  # every complete trial is drawn (plus baselines)
    shot = tmp_path / "report.png"
    _chromium(
        "--window-size=1280,1800",
        f"--screenshot={shot}",
        "--virtual-time-budget=20000",
        report_path.as_uri(),
        profile=tmp_path / "p2",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_report_bad_input(runner, tiny_study, tmp_path) -> None:
    runs, _, _ = tiny_study
    result = runner.invoke(app, ["report", "missing", "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "unknown study 'missing'" in result.stderr
    assert not (runs / "missing").exists()


def _verified_copy(runner, tiny_study, tmp_path):
    """A copy of the tiny study, its front verified: (name, runs folder, finished study, verify budget)."""
    runs, name, _ = tiny_study
    copy = tmp_path / "runs"
    shutil.copytree(runs / name, copy / name)
    # --no-baselines: these tests make the few baselines they compare with themselves (the supernet search
    # test runs verify's baselines end to end); all 9 at both budgets would add minutes to CI
    verify = ["verify", name, "--runs-dir", str(copy), "--top", "3", "--epochs", "0.25", "--train-size", "256",
              "--no-baselines"]  # fmt: skip
    assert runner.invoke(app, verify).exit_code == 0
    finished = open_finished(name, copy, None)
    assert finished.study.user_attrs["verify_budget"]["training"] == "cpu/fp32"  # where verify trained
    return name, copy, finished, finished.study.user_attrs["verify_budget"]


def test_report_sets_the_verified_front_beside_the_proxy_front(runner, tiny_study, tmp_path) -> None:
    """After `verify`: both fronts, this study's own tau, baselines at the verification budget, and
    dominance judged on verified accuracy."""
    from mbsearch.ranking import kendall_tau
    from mbsearch.report.data import compute

    name, copy, finished, budget = _verified_copy(runner, tiny_study, tmp_path)
    names = ["mobilenet_v3_small_050", "mobilenet_v2_050"]
    settings = finished.settings | {key: budget[key] for key in ("epochs", "train_size", "batch_size", "lr")}
    verified_baselines = baseline_frame(settings, copy, names=names)
    data = compute(finished, None, budget, verified_baselines).verified
    points = finished.frame[finished.frame["verified_accuracy"].notna()]
    assert set(data.points["number"]) == set(points["number"]) and len(points) >= 3
    assert data.tau == pytest.approx(kendall_tau(list(points["val_accuracy"]), list(points["verified_accuracy"])))
    best = points.loc[points["verified_accuracy"].idxmax(), "number"]
    assert best in set(data.front["number"])  # the most accurate verified trial is on the verified front
    assert list(data.dominance["name"]) == names
    result = runner.invoke(app, ["report", name, "--runs-dir", str(copy), "--no-baselines"])
    assert result.exit_code == 0, result.output
    page = (copy / name / "report.html").read_text()
    assert 'id="verified-plot"' in page and "Kendall τ between proxy and verified" in page
    # Issue 17: what was verified leads the page, the proxy's view follows and says it is the proxy's
    assert page.index("Verified front (the longer training)") < page.index('id="verified-plot"')
    assert page.index('id="verified-plot"') < page.index('id="pareto-plot"')
    assert page.index("Proxy front (brief training") < page.index('id="pareto-plot"')
    if CHROMIUM is not None:  # and the leading plot is drawn: plotly.js must be loaded before it runs
        dom = _chromium("--virtual-time-budget=20000", "--dump-dom", (copy / name / "report.html").as_uri(),
                        profile=tmp_path / "p1")  # fmt: skip
        assert dom.returncode == 0, dom.stderr[-2000:]
        verified_plot = dom.stdout[dom.stdout.index('id="verified-plot"') : dom.stdout.index('id="pareto-plot"')]
        assert "main-svg" in verified_plot and len(re.findall(r'class="point"', verified_plot)) >= len(points)
    margins = compute(finished, None, budget, verified_baselines)
    from mbsearch.report.page import render

    page = render(margins)
    assert "points at no more latency" in page and "95% sampling interval" in page


@pytest.mark.slow(seconds=70)
def test_report_shows_an_adapted_trial_beside_the_front(runner, tiny_study, tmp_path) -> None:
    """`adapt` on an exported trial, then `report --adapted`: the star sits at the adapted network's
    measured latency and accuracy, joined to the trial it came from; files that are not an adapt output
    of this study are refused with one line and no report written."""
    from mbsearch.adapt.adapted import adapted_frame
    from mbsearch.architecture.arch import load_arch
    from mbsearch.report.data import compute
    from mbsearch.report.figures import pareto_figure

    runs, name, _ = tiny_study
    copy = tmp_path / "runs"
    shutil.copytree(runs / name, copy / name)
    (copy / name / "report.html").unlink(missing_ok=True)
    knee = tmp_path / "knee.json"
    assert runner.invoke(app, ["export", name, "--runs-dir", str(copy), "-o", str(knee)]).exit_code == 0
    out = tmp_path / "knee-adapted"
    adapt = [
        "adapt", str(knee), "--latency-reduction", "0.1", "--max-iterations", "1", "--train-size", "128",
        "--finetune-images", "64", "--val-size", "256", "--final-epochs", "0.01", "--out", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, adapt)
    assert result.exit_code == 0, result.output
    adapted = load_arch(out / "adapted.json")

    report = ["report", name, "--runs-dir", str(copy), "--no-baselines", "--adapted"]
    plain = runner.invoke(app, [*report, str(knee)])
    assert plain.exit_code == 2 and "not an 'mbsearch adapt' output" in plain.stderr
    elsewhere = json.loads((out / "adapted.json").read_text())
    elsewhere["provenance"]["source_provenance"]["study"] = "elsewhere"
    (tmp_path / "elsewhere.json").write_text(json.dumps(elsewhere))
    other = runner.invoke(app, [*report, str(tmp_path / "elsewhere.json")])
    assert other.exit_code == 2 and "adapted from study 'elsewhere', not from a trial of 'tiny'" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and "Traceback" not in other.output
    assert not (copy / name / "report.html").exists()

    shown = runner.invoke(app, [*report, str(out)])
    assert shown.exit_code == 0, shown.output
    finished = open_finished(name, copy, None)
    frame = adapted_frame([out], finished)
    row = frame.iloc[0]
    trial = adapted.provenance["source_provenance"]["trial"]
    assert row["source_trial"] == trial == load_arch(knee).provenance["trial"]
    assert row["source_latency_ms"] == finished.frame.set_index("number").loc[trial, "latency_ms"]
    assert (row["latency_ms"], row["val_accuracy"]) == (adapted.metrics["latency_ms"], adapted.metrics["val_accuracy"])
    assert bool(row["same_device"])  # adapt timed it on this CPU with one thread, as the search did
    figure = pareto_figure(compute(finished, None, adapted=frame))
    star = next(trace for trace in figure.data if trace.name == "adapted (NetAdapt)")
    assert list(star.x) == [adapted.metrics["latency_ms"]] and list(star.y) == [adapted.metrics["val_accuracy"]]
    link = [trace for trace in figure.data if trace.mode == "lines" and trace.line.dash == "dot"]
    assert [list(trace.x) for trace in link] == [[row["source_latency_ms"], row["latency_ms"]]]
    page = (copy / name / "report.html").read_text()
    assert "id='adapted-table'" in page and adapted.name in page


def test_a_margin_with_no_as_accurate_front_point_says_so_not_nan() -> None:
    """Issue 29: a baseline no verified network is as accurate as printed "nanx faster at no less accuracy"
    (pandas holds a missing speed-up as NaN, not None)."""
    import pandas as pd

    from mbsearch.report.page import _margins

    row = {"name": "mobilenet_v3_large", "dominated": False, "accuracy_gain": -0.62, "speedup": None}
    html_text = _margins(pd.DataFrame([row], columns=["name", "dominated", "accuracy_gain", "speedup"]), 0.88)
    assert "nan" not in html_text.lower()
    assert "no verified network is at least as accurate" in html_text and "-0.62 points" in html_text


def test_seed_noise_is_measured_on_the_knee_and_two_baselines_and_shown_beside_each_margin(
    runner, tiny_study, tmp_path
) -> None:
    """Issue 27: the verified knee and the two baselines nearest it are retrained with more seeds (stored,
    reused by a rerun); their pooled sd becomes each margin's noise band."""
    from mbsearch.report.data import compute
    from mbsearch.report.page import render
    from mbsearch.results.seed_noise import measure_seed_noise, pooled_sd

    assert pooled_sd([[0.80, 0.82], [0.70, 0.70, 0.73]]) == pytest.approx(((0.0002 + 0.0006) / 3) ** 0.5)
    name, copy, finished, budget = _verified_copy(runner, tiny_study, tmp_path)
    settings = finished.settings | {key: budget[key] for key in ("epochs", "train_size", "batch_size", "lr")}
    settings["train_seed"] = budget["seed"]
    baselines = baseline_frame(
        settings, copy, names=["mobilenet_v3_small_050", "mobilenet_v2_050", "mobilenet_v3_small"]
    )
    noise = measure_seed_noise(finished, baselines, copy, extra=1)
    assert noise is not None and len(noise.accuracies) == 3
    assert all(len(values) == 2 for values in noise.accuracies.values())
    assert any(values[0] != values[1] for values in noise.accuracies.values())  # another seed, other numbers
    assert noise.sd_points > 0
    again = measure_seed_noise(open_finished(name, copy, None), baselines, copy, extra=1)
    assert again.accuracies == noise.accuracies  # stored and cached: nothing trained twice
    from mbsearch.results.seed_noise import stored_seed_noise

    assert stored_seed_noise(open_finished(name, copy, None)) == noise  # what the report draws, trained by verify
    page = render(compute(finished, None, budget, baselines, noise=noise))
    assert "the training seed moves one verified accuracy" in page and "noise)" in page


def _copy(tiny_study, tmp_path):
    """A copy of the tiny study to alter: (name, runs folder, its optuna study)."""
    from mbsearch.study.storage import default_url, load_study

    runs, name, _ = tiny_study
    copy = tmp_path / "runs"
    shutil.copytree(runs / name, copy / name)
    (copy / name / "report.html").unlink(missing_ok=True)  # an earlier test's
    return name, copy, load_study(default_url(copy / name), name)


def test_report_trains_nothing_and_says_which_command_fills_what_is_missing(runner, tiny_study, tmp_path) -> None:
    """Issue 38: `report` never trains or times: with no stored baselines it draws the page at once and names
    'mbsearch verify'. Issue 35: a report made on another machine (or for another training instrument) timed
    and trained the baselines there; stored results are now read under the study's own device fingerprint
    and instrument, so another machine's are never drawn beside the study's."""
    import time

    name, copy, study = _copy(tiny_study, tmp_path)
    started = time.monotonic()
    result = runner.invoke(app, ["report", name, "--runs-dir", str(copy)])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    assert "9 of 9 baselines at the proxy budget are not stored for this study's data and device" in result.stdout
    assert f"run 'mbsearch verify {name}'" in result.stdout
    assert not (copy / "baselines.json").exists() and not (copy / "latency-cache.sqlite").exists()
    page = (copy / name / "report.html").read_text()
    assert '"name":"MobileNet baselines"' not in page and "No baselines drawn: none are stored" in page
    # stored for this study's device: drawn; the same rows under another fingerprint or instrument: not
    from mbsearch.results.baselines import stored_study_baselines

    rows = baseline_frame(open_finished(name, copy, None).settings, copy, names=["mobilenet_v2_050"])
    assert len(rows) == 1
    stored = stored_study_baselines(open_finished(name, copy, None), copy)
    assert list(stored.proxy["name"]) == ["mobilenet_v2_050"] and "8 of 9" in stored.missing[0]
    device = study.user_attrs["latency_device"]
    study.set_user_attr("latency_device", device | {"fingerprint": "0123456789abcdef", "cpu": "Other CPU"})
    assert stored_study_baselines(open_finished(name, copy, None), copy).proxy is None
    study.set_user_attr("latency_device", device)
    study.set_user_attr("training_instrument", "cuda/bf16")
    assert stored_study_baselines(open_finished(name, copy, None), copy).proxy is None


def test_verify_refuses_to_time_baselines_on_another_device(runner, tiny_study, tmp_path) -> None:
    """Issue 35: the baselines are timed only on the study's device; elsewhere `verify` refuses in one line
    before it trains anything (or runs with --no-baselines)."""
    name, copy, study = _copy(tiny_study, tmp_path)
    device = study.user_attrs["latency_device"]
    study.set_user_attr("latency_device", device | {"fingerprint": "0123456789abcdef", "cpu": "Other CPU"})
    verify = ["verify", name, "--runs-dir", str(copy), "--top", "1", "--epochs", "0.25", "--train-size", "256"]
    result = runner.invoke(app, verify)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "timed on device 0123456789abcdef (Other CPU" in line and "--no-baselines" in line
    assert not (copy / "baselines.json").exists() and "verify_budget" not in study.user_attrs


def test_baselines_are_reused_across_studies_and_trained_again_when_their_key_changes(tiny_study, tmp_path) -> None:
    """Issue 38: a baseline is stored once per (data and split, budget, seed rule, training instrument, device
    fingerprint, network) and reused by every later study on the same data; a changed key trains again."""
    from mbsearch.train.device import TrainingDevice

    runs, name, _ = tiny_study
    settings = open_finished(name, runs, None).settings
    names = ["mobilenet_v3_small_050"]
    trained: list[str] = []
    first = baseline_frame(settings, tmp_path, names=names, on_progress=lambda n, _: trained.append(n))
    assert trained == names
    other_study = settings | {"study": "another"}  # a second study on the same data: nothing trained
    assert baseline_frame(other_study, tmp_path, names=names, on_progress=lambda n, _: trained.append(n)).equals(first)
    assert trained == names
    for changed in ({"train_seed": 7}, {"train_size": 128}, {"val_size": 128}):
        baseline_frame(settings | changed, tmp_path, names=names, on_progress=lambda n, _: trained.append(n))
    baseline_frame(settings, tmp_path, names=names, on_progress=lambda n, _: trained.append(n),
                   training=TrainingDevice(torch.device("cpu"), check_every_steps=2))  # same instrument  # fmt: skip
    assert len(trained) == 4  # three changed keys trained again; the same instrument did not
    # a row stored for another definition of the network (the references before 2026-12-07) is not reused
    import json as json_module

    path = tmp_path / "baselines.json"
    cache = json_module.loads(path.read_text())
    path.write_text(json_module.dumps({key.rsplit("|", 1)[0] + "|0123456789ab": row for key, row in cache.items()}))
    baseline_frame(settings, tmp_path, names=names, on_progress=lambda n, _: trained.append(n))
    assert len(trained) == 5
