"""The label issues kind of `cifar check`: images whose given label the model finds unlikely,
from out-of-sample probabilities, in the manner of confident learning (Northcutt et al. 2021).

A class's threshold is the mean probability the model gives that class over the images labelled
with it. An image is flagged when the model's most probable class is another one, reached with at
least CONFIDENT_SHARE of that class's threshold, and the given class's probability is below its
own threshold: the model predicts otherwise, nearly as surely as it predicts a typical image of
that class, and is less sure of the given class than of a typical image of it. Flagged images
are ranked by the given label's probability (self-confidence), the least likely first.
"""

import numpy as np

from cifarcli.findings import Finding

CONFIDENT_SHARE = 0.8  # of the predicted class's threshold (docs/decisions.md)


def label_issues(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], paths: list[str]) -> list[Finding]:
    """Findings for the flagged images; probabilities (N, classes) must come from a model that
    never trained on these images."""
    count = len(classes)
    thresholds = np.array([
        probabilities[labels == label, label].mean() if (labels == label).any() else 1.0 for label in range(count)
    ])  # fmt: skip
    rows = np.arange(len(labels))
    self_confidence = probabilities[rows, labels]
    predicted = probabilities.argmax(1)
    confident = probabilities[rows, predicted] >= CONFIDENT_SHARE * thresholds[predicted]
    flagged = (predicted != labels) & confident & (self_confidence < thresholds[labels])
    found = []
    for index in np.flatnonzero(flagged):
        given, suggested = classes[labels[index]], classes[predicted[index]]
        detail = f"p({given}) {self_confidence[index]:.3f}, p({suggested}) {probabilities[index, predicted[index]]:.3f}"
        score = 1 - float(self_confidence[index])
        found.append(Finding("label issues", "likely mislabelled", paths[index], score, "", given, suggested, detail))
    return found
