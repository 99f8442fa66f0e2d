"""The weight-sharing supernet (issue 27): a sub-network's inherited weights compute exactly what the
sub-network built alone with those weights copied in computes; choices outside the supernet are refused;
training resumes from its checkpoint to the very weights of an uninterrupted run; damaged or foreign
files are named, never trusted."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mbsearch.architecture.decisions import decisions_of, random_decisions
from mbsearch.architecture.space import load_space
from mbsearch.architecture.zoo import reference_arch
from mbsearch.errors import BadInput
from mbsearch.nn.supernet import Supernet, largest, smallest
from mbsearch.train.budget import Budget
from mbsearch.train.data import load_dataset
from mbsearch.train.supernet import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    InheritedScoring,
    SupernetIdentity,
    SupernetTraining,
    open_supernet,
    score_inherited,
    train_supernet,
)

TINY_SPACE = """
name: tiny
stem: {out: 16, kernel: 3, stride: 2, act: hswish}
width: [0.5, 1.0]
choices: {block: [ir, ds], kernel: [3, 5], expand: [1, 3, 4], se: [0, 0.25], act: [relu, hswish], depth: [1, 2]}
stages:
  - {out: 16, stride: 1}
  - {out: 24, stride: 2}
  - {out: 40, stride: 2}
head: {conv: 96, hidden: 128, act: hswish, dropout: 0.2}
"""


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return load_space(path)


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", val_size=300, seed=0)


def _trained_supernet(space, steps: int = 5) -> Supernet:
    """A supernet whose weights and BatchNorm statistics moved away from their initial values."""
    torch.manual_seed(0)
    supernet = Supernet(space, 28, 1, 10)
    optimizer = torch.optim.SGD(supernet.weights.values(), lr=0.05)
    draws = random.Random(0)
    supernet.train()
    for _ in range(steps):
        optimizer.zero_grad()
        supernet(torch.randn(8, 1, 28, 28), *random_decisions(space, draws)).square().mean().backward()
        optimizer.step()
    return supernet


def test_inherited_weights_compute_what_the_sub_network_built_alone_computes(space) -> None:
    supernet = _trained_supernet(space)
    draws = random.Random(1)
    x = torch.randn(6, 1, 28, 28)
    layouts = [largest(space), smallest(space)] + [random_decisions(space, draws) for _ in range(12)]
    kinds = set()
    for width, decisions in layouts:
        arch = supernet.arch(width, decisions)
        alone = supernet.extract(arch)
        kinds |= {(b.type, b.kernel, b.se > 0) for b in arch.blocks}
        for mode in ("train", "eval"):  # batch statistics, and the copied running statistics
            supernet.train(mode == "train")
            alone.train(mode == "train")
            with torch.no_grad():
                torch.manual_seed(2)  # the classifier's dropout draws the same mask in both
                shared = supernet(x, width, decisions)
                torch.manual_seed(2)
                assert torch.equal(shared, alone(x)), (mode, arch.blocks)
    assert {("ir", 5, True), ("ds", 3, False)} <= kinds  # the layouts exercised both branches, kernels and SE


def test_an_extracted_network_is_its_own_trainable_copy_and_draws_nothing_from_the_global_rng(space) -> None:
    supernet = _trained_supernet(space)
    arch = supernet.arch(*random_decisions(space, random.Random(3)))
    before = torch.get_rng_state()
    alone = supernet.extract(arch)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's later draws do not depend on extracting
    tensors = list(alone.parameters()) + list(alone.buffers())
    assert tensors and not any(t.is_meta for t in tensors)
    assert all(p.requires_grad for p in alone.parameters())
    shared = {name: t.clone() for name, t in supernet.tensors().items()}
    with torch.no_grad():
        for tensor in alone.parameters():
            tensor.add_(1.0)  # its weights are copies: the supernet keeps its own
    assert all(torch.equal(shared[name], t) for name, t in supernet.tensors().items())


def test_a_smaller_kernel_is_the_centre_of_the_shared_kernel_and_widths_are_the_first_channels(space) -> None:
    supernet = _trained_supernet(space)
    width, decisions = smallest(space)
    decisions[1] |= {"block": "ir", "kernel": 3, "expand": 3}
    alone = supernet.extract(supernet.arch(width, decisions))
    shared = supernet.shared("s1.l0.ir.conv_dw.0.weight")  # 5x5 at its largest
    mine = alone.features[2].conv_dw[0].weight  # stage 2's first block, 3x3
    assert shared.shape[-1] == 5 and mine.shape[-1] == 3
    assert torch.equal(mine, shared[: mine.shape[0], :, 1:4, 1:4])


def test_gradients_reach_only_the_slices_a_sub_network_uses(space) -> None:
    supernet = Supernet(space, 28, 1, 10)
    supernet.train()
    width, decisions = smallest(space)
    supernet(torch.randn(4, 1, 28, 28), width, decisions).sum().backward()
    stem = supernet.shared("stem.0.weight")
    used = supernet.arch(width, decisions).stem.out
    assert stem.grad[:used].abs().sum() > 0 and torch.all(stem.grad[used:] == 0)
    assert supernet.shared("s1.l0.ir.conv_pw.0.weight").grad is None  # the ir branch of stage 2 was not used


def test_a_choice_the_supernet_has_no_branch_for_is_refused_naming_it(space) -> None:
    """Every block type the space format accepts today (ir, ds) has a branch; a type added to the format
    later without one is refused with a line naming it (the space built here bypasses the format's check)."""
    stages = list(space.stages)
    stages[1] = stages[1].model_construct(**(stages[1].model_dump() | {"block": ("ir", "fused")}))
    with pytest.raises(BadInput, match=r"stage 2 offers block 'fused'.*--evaluator brief"):
        Supernet(space.model_copy(update={"stages": tuple(stages)}), 28, 1, 10)


def test_an_arch_outside_the_space_is_refused(space) -> None:
    with pytest.raises(BadInput, match="not a sub-network of space tiny"):
        decisions_of(reference_arch("mobilenet_v3_small_050", 28, 1, 10), space)
    supernet = Supernet(space, 28, 1, 10)
    with pytest.raises(BadInput, match="not a sub-network"):
        supernet.extract(reference_arch("mobilenet_v2_050", 28, 1, 10))


def _identity(space, fashion, budget):
    return SupernetIdentity.of(space, fashion, None, 300, budget, seed=0)


class Stop(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_weights_of_an_uninterrupted_one(space, fashion, tmp_path) -> None:
    torch.set_num_threads(1)
    budget = Budget(epochs=2, train_size=256, batch_size=64, lr=0.003)  # 8 steps, 4 per epoch
    identity = _identity(space, fashion, budget)
    straight = train_supernet(space, fashion, tmp_path / "a", identity, budget)
    assert straight.steps == 8 and not straight.already_trained

    def stop_at_six(step: int, total: int, loss: float, accuracy: float) -> None:
        if step == 6:  # inside epoch two, after a checkpoint at step 5 (checkpoint_every_s=0: every step)
            raise Stop

    with pytest.raises(Stop):
        train_supernet(
            space,
            fashion,
            tmp_path / "b",
            identity,
            budget,
            SupernetTraining(on_step=stop_at_six, checkpoint_every_s=0),
        )
    assert (tmp_path / "b" / CHECKPOINT_FILE).is_file() and not (tmp_path / "b" / WEIGHTS_FILE).exists()
    with pytest.raises(BadInput, match="not finished"):
        open_supernet(space, tmp_path / "b")
    resumed = train_supernet(space, fashion, tmp_path / "b", identity, budget)
    assert resumed.resumed_from_step == 5 and resumed.steps == 8
    a, b = open_supernet(space, tmp_path / "a"), open_supernet(space, tmp_path / "b")
    assert all(torch.equal(a.supernet.tensors()[k], b.supernet.tensors()[k]) for k in a.supernet.tensors())
    again = train_supernet(space, fashion, tmp_path / "a", identity, budget)  # reused, not retrained
    assert again.already_trained and again.steps == 8

    arch = a.supernet.arch(*smallest(space))
    first = score_inherited(a, arch, fashion, InheritedScoring(calibration_images=512))
    assert 0.0 <= first.accuracy <= 1.0 and first.calibration_images == 512
    assert (
        score_inherited(a, arch, fashion, InheritedScoring(calibration_images=512)).accuracy == first.accuracy
    )  # deterministic


def test_damaged_and_foreign_supernets_are_named_and_refused(space, fashion, tmp_path) -> None:
    budget = Budget(epochs=1, train_size=128, batch_size=64, lr=0.003)
    identity = _identity(space, fashion, budget)
    folder = tmp_path / "s"

    def stop(step: int, total: int, loss: float, accuracy: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        train_supernet(space, fashion, folder, identity, budget, SupernetTraining(on_step=stop, checkpoint_every_s=0))
    (folder / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match=r"checkpoint\.pt: damaged supernet checkpoint"):
        train_supernet(space, fashion, folder, identity, budget)
    (folder / CHECKPOINT_FILE).unlink()
    train_supernet(space, fashion, folder, identity, budget)
    other = Budget(epochs=1, train_size=128, batch_size=32, lr=0.003)
    with pytest.raises(BadInput, match="holds a supernet trained with other settings"):
        train_supernet(space, fashion, folder, _identity(space, fashion, other), other)
    expected = identity.data_key() | {"input_size": 32}
    with pytest.raises(BadInput, match="input_size 28 .the search: 32"):
        open_supernet(space, folder, expected)
    with pytest.raises(BadInput, match="another space"):
        open_supernet(load_space("v3"), folder)
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(BadInput, match=r"supernet\.safetensors: damaged"):
        open_supernet(space, folder)


def test_progress_reports_the_mean_loss_at_each_check_never_zero(space, fashion, tmp_path) -> None:
    """Issue 35: where the loss is read every N steps (25 on a GPU), the display got 0.0 on the other steps.
    Made testable on the CPU with a check every 3 steps: progress comes at each check (and the last step)
    with the mean loss since the previous one."""
    from mbsearch.train.device import TrainingDevice

    torch.set_num_threads(1)
    budget = Budget(epochs=2, train_size=256, batch_size=64, lr=0.003)  # 8 steps
    seen: list[tuple[int, float]] = []
    every_third = TrainingDevice(torch.device("cpu"), check_every_steps=3)
    options = SupernetTraining(device=every_third, on_step=lambda step, total, loss, _: seen.append((step, loss)))
    train_supernet(space, fashion, tmp_path / "c", _identity(space, fashion, budget), budget, options)
    assert [step for step, _ in seen] == [3, 6, 8]
    assert all(math.isfinite(loss) and loss > 0.1 for _, loss in seen), seen
