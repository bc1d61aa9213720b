"""Evaluation: held-out accuracy of classification and multiple-choice tasks."""

from intrudim.evaluate.accuracy import accuracy, count_correct
from intrudim.evaluate.batching import encode_examples, example_labels, example_logits

__all__ = ["accuracy", "count_correct", "encode_examples", "example_labels", "example_logits"]
