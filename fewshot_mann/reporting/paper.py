"""The paper's numbers the reports compare against: Santoro et al. 2016, "One-shot
learning with memory-augmented neural networks", Tables 1 and 2 (accuracy %, Omniglot)."""
from __future__ import annotations

# the instances (presentations of a class in an episode) the paper's tables report
PAPER_INSTANCES = (1, 2, 3, 4, 5, 10)

# Table 1: 5-way, one-hot labels
TABLE1 = {
    "Human": (34.5, 57.3, 70.1, 71.8, 81.4, 92.4),
    "Feedforward": (24.4, 19.6, 21.1, 19.9, 22.8, 19.5),
    "LSTM": (24.4, 49.5, 55.3, 61.0, 63.6, 62.5),
    "MANN": (36.4, 82.8, 91.0, 92.6, 94.9, 98.1),
}

# Table 2: string labels, by (ways, labels)
TABLE2 = {
    (5, "string"): {"MANN": (0.0, 69.5, 80.4, 87.9, 88.4, 93.1), "kNN (raw pixels)": (4.0, 36.7, 41.9, 45.7, 48.1, 57.0),
                    "kNN (deep features)": (4.0, 51.9, 61.0, 66.3, 69.3, 77.5)},
    (15, "string"): {"MANN": (0.1, 62.6, 79.3, 86.6, 88.7, 95.3), "kNN (raw pixels)": (0.5, 18.7, 23.3, 26.5, 29.1, 37.0)},
}
