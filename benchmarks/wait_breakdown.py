"""Where `cifar train`'s wait beyond its training loops goes, piece by piece (issue 14).

    python benchmarks/wait_breakdown.py [--model airbench-cpu] [--precision auto] [--data PATH]

Times, in this process, what a run does besides its steps: the imports, loading the decoded
data from the cache, setup() (pixel statistics, model, whitening, padded images), one epoch's
estimate on the sample of the test split in the training precision, one epoch's checkpoints
(last.pt with the training state, best.pt without), and the final exact scoring (fp32, plain and
TTA in one pass). Weights do not change these times, so the model is as
setup() builds it. Prints; the figures go to BENCHMARKS.md by hand, beside a run's wall time.
"""

import argparse
import tempfile
import time
from pathlib import Path

started = time.perf_counter()
import torch  # noqa: E402  (timed: the imports are part of the wait)
from common import SHARED_DATA  # noqa: E402

from cifarcli.classifier import EVAL_BATCH, predict_in_batches, predict_plain_and_tta_in_batches  # noqa: E402
from cifarcli.data import load_dataset  # noqa: E402
from cifarcli.models import get_model_entry  # noqa: E402
from cifarcli.run import prepare_run, process_settings  # noqa: E402
from cifarcli.train import save, setup  # noqa: E402

IMPORTS_S = time.perf_counter() - started


def timed(label: str, work) -> None:
    started = time.perf_counter()
    work()
    print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="airbench-cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data", default=str(SHARED_DATA))
    args = parser.parse_args()

    print(f"imports (torch {torch.__version__} and cifarcli): {IMPORTS_S:.1f} s")
    loaded = {}
    timed("decoded data from the cache", lambda: loaded.setdefault("data", load_dataset(args.data)))
    dataset, recipe = loaded["data"], get_model_entry(args.model).recipe
    context = prepare_run("cpu", args.precision, run_dir=Path(tempfile.mkdtemp()))
    with process_settings(context):
        timed("setup()", lambda: loaded.setdefault("training", setup(context, dataset, args.model, recipe)))
        training = loaded["training"]
        for _ in range(2):
            timed(
                f"one epoch's estimate ({len(training.epoch_test)} images, {context.precision})",
                lambda: predict_in_batches(training.estimator, training.epoch_test.images, EVAL_BATCH),
            )
            timed(
                "one epoch's checkpoints (last.pt and best.pt, each written and synced)",
                lambda: (save(training, "last.pt", 1, {}, True), save(training, "best.pt", 1, {}, False)),
            )
        sizes = [(context.run_dir / name).stat().st_size / 1e6 for name in ("last.pt", "best.pt")]
        print(f"  (before any step, so no optimizer state: last.pt {sizes[0]:.1f} MB, best.pt {sizes[1]:.1f} MB)")
        timed(
            f"the final scoring (fp32, {len(dataset.test)} images, plain and TTA level {recipe.tta})",
            lambda: predict_plain_and_tta_in_batches(training.classifier, dataset.test.images, EVAL_BATCH, recipe.tta),
        )


if __name__ == "__main__":
    main()
