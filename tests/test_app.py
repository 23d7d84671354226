"""The app (``python -m modular app``) with the shipped weights, the committed sample and records: its
handlers as functions, the app served in this process on a free port and called through gradio_client,
and a real browser (Debian's chromium driven by Playwright). No connection may leave 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
from PIL import Image

from modular.trained.app import RECORDS, assemble, build_app, free_port, launch
from modular.trained.gradcam import LAYERS
from modular.trained.handlers import DISPLAY, PREDICTED, THUMB, AppInputError, about, classify, misclassified
from modular.trained.predict import predict_files
from modular.trained.weights import load_weights

gradio = pytest.importorskip("gradio")  # the app's own requirement (requirements-app.txt); CI installs it
LOOPBACK = ("127.0.0.1", "::1", "localhost")
PROMISED = 256  # the Grad-CAM picture's side in pixels: large enough to see, 8 screen pixels per input pixel


@pytest.fixture(scope="module", autouse=True)
def only_loopback():
    """Every connection and name lookup made from this process during these tests must stay on this
    computer: others are refused and listed, and the list must be empty at the end."""
    attempts: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(f"connect {address}")
            raise OSError(f"test: no connection may leave 127.0.0.1 ({address})")
        return connect(sock, address)

    def guarded_lookup(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            attempts.append(f"lookup {host}")
            raise socket.gaierror(f"test: no name lookup outside this computer ({host})")
        return lookup(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_lookup
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, lookup
    assert not attempts, attempts


@pytest.fixture(scope="module")
def parts():
    return assemble()


@pytest.fixture(scope="module")
def example(parts) -> Path:
    """The sample's cat, a 32x32 PNG."""
    sample = parts.sample
    return sample.path(next(i for i in sample.examples if sample.classes[i.label] == "cat"))


@pytest.fixture(scope="module")
def photo(example, tmp_path_factory) -> Path:
    """The cat as a 300x200 JPEG, written now."""
    path = tmp_path_factory.mktemp("upload") / "my cat.jpg"
    Image.open(example).convert("RGB").resize((300, 200), Image.Resampling.BICUBIC).save(path, quality=92)
    return path


def call(parts, upload, k=3, show_cam=True, layer="layer3", target=PREDICTED, opacity=0.5):
    return classify(parts.explainer, upload, k, show_cam, layer, target, opacity)


# --------------------------------------------------------------------------------------------
# The handlers as functions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 10])
def test_classify_gives_k_classes_and_a_large_grad_cam_picture(parts, photo, k):
    top, picture, note = call(parts, str(photo), k=k)
    assert len(top) == k and list(top.values()) == sorted(top.values(), reverse=True) and sum(top.values()) <= 1.0001
    assert next(iter(top)) == "cat"
    assert picture.shape == (DISPLAY, DISPLAY, 3) and picture.dtype == np.uint8
    assert "centre-cropped from 300x200 to 200x200" in note and "for **cat** (the predicted class)" in note


def test_bad_input_is_a_message_not_a_traceback(parts, photo, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    cases = [({"k": 0}, "top-k must be a whole number from 1 to 10"), ({"k": 11}, "(got 11)"), ({"k": 2.5}, "(got 2.5)"),
             ({"layer": "layer4"}, "layer must be one of layer1, layer2, layer3"), ({"opacity": 1.5}, "opacity must be"),
             ({"target": "unicorn"}, "Grad-CAM class must be"), ({"upload": None}, "upload a picture or pick one"),
             ({"upload": {"path": str(tmp_path / "notes.png"), "orig_name": "holiday.png"}}, "holiday.png: not a readable image")]
    for change, needle in cases:
        arguments = {"upload": str(photo), **change}
        with pytest.raises(AppInputError) as caught:
            call(parts, **arguments)
        assert needle in str(caught.value) and "\n" not in str(caught.value), (change, caught.value)


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


def test_the_misclassified_gallery_captions_true_and_predicted_class(parts):
    sample, names = parts.sample, parts.explainer.classes
    shown = misclassified(parts.explainer, sample, 7, True, "layer2", 0.5)
    assert len(shown) == 7
    for (picture, caption), item in zip(shown, sample.misclassified):
        assert picture.shape == (THUMB, THUMB, 3)
        assert caption.startswith(f"{names[item.label]} → {names[item.predicted]} (")
    assert len({names[item.label] for item in sample.misclassified[:7]}) == 7  # the classes take turns
    assert len(misclassified(parts.explainer, sample, len(sample.misclassified), False, "layer3", 0.5)) == \
        len(sample.misclassified)
    with pytest.raises(AppInputError, match=f"from 1 to {len(sample.misclassified)}"):
        misclassified(parts.explainer, sample, len(sample.misclassified) + 1, False, "layer3", 0.5)


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

    from modular.report import results_table

    head = json.loads(Path(RECORDS[0]).read_text())
    assert results_table(head) in parts.about and f"{head['test_acc']:.2f}%" in parts.about
    assert f"LRMAX {head['lr_max']:.4g}" in parts.about and "over 3 seeds" in parts.about
    other = shutil.copy(parts.explainer.trained.source, tmp_path / "other.pt")
    with open(other, "ab") as f:
        f.write(b"\0")   # another file (sha256), the same model
    trained = dataclasses.replace(parts.explainer.trained, source=str(other))
    assert about(RECORDS, trained).startswith("No committed run record describes `other.pt`")


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
            jobs += [pool.submit(misclassified, parts.explainer, parts.sample, 2, False, "layer3", 0.5) for _ in range(2)]
            assert all(job.result() for job in jobs)
    finally:
        for hook in hooks:
            hook.remove()
    assert most[0] == 1


# --------------------------------------------------------------------------------------------
# The app served in this process, called through gradio_client
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(parts):
    demo = build_app(parts)
    url = launch(demo, parts, port=free_port())
    try:
        yield url, demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def test_the_app_binds_to_127_0_0_1_by_default(served):
    from modular.cli import build_parser

    assert served[0].startswith("http://127.0.0.1:") and served[1].server_name == "127.0.0.1"
    assert build_parser().parse_args(["app"]).host == "127.0.0.1"


def test_upload_gives_a_label_with_k_entries_and_a_grad_cam_picture_of_the_promised_size(client, photo):
    from gradio_client import handle_file

    label, picture, note = client.predict(handle_file(str(photo)), 4, True, "layer1", PREDICTED, 0.6, api_name="/classify")
    assert label["label"] == "cat" and len(label["confidences"]) == 4
    assert Image.open(picture).size == (PROMISED, PROMISED)
    assert "my cat.jpg" in note and "Layer1's residual output" in note


def test_k_11_and_a_file_that_is_no_picture_are_refused_with_a_message(client, photo, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="top-k must be a whole number from 1 to 10 \\(got 11\\)"):
        client.predict(handle_file(str(photo)), 11, True, "layer3", PREDICTED, 0.5, api_name="/classify")
    (tmp_path / "letter.png").write_text("Dear network, ...")
    with pytest.raises(AppError, match="letter.png: not a readable image") as caught:
        client.predict(handle_file(str(tmp_path / "letter.png")), 3, True, "layer3", PREDICTED, 0.5, api_name="/classify")
    assert "Traceback" not in str(caught.value)


def test_the_misclassified_gallery_through_the_api(client, parts):
    shown = client.predict(12, True, "layer3", 0.5, api_name="/misclassified")
    assert len(shown) == 12 and all(" → " in item["caption"] for item in shown)
    assert Image.open(shown[0]["image"]).size == (THUMB, THUMB)


def test_concurrent_requests_to_both_events_all_succeed(client, photo):
    """Prediction and Grad-CAM from two events at once: without the lock the process crashes."""
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(photo)), 3, True, layer, PREDICTED, 0.5, api_name="/classify")
            for layer in LAYERS for _ in range(2)]
    jobs += [client.submit(6, True, "layer3", 0.5, api_name="/misclassified") for _ in range(3)]
    results = [job.result(timeout=300) for job in jobs]
    assert all(r[0]["label"] == "cat" for r in results[:6]) and all(len(r) == 6 for r in results[6:])


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser_page():
    """A chromium page (Debian's package driven by Playwright; never ``playwright install``). Outside CI a
    missing browser skips; under CI=true it fails."""
    if CHROMIUM is None or importlib_missing("playwright"):
        message = "chromium (apt-get install chromium) and playwright (requirements-dev.txt) are needed for the browser test"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        yield page
        browser.close()


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_in_a_browser_upload_classify_and_browse_the_misclassified_images(browser_page, served, photo, tmp_path):
    """Upload, classify, wait until the label and the Grad-CAM picture have loaded; open the
    misclassified tab, wait until every picture has loaded; screenshots (ERA_APP_SCREENSHOT: where to
    save the first too, e.g. images/app.png). Requests that would leave 127.0.0.1 are blocked and fail it."""
    page, (url, _) = browser_page, served
    outside = []

    def only_local(route):
        if route.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", only_local)
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(photo))
    page.locator("#upload img").first.wait_for()
    page.locator("#classify").click()
    page.locator("#top-classes").get_by_text("cat").first.wait_for(timeout=60_000)
    page.wait_for_function(f"""() => {{ const img = document.querySelector('#gradcam img');
        return img && img.complete && img.naturalWidth === {PROMISED}; }}""", timeout=60_000)
    first = tmp_path / "app.png"
    page.screenshot(path=str(first), full_page=True)
    if os.environ.get("ERA_APP_SCREENSHOT"):
        shutil.copy(first, os.environ["ERA_APP_SCREENSHOT"])

    page.get_by_role("tab", name="Misclassified test images").click()
    page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('#misclassified img')];
        return imgs.length >= 20 && imgs.every(img => img.complete && img.naturalWidth > 0); }""", timeout=60_000)
    assert " → " in page.locator("#misclassified").inner_text()
    page.screenshot(path=str(tmp_path / "misclassified.png"), full_page=True)
    page.get_by_role("tab", name="About the network").click()
    assert "Test accuracy at epoch 24" in page.locator("#about").inner_text()
    assert not outside, outside


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
        assert line.strip() == f"the app is at http://127.0.0.1:{port}/ (Ctrl-C stops it)", line + proc.stderr.read()
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
    assert code == 1 and err.strip() == "error: the app needs Gradio: pip install -r requirements-app.txt"


def test_app_latency_writes_a_record_the_readme_section_is_made_from(tmp_path, capsys):
    import json

    from helpers import cli_main

    from modular.report import update_readme

    output = tmp_path / "app-latency.json"
    code, out, err = cli_main(["app-latency", "--calls", 2, "--output", output], capsys)
    assert code == 0, err
    record = json.loads(output.read_text())
    for picture in ("example", "photo"):
        timing = record["app_latency"][picture]
        assert timing["calls"] == 2 and len(timing["seconds"]) == 2 and timing["first_s"] > 0
        assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    assert record["app_latency"]["photo"]["picture"].startswith("4032x3024 JPEG")
    from modular.trained.latency import summarise

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

    from modular.trained.app import launch_in_notebook

    cells = json.loads((ROOT / "era_s10_cifar.ipynb").read_text())["cells"]
    last = "".join(cells[-1]["source"])
    assert last.startswith("START_APP = False") and "if START_APP and not QUICK:" in last and not cells[-1]["outputs"]
    demo = launch_in_notebook()
    try:
        assert demo.local_url.startswith("http://127.0.0.1:") and demo.share_url is None
    finally:
        demo.close()
