"""Time the web app's answers with a backbone model (docs/app.md): the support set is embedded
once, then 50 cases are answered in one upload, then the reliability check runs, through the app's
own HTTP endpoints (Starlette's TestClient: no browser, no network).

    python scripts/app_timing.py [--checkpoint photos] [--cases 50] [--episodes 200] [--threads 2]

The checkpoint defaults to ``fewshot-mann serve``'s (the bundled ``photos``); ``--episodes 0``
skips the reliability check.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout, and the tests' image helpers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None, help="default: serve's (the bundled 'photos')")
    p.add_argument("--cases", type=int, default=50)
    p.add_argument("--episodes", type=int, default=200, help="trials of the reliability check (0: skip it)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch
    from starlette.testclient import TestClient

    from helpers.images import make_image_folder
    from fewshot_mann.app.server import create_app
    from fewshot_mann.app.session import Session, default_checkpoint

    torch.set_num_threads(args.threads)
    args.checkpoint = args.checkpoint or default_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        support = make_image_folder(Path(tmp) / "support", classes=5, per_class=5, seed=1, size_range=(200, 400))["root"]
        cases = make_image_folder(Path(tmp) / "cases", classes=5, per_class=args.cases // 5, seed=2,
                                  size_range=(200, 400))["root"]
        support_files = [("files", (f.relative_to(support).as_posix(), f.read_bytes())) for f in sorted(support.rglob("*.*"))]
        case_files = [("files", (f"{f.parent.name}_{f.name}", f.read_bytes())) for f in sorted(cases.rglob("*.*"))]
    t0 = time.perf_counter()
    session = Session([args.checkpoint])
    session.choose_model(args.checkpoint)
    client = TestClient(create_app(session, "t"))
    t1 = time.perf_counter()
    r = client.post("/api/support?token=t", files=support_files)
    assert r.status_code == 200, r.text
    t2 = time.perf_counter()
    r = client.post("/api/cases?token=t", files=case_files)
    assert r.status_code == 200, r.text
    t3 = time.perf_counter()
    r = client.post("/api/cases?token=t", files=case_files)
    t4 = time.perf_counter()
    n = len(r.json()["cases"])
    print(f"{args.checkpoint}: model load {t1 - t0:.1f} s; support ({len(support_files)} images) checked + embedded "
          f"{t2 - t1:.1f} s; {n} cases answered {t3 - t2:.1f} s (again: {t4 - t3:.1f} s); torch {torch.__version__}, "
          f"{args.threads} threads")
    if args.episodes:
        reliability(client, args.episodes)


def reliability(client, episodes: int) -> None:
    """The reliability check (kshot over the support folder, in the server's background job), polled as the page does."""
    t0 = time.perf_counter()
    r = client.post("/api/reliability?token=t", json={"episodes": episodes})
    assert r.status_code == 200, r.text
    while (job := client.get("/api/job?token=t").json())["running"]:
        time.sleep(0.1)
    assert job["error"] is None, job["error"]
    rows = ", ".join(f"{r['ways']}-way {r['shots']}-shot {100 * r['accuracy']:.1f} %" for r in job["result"]["rows"])
    print(f"reliability check, {episodes} trials a row ({rows}): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
