"""Give a feature model's checkpoint another ``feature_norm`` (its weights unchanged), recording the step:

    python reports/scripts/switch_feature_norm.py IN.pt OUT.pt l2

Used 2026-12-07 on the label-keyed Conv4 models (lake-20way, keyed-conv-20way): their features had been
centred on the mean of the episode's earlier steps (causal ``center-l2``), which shifts every step's
features by a different, noisy mean; unit length alone (``l2``) scored higher on the validation
characters (kshot --classes validation, 500 episodes, seed 1: lake-20way within one alphabet 20-way
1-shot 72.0 -> 76.4 %, keyed-conv-20way 20-way 1-shot 90.1 -> 94.9 %; reports/results-kshot/select-feature-norm.log).
"""
import sys

import torch

from fewshot_mann.engine.checkpoint import save_checkpoint

src, out, norm = sys.argv[1:4]
ckpt = torch.load(src, map_location="cpu", weights_only=True)
before = ckpt["config"]["model"]["feature_norm"]
ckpt["config"]["model"]["feature_norm"] = norm
ckpt["command"] = [*ckpt.get("command", []), "&&", "python", "reports/scripts/switch_feature_norm.py", src, out, norm]
save_checkpoint(out, ckpt)
print(f"{out}: feature_norm {before} -> {norm}")
