"""`genpercept demo` in a real browser: the command serves the page on a free port with tiny checkpoints and
headless Chromium (Selenium, the system's chromium + chromedriver) uploads, predicts, downloads and compares
with `genpercept predict`. Needs the demo extra (`pip install -e ".[test,demo]"`) and the browser
(`.ci/run` installs both); without them these tests fail, they are not skipped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TIMEOUT = 90  # seconds an explicit wait may take: a busy 2-core machine loads torch and gradio slowly
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "400"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, checkpoint folders, the server's temporary folder, the server process): `genpercept demo` with
    a tiny depth and a tiny normal model on a free port, until the module's tests are done."""
    from tiny_models import write_checkpoint_root

    root = write_checkpoint_root(tmp_path_factory.mktemp("ck"), tasks=("depth", "normal"))
    depth, normal = root / "unet_depth_v2", root / "unet_normal_v2"
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"  # a file, not a pipe: a full pipe would block the server
    sink = log.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "genpercept_cli", "demo", "-c", str(depth), "-c", str(normal), "--port", str(port)],
        stdout=sink, stderr=subprocess.STDOUT, env=ENV,
    )
    deadline = time.monotonic() + TIMEOUT
    while not (lines := [x for x in log.read_text().splitlines() if x.startswith("genpercept demo: http")]):
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)  # polling the log for the line the command prints once the page is served
    assert lines[0].startswith(f"genpercept demo: http://127.0.0.1:{port}/"), lines
    temp = Path(lines[0].split("files in ")[1].split(",")[0])
    assert temp.is_dir()
    yield f"http://127.0.0.1:{port}/", (depth, normal), temp, server
    if server.poll() is None:  # a test failed before the one that stops it
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    sink.close()


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _open(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, TIMEOUT).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image-run")))


def _predict(driver, image: Path, expect: str) -> str:
    """Upload `image` on the Image tab, press Predict, wait until the status line holds `expect`; returns it."""
    from selenium.webdriver.common.by import By

    before = driver.find_element(By.CSS_SELECTOR, "#image-status").text
    _upload(driver, image)
    driver.find_element(By.CSS_SELECTOR, "#image-run").click()
    return _wait_status(driver, expect, before)


def _upload(driver, image: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if _file_rows(driver, "#image-upload"):  # an earlier upload: clear it, and the file input comes back
        driver.find_element(By.CSS_SELECTOR, "#image-upload button[aria-label=Clear]").click()
    field = WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#image-upload input[type=file]"))[0]
    field.send_keys(str(image))
    WebDriverWait(driver, TIMEOUT).until(lambda d: _file_names(d, "#image-upload") == [image.name])


def _wait_status(driver, expect: str, before: str = "") -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def changed(d):
        text = d.find_element(By.CSS_SELECTOR, "#image-status").text
        return text if text != before and expect in text else False

    return WebDriverWait(driver, TIMEOUT).until(changed)


def _file_rows(driver, css: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f"{css} tr.file")


def _file_names(driver, css: str) -> list[str]:
    """The names a file component lists (Gradio splits each into stem and suffix: read the row's label)."""
    from selenium.webdriver.common.by import By

    return [row.find_element(By.CSS_SELECTOR, "td.filename").get_attribute("aria-label")
            for row in _file_rows(driver, css)]


def _download(driver, name: str) -> bytes:
    """The bytes behind the page's download link of the file `name` on the Image tab."""
    from selenium.webdriver.common.by import By

    rows = [row for row in _file_rows(driver, "#image-files")
            if row.find_element(By.CSS_SELECTOR, "td.filename").get_attribute("aria-label") == name]
    assert rows, _file_names(driver, "#image-files")
    with urllib.request.urlopen(rows[0].find_element(By.CSS_SELECTOR, "a").get_attribute("href")) as response:
        return response.read()


def _choose_model(driver, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.CSS_SELECTOR, "#image-model input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(name)
    option = WebDriverWait(driver, TIMEOUT).until(
        lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "#image-model li, ul.options li")
                        if o.text.strip() == name), False))
    option.click()
    WebDriverWait(driver, TIMEOUT).until(lambda d: box.get_attribute("value") == name)


def _photo(folder: Path, name: str, seed: int, size=(40, 56)) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = folder / name
    Image.fromarray(rgb).save(path)
    return path


def test_upload_predict_download_equals_predict_then_switch_model(served, browser, tmp_path):
    url, (depth, normal), _, _ = served
    image = _photo(tmp_path, "room.png", 0)
    _open(browser, url)
    status = _predict(browser, image, "depth by")
    assert status.startswith("room.png: depth by")
    npy = _download(browser, "room_pred.npy")
    png16 = _download(browser, "room_pred.png")

    out = tmp_path / "cli"  # a process like the server's: fp32 results move by an ulp with the thread count
    subprocess.run([sys.executable, "-m", "genpercept_cli", "predict", str(image), "-c", str(depth), "-o", str(out)],
                   env=ENV, check=True, capture_output=True)
    assert npy == (out / "room_pred.npy").read_bytes()  # the same bytes, not only the same values
    assert png16 == (out / "room_pred.png").read_bytes()
    assert np.load(out / "room_pred.npy").shape == (40, 56)

    _choose_model(browser, str(normal))
    status = _predict(browser, image, "normal by")
    normals = np.load(__import__("io").BytesIO(_download(browser, "room_pred.npy")))
    assert normals.shape == (40, 56, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)  # unit vectors: the normal model ran


def test_a_text_file_gets_one_sentence_and_no_files(served, browser, tmp_path):
    url = served[0]
    notes = tmp_path / "_notes_.txt"  # shown as named, not read as Markdown (italic "notes")
    notes.write_text("not an image\n")
    _open(browser, url)
    status = _predict(browser, notes, "notes")
    assert status == "_notes_.txt: not an image file PIL can read."
    assert "Traceback" not in browser.page_source
    assert _file_names(browser, "#image-files") == []


def test_the_server_serves_no_file_outside_its_results(served):
    url, (depth, _), _, _ = served
    for path in (depth / "config.json", Path("/etc/passwd")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/file={path}")
        assert refused.value.code == 403


def test_two_sessions_at_once_both_get_their_results(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url = served[0]
    second = _browser()
    try:
        drivers = {"left.png": browser, "right.png": second}
        for seed, (name, driver) in enumerate(drivers.items()):
            _open(driver, url)
            _upload(driver, _photo(tmp_path, name, seed + 5))
        before = {name: d.find_element(By.CSS_SELECTOR, "#image-status").text for name, d in drivers.items()}
        for driver in drivers.values():  # both requests are in the queue before the first is done
            driver.find_element(By.CSS_SELECTOR, "#image-run").click()
        for name, driver in drivers.items():
            assert _wait_status(driver, f"{name}: depth by", before[name])
            stem = name.removesuffix(".png")
            files = [f"{stem}_pred.npy", f"{stem}_pred.png", f"{stem}_colored.png"]
            assert _file_names(driver, "#image-files") == files
            assert np.load(__import__("io").BytesIO(_download(driver, f"{stem}_pred.npy"))).shape == (40, 56)
    finally:
        second.quit()


def test_stopping_removes_the_temporary_folder(served):
    _, _, temp, server = served
    assert any((temp / "requests").iterdir())  # the earlier tests' files were there
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    assert not temp.exists()
