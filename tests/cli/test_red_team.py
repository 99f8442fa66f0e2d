"""Bad inputs found by trying mbsearch from outside (issue 8's red-team corpus), each answered with one
line and the right exit code, with no secret printed and nothing written or overwritten."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch

from mbsearch.architecture.arch import load_arch
from mbsearch.architecture.zoo import reference_arch
from mbsearch.cli.app import app
from mbsearch.study.storage import redact


def _one_line(result, code: int, expected: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://:S3cretPW@127.0.0.1:1/db", "S3cretPW"),  # empty user
        ("postgresql://mb@127.0.0.1:1/db?password=S3cretPW", "S3cretPW"),  # libpq's query form
        ("postgresql://mb:S3c@retPW@127.0.0.1:1/db", "retPW"),  # a password holding '@'
        ("postgresql://mb:S3c/retPW@127.0.0.1:1/db", "retPW"),  # ... or '/'
    ],
)
def test_no_password_is_printed_on_a_connection_error(runner, tmp_path, url: str, secret: str) -> None:
    args = ["run", "--storage", url, "--runs-dir", str(tmp_path), "--trials", "1", "--train-size", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code in (1, 2), result.output
    assert secret not in result.output and "S3c" not in redact(url)
    assert "postgresql+psycopg" not in result.output  # the URL as typed


def _copy_study(tiny_study, tmp_path):
    runs, name, _ = tiny_study
    copy = tmp_path / "runs"
    shutil.copytree(runs / name, copy / name)
    return copy, name


def test_export_refuses_to_overwrite_the_study_database(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    database = runs / name / "study.db"
    before = database.read_bytes()
    result = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(database)])
    _one_line(result, 2, "the study's database")
    assert database.read_bytes() == before


def test_export_refuses_the_same_file_twice_and_folders_and_unwritable_places(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    same = tmp_path / "x.json"
    _one_line(
        runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(same), "--onnx", str(same)]), 2, "both"
    )
    assert not same.exists()
    _one_line(runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(tmp_path)]), 2, "is a folder")
    _one_line(
        runner.invoke(
            app, ["export", name, "--runs-dir", str(runs), "-o", str(tmp_path / "a.json"), "--onnx", str(runs)]
        ),
        2,
        "is a folder",
    )
    _one_line(runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", "/proc/x.json"]), 2, "cannot write")
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*tmp*"))


def test_read_only_commands_create_no_schema_and_no_file(runner, tmp_path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    before = foreign.read_bytes()
    result = runner.invoke(app, ["export", "s", "--storage", f"sqlite:///{foreign}", "-o", str(tmp_path / "o.json")])
    _one_line(result, 2, "no Optuna storage")
    assert foreign.read_bytes() == before
    typo = tmp_path / "typo.db"
    _one_line(runner.invoke(app, ["report", "s", "--storage", f"sqlite:///{typo}"]), 2, "no study database")
    assert not typo.exists()


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "ok\n", "..", "a/b"])
def test_study_names_never_become_paths_outside_the_runs_folder(runner, tmp_path, name: str) -> None:
    for command in (["report", name], ["export", name], ["dashboard", name]):
        result = runner.invoke(app, [*command, "--runs-dir", str(tmp_path / "runs")])
        _one_line(result, 2, "study name")
    assert not (tmp_path / "runs").exists()


def test_train_on_a_folder_with_a_foreign_checkpoint_is_one_line(runner, tmp_path) -> None:
    arch_path = tmp_path / "a.json"
    arch_path.write_text(reference_arch("mobilenet_v3_small_050", 28, 1, 10).to_json())
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x04not a checkpoint")
    result = runner.invoke(app, ["train", str(arch_path), "--out", str(out), "--epochs", "0.01"])
    _one_line(result, 2, "not this architecture's checkpoint")
    torch.save({"something": 1}, out / "checkpoint.pt")
    _one_line(runner.invoke(app, ["train", str(arch_path), "--out", str(out), "--epochs", "0.01"]), 2, "checkpoint")


def test_user_text_is_printed_without_markup(runner, tmp_path) -> None:
    folder = tmp_path / "exp[v2]" / "a["
    folder.mkdir(parents=True)
    path = folder / "]b.json"  # the path holds '[/]'
    assert "[/]" in str(path)
    path.write_text(reference_arch("mobilenet_v3_small_050", 28, 1, 10).with_info(name="net[bold]x[/]").to_json())
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "net[bold]x[/]" in result.stdout
    measured = runner.invoke(app, ["measure", str(path), "--threads", "1"])
    assert measured.exit_code == 0, measured.output
    assert str(path) in measured.stdout.replace("\n", "") or "net[bold]x[/]" in measured.stdout
    assert load_arch(path).name == "net[bold]x[/]"


def test_dashboard_on_a_busy_port_is_one_line_before_anything_else(runner, tiny_study) -> None:
    import socket

    runs, name, _ = tiny_study
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["dashboard", name, "--runs-dir", str(runs), "--port", str(port)])
    _one_line(result, 2, f"port {port}")
    assert "dashboard for" not in result.stdout


def test_corrupt_baseline_cache_is_rebuilt_not_fatal(tmp_path) -> None:
    from mbsearch.results.baselines import _read_cache

    (tmp_path / "baselines.json").write_text("{not json")
    assert _read_cache(tmp_path / "baselines.json") == {}
    (tmp_path / "baselines.json").write_text('{"k": 3}')
    assert _read_cache(tmp_path / "baselines.json") == {}


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_is_not_called_missing(runner, tmp_path, kind: str) -> None:
    import os

    path = tmp_path / "arch.json"
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    line = _one_line(runner.invoke(app, ["show", str(path)]), 2, str(path))
    assert "not found" not in line


def test_the_baselines_cache_tells_data_folders_and_training_devices_apart(tmp_path) -> None:
    """Issue 30: two folder studies at one size shared baselines, and so did a CPU and a GPU training."""
    import torch

    from mbsearch.results.baselines import _cache_key
    from mbsearch.train.device import CPU, TrainingDevice

    settings = {"dataset": "folder", "input_size": 32, "epochs": 1}
    keys = {
        _cache_key(settings, "mobilenet_v2", "dev", tmp_path / "a", CPU),
        _cache_key(settings, "mobilenet_v2", "dev", tmp_path / "b", CPU),
        _cache_key(settings, "mobilenet_v2", "dev", tmp_path / "a", TrainingDevice(torch.device("mps"))),
    }
    assert len(keys) == 3
    assert _cache_key(settings, "mobilenet_v2", "dev", tmp_path / "a", CPU) in keys  # the same study finds its own


def test_an_output_folder_holding_a_database_is_refused(tmp_path) -> None:
    """Issue 30: check_output_folder promised to refuse a folder holding a database and never looked."""
    import sqlite3

    from mbsearch.errors import BadInput
    from mbsearch.files import check_output_folder

    folder = tmp_path / "study"
    folder.mkdir()
    sqlite3.connect(folder / "study.db").execute("create table t (x)").connection.commit()
    with pytest.raises(BadInput, match=r"study\.db, a SQLite database"):
        check_output_folder("--out", folder, ("model.onnx",), "checkpoint.pt", {})
    (folder / "study.db").unlink()
    check_output_folder("--out", folder, ("model.onnx",), "checkpoint.pt", {})  # nothing to lose now
