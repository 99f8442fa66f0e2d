from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mbsearch.architecture.zoo import reference_arch
from mbsearch.cli.app import app
from mbsearch.nn.model import build_model
from mbsearch.train.fulltrain import FullTraining, train_full


def _folder_dataset(root, classes: int = 3, per_class: int = 24) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 60, (16, 16), dtype=np.uint8) + 60 * c  # classes differ in brightness
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")


class Stop(Exception):
    pass


def test_interrupted_full_training_resumes_to_the_same_weights(tmp_path) -> None:
    _folder_dataset(tmp_path / "data")
    arch = reference_arch("mobilenet_v3_small_050", 16, 1, 3)
    recipe = FullTraining(epochs=3, dataset="folder", data_dir=tmp_path / "data", batch_size=16)
    straight = train_full(arch, tmp_path / "a", recipe)

    def stop_in_epoch_three(step: int, total: int, loss: float, accuracy: float) -> None:
        if step == 12:  # 72 images / 16 = 5 steps per epoch: step 12 is inside epoch 3
            raise Stop

    with pytest.raises(Stop):
        train_full(arch, tmp_path / "b", recipe, on_step=stop_in_epoch_three)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = train_full(arch, tmp_path / "b", recipe)
    assert resumed.resumed_from_epoch == 2
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_accuracy == straight.test_accuracy


def test_train_command_reports_test_accuracy_and_writes_loadable_weights(runner, tmp_path) -> None:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10).with_info(name="small")
    path = tmp_path / "small.json"
    path.write_text(arch.to_json())
    result = runner.invoke(app, ["train", str(path), "--epochs", "0.03", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout
    out = tmp_path / "small-trained"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.3 < metrics["test_accuracy"] <= 1.0  # 14 steps of AdamW already beat chance (0.1) by far
    model = build_model(arch)
    model.load_state_dict(load_file(out / "model.safetensors"))
    model.eval()
    x = torch.randn(1, 1, 28, 28)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-3, atol=1e-4)


def test_train_refuses_invalid_arch_files(runner, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "mbsearch.spec.arch/1", "blocks": [')
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "invalid JSON" in result.stderr
    result = runner.invoke(app, ["measure", str(bad)])
    assert result.exit_code == 2 and "invalid JSON" in result.stderr
    result = runner.invoke(app, ["train", str(tmp_path / "absent.json")])
    assert result.exit_code == 2 and "not found" in result.stderr
    assert not (tmp_path / "bad-trained").exists()


def test_measure_prints_statistics(runner) -> None:
    result = runner.invoke(app, ["measure", "mobilenet_v3_small_050", "--runs", "20", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["median_ms"] > 0 and stats["threads"] == 1 and stats["runtime"] == "onnxruntime"


def test_train_reads_a_folder_through_the_runs_image_cache_and_can_skip_bad_images(
    runner, tmp_path, monkeypatch
) -> None:
    """Issue 30: `train` decoded a folder dataset into a CWD-relative cache, not the runs folder's, and had no
    --skip-bad-images."""
    monkeypatch.delenv("MBSEARCH_IMAGE_CACHE")  # the default: the runs folder's cache
    _folder_dataset(tmp_path / "data")
    (tmp_path / "data" / "train" / "c0" / "0.png").write_bytes(b"broken")
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(reference_arch("mobilenet_v3_small_050", 16, 1, 3).to_json())
    command = [
        "train", str(arch_file), "--epochs", "0.2", "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
        "--batch-size", "16", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "o"),
    ]  # fmt: skip
    refused = runner.invoke(app, command)
    assert refused.exit_code == 2 and "0.png" in refused.output
    result = runner.invoke(app, [*command, "--skip-bad-images"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable image" in result.output
    assert any((tmp_path / "runs" / "image-cache").iterdir())


def test_a_folder_without_test_is_refused_before_decoding_and_the_cache_setting_is_honoured(
    runner, tmp_path, monkeypatch
) -> None:
    """Issue 35: `train --dataset folder` on a folder without test/ was refused only after decoding the
    training images into ./runs/image-cache; and MBSEARCH_IMAGE_CACHE was documented but ignored."""
    _folder_dataset(tmp_path / "data")
    cache = tmp_path / "elsewhere"
    monkeypatch.setenv("MBSEARCH_IMAGE_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(reference_arch("mobilenet_v3_small_050", 16, 1, 3).to_json())
    command = ["train", str(arch_file), "--epochs", "0.2", "--dataset", "folder", "--batch-size", "16",
               "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "o")]  # fmt: skip
    (tmp_path / "no-test").mkdir()
    (tmp_path / "data" / "train").rename(tmp_path / "no-test" / "train")
    refused = runner.invoke(app, [*command, "--data-dir", str(tmp_path / "no-test")])
    assert refused.exit_code == 2 and "no test/ folder" in refused.stderr
    assert not cache.exists() and not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()
    (tmp_path / "no-test" / "train").rename(tmp_path / "data" / "train")
    result = runner.invoke(app, [*command, "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert any(cache.iterdir()) and not (tmp_path / "runs" / "image-cache").exists()


@pytest.mark.slow(seconds=35)
def test_train_precision_int8_writes_the_int8_graph_and_its_test_accuracy(runner, tmp_path) -> None:
    """--precision int8 (issue 28): the fully trained network quantized (calibrated on training images) into
    model.int8.onnx; the test accuracy printed and stored is that graph's as ONNX Runtime runs it."""
    from mbsearch.nn.quantize import onnx_accuracy
    from mbsearch.train.data import load_whole_split
    from mbsearch.train.loop import Normalizer

    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10).with_info(name="small")
    path = tmp_path / "small.json"
    path.write_text(arch.to_json())
    command = ["train", str(path), "--epochs", "0.1", "--threads", "1", "--device", "cpu", "--precision", "int8"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "int8 (ONNX Runtime static, per-channel): test accuracy" in result.stdout
    out = tmp_path / "small-trained"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5 and abs(metrics["int8_test_accuracy"] - metrics["test_accuracy"]) <= 0.03
    graph = (out / "model.int8.onnx").read_bytes()
    assert b"QuantizeLinear" in graph and graph != (out / "model.onnx").read_bytes()
    train_split, _ = load_whole_split("fashion-mnist", None, "train", 28, 1)
    test_split, _ = load_whole_split("fashion-mnist", None, "test", 28, 1)
    normalize = Normalizer.fit(train_split.images)
    images, labels = normalize(test_split.images).numpy(), test_split.labels.numpy()
    assert onnx_accuracy(graph, images, labels) == metrics["int8_test_accuracy"]  # ONNX Runtime gives it back


def test_measure_precision_int8_times_the_quantized_graph(runner) -> None:
    result = runner.invoke(app, ["measure", "mobilenet_v3_small_050", "--precision", "int8", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["precision"] == "int8" and stats["median_ms"] > 0
    refused = runner.invoke(app, ["measure", "mobilenet_v3_small_050", "--precision", "int8", "--runtime", "torch"])
    assert refused.exit_code == 2 and "use --runtime onnxruntime" in refused.stderr
