"""What a config saved before a change meant: the defaults of its day, for fields it predates.

``Config.from_dict`` fills a saved config's missing fields from here (``legacy_reading`` for the
image-reading fields, ``LEGACY_MODEL_DEFAULTS`` for model defaults that changed); the reports quote
``OLD_COMMANDS_NOTE`` beside commands recorded before 2026-12-07.
"""
from __future__ import annotations


def legacy_reading(data: dict) -> str:
    """How a config saved before ``polarity`` / ``ink_frame`` existed was read, for each of them:
    a model trained on the Omniglot reader gets ``auto`` (that reader always gave bright strokes
    on dark, and auto framing is a no-op on characters framed like its own); a folder dataset
    was read as it is (``keep``)."""
    return "keep" if data.get("dataset", "omniglot") == "folder" else "auto"


LEGACY_READING_FIELDS = ("polarity", "ink_frame")  # DataConfig fields a config may predate (legacy_reading)
# The defaults changed on 2026-12-07 (the README's main command, issue 33): commands recorded before then ran
# with these wherever they name none of them; every checkpoint's config holds all its settings.
DEFAULTS_BEFORE_2026_12_07 = {"lr": 1e-3, "key_strength": False, "episodes": 100_000}
# ModelConfig fields whose default changed: a saved config without the field keeps the default of its day
LEGACY_MODEL_DEFAULTS = {"key_strength": DEFAULTS_BEFORE_2026_12_07["key_strength"]}
OLD_COMMANDS_NOTE = ("Training commands recorded before 2026-12-07 ran with that day's defaults where they name none "
                     "of these: lr 1e-3, no key strength (for the MANN), 100,000 episodes; to rerun one as it was, "
                     "add `--lr 1e-3 --no-key-strength` (and `--episodes 100000`) where it names none. Every "
                     "checkpoint's config holds all of its settings.")
