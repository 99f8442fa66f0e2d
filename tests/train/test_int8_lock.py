"""int8 calibration and scoring run ONNX Runtime on the host's CPU, so they hold the host training lock
(issue 35: they ran outside it, and another worker timed latency meanwhile); the float-vs-int8 drop of a
supernet search compares the same validation images."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from mbsearch.architecture.zoo import reference_arch
from mbsearch.device import hostlock
from mbsearch.nn.model import build_model
from mbsearch.search.int8 import Int8Step
from mbsearch.train.data import Dataset, Split
from mbsearch.train.int8 import Int8Scorer
from mbsearch.train.loop import Normalizer
from tests.device.test_hostlock import HOLDER, _start_holder


def _split(count: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return Split(images, torch.randint(0, 10, (count,), generator=generator))


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MBSEARCH_LOCK_DIR", str(tmp_path))
    (tmp_path / "holder.py").write_text(HOLDER)
    return tmp_path


def test_int8_calibration_and_scoring_wait_for_a_timing_on_the_host(lock_dir, monkeypatch) -> None:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    model = build_model(arch).eval()
    train, val = _split(64, 0), _split(32, 1)
    scorer = Int8Scorer(train.images, Normalizer.fit(train.images), val)
    graph = scorer.quantize(model, arch)  # free host: it runs
    assert 0 <= scorer.score(graph) <= 1
    holder = _start_holder(lock_dir, "hold")  # a timing in progress on this host
    os.kill(holder.pid, signal.SIGSTOP)
    monkeypatch.setenv("MBSEARCH_LOCK_TIMEOUT", "2")
    try:
        with pytest.raises(hostlock.LockTimeout, match="timing lock"):
            scorer.quantize(model, arch)
        with pytest.raises(hostlock.LockTimeout, match="timing lock"):
            scorer.score(graph)
    finally:
        holder.kill()
        holder.wait()


def test_the_int8_step_scores_the_images_the_float_accuracy_was_scored_on() -> None:
    data = Dataset("noise", _split(64, 0), _split(500, 1), num_classes=10, channels=1, size=28)
    normalizer = Normalizer.fit(data.train.images)
    assert len(Int8Step(data, normalizer, None, None, 300).scorer.labels) == 300  # a supernet's first 300
    assert len(Int8Step(data, normalizer, None, None, None).scorer.labels) == 500  # brief training: all
