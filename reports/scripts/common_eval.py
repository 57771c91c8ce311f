"""The bundled omniglot-5way model and the 423 santoro test characters (real zips under OMNIGLOT)."""
import os

from fewshot_mann.engine.loading import load_split_banks
from fewshot_mann.engine import checkpoint
from fewshot_mann.engine.bundled import resolve_checkpoint


def model_and_test_bank():
    ck = checkpoint.load_checkpoint(resolve_checkpoint("omniglot-5way"))
    cfg = ck["config_obj"]
    cfg.data.data_root = os.environ.get("OMNIGLOT", "/work/shared/datasets/omniglot")
    return checkpoint.load_model_from_checkpoint(ck).eval(), cfg, load_split_banks(cfg, progress=False).test
