"""GEMM throughput, float32 against bfloat16, at the LRUA kernel's shapes (rows x [h, r] x 4H: a thread's
block of a training batch, of an evaluation batch) and one large product; prints GFLOP/s as JSON.

    python reports/scripts/bf16_gemm.py THREADS > reports/performance_bf16_gemm_THREADSthreads.json
"""
import json
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
res = {}
for m, k, n in [(8, 365, 800), (16, 365, 800), (500, 365, 800), (1000, 365, 800), (1000, 400, 800),
                (4096, 1024, 1024)]:
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        for _ in range(5):
            a @ b
        reps = max(5, int(2e9 / (2 * m * k * n)))
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        seconds = (time.perf_counter() - t) / reps
        res[f"{m}x{k}x{n} {str(dtype)[6:]}"] = round(2 * m * k * n / seconds / 1e9, 1)
print(json.dumps(res, indent=0))
