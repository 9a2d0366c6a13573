"""On the real CIFAR-10 copy beside the checkout (skipped where it is absent, as on a fresh
machine): one epoch of the tutorial CNN must clearly learn, and the checkpoint and its ONNX export must
reproduce the figures training printed.

The decoded pixels are cached in CIFARCLI_TEST_CACHE where it is set (.ci/run names a folder
outside the checkout, so a second run skips decoding 60,000 JPEGs), else in a new folder."""

import os
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} is not here"),
]


def test_tutorial_one_epoch_on_real_cifar10(cache_dir, tmp_path):
    from cifarcli.data import load_dataset
    from cifarcli.evaluate import evaluate
    from cifarcli.hardware import cores
    from cifarcli.models import get_model_entry
    from cifarcli.run import prepare_run
    from cifarcli.train import train

    real_data_cache = Path(os.environ.get("CIFARCLI_TEST_CACHE", cache_dir))
    dataset = load_dataset(SHARED_DATA, cache_dir=real_data_cache, threads=cores())
    assert len(dataset.train) == 50_000 and len(dataset.test) == 10_000 and not dataset.skipped
    assert dataset.classes[:3] == ["airplane", "automobile", "bird"]
    recipe = get_model_entry("tutorial").recipe.override(epochs=1)
    result = train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=tmp_path))
    assert result.test_acc >= 0.40
    from cifarcli.classifier import load_classifier
    from cifarcli.export import export_checkpoint

    # The figures train prints are the shipped model's, whatever precision the CPU trained in.
    export_checkpoint(tmp_path / "last.pt", tmp_path / "model.onnx", dataset=dataset)
    for path in (tmp_path / "last.pt", tmp_path / "model.onnx"):
        classifier = load_classifier(path)
        assert evaluate(classifier, dataset).accuracy == result.test_acc, path
        assert evaluate(classifier, dataset, tta=result.tta).accuracy == result.test_acc_tta, path
