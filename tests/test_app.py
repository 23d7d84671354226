"""The app (``python -m modular app``) with the shipped weights, the committed sample and records: its
handlers as functions and the app served in this process on a free port, called through gradio_client
(the browser test is tests/test_app_browser.py). No connection may leave 127.0.0.1."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import *  # noqa: F403  (its fixtures: pytest finds them in this module's namespace)
from app_fixtures import example_of
from PIL import Image

from modular.tools.app import RECORDS, free_port
from modular.tools.app_handlers import (
    DISPLAY,
    PREDICTED,
    SMALL,
    THUMB,
    AppInputError,
    about,
    browser_preview,
    classify,
    misclassified_items,
    shown_classify,
    shown_misclassified,
)
from modular.tools.gradcam import LAYERS, gradcam_maps
from modular.tools.predict import predict_files
from modular.tools.weights import load_weights

gradio = pytest.importorskip("gradio")  # the app's own requirement (requirements-app.txt); CI installs it
PROMISED = 256  # the Grad-CAM picture's side in pixels: large enough to see, 8 screen pixels per input pixel


def call(parts, upload, k=3, show_cam=True, layer="layer3", target=PREDICTED, opacity=0.5):
    return classify(parts.explainer, upload, k, show_cam, layer, target, opacity)


# --------------------------------------------------------------------------------------------
# The handlers as functions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 10])
def test_classify_gives_k_classes_and_a_large_grad_cam_picture(parts, photo, k):
    top, picture, note, message = call(parts, str(photo), k=k)
    assert len(top) == k and list(top.values()) == sorted(top.values(), reverse=True) and sum(top.values()) <= 1.0001
    assert next(iter(top)) == "cat"
    assert picture.shape == (DISPLAY, DISPLAY, 3) and picture.dtype == np.uint8
    assert "centre-cropped from 300x200 to 200x200" in note and "for **cat**, the predicted class" in note
    assert message == ""


def test_bad_input_is_a_message_not_a_traceback(parts, photo, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    cases = [({"k": 0}, "top-k must be a whole number from 1 to 10"), ({"k": 11}, "(got 11)"), ({"k": 2.5}, "(got 2.5)"),
             ({"layer": "layer4"}, "layer must be one of layer1, layer2, layer3"), ({"opacity": 1.5}, "opacity must be"),
             ({"target": "unicorn"}, "Grad-CAM class must be"), ({"upload": None}, "upload a picture or click one"),
             ({"upload": {"path": str(tmp_path / "notes.png"), "orig_name": "holiday.png"}}, "holiday.png: not a readable image")]
    for change, needle in cases:
        arguments = {"upload": str(photo), **change}
        with pytest.raises(AppInputError) as caught:
            call(parts, **arguments)
        assert needle in str(caught.value) and "\n" not in str(caught.value), (change, caught.value)


def test_what_the_page_shows_for_bad_input_is_the_message_in_place_of_the_result(parts, photo, tmp_path):
    """The page's handler never raises for input it cannot use (a raised error is a toast that stays on
    screen): the result, the picture and the note are empty, the message says what to do."""
    (tmp_path / "cut.jpg").write_bytes(photo.read_bytes()[:2000])
    label, picture, note, message = shown_classify(parts.explainer, {"path": str(tmp_path / "cut.jpg"),
                                                                     "orig_name": "cut.jpg"}, 3, True, "layer3", PREDICTED, 0.5)
    assert (label, picture, note) == (None, None, "")
    assert "cut.jpg: not a readable image: the JPEG file is cut short or damaged" in message
    assert "Error" not in message and "PNG, JPEG" not in message
    label, picture, note, message = shown_classify(parts.explainer, str(photo), 0, True, "layer3", PREDICTED, 0.5)
    assert label is None and "top-k must be a whole number from 1 to 10 (got 0)" in message
    label, picture, note, message = shown_classify(parts.explainer, None, 3, True, "layer3", PREDICTED, 0.5)
    assert (label, picture, note) == (None, None, "") and "Upload a picture" in message  # no picture: the hint
    label, picture, note, message = shown_classify(parts.explainer, str(photo), 3, True, "layer3", PREDICTED, 0.5)
    assert next(iter(label)) == "cat" and picture.shape == (DISPLAY, DISPLAY, 3) and message == ""


@pytest.mark.parametrize("size", [(1, 1), (14, 25), (15, 300)])
def test_a_picture_under_16_pixels_gets_a_warning_beside_the_answer(parts, example, tmp_path, size):
    Image.open(example).resize(size).save(tmp_path / "tiny.png")
    top, _, _, message = call(parts, str(tmp_path / "tiny.png"))
    assert len(top) == 3 and f"only {size[0]}x{size[1]} pixels" in message and f"at least {SMALL}x{SMALL}" in message
    Image.open(example).resize((SMALL, 40)).save(tmp_path / "fine.png")
    assert call(parts, str(tmp_path / "fine.png"))[3] == ""


def test_grad_cam_follows_the_class_the_layer_and_the_opacity(parts, example):
    plain = call(parts, str(example), show_cam=False)[1]
    assert np.array_equal(plain, np.asarray(Image.open(example).convert("RGB").resize((DISPLAY, DISPLAY), Image.NEAREST)))
    assert np.array_equal(call(parts, str(example), opacity=0.0)[1], plain)
    pictures = {layer: call(parts, str(example), layer=layer)[1] for layer in LAYERS}
    assert all(not np.array_equal(pictures[a], pictures[b]) for a in LAYERS for b in LAYERS if a < b)
    assert not np.array_equal(call(parts, str(example), target="truck")[1], pictures["layer3"])
    assert np.array_equal(call(parts, str(example), target="cat")[1], pictures["layer3"])  # cat is the prediction
    faint, strong = (call(parts, str(example), opacity=o)[1].astype(int) for o in (0.2, 0.9))
    assert np.abs(faint - plain).mean() < np.abs(strong - plain).mean()


def test_grad_cam_for_an_unlikely_class_is_drawn_on_the_predicted_class_scale(parts, example, monkeypatch):
    """Truck for the cat (2%): its map divided by the peak of the cat's map, not by its own, so that it
    looks as weak as it is; the note says which scale and prints the class's probability and map peak."""
    import modular.tools.app_handlers as handlers
    from modular.tools.images import read_image

    drawn, real = [], handlers.overlay
    monkeypatch.setattr(handlers, "overlay", lambda pixels, heat, *rest: (drawn.append(heat), real(pixels, heat, *rest))[1])
    top, _, cat_note, _ = call(parts, str(example), k=10)
    _, _, truck_note, _ = call(parts, str(example), target="truck")
    explainer, pixels = parts.explainer, read_image(example).pixels
    cat, truck = explainer.classes.index("cat"), explainer.classes.index("truck")
    raw = gradcam_maps(explainer.trained.model, explainer._batch(np.stack([pixels, pixels])), [cat, truck], "layer3")
    ratio = raw[1].max() / raw[0].max()
    assert ratio < 0.5 and top["truck"] < 0.05  # the premise: little evidence for a truck
    assert drawn[0].max() == pytest.approx(1.0) and drawn[1].max() == pytest.approx(ratio, rel=1e-4)
    np.testing.assert_allclose(drawn[1], raw[1] / raw[0].max(), atol=1e-5)
    assert "1 = the peak of the predicted class's map" in cat_note
    assert f"**truck** ({top['truck']:.1%})" in truck_note and f"peaks at {ratio:.2f}" in truck_note
    assert "scale of the predicted class's map (**cat**" in truck_note


def test_grad_cam_for_a_class_with_more_evidence_than_the_prediction_says_so(parts, monkeypatch):
    """Deer's example at Layer1: the airplane's map peaks several times higher than the deer's; it is drawn
    on its own scale and the note gives the ratio."""
    note = classify(parts.explainer, str(example_of(parts, "deer")), 3, True, "layer1", "airplane", 0.5)[2]
    assert "as high as the predicted class's map (**deer**" in note and "1 = the peak of airplane's map" in note


def test_a_picture_the_browser_cannot_show_gets_a_png_preview(parts, example, tmp_path):
    """TIFF: browsers show no preview; a PNG of the picture (upright, RGB) replaces it in the upload box.
    PNG and JPEG are shown as they are."""
    Image.open(example).convert("CMYK").save(tmp_path / "scan.tif")
    preview = browser_preview({"path": str(tmp_path / "scan.tif"), "orig_name": "scan.tif"})
    assert preview is not None and Image.open(preview).format == "PNG" and Image.open(preview).mode == "RGB"
    assert Image.open(preview).size == (32, 32)
    for name in ("a.png", "a.jpg", "a.gif", "a.webp"):
        Image.open(example).convert("RGB").save(tmp_path / name)
        assert browser_preview({"path": str(tmp_path / name), "orig_name": name}) is None, name
    (tmp_path / "letter.tif").write_text("Dear network")
    assert browser_preview({"path": str(tmp_path / "letter.tif"), "orig_name": "letter.tif"}) is None  # classify says why
    note = call(parts, {"path": str(tmp_path / "scan.tif"), "orig_name": "scan.tif"})[2]
    assert "**scan.tif**: CMYK colours converted to RGB" in note


def test_the_misclassified_gallery_captions_true_and_predicted_class(parts):
    sample, names = parts.sample, parts.explainer.classes
    shown = misclassified_items(parts.explainer, sample, 7, True, "layer2", 0.5)
    assert len(shown) == 7
    for (picture, caption), item in zip(shown, sample.misclassified):
        assert picture.shape == (THUMB, THUMB, 3)
        assert caption.startswith(f"{names[item.label]} → {names[item.predicted]} (")
    assert len({names[item.label] for item in sample.misclassified[:7]}) == 7  # the classes take turns
    assert len(misclassified_items(parts.explainer, sample, len(sample.misclassified), False, "layer3", 0.5)) == \
        len(sample.misclassified)
    with pytest.raises(AppInputError, match=f"from 1 to {len(sample.misclassified)}"):
        misclassified_items(parts.explainer, sample, len(sample.misclassified) + 1, False, "layer3", 0.5)


def test_how_many_also_sets_how_many_grad_cam_maps_are_drawn_and_bad_values_are_a_message(parts, monkeypatch):
    explainer, sample = parts.explainer, parts.sample
    counted, real = [], type(explainer).maps
    monkeypatch.setattr(type(explainer), "maps",
                        lambda self, pixels, *rest: (counted.append(len(pixels)), real(self, pixels, *rest))[1])
    gallery, message = shown_misclassified(explainer, sample, 9, True, "layer3", 0.5)
    assert len(gallery) == 9 and counted == [9] and message == ""
    gallery, message = shown_misclassified(explainer, sample, 0, True, "layer3", 0.5)
    assert gallery == [] and f"the number of images must be a whole number from 1 to {len(sample.misclassified)}" in message


def test_on_the_official_images_the_app_agrees_with_predict_and_with_the_evaluation(parts):
    """Top-1 of the app, of ``predict`` on the same files, and of the evaluation that wrote the sample
    (``evaluate``'s code path over the whole test set) for all committed official test images."""
    sample = parts.sample
    items = sample.examples + sample.misclassified
    files = [str(sample.path(i)) for i in items]
    by_predict = [p.top[0][0] for p in predict_files(load_weights(), files, top=1)]
    by_app = [next(iter(call(parts, f, k=1, show_cam=False)[0])) for f in files]
    by_evaluation = [sample.classes[i.predicted] for i in items]
    assert by_app == by_predict == by_evaluation


def test_about_comes_from_the_committed_records(parts, tmp_path):
    import json

    from modular.tools.report import results_table

    head = json.loads(Path(RECORDS[0]).read_text())
    body = results_table(head).split("\n", 1)[1]  # the rows under the header the app names
    assert body in parts.about and f"{head['test_acc']:.2f}%" in parts.about
    assert f"LRMAX {head['lr_max']:.4g}" in parts.about and "over 3 seeds" in parts.about
    other = shutil.copy(parts.explainer.trained.source, tmp_path / "other.pt")
    with open(other, "ab") as f:
        f.write(b"\0")   # another file (sha256), the same model
    trained = dataclasses.replace(parts.explainer.trained, source=str(other))
    assert about(RECORDS, trained).startswith("No committed run record describes `other.pt`")


def test_the_about_tables_have_no_empty_header_row(parts):
    import re

    lines = parts.about.splitlines()
    headers = [lines[i - 1] for i, line in enumerate(lines) if re.fullmatch(r"\|(\s*-+\s*\|)+", line.strip())]
    assert len(headers) == 2, headers  # the Results and the Seeds tables
    for header in headers:
        assert all(cell.strip() for cell in header.strip().strip("|").split("|")), header


def test_one_lock_serialises_every_use_of_the_model(parts, example):
    """Forward passes from several threads never overlap (a pause inside the model makes an overlap
    certain without the lock)."""
    model = parts.explainer.trained.model
    inside, most, guard = [0], [0], threading.Lock()

    def enter(module, inputs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)

    def leave(module, inputs, output):
        with guard:
            inside[0] -= 1

    hooks = [model.prep.register_forward_pre_hook(enter), model.fc.register_forward_hook(leave)]
    try:
        with ThreadPoolExecutor(6) as pool:
            jobs = [pool.submit(call, parts, str(example), 3, False) for _ in range(4)]
            jobs += [pool.submit(misclassified_items, parts.explainer, parts.sample, 2, False, "layer3", 0.5) for _ in range(2)]
            assert all(job.result() for job in jobs)
    finally:
        for hook in hooks:
            hook.remove()
    assert most[0] == 1


# --------------------------------------------------------------------------------------------
# The app served in this process, called through gradio_client
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def test_the_app_binds_to_127_0_0_1_by_default(served):
    from modular.tools.cli_args import build_parser

    assert served[0].startswith("http://127.0.0.1:") and served[1].server_name == "127.0.0.1"
    assert build_parser().parse_args(["app"]).host == "127.0.0.1"


def test_upload_gives_a_label_with_k_entries_and_a_grad_cam_picture_of_the_promised_size(client, photo):
    from gradio_client import handle_file

    label, picture, note, message = client.predict(handle_file(str(photo)), 4, True, "layer1", PREDICTED, 0.6,
                                                   api_name="/classify")
    assert label["label"] == "cat" and len(label["confidences"]) == 4
    assert Image.open(picture).size == (PROMISED, PROMISED)
    assert "my cat.jpg" in note and "Layer1's residual output" in note and message == ""


def test_k_11_and_a_file_that_is_no_picture_are_answered_with_a_message_in_place_of_the_result(client, photo, tmp_path):
    from gradio_client import handle_file

    label, picture, note, message = client.predict(handle_file(str(photo)), 11, True, "layer3", PREDICTED, 0.5,
                                                   api_name="/classify")
    assert not label and picture is None and "top-k must be a whole number from 1 to 10 (got 11)" in message  # empty: {}
    (tmp_path / "letter.png").write_text("Dear network, ...")
    label, picture, note, message = client.predict(handle_file(str(tmp_path / "letter.png")), 3, True, "layer3",
                                                   PREDICTED, 0.5, api_name="/classify")
    assert not label and picture is None and "letter.png: not a readable image" in message
    assert "Traceback" not in message and "Error" not in message


def test_the_misclassified_gallery_through_the_api(client, parts):
    shown, message = client.predict(12, True, "layer3", 0.5, api_name="/misclassified")
    assert len(shown) == 12 and all(" → " in item["caption"] for item in shown) and message == ""
    assert Image.open(shown[0]["image"]).size == (THUMB, THUMB)


def test_concurrent_requests_to_both_events_all_succeed(client, photo):
    """Prediction and Grad-CAM from two events at once: without the lock the process crashes."""
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(photo)), 3, True, layer, PREDICTED, 0.5, api_name="/classify")
            for layer in LAYERS for _ in range(2)]
    jobs += [client.submit(6, True, "layer3", 0.5, api_name="/misclassified") for _ in range(3)]
    results = [job.result(timeout=300) for job in jobs]
    assert all(r[0]["label"] == "cat" for r in results[:6]) and all(len(r[0]) == 6 for r in results[6:])


def test_the_api_lists_the_two_endpoints_with_their_inputs(client):
    """gradio_client's view of the app: /classify and /misclassified with the parameters the page sends
    (the page's own bookkeeping, such as which upload a preview stands for, is not part of it)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/classify", "/misclassified"} <= set(endpoints)
    assert len(endpoints["/classify"]["parameters"]) == 6 and len(endpoints["/classify"]["returns"]) == 4
    assert len(endpoints["/misclassified"]["parameters"]) == 4 and len(endpoints["/misclassified"]["returns"]) == 2


# --------------------------------------------------------------------------------------------
# The commands: app, app-latency
# --------------------------------------------------------------------------------------------

def test_the_app_command_serves_on_127_0_0_1_until_ctrl_c_even_behind_a_proxy():
    """`python -m modular app` in a subprocess whose environment routes HTTP through a dead proxy
    (helpers.NO_NETWORK): the app's own check of its server must not go through it."""
    import signal
    import urllib.request

    from helpers import cli_env, finish, start_cli

    port = free_port()
    proc = start_cli(["app", "--port", port], env=cli_env())
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line and "Ctrl-C" in line, line + proc.stderr.read()  # where, how to stop
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        assert opener.open(f"http://127.0.0.1:{port}/", timeout=60).status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        done = finish(proc, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_no_gradio_or_a_busy_port_is_one_line_saying_what_to_do(monkeypatch, capsys):
    import sys

    from helpers import cli_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli_main(["app", "--port", port], capsys)
    assert code == 1 and err.startswith(f"error: cannot serve on 127.0.0.1:{port}")
    assert err.strip().endswith("pass another --port") and len(err.strip().splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "gradio", None)   # as if it were not installed
    code, out, err = cli_main(["app"], capsys)
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "pip install -r requirements-app.txt" in err  # the command that fixes it


def test_app_latency_writes_a_record_the_readme_section_is_made_from(tmp_path, capsys):
    import json

    from helpers import cli_main

    from modular.tools.report import update_readme

    output = tmp_path / "app-latency.json"
    code, out, err = cli_main(["app-latency", "--calls", 2, "--output", output], capsys)
    assert code == 0, err
    record = json.loads(output.read_text())
    for picture in ("example", "photo"):
        timing = record["app_latency"][picture]
        assert timing["calls"] == 2 and len(timing["seconds"]) == 2 and timing["first_s"] > 0
        assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    assert record["app_latency"]["photo"]["picture"].startswith("4032x3024 JPEG")
    from modular.tools.app_latency import summarise

    summary = summarise([9.0, 0.3, 0.1, 0.2, 0.4])   # the first call warms up: not counted
    assert (summary["first_s"], summary["calls"], summary["median_s"], summary["max_s"]) == (9.0, 4, 0.25, 0.4)
    assert len(record["load_average_before"]) == 3 and record["versions"]["gradio"] == gradio.__version__
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- app-latency:start -->\nold\n<!-- app-latency:end -->\nafter\n")
    assert update_readme([output], readme) == ["app-latency"]
    text = readme.read_text()
    assert f"median **{record['app_latency']['example']['median_s']:.3f} s**" in text and "old" not in text


def test_the_notebooks_last_cell_starts_the_app_only_when_asked_and_the_function_it_calls_serves(capsys):
    import json

    from helpers import ROOT

    from modular.tools.app import launch_in_notebook

    cells = json.loads((ROOT / "era_s10_cifar.ipynb").read_text())["cells"]
    last = "".join(cells[-1]["source"])
    assert last.startswith("START_APP = False") and "if START_APP and not QUICK:" in last and not cells[-1]["outputs"]
    demo = launch_in_notebook()
    try:
        assert demo.local_url.startswith("http://127.0.0.1:") and demo.share_url is None
    finally:
        demo.close()
