"""Issue 20: the gated rounds recipe keeps a device's disturbed seconds out of latencies.

This VM slows every network by 30-60% at once for seconds at a time (benchmarks/README.md, "Timing under
contention"): a disturbance no test can order up on demand. So these tests drive the recipe's logic with a
device whose speed follows a script (a stand-in for the device only: the graphs are the real exports, and
each graph's cost is a fixed function of its bytes). Real-CPU timing through the same code is covered by
test_lut.py and benchmarks/latency.py.
"""

from __future__ import annotations

import statistics
import uuid

import pytest

from mbsearch.device.timing import LatencyStats
from mbsearch.latency.parts import PART_RECIPE, PartConfig, time_parts_in_context
from mbsearch.latency.recipes import (
    ROUNDS_RECIPE,
    ROUNDS_RECIPE_SMALL_PROBE,
    SEARCH_RECIPE,
    gated_turns,
    latencies_by_rounds,
    probe_for,
    time_network,
    time_rounds,
)
from mbsearch.latency.targets import Prepared


class ScriptedDevice:
    """Each graph costs len(bytes) / 1e5 ms; during a disturbance (`slow` of every `period` calls, the probe's
    included) everything runs `factor` times slower, as on this VM."""

    name, runtime, threads, overlaps_training = "scripted", "onnxruntime", 1, False

    def __init__(
        self, period: int = 30, slow: int = 20, factor: float = 1.6, freak: int | None = None, from_size: int = 0
    ) -> None:
        self.period, self.slow, self.factor, self.freak = period, slow, factor, freak
        self.from_size = from_size  # only graphs at this input size and up feel the disturbance
        self.calls = 0
        self.fingerprint = uuid.uuid4().hex  # a device of its own: its gate learns its speed afresh

    def device(self) -> dict:
        return {"fingerprint": self.fingerprint}

    def time(self, prepared: Prepared) -> LatencyStats:
        disturbed = self.calls % self.period < self.slow and prepared.shape[-1] >= self.from_size
        speed = 0.5 if self.calls == self.freak else self.factor if disturbed else 1.0  # freak: one fast call
        self.calls += 1
        ms = len(prepared.payload) / 1e5 * speed
        return LatencyStats(ms, 0.0, ms, ms, prepared.runs, 1, self.name, self.runtime, 1)


def network(cost_ms: float, size: int = 28) -> Prepared:
    return Prepared(b"x" * round(cost_ms * 1e5), (1, 1, size, size), None)


NETWORKS = [network(ms) for ms in (0.5, 1.0, 2.0, 3.5)]
ROUNDS, SEARCH, PARTS = ROUNDS_RECIPE, SEARCH_RECIPE, PART_RECIPE  # the script counts calls, not seconds


def test_disturbed_turns_are_left_out_of_network_latencies() -> None:
    device = ScriptedDevice()  # disturbed two thirds of the time, in episodes longer than a round
    ungated = [statistics.median(turns) for turns in time_rounds(device, NETWORKS, 7, 3, 10)]
    assert max(u / n for u, n in zip(ungated, (0.5, 1.0, 2.0, 3.5), strict=True)) > 1.3  # the scenario bites
    gated = latencies_by_rounds(ScriptedDevice(), NETWORKS, ROUNDS)
    assert gated == pytest.approx([0.5, 1.0, 2.0, 3.5], rel=1e-9)


def test_a_device_that_never_quiets_still_answers_with_its_least_disturbed_turns() -> None:
    device = ScriptedDevice(period=10, slow=10)  # always disturbed: its own speed is the reference
    result = gated_turns(device, [[item] for item in NETWORKS], ROUNDS)
    assert [statistics.median(group[0]) for group in result.minima] == pytest.approx([0.8, 1.6, 3.2, 5.6])
    assert result.quiet_share == 1.0 and result.turns == ROUNDS_RECIPE["rounds"] * len(NETWORKS)
    rarely = ScriptedDevice(period=5, slow=4)  # quiet one call in five: seen, but never on both sides of a turn
    result = gated_turns(rarely, [[NETWORKS[0]]], ROUNDS)
    assert result.turns == ROUNDS_RECIPE["max_turns"] * ROUNDS_RECIPE["rounds"]
    assert len(result.minima[0][0]) == ROUNDS_RECIPE["rounds"] and result.quiet_share < 0.2


def test_the_search_recipe_gates_each_network_and_reports_its_turns() -> None:
    stats = time_network(ScriptedDevice(), NETWORKS[2], SEARCH)
    assert stats.median_ms == pytest.approx(2.0) and stats.iqr_ms == pytest.approx(0.0)
    assert stats.attempts >= SEARCH_RECIPE["rounds"]  # the turns taken, disturbed ones included


def test_parts_are_timed_in_quiet_turns_against_their_host() -> None:
    keys = ("block|16x28|ir|k3|s1|m48|o24|se0|hswish", "block|24x14|ir|k5|s2|m72|o40|se0.25|relu")
    parts = [PartConfig.parse(key) for key in keys]
    quiet = time_parts_in_context(ScriptedDevice(period=10, slow=0), parts, PARTS)
    disturbed = time_parts_in_context(ScriptedDevice(), parts, PARTS)
    assert all(cost > 0 for cost in quiet.minima)
    assert disturbed.minima == pytest.approx(quiet.minima, rel=1e-9)
    assert quiet.quiet_share == 1.0 and disturbed.turns > quiet.turns  # it turned again when disturbed


def test_one_freak_fast_probe_read_does_not_make_every_turn_look_disturbed() -> None:
    device = ScriptedDevice(period=10, slow=0, freak=3)  # never disturbed; one probe read at twice the speed
    result = gated_turns(device, [[NETWORKS[1]]], ROUNDS)
    assert result.turns == ROUNDS["rounds"] and result.quiet_share == 1.0
    assert statistics.median(result.minima[0][0]) == pytest.approx(1.0)


def test_large_inputs_are_gated_by_a_probe_with_maps_of_their_size() -> None:
    """A disturbance that slows only work on large feature maps (on this VM: network 1.25x slow while the
    small probe passed, benchmarks/README.md) is invisible to the small probe, not to the sized one."""
    assert probe_for(ROUNDS_RECIPE, 28) == "conv16-dw-pw@112" and probe_for(ROUNDS_RECIPE, 224) == "conv32-dw-pw@224"
    large = [network(ms, 224) for ms in (2.0, 6.0)]
    small_probe = latencies_by_rounds(ScriptedDevice(from_size=224), large, ROUNDS_RECIPE_SMALL_PROBE)
    assert max(latency / truth for latency, truth in zip(small_probe, (2.0, 6.0), strict=True)) > 1.3
    sized = latencies_by_rounds(ScriptedDevice(from_size=224), large, ROUNDS_RECIPE)
    assert sized == pytest.approx([2.0, 6.0], rel=1e-9)


def test_making_a_gate_leaves_the_callers_random_numbers_alone(monkeypatch) -> None:
    """Issue 30: a gate built its probe after torch.manual_seed(0), reseeding the search's global RNG
    mid-search (the next candidate's initial weights then depended on when a gate was first made)."""
    import torch

    from mbsearch.latency.recipes import QuietGate

    monkeypatch.setenv("MBSEARCH_QUIET_SETTLE_S", "0")
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    QuietGate(ScriptedDevice(), ROUNDS_RECIPE_SMALL_PROBE["probe"], settle_reads=1)
    assert torch.equal(torch.rand(3), expected)
