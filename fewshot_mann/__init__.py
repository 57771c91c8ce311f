"""fewshot-mann: few-shot image classification with a Memory-Augmented Neural Network."""

__version__ = "0.1.0"
