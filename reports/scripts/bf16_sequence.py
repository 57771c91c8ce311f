"""The sequence backend's forward with its two per-step controller matmuls in bfloat16 (float32 everywhere
else, float32 result), against float32: evaluate() of omniglot-5way at batch 1,000, accuracy on the same
2,000 episodes, then 5 interleaved timing rounds of 1,000 episodes each.

    OMNIGLOT=DIR python reports/scripts/bf16_sequence.py THREADS   (from the repository root)
"""
import json
import statistics
import sys
import time

import torch
from common_eval import model_and_test_bank

from fewshot_mann.engine.evaluation import evaluate
from fewshot_mann.memory.lrua import sequence as S

torch.set_num_threads(int(sys.argv[1]))
model, cfg, test = model_and_test_bank()
model.memory_backend = "sequence"
fp32_controller, fp32_interface = S._Forward.controller, S._Forward.interface

def controller_bf16(self, t):
    if not hasattr(self, "w_rec_bf"):
        self.w_rec_bf = self.w_rec_t.bfloat16()
    torch.add(self.gates[t], torch.mm(self.hr_in[t].bfloat16(), self.w_rec_bf).float(), out=self.pre)
    torch.sigmoid(self.pre, out=self.act[t])
    torch.tanh(self.pre_g, out=self.act_g[t])
    c = torch.mul(self.act_f[t], self.c_prev[t], out=self.c_next[t])
    c.addcmul_(self.act_i[t], self.act_g[t])
    torch.tanh(c, out=self.tanh_cell[t])
    return torch.mul(self.act_o[t], self.tanh_cell[t], out=self.h_out[t])

def interface_bf16(self, t, h):
    if not hasattr(self, "w_ctrl_bf"):
        self.w_ctrl_bf = self.w_ctrl_t.bfloat16()
    torch.add(self.b_ctrl, torch.mm(h.bfloat16(), self.w_ctrl_bf).float(), out=self.z)
    torch.tanh(self.z_keys, out=self.keys_flat[t])
    torch.sigmoid(self.z_gate, out=self.gate[t])
    if self.strength:
        self.strength_logit[t].copy_(self.z_strength)
        self.beta_s[t].copy_(torch.nn.functional.softplus(self.z_strength).add_(1.0).unsqueeze(-1))

out = {"accuracy": {}, "rounds": {"fp32": [], "bf16": []}}
for name, patch in [("fp32", False), ("bf16", True)]:
    S._Forward.controller, S._Forward.interface = (controller_bf16, interface_bf16) if patch else (fp32_controller, fp32_interface)
    r = evaluate(model, test, cfg.episodes, episodes=2000, seed=0, batch_size=1000)
    out["accuracy"][name] = [round(100 * a, 2) for a in r["accuracy_by_instance"]]
for _ in range(5):
    for name, patch in [("fp32", False), ("bf16", True)]:
        S._Forward.controller, S._Forward.interface = (controller_bf16, interface_bf16) if patch else (fp32_controller, fp32_interface)
        t = time.perf_counter()
        evaluate(model, test, cfg.episodes, episodes=1000, seed=1, batch_size=1000)
        out["rounds"][name].append(round(1000 / (time.perf_counter() - t), 1))
out["median"] = {k: statistics.median(v) for k, v in out["rounds"].items()}
print(json.dumps(out))
json.dump(out, open(f"reports/performance_bf16_sequence_{sys.argv[1]}threads.json", "w"), indent=1)
