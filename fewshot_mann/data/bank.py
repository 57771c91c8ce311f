"""ClassBank: every image of a set of classes, decoded once into one uint8 array; FeatureBank: the same
classes as a backbone's features (what a model reads instead of the pixels)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClassBank:
    """Images grouped by class.

    images: (num_images, channels, height, width) uint8, class c occupying
    ``images[offsets[c] : offsets[c] + counts[c]]``; names: one per class.
    """

    images: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def min_count(self) -> int:
        return int(self.counts.min()) if len(self.counts) else 0

    @classmethod
    def from_groups(cls, groups: list[np.ndarray], names: list[str]) -> "ClassBank":
        counts = np.array([len(g) for g in groups], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        images = np.concatenate(groups, axis=0) if groups else np.zeros((0, 1, 1, 1), np.uint8)
        return cls(np.ascontiguousarray(images), offsets, counts, list(names))

    def subset(self, class_indices) -> "ClassBank":
        idx = [int(i) for i in class_indices]
        groups = [self.images[self.offsets[i]:self.offsets[i] + self.counts[i]] for i in idx]
        return type(self).from_groups(groups, [self.names[i] for i in idx])

    def with_rotations(self) -> "ClassBank":
        """Four times the classes: each class again rotated by 90, 180 and 270 degrees."""
        groups, names = [], []
        for k in range(4):
            rotated = np.rot90(self.images, k=k, axes=(2, 3))
            for i, name in enumerate(self.names):
                groups.append(rotated[self.offsets[i]:self.offsets[i] + self.counts[i]])
                names.append(name if k == 0 else f"{name}@rot{90 * k}")
        return ClassBank.from_groups(groups, names)


class FeatureBank(ClassBank):
    """A bank of features, not pixels: ``images`` (num_images, features) float32, a backbone's output
    (``models.features.embed_bank``; pretraining's frozen stem gives feature maps (num_images, C, H, W)),
    grouped by class like the images they came from. A model reads them as they are (no /255, no
    jitter; a feature vector is never rotated)."""


@dataclass
class SplitBanks:
    """A dataset's classes split three ways (pairwise disjoint), before training rotations.

    digests: folder datasets only: class name -> SHA-256 of each of its image files, so a
    checkpoint can record which images it trained on (never the images or file names)."""

    train: ClassBank
    validation: ClassBank
    test: ClassBank
    digests: dict[str, list[str]] | None = None

    def part(self, name: str) -> ClassBank:
        return {"train": self.train, "training": self.train, "validation": self.validation, "test": self.test}[name]

    def class_names(self) -> dict[str, list[str]]:
        return {"train": list(self.train.names), "validation": list(self.validation.names),
                "test": list(self.test.names)}


def empty_bank(channels: int, size: int) -> ClassBank:
    return ClassBank(np.zeros((0, channels, size, size), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
