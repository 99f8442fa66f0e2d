from __future__ import annotations

import pytest

from mbsearch.architecture.space import SPACES_DIR, list_spaces, load_space
from mbsearch.errors import BadInput


def test_shipped_spaces_load_and_count() -> None:
    assert list_spaces() == ["v1", "v2", "v3"]
    v3 = load_space("v3")
    # Per stage: (ds: 3 kernels x 2 se x 2 act) + (ir: 3 x 4 expansions x 2 x 2) = 60 layer choices, x 4 depths;
    # the first stage is fixed to expansion 1 and depth 1-2 as in MobileNetV3: (12 + 12) x 2.
    # ... and 4 width multipliers.
    assert v3.size() == 48 * (60 * 4) ** 5 * 4
    assert load_space("v1").size() == (3 * 1) * (3 * 3) ** 3 * (3 * 6) * 3
    assert v3.stage_choices(0).block == ("ir", "ds")
    v2 = load_space("v2")
    assert v2.stage_choices(0).expand == (1.0,) and v2.stage_choices(1).expand == (3.0, 6.0)


def test_user_space_file_by_path(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    text = (SPACES_DIR / "v3.yaml").read_text().replace("depth: [1, 2, 3, 4]", "depth: [1]")
    path.write_text(text.replace("expand: [1], depth: [1, 2]", "expand: [1], depth: [1]"))
    space = load_space(path)
    assert space.size() == 24 * 60**5 * 4


def _write_space(tmp_path, old: str, new: str):
    text = (SPACES_DIR / "v3.yaml").read_text()
    assert old in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("kernel: [3, 5, 7]", "kernel: [3, 4]", "choices.kernel: kernel must be odd"),
        ("kernel: [3, 5, 7]", "kernel: [0]", "kernel must be odd"),
        ("block: [ir, ds]", "block: [ir, conv]", "choices.block[1]: Input should be 'ir' or 'ds'"),
        ("expand: [1, 3, 4, 6]", "expand: [0, 3]", "choices.expand[0]: Input should be greater than or equal to 1"),
        ("expand: [1, 3, 4, 6]", "expand: []", "choices.expand: "),
        ("{out: 24, stride: 2}", "{out: -24, stride: 2}", "stages[1].out"),
        ("{out: 24, stride: 2}", "{out: 24, stride: 3}", "stages[1].stride: Input should be 1 or 2"),
        ("{out: 24, stride: 2}", "{out: 24, stride: 2, kernel: [2]}", "stages[1].kernel"),
        ("depth: [1, 2, 3, 4]", "depth: [one]", "choices.depth[0]"),
        ("head: {", "heads: {", "unknown key"),
        ("act: [relu, hswish]", "act: [relu, relu]", "must not repeat"),
        ("stem: {out: 16, kernel: 3, stride: 2, act: hswish}", "stem: {out: 16, kernel: 3, stride: 2}", "missing"),
        ("choices:", "choices: [", "YAML syntax error"),
    ],
)
def test_bad_space_files_give_one_line_naming_file_and_key(tmp_path, old: str, new: str, expected: str) -> None:
    path = _write_space(tmp_path, old, new)
    with pytest.raises(BadInput) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert expected in message


def test_unknown_space_name_and_huge_file(tmp_path) -> None:
    with pytest.raises(BadInput, match="unknown space 'v9'"):
        load_space("v9")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 2_000_000)
    with pytest.raises(BadInput, match="over the 1,000,000 byte limit"):
        load_space(big)
    with pytest.raises(BadInput, match="must be a YAML mapping"):
        load_space(_list_file(tmp_path))


def _list_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    return path
