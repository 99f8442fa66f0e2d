from __future__ import annotations

import json

import pytest

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.zoo import reference_arch
from mbsearch.cli.app import app


def test_show_reference_json_reports_torchvision_params(runner) -> None:
    result = runner.invoke(app, ["show", "mobilenet_v3_large", "--json"])
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert totals["params"] == 5_483_032
    assert abs(totals["macs"] - 217e6) / 217e6 < 0.03


def test_show_table_lists_every_block(runner) -> None:
    result = runner.invoke(app, ["show", "mobilenet_v3_small", "--input-size", "28", "--channels", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("│ ir ") == 11
    assert "total" in result.stdout and "1x28x28" in result.stdout


def test_sample_prints_valid_reproducible_arch_json_that_show_accepts(runner, tmp_path) -> None:
    first = runner.invoke(app, ["sample", "--space", "v3", "--seed", "3"])
    second = runner.invoke(app, ["sample", "--space", "v3", "--seed", "3"])
    other = runner.invoke(app, ["sample", "--space", "v3", "--seed", "4"])
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout != other.stdout
    arch = Arch.from_json(first.stdout)
    assert arch.input.size == 28 and arch.input.channels == 1 and arch.num_classes == 10
    path = tmp_path / "a.json"
    path.write_text(first.stdout)
    shown = runner.invoke(app, ["show", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["blocks"] == len(arch.blocks)


def test_spaces_lists_counts(runner) -> None:
    result = runner.invoke(app, ["spaces"])
    assert result.exit_code == 0
    assert "v1" in result.stdout and "118098" in result.stdout and "1.529e+14" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sample", "--space", "v9"], "unknown space 'v9'"),
        (["sample", "--input-size", "3"], "--input-size"),
        (["sample", "--seed", "abc"], "--seed"),
        (["show", "nothing.json"], "neither a file nor a reference"),
        (["show"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_2(runner, args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbsearch: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_show_invalid_arch_file_names_the_key(runner, tmp_path) -> None:
    data = reference_arch("mobilenet_v2").to_dict()
    data["blocks"][2]["kernel"] = 4
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    assert "blocks[2].kernel: kernel must be odd" in result.stderr


def test_help_works_everywhere(runner) -> None:
    for command in ([], ["spaces"], ["sample"], ["show"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.stdout
