"""What the web app holds for its one user, in memory only: the chosen model, the support set
(decoded and embedded once), the last answers and the running reliability check.

Every computation is the engine's: ``predict.check_support`` / ``support_inputs`` /
``query_inputs`` / ``finetuned_support`` / ``adapted`` / ``predict_scores`` (with the checkpoint's calibration) /
``summarise`` / ``to_csv`` (the same answers and the same CSV as ``fewshot-mann predict``, with its ``--finetune`` and
``--adapt``), ``folder.decode_uploads`` (the folder checks of
``inspect``, on bytes), ``kshot.kshot_table`` (accuracy on the user's classes and the
baselines). This module keeps their results and turns them into what the page shows
(thumbnails, nearest support images). Nothing is written to disk.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import threading
from pathlib import Path

import numpy as np

from fewshot_mann.errors import DataError, UserError
from fewshot_mann.encoder_names import is_staged

REPO_PHOTO_MODEL = Path(__file__).resolve().parents[2] / "reports" / "checkpoints" / "photos-5way.pt"
THUMBNAIL = 72  # px, the longer side of a thumbnail on the page
NEAREST = 3  # support images shown beside each case


def default_checkpoint() -> str:
    """The recommended photo model: a bundled ``photos`` when the installation ships one, else the
    repository's ``reports/checkpoints/photos-5way.pt``, else the bundled Omniglot model."""
    from fewshot_mann.engine.bundled import registry

    if "photos" in registry():
        return "photos"
    if REPO_PHOTO_MODEL.is_file():
        return str(REPO_PHOTO_MODEL)
    return "omniglot-5way"


def one_line_error(exc: Exception) -> str:
    """A failure as the page shows it: a user error's message, anything else as ``internal error: ...``."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return first if isinstance(exc, UserError) else f"internal error: {type(exc).__name__}: {first}"


@contextlib.contextmanager
def captured_warnings():
    """The engine's ``warning: ...`` lines (printed to stderr) collected into a list for the page."""
    buffer, lines = io.StringIO(), []
    try:
        with contextlib.redirect_stderr(buffer):
            yield lines
    finally:
        lines += [line[len("warning: "):] for line in buffer.getvalue().splitlines() if line.startswith("warning: ")]


def thumbnail(image: np.ndarray) -> str:
    """(C, H, W) uint8 as the model reads it -> a data: URL of a small PNG."""
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(pixels))
    im.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def nearest_support(support_inputs: np.ndarray, case_inputs: np.ndarray, k: int = NEAREST) -> np.ndarray:
    """(cases, k) indices of the support images closest to each case (cosine, after centring on
    the support mean, as the feature encoder sees them); for display only."""
    s = support_inputs.reshape(len(support_inputs), -1).astype(np.float64)
    q = case_inputs.reshape(len(case_inputs), -1).astype(np.float64)
    mean = s.mean(0, keepdims=True)
    s, q = s - mean, q - mean
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return np.argsort(-(q @ s.T), axis=1, kind="stable")[:, :k]


@dataclasses.dataclass
class Support:
    """A support set ready to answer cases: ``data`` (decoded pixels, digests, problems), ``bank``
    (the model's inputs: backbone features or pixels; the reliability check reads these), ``raw``
    (pixels for the baselines); with fine-tuning, ``tuned`` = (the support bank of tuned features,
    a function from decoded case images to their tuned features), which the cases are answered with."""

    data: object
    bank: object
    raw: object
    warnings: list[str]
    net: object  # the model that answers: the checkpoint's, or a copy adapted to this support set
    tuned: tuple | None = None
    steps: dict = dataclasses.field(default_factory=dict)  # {"finetune": n, "adapt": m} as asked


class Session:
    """The app's state. ``choices``: checkpoint names or paths the page may load (nothing else is read)."""

    def __init__(self, choices: list[str], device: str = "cpu", orders: int = 8, seed: int = 0):
        self.choices = list(dict.fromkeys(choices))
        self.device, self.orders, self.seed = device, orders, seed
        self.lock = threading.Lock()  # one computation at a time (one model, few cores)
        self.checkpoint = self.cfg = self.model = None
        self.calibration = None
        self.info: dict = {}
        self.support: Support | None = None
        self.answers: list[dict] | None = None
        self.job = {"task": None, "done": 0, "total": 0, "result": None, "error": None}

    # ------------------------------------------------------------------------- model

    def models(self) -> list[dict]:
        from fewshot_mann.engine.bundled import registry

        entries = registry()
        return [{"name": c, "description": entries.get(c, {}).get("description", "")} for c in self.choices]

    def choose_model(self, name: str) -> dict:
        from fewshot_mann.engine.bundled import registry
        from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, refuse_nonfinite

        if name not in self.choices:  # never a path typed into the page
            raise UserError(f"unknown model {name!r}; choose one of {', '.join(self.choices)}")
        with self.lock:
            ckpt = load_checkpoint(name)
            model = load_model_from_checkpoint(ckpt, self.device)
            refuse_nonfinite(ckpt, name)
            cfg, entry = ckpt["config_obj"], registry().get(name, {})
            e = cfg.episodes
            self.checkpoint, self.cfg, self.model = name, cfg, model.eval()
            from fewshot_mann.reporting.calibration import checkpoint_calibration
            self.calibration = checkpoint_calibration(ckpt)  # temperature and unknown threshold, as predict
            self.support, self.answers = None, None
            self.info = {
                "name": name, "model": cfg.model.model, "encoder": cfg.model.encoder, "labels": e.labels,
                "ways": e.ways, "instances": e.instances, "episodes_trained": ckpt.get("episodes_done"),
                "trained_on": entry.get("trained_on") or f"{cfg.data.dataset} {Path(str(cfg.data.data_root or '')).name}".strip(),
                "accuracy": entry.get("accuracy", {}),
                "adapt": True,  # predict --adapt: meta-fine-tune a copy on the support set
                "finetune": is_staged(cfg.model.encoder),  # predict --finetune: timm backbones only (one or joined)
            }
            return self.info

    def _model_needed(self):
        if self.model is None:
            raise UserError("choose a model first")

    # ------------------------------------------------------------------------- support

    def give_support(self, files: list[tuple[str, bytes]], adapt: int = 0, finetune: int = 0) -> dict:
        """The support folder as (``<class>/<file>``, bytes): checked, decoded, embedded once; with
        ``finetune`` steps, the backbone fine-tuned to it as ``predict --finetune`` does (``self.job`` tells
        the steps done), with ``adapt`` steps a copy of the model adapted to it as ``predict --adapt``."""
        from fewshot_mann import limits
        from fewshot_mann.data.folder import decode_uploads
        from fewshot_mann.models.inputs import image_reader
        from fewshot_mann.engine.predict import check_support, one_shot_finetune_note, support_inputs, with_support_ways

        self._model_needed()
        if adapt < 0 or adapt > 1000:
            raise UserError(f"adapt steps must be between 0 and 1000 (got {adapt})")
        if not 0 <= finetune <= limits.MAX_FINETUNE_STEPS:
            raise UserError(f"fine-tune steps must be between 0 and {limits.MAX_FINETUNE_STEPS} (got {finetune})")
        if finetune and not self.info.get("finetune"):
            raise UserError(f"fine-tuning needs a timm backbone model; {self.checkpoint} reads "
                            f"{self.cfg.model.encoder}: set the fine-tune steps to 0 or choose a photo model")
        with self.lock:
            cfg, reader = self.cfg, image_reader(self.cfg)
            self.support, self.answers = None, None
            with captured_warnings() as warned:
                data = decode_uploads(files, reader=reader, option="the support folder")
                check_support(data, cfg, "the support folder")
                self.cfg = cfg = with_support_ways(cfg, data.bank.num_classes)
                bank, raw = support_inputs(cfg, data)
                tuned = self._finetuned(cfg, data.bank, finetune) if finetune else None
                net = self._adapted(cfg, tuned[0] if tuned else bank, adapt)
            warnings = [w for w in warned if not w.startswith("skipped --support")]  # problems are listed apart
            warnings += [n for n in [one_shot_finetune_note(data.bank.counts, finetune)] if n]
            self.support = Support(data, bank, raw, warnings, net, tuned, {"finetune": finetune, "adapt": adapt})
            return self.support_view()

    def _finetuned(self, cfg, support_bank, steps: int) -> tuple:
        """``predict.finetuned_support`` on the decoded support images, its steps counted in ``self.job``."""
        from fewshot_mann.engine.predict import finetuned_support

        job = self.job = {"task": "fine-tuning", "running": True, "done": 0, "total": steps, "result": None,
                          "error": None}
        try:
            return finetuned_support(cfg, support_bank, steps, self.seed, progress=lambda done, _total: job.update(done=done))
        except Exception as exc:
            job["error"] = one_line_error(exc)
            raise
        finally:
            job["running"] = False

    def _adapted(self, cfg, bank, steps: int):
        from fewshot_mann.engine.predict import adapted

        return adapted(self.model, cfg, bank, steps, self.seed) if steps else self.model

    def support_view(self) -> dict:
        s = self.support
        b = s.data.bank
        classes = [{"name": n, "images": [{"index": int(i), "src": thumbnail(b.images[i])}
                                          for i in range(int(o), int(o + c))]}
                   for n, o, c in zip(b.names, b.offsets, b.counts)]
        return {"classes": classes, "problems": [dataclasses.asdict(p) for p in s.data.problems],
                "warnings": s.warnings, "images": int(b.counts.sum()), **s.steps}

    # ------------------------------------------------------------------------- cases

    def give_cases(self, files: list[tuple[str, bytes]], threshold: float | None = None) -> dict:
        """Each case answered as ``predict`` answers it (sorted by name, as ``predict`` lists a folder)."""
        from fewshot_mann.data.folder import warn
        from fewshot_mann.data.images import BadImage
        from fewshot_mann.data.scan import is_image_name
        from fewshot_mann.models.inputs import image_reader
        from fewshot_mann.engine.predict import predict_scores, query_inputs, summarise, support_cap, warn_support_copies
        from fewshot_mann.engine.predict_trust import calibrated

        self._model_needed()
        if self.support is None:
            raise UserError("give the support folder first")
        with self.lock:
            cfg, reader, s = self.cfg, image_reader(self.cfg), self.support
            images, names, digests = [], [], []
            with captured_warnings() as warned:
                for name, data in sorted(files, key=lambda f: f[0]):
                    try:
                        if not is_image_name(name):
                            raise BadImage("not-image", "not an image file")
                        image, _ = reader.decode(data)
                    except BadImage as exc:
                        warn(f"skipped case {name}: {exc}")
                        continue
                    images.append(image)
                    names.append(name)
                    digests.append(hashlib.sha256(data).hexdigest())
            if not images:
                raise DataError(f"no readable case images ({'; '.join(warned)})" if warned else "no case images given")
            bank = s.tuned[0] if s.tuned else s.bank  # as predict: tuned features with --finetune
            with captured_warnings() as more:
                warn_support_copies(names, digests, s.data)
                inputs = s.tuned[1](np.stack(images)) if s.tuned else query_inputs(cfg, np.stack(images))
                scores = predict_scores(s.net, cfg, bank, inputs, orders=self.orders, seed=self.seed,
                                        device=self.device)
            steps = s.steps.get("finetune", 0) if s.tuned else 0
            calibration = self.calibration.for_finetune(steps) if self.calibration is not None else None
            probs, known, unknown_threshold = calibrated(scores, calibration, bank, support_cap(cfg))
            if steps and calibration is not None and calibration.fitted:  # as predict says it
                from fewshot_mann.engine.predict_trust import finetune_calibration_note
                more.append("calibration " + finetune_calibration_note(calibration, steps))
            results = summarise(bank.names, probs, threshold, names, known, unknown_threshold)
            near = nearest_support(bank.images, inputs)
            self.answers = results
            rows = [{**res, "src": thumbnail(img), "nearest": [int(i) for i in idx],
                     "nearest_class": [bank.names[int(np.searchsorted(bank.offsets, i, side="right") - 1)]
                                       for i in idx]}
                    for res, img, idx in zip(results, images, near)]
            return {"cases": rows, "warnings": warned + more, "classes": list(s.bank.names),
                    "threshold": (1 + 1 / s.bank.num_classes) / 2 if threshold is None else threshold}

    def answers_csv(self) -> str:
        from fewshot_mann.engine.predict import to_csv

        if not self.answers:
            raise UserError("no answers yet")
        return to_csv(self.answers, self.support.bank.names)

    def answers_json(self) -> str:
        from fewshot_mann.fileio import json_text

        if not self.answers:
            raise UserError("no answers yet")
        return json_text(self.answers, indent=2, sort_keys=False) + "\n"

    # ------------------------------------------------------------------------- reliability

    def start_reliability(self, episodes: int = 200) -> dict:
        """``kshot`` over the support folder's classes, in the background; ``self.job`` tells its progress."""
        self._model_needed()
        if self.support is None:
            raise UserError("give the support folder first")
        if self.job.get("running"):
            raise UserError(f"the {self.job.get('task')} is still running")
        if not 10 <= episodes <= 5000:
            raise UserError(f"episodes must be between 10 and 5000 (got {episodes})")
        self.job = {"task": "reliability check", "running": True, "done": 0, "total": 0, "result": None, "error": None}
        threading.Thread(target=self._reliability, args=(self.job, episodes), daemon=True).start()
        return dict(self.job)

    def _reliability(self, job: dict, episodes: int) -> None:
        from fewshot_mann.engine.kshot import kshot_table

        try:
            with self.lock:
                cfg, s = self.cfg, self.support
                smallest = int(s.bank.counts.min())
                if smallest < 2:
                    raise DataError("every class needs at least 2 images for this check (one shown, one asked)")
                e = cfg.episodes
                ways = min(s.bank.num_classes, e.ways) if e.labels == "onehot" else s.bank.num_classes
                shots = sorted({1, min(5, smallest - 1)})
                job["total"] = episodes * len(shots)
                state = {"row": 0, "last": 0}

                def progress(done: int, _total: int) -> None:
                    if done < state["last"]:
                        state["row"] += 1
                    state["last"] = done
                    job["done"] = state["row"] * episodes + done

                lines: list[str] = []
                with captured_warnings() as warned:
                    rows, baselines = kshot_table(self.model, s.bank, s.raw, cfg, [ways], shots, episodes, self.seed,
                                                  device=self.device, progress=progress, log=lines.append)
                job["result"] = {"rows": rows, "baselines": baselines, "log": lines, "warnings": warned}
                job["done"] = job["total"]
        except UserError as exc:
            job["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown as one line on the page; the server keeps running
            job["error"] = one_line_error(exc)
        finally:
            job["running"] = False
