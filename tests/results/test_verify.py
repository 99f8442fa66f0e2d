"""`mbsearch verify`: verified accuracy stored per trial in the study's storage, resume, workers on
PostgreSQL, and export's choice."""

from __future__ import annotations

import shutil

import optuna
import pytest

from mbsearch.architecture.arch import load_arch
from mbsearch.cli.app import app
from mbsearch.results.finished import open_finished
from mbsearch.results.pareto import VERIFY_TAG
from mbsearch.results.verify import choose, run_verify, study_data, verify_budget
from mbsearch.search.loop import run_search
from mbsearch.study.config import RunConfig

VERIFY = ["--top", "3", "--epochs", "0.25", "--train-size", "256", "--threads", "1", "--no-baselines"]


def _copy_study(tiny_study, tmp_path):
    runs, name, _ = tiny_study
    copy = tmp_path / "runs"
    shutil.copytree(runs / name, copy / name)
    return copy, name


def _records(runs, name) -> dict:
    study = open_finished(name, runs, None).study
    return {k: v for k, v in study.user_attrs.items() if k.startswith(f"eval:{VERIFY_TAG}:")}


def test_verify_stores_accuracy_per_trial_and_export_picks_by_it(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    before = open_finished(name, runs, None)
    chosen = choose(before.frame, 3)
    assert set(before.front["number"]) <= set(chosen)  # the whole front, then the next layers
    result = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY])
    assert result.exit_code == 0, result.output
    after = open_finished(name, runs, None)
    verified = after.frame.set_index("number")["verified_accuracy"]
    assert all(0 <= verified[n] <= 1 for n in chosen)
    assert verified.drop(index=chosen).isna().all()
    assert after.basis == "verified" and set(after.decision["number"]) <= set(chosen)
    records = _records(runs, name)
    assert {int(key.rsplit(":", 1)[1]) for key in records} == set(chosen)
    assert all(r["budget"]["train_size"] == 256 and r["budget"]["epochs"] == 0.25 for r in records.values())
    # Proxy values are untouched: the trial count and the trials' own values are as the search left them.
    assert [t.values for t in after.study.trials] == [t.values for t in before.study.trials]

    out = tmp_path / "best.json"
    exported = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--pick", "max-accuracy", "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "picked by verified accuracy" in exported.stdout
    arch = load_arch(out)
    best = max(after.decision.itertuples(), key=lambda row: row.val_accuracy)
    assert arch.provenance["trial"] == best.number
    assert arch.metrics["decision_basis"] == "verified"
    assert arch.metrics["decision_accuracy"] == pytest.approx(verified[best.number])
    assert arch.metrics["val_accuracy"] == after.frame.set_index("number").loc[best.number, "val_accuracy"]

    again = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY])  # nothing left to do
    assert again.exit_code == 0 and "verified accuracy" not in again.stdout
    assert _records(runs, name) == records
    other = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY[:2], "--epochs", "0.5"])
    assert other.exit_code == 2 and "was verified with" in other.stderr


def test_interrupted_verify_resumes_without_redoing_finished_work(tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    finished = open_finished(name, runs, None)
    data = study_data(finished, None)
    budget = verify_budget(data, 0.25, 256)
    chosen = choose(finished.frame, 3)
    assert len(chosen) >= 2
    events: list[tuple[str, int]] = []

    def stop_at_second_start(event: str, number: int, accuracy) -> None:
        events.append((event, number))
        if event == "start" and len(events) == 3:  # start, done, start: Ctrl-C during the second training
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_verify(finished, data, budget, 3, on_event=stop_at_second_start)
    first = _records(runs, name)
    done = {k: v for k, v in first.items() if "accuracy" in v}
    assert len(done) == 1
    # The interrupted trial's claim was given back: a rerun takes it at once, not after the grace period.
    result = run_verify(open_finished(name, runs, None), data, budget, 3)
    assert set(result.verified) == set(chosen)
    final = _records(runs, name)
    for key, record in done.items():
        assert final[key] == record  # finished work is kept, not redone


@pytest.mark.slow
def test_verify_workers_share_the_work_on_postgres(postgres, runner, tmp_path) -> None:
    url = postgres.new_database()
    config = RunConfig(
        runs_dir=tmp_path, study="pg", storage=url, trials=4, sampler="random", train_size=256, val_size=256,
        epochs=0.5, train_threads=1,
    )  # fmt: skip
    run_search(config)
    result = runner.invoke(
        app, ["verify", "pg", "--runs-dir", str(tmp_path), "--storage", url, *VERIFY, "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pg", storage=url)
    records = {k: v for k, v in study.user_attrs.items() if k.startswith(f"eval:{VERIFY_TAG}:")}
    finished = open_finished("pg", tmp_path, url)
    assert {int(k.rsplit(":", 1)[1]) for k in records} == set(choose(finished.frame, 3))
    assert all("accuracy" in r for r in records.values())
    assert len(study.trials) == 4  # verification never adds trials


def test_verification_never_shares_the_proxys_seed_and_never_mixes_seeds(runner, tiny_study, tmp_path) -> None:
    """Issue 17: verify trained with --seed 0, the proxy's seed, so both started from the same weights."""
    runs, name = _copy_study(tiny_study, tmp_path)
    result = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY])
    assert result.exit_code == 0, result.output
    proxy_seed = open_finished(name, runs, None).settings["seed"]
    records = _records(runs, name)
    assert records and all(r["seed"] != proxy_seed for r in records.values())
    assert len({r["seed"] for r in records.values()}) == 1
    again = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY, "--seed", "7"])
    assert again.exit_code == 2 and "training seed" in again.stderr
    assert _records(runs, name) == records  # nothing mixed in
