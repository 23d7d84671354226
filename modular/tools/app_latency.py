"""How fast the app answers a prediction with Grad-CAM, measured as a user's browser asks: through
gradio_client against the app served on 127.0.0.1 (the picture uploaded, the map sent back), median
of N calls after the first. Two pictures: one of the app's 32x32 examples and a 12-megapixel phone-sized
JPEG made from it. Meaningful only on an otherwise idle machine: the record keeps the load average."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from modular.tools.app import assemble, build_app, free_port, launch
from modular.tools.app_handlers import PREDICTED

PHOTO = (4032, 3024)  # a 12-megapixel phone photo


def _timings(client, picture: str, calls: int) -> list[float]:
    from gradio_client import handle_file

    seconds = []
    for _ in range(calls + 1):  # the first call warms up (lazy initialisation) and is not counted
        started = time.perf_counter()
        client.predict(handle_file(picture), 3, True, "layer3", PREDICTED, 0.5, api_name="/classify")
        seconds.append(time.perf_counter() - started)
    return seconds


def summarise(seconds: list[float]) -> dict:
    """Median, 90th percentile, extremes of every call but the first (kept apart as first_s)."""
    timed = seconds[1:]
    return {"median_s": statistics.median(timed), "p90_s": statistics.quantiles(timed, n=10)[-1] if len(timed) > 1
            else timed[0], "min_s": min(timed), "max_s": max(timed), "first_s": seconds[0], "calls": len(timed),
            "seconds": [round(s, 4) for s in timed]}


def measure(calls: int = 50) -> dict:
    """Serve the app (shipped weights, committed sample), time ``calls`` + 1 predictions with Grad-CAM
    (top-3, Layer3, the predicted class) per picture; returns the record."""
    import torch
    from gradio_client import Client
    from PIL import Image

    from modular.device import hardware_name
    from modular.tools.provenance import code_version, versions
    from modular.tools.weights import sha256

    load_before = os.getloadavg()
    parts = assemble()
    demo = build_app(parts)
    url = launch(demo, parts, port=free_port())
    example = parts.sample.path(parts.sample.examples[0])
    try:
        with tempfile.TemporaryDirectory() as folder:
            photo = Path(folder) / "photo.jpg"
            Image.open(example).convert("RGB").resize(PHOTO, Image.Resampling.BICUBIC).save(photo, quality=90)
            client = Client(url, verbose=False)
            example_s, photo_s = _timings(client, str(example), calls), _timings(client, str(photo), calls)
            photo_bytes = photo.stat().st_size
    finally:
        demo.close()
    from importlib import metadata

    return {
        "app_latency": {
            "request": "/classify through gradio_client: top-3, Grad-CAM on layer3 for the predicted class, opacity 0.5",
            "example": {"picture": f"{example.name} (32x32 PNG)", **summarise(example_s)},
            "photo": {"picture": f"{PHOTO[0]}x{PHOTO[1]} JPEG, {photo_bytes:,} bytes", **summarise(photo_s)},
        },
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()), "cpus": os.cpu_count(),
        "hardware": hardware_name(torch.device("cpu")),
        "versions": {**versions(), "gradio": metadata.version("gradio"), "gradio_client": metadata.version("gradio_client")},
        "commit": code_version(), "weights_sha256": sha256(parts.explainer.trained.source),
    }

