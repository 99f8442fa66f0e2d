"""`mbsearch supernet train` then `run --evaluator supernet` end to end (issue 27): candidates scored by
inherited weights in seconds, recorded as their own evaluation kind, refereed by `verify` as before; a
search without a matching supernet is refused before anything is written."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from mbsearch.cli.app import app
from mbsearch.study import records
from mbsearch.study.storage import open_storage
from tests.nn.test_supernet import TINY_SPACE

pytestmark = pytest.mark.slow
DATA = ["--val-size", "300", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny space's supernet, trained for 8 steps into its default folder."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("supernet")
    (root / "tiny.yaml").write_text(TINY_SPACE)
    command = ["supernet", "train", "--space", str(root / "tiny.yaml"), "--train-size", "512", "--epochs", "1",
               "--batch-size", "64", "--threads", "1", "--runs-dir", str(root / "runs"), *DATA]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "trained for 8 steps" in result.output
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0 and "already trained (8 steps)" in again.output
    return root


def _run(runner, root, study: str, *extra: str):
    command = ["run", "--space", str(root / "tiny.yaml"), "--evaluator", "supernet", "--trials", "3",
               "--runs-dir", str(root / "runs"), "--study", study, "--train-threads", "1", *DATA, *extra]  # fmt: skip
    return runner.invoke(app, command)


@pytest.mark.slow(seconds=45)
def test_a_search_scores_by_inherited_weights_and_verify_referees(runner, trained) -> None:
    result = _run(runner, trained, "inherited")
    assert result.exit_code == 0, result.output
    start = result.output.splitlines()[0]  # issue 35: it printed the brief training's budget
    assert "scored by supernet weights on" in start and "budget=" not in start
    url = f"sqlite:///{trained / 'runs' / 'inherited' / 'study.db'}"
    study = optuna.load_study(study_name="inherited", storage=open_storage(url))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    assert all(t.user_attrs[records.EVALUATOR] == "supernet" and 0 <= t.values[0] <= 1 for t in complete)
    assert all(t.user_attrs[records.EPOCHS_RUN] == 0.0 for t in complete)  # nothing was trained
    assert study.user_attrs[records.SUPERNET]["steps"] == 8
    report = runner.invoke(app, ["report", "inherited", "--runs-dir", str(trained / "runs"), "--no-baselines"])
    assert report.exit_code == 0, report.output
    assert "weights inherited from a supernet" in (trained / "runs" / "inherited" / "report.html").read_text()
    verify = ["verify", "inherited", "--runs-dir", str(trained / "runs"), "--top", "1", "--epochs", "0.25",
              "--train-size", "256", "--threads", "1", "--device", "cpu"]  # fmt: skip
    verified = runner.invoke(app, verify)
    assert verified.exit_code == 0, verified.output
    assert "verified accuracy" in verified.output
    # Issue 35: the baselines were trained at the proxy budget too and plotted beside inherited accuracies;
    # a baseline has no inherited score, so only the verification budget's are trained (by verify)
    trained_baselines = [line for line in verified.output.splitlines() if line.startswith("baseline ")]
    assert len(trained_baselines) == 9  # the nine references once, at the verification budget
    keys = list(json.loads((trained / "runs" / "baselines.json").read_text()))
    assert len(keys) == 9 and all("train_seed=" in key for key in keys)
    report = runner.invoke(app, ["report", "inherited", "--runs-dir", str(trained / "runs")])
    assert report.exit_code == 0 and "not stored" not in report.output, report.output


def test_a_search_without_its_supernet_is_refused_before_anything_is_written(runner, trained) -> None:
    result = _run(runner, trained, "other-split", "--seed", "1")  # another validation split: another supernet
    assert result.exit_code == 2, result.output
    assert "split_seed 0 (the search: 1)" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (trained / "runs" / "other-split").exists()
    missing = _run(runner, trained, "missing", "--supernet", str(trained / "nowhere"))
    assert missing.exit_code == 2 and "no supernet in" in missing.output
    rungs = _run(runner, trained, "rungs", "--rungs", "1,3")
    assert rungs.exit_code == 2 and "--evaluator supernet trains none" in rungs.output


def test_a_study_keeps_the_supernet_it_was_scored_with(runner, trained) -> None:
    assert _run(runner, trained, "kept").exit_code == 0
    longer = ["supernet", "train", "--space", str(trained / "tiny.yaml"), "--train-size", "512", "--epochs", "2",
              "--batch-size", "64", "--threads", "1", "--runs-dir", str(trained / "runs"), "--out",
              str(trained / "longer"), *DATA]  # fmt: skip
    assert runner.invoke(app, longer).exit_code == 0
    resumed = _run(runner, trained, "kept", "--supernet", str(trained / "longer"), "--trials", "4")
    assert resumed.exit_code == 2 and "was scored with the supernet" in resumed.output


def test_inherited_scores_use_the_first_inherited_val_size_validation_images(runner, trained) -> None:
    """--inherited-val-size N: each candidate is scored on the first N validation images, the number is part
    of the study's identity, and the flag is refused where no supernet scores."""
    from mbsearch.architecture.space import load_space
    from mbsearch.study.config import RunConfig
    from mbsearch.train.data import load_dataset
    from mbsearch.train.supernet import InheritedScoring, default_dir, open_supernet, score_inherited

    result = _run(runner, trained, "subset", "--inherited-val-size", "120")
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{trained / 'runs' / 'subset' / 'study.db'}"
    study = optuna.load_study(study_name="subset", storage=open_storage(url))
    space = load_space(str(trained / "tiny.yaml"))
    supernet = open_supernet(space, default_dir(trained / "runs", space, "fashion-mnist", 28))
    data = load_dataset("fashion-mnist", val_size=300, seed=0)
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        arch = records.trial_arch(trial)
        assert trial.values[0] == score_inherited(supernet, arch, data, InheritedScoring(val_images=120)).accuracy
        assert abs(trial.values[0] * 120 - round(trial.values[0] * 120)) < 1e-9  # a count out of 120 images
    again = _run(runner, trained, "subset", "--inherited-val-size", "300")
    assert again.exit_code == 2 and "inherited_val_size=120" in again.output
    assert RunConfig(evaluator="supernet").scoring_val_size == 2000 and RunConfig().scoring_val_size is None
    brief = runner.invoke(app, ["run", "--inherited-val-size", "500", "--runs-dir", str(trained / "runs")])
    assert brief.exit_code == 2 and "--inherited-val-size is for --evaluator supernet" in brief.output


def test_finetune_steps_train_the_inherited_network_before_it_is_scored(runner, trained) -> None:
    """--finetune-steps N: each inherited network trains N steps (seeded by --seed) before scoring; the
    stored score is exactly that, differs from the inherited weights' own, and N is part of the identity."""
    import torch

    from mbsearch.architecture.space import load_space
    from mbsearch.train.data import load_dataset
    from mbsearch.train.supernet import InheritedScoring, default_dir, open_supernet, score_inherited

    result = _run(runner, trained, "tuned", "--finetune-steps", "4", "--trials", "2")
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{trained / 'runs' / 'tuned' / 'study.db'}"
    study = optuna.load_study(study_name="tuned", storage=open_storage(url))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2
    space = load_space(str(trained / "tiny.yaml"))
    supernet = open_supernet(space, default_dir(trained / "runs", space, "fashion-mnist", 28))
    data = load_dataset("fashion-mnist", val_size=300, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the search trained (--train-threads 1): the same arithmetic
    try:
        for trial in complete:
            arch = records.trial_arch(trial)
            assert trial.user_attrs[records.EVALUATOR] == "supernet" and trial.user_attrs[records.EPOCHS_RUN] == 1.0
            tuned = score_inherited(supernet, arch, data, InheritedScoring(val_images=300, finetune_steps=4, seed=0))
            assert tuned.finetune_steps == 4 and trial.values[0] == tuned.accuracy
            assert tuned.model is not None and tuned.calibration_images == 4 * 64
            inherited = supernet.supernet.extract(arch).state_dict()  # the steps changed the weights scored
            assert any(
                not torch.equal(inherited[k], v) for k, v in tuned.model.state_dict().items() if v.is_floating_point()
            )
        # Issue 35: a training split shorter than N batches runs fewer steps, and the score says how many ran
        short = dataclasses.replace(data, train=data.train.head(2 * 64))
        clipped = score_inherited(
            supernet, records.trial_arch(complete[0]), short, InheritedScoring(val_images=300, finetune_steps=4)
        )
        assert clipped.finetune_steps == 2
    finally:
        torch.set_num_threads(threads)
    report = runner.invoke(app, ["report", "tuned", "--runs-dir", str(trained / "runs"), "--no-baselines"])
    assert report.exit_code == 0, report.output
    assert "each fine-tuned for 4 steps" in (trained / "runs" / "tuned" / "report.html").read_text()
    again = _run(runner, trained, "tuned", "--finetune-steps", "8", "--trials", "3")
    assert again.exit_code == 2 and "finetune_steps=4" in again.output
    brief = runner.invoke(app, ["run", "--finetune-steps", "5", "--runs-dir", str(trained / "runs")])
    assert brief.exit_code == 2 and "--finetune-steps trains inherited weights" in brief.output


def test_workers_without_their_supernet_are_refused_before_the_study_exists(runner, tmp_path) -> None:
    """Issue 35: `--workers N` created the study before the supernet was checked."""
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    command = ["run", "--space", str(tmp_path / "tiny.yaml"), "--evaluator", "supernet", "--workers", "2",
               "--runs-dir", str(tmp_path / "runs"), "--study", "w", *DATA]  # fmt: skip
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and "supernet" in result.stderr, result.output
    assert not (tmp_path / "runs" / "w").exists()


def test_workers_that_time_on_a_gpu_need_a_gpu_each() -> None:
    """Issue 35: workers timed latency on a GPU while others trained on it. The rule, checked without a GPU
    (the refusal itself needs a CUDA machine to reach, so it is unverified end to end)."""
    from mbsearch.errors import BadInput
    from mbsearch.search.workers import check_gpu_sharing

    with pytest.raises(BadInput, match="--workers 2 with --target cuda on a machine with 1 GPU"):
        check_gpu_sharing(2, "cuda", "cuda", 1)
    with pytest.raises(BadInput, match="use --workers 2 or fewer"):
        check_gpu_sharing(3, "cuda:0", "auto", 2)
    check_gpu_sharing(2, "cuda", "cuda", 2)  # a GPU each
    check_gpu_sharing(4, "cpu", "cuda", 1)  # timed on the CPU, under the host lock
    check_gpu_sharing(2, "cuda", "cpu", 1)  # nobody trains on the GPU
