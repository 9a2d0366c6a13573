"""The label issues kind of `cifar check`: images whose given label the model finds unlikely,
by confident learning (Northcutt et al. 2021) on out-of-sample probabilities.

A class's threshold is the mean probability the model gives that class over the images labelled
with it. An image is flagged when some other class reaches its own threshold and is, of those
that do, the most probable: the off-diagonal of the confident joint. Flagged images are ranked
by their given label's probability (self-confidence), the least likely first.
"""

import numpy as np

from cifarcli.findings import Finding


def label_issues(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], paths: list[str]) -> list[Finding]:
    """Findings for the flagged images; probabilities (N, classes) must come from a model that
    never trained on these images."""
    count = len(classes)
    thresholds = np.array([
        probabilities[labels == label, label].mean() if (labels == label).any() else 1.0 for label in range(count)
    ])  # fmt: skip
    above = probabilities >= thresholds[None, :]
    confident = np.where(above, probabilities, -1.0).argmax(1)
    flagged = above.any(1) & (confident != labels)
    found = []
    for index in np.flatnonzero(flagged):
        given, suggested = int(labels[index]), int(confident[index])
        self_confidence = float(probabilities[index, given])
        detail = (
            f"p({classes[given]}) {self_confidence:.3f}, p({classes[suggested]}) {probabilities[index, suggested]:.3f}"
        )
        found.append(
            Finding(
                "label issues",
                "likely mislabelled",
                paths[index],
                1 - self_confidence,
                "",
                classes[given],
                classes[suggested],
                detail,
            )
        )
    return found
