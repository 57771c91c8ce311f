"""Data: class banks, label-shifted episodes, the Omniglot and image-folder readers, splits, feature cache."""
