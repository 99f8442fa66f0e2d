from __future__ import annotations

import pytest
import torch
from torch import nn

from mbsearch.architecture.zoo import reference_arch
from mbsearch.nn.model import build_model
from mbsearch.train.budget import Budget
from mbsearch.train.data import Split, load_dataset
from mbsearch.train.loop import Diverged, Normalizer, TrainOptions, score, train


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", val_size=500, seed=0)


def test_brief_training_learns_well_above_chance_and_is_seeded(fashion) -> None:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    budget = Budget(epochs=1, train_size=1500, batch_size=64, lr=0.006)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        results.append(train(build_model(arch), fashion.train, fashion.val, budget, TrainOptions(seed=0)))
    assert results[0].accuracy > 0.4  # chance is 0.1
    assert results[0].accuracy == results[1].accuracy  # same seed, same threads: same numbers
    assert results[0].steps == 24 and results[0].epochs_run == pytest.approx(1.0)


def test_fractional_epochs_run_that_many_steps(fashion) -> None:
    result = train(
        build_model(reference_arch("mobilenet_v3_small_050", 28, 1, 10)),
        fashion.train,
        fashion.val,
        Budget(epochs=0.5, train_size=640, batch_size=64),
    )
    assert result.steps == 5 and result.epochs_run == pytest.approx(0.5)


def test_non_finite_loss_raises_diverged(fashion) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))
    with pytest.raises(Diverged, match="loss became nan at step 1"):
        train(model, fashion.train, fashion.val, Budget(train_size=256, batch_size=64))


def test_evaluate_counts_correct_predictions() -> None:
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([1, 1, 0, 1])

    class AlwaysOne(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)

    normalizer = Normalizer(torch.zeros(1, 1, 1), torch.ones(1, 1, 1))
    assert score(AlwaysOne(), Split(images, labels), normalizer) == 0.75


def test_full_training_at_96_pixels_uses_random_resized_crops_seeded_per_image() -> None:
    from mbsearch.train.loop import _augment

    ramp = torch.linspace(0, 1, 96).repeat(96, 1)  # brighter to the right
    batch = ramp.expand(64, 3, 96, 96).contiguous()
    first = _augment(batch, torch.Generator().manual_seed(0))
    again = _augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)  # the seed decides every crop
    assert first.shape == batch.shape
    assert float(first.min()) >= 0 and float(first.max()) <= 1  # crops of the image, nothing invented
    left_minus_right = first[..., :8].mean(dim=(1, 2, 3)) - first[..., -8:].mean(dim=(1, 2, 3))
    flipped = int((left_minus_right > 0).sum())
    assert 10 < flipped < 54  # about half the images flipped, each on its own
    spans = first.amax(dim=(1, 2, 3)) - first.amin(dim=(1, 2, 3))
    assert float(spans.min()) < 0.9  # some crops cover a part of the width only (zoomed in)


class _Greedy(nn.Module):
    """A network whose forward asks the CPU allocator for a terabyte: a real allocation failure."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.empty(2**40, dtype=torch.uint8)
        return self.fc(x.flatten(1))


def test_an_allocation_failure_on_the_cpu_is_the_candidates_out_of_memory() -> None:
    """Issue 35: the CPU allocator's "can't allocate memory" (a memory limit, a full machine) escaped as
    "internal error: RuntimeError"; it is the same expected event as a CUDA OOM."""
    from mbsearch.train.loop import OutOfMemory

    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    split = Split(images, torch.randint(0, 10, (64,)))
    with pytest.raises(OutOfMemory, match="out of memory on .*can't allocate memory"):
        train(_Greedy(), split, split, Budget(epochs=1, train_size=64, batch_size=32))
