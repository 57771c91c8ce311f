"""Does the installed Pillow change the digits or how the folder reader frames them? Prints one JSON
line: the Pillow version, sha256 prefixes of the 1,797 rendered digits (``digits_folder.py``) and of the
reader's 20 px output with ``--ink-frame auto`` and ``keep`` (polarity auto), and how many were re-framed.

    PYTHONPATH=PILLOW_DIR:. python reports/scripts/digits_pillow_probe.py   # PILLOW_DIR: pip install --target
"""
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from fewshot_mann.data import folder

spec = importlib.util.spec_from_file_location("digits_folder", Path(__file__).with_name("digits_folder.py"))
digits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(digits)
rendered, framed, kept = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
reframed = 0
for _, pixels in digits.digit_images():
    rendered.update(pixels.tobytes())
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    a, _ = folder.decode_image(buf.getvalue(), 20, 1, "pad", polarity="auto", ink_frame="auto")
    b, _ = folder.decode_image(buf.getvalue(), 20, 1, "pad", polarity="auto", ink_frame="keep")
    framed.update(a.tobytes())
    kept.update(b.tobytes())
    reframed += not np.array_equal(a, b)
print(json.dumps({"pillow": PIL.__version__, "rendered": rendered.hexdigest()[:16], "read_auto_20px": framed.hexdigest()[:16],
                  "read_keep_20px": kept.hexdigest()[:16], "reframed": reframed}))
