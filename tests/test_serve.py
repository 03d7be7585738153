"""serve.py (coco4/serving.py): the JSON API against predict.py's probabilities, every bad
request a 4xx JSON error with the server still serving, concurrent requests, Ctrl-C and
SIGTERM, and the upload page driven in a real headless Chromium."""
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from coco4 import Classifier
from coco4.serving import create_app

from conftest import REPO, read_csv, run_script


@pytest.fixture(scope="module")
def client(trained):
    return TestClient(create_app(Classifier.load(trained, device="cpu"), max_upload_mb=1))


@pytest.fixture(scope="module")
def expected(trained, demo_data, tmp_path_factory):
    """predict.py's rows for 4 val images, by file name: the reference."""
    images = sorted((demo_data / "coco" / "images" / "val2017").iterdir())[:4]
    out = tmp_path_factory.mktemp("served") / "rows.csv"
    ran = run_script("predict", *images, "--checkpoint", trained, "--out", out, "--device",
                     "cpu", "--workers", "0")
    assert ran.status == 0, ran.err
    return images, {row["path"].rsplit("/", 1)[-1]: row for row in read_csv(out)}


def assert_as_predict(prediction: dict, rows: dict):
    row = rows[prediction["file"]]
    assert prediction["label"] == row["class"]
    for name, p in prediction["probs"].items():
        assert p == pytest.approx(float(row[f"prob_{name}"]), abs=1e-6), name


def test_health_names_the_classes_and_the_input_size(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["classes"] == ["bird", "airplane", "train", "boat"]
    assert answer.json()["input_size"] == 32


def test_predict_gives_predict_pys_probabilities_for_each_file(client, expected):
    images, rows = expected
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["file"] for p in predictions] == [p.name for p in images]
    for prediction in predictions:
        assert_as_predict(prediction, rows)


def png_bytes(side: int) -> bytes:
    import io
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"files": [("file", ("notes.txt", b"not an image", "text/plain"))]}, 415,
     "notes.txt is not an image in a format this server reads (JPEG, PNG, GIF"),
    ({"files": [("other", ("a.png", png_bytes(8), "image/png"))]}, 400,
     "no image in the request: POST multipart fields named 'file'"),
    ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415,
     "POST images as multipart/form-data fields named 'file'"),
    ({"files": [("file", ("big.bin", os.urandom(2**20 + 2**17), "image/png"))]}, 413,
     "the request body is 1.1 MiB, over --max-upload-mb 1"),  # by its Content-Length
    ({"files": [("file", ("big.bin", os.urandom(2**20 + 2**14), "image/png"))]}, 413,
     "the files uploaded are over --max-upload-mb 1"),  # within the body's header allowance
    ({"content": (b"x" * 2**16 for _ in range(40)),  # 2.5 MiB in chunks, no Content-Length
      "headers": {"content-type": "multipart/form-data; boundary=b"}}, 413,
     "the request body is over --max-upload-mb 1"),
    ({"content": b"--b\r\nnot a multipart body", "headers": {
        "content-type": "multipart/form-data; boundary=b"}}, 400, ""),
    ({"files": [("file", ("page.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n",
                          "application/postscript"))]}, 415,
     "page.eps is not an image in a format this server reads (JPEG, PNG"),
    ({"files": [("file", ("bomb.png", png_bytes(100), "image/png"))]}, 413,
     "bomb.png: Image size (10000 pixels) exceeds limit"),
])
def test_a_bad_request_is_a_4xx_json_error_and_the_server_serves_on(client, monkeypatch,
                                                                    request_kwargs, status,
                                                                    message):
    # a decompression bomb, made small: PIL's pixel limit, the one predict.py keeps, lowered
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    answer = client.post("/predict", **request_kwargs)
    assert answer.status_code == status and message in answer.json()["error"], answer.text
    assert client.get("/health").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, tmp_path):
    """serve.py as a user starts it; returns (process, base URL) once /health answers."""
    port = free_port()
    # serve.py's own __main__, with the tests' tiny backbone registered
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "scripts" / "with_tiny.py"),
                             str(REPO / "serve.py"), "--checkpoint", str(checkpoint), "--device",
                             "cpu", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve.py did not answer within 30 s")


def post_image(url: str, path) -> dict:
    boundary = "coco4boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename="
            f"\"{path.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() \
        + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/predict", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["predictions"][0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_concurrent_requests_are_answered_right_and_a_signal_stops_it_cleanly(
        trained, expected, tmp_path, signum):
    images, rows = expected
    proc, url = start_server(trained, tmp_path)
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:  # 24 at once (#33)
            answers = list(pool.map(lambda p: post_image(url, p), images * 6))
        for answer in answers:
            assert_as_predict(answer, rows)
    finally:
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Uvicorn running on http://127.0.0.1:" in out and out.rstrip().endswith("stopped")
    assert "Traceback" not in out


def chromium():
    """The system's Chromium and its driver (Debian: chromium, chromium-driver), or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs the system's chromium and chromedriver "
                    "(.ci/run installs them: apt-get install chromium chromium-driver)")
def test_the_page_shows_each_photos_probabilities_in_a_real_browser(trained, expected,
                                                                    tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images, rows = expected
    (tmp_path / "notes.jpg").write_bytes(b"not an image")
    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    proc, url = start_server(trained, tmp_path)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(
            lambda d: "bird, airplane, train, boat" in d.find_element(By.ID, "model").text)
        chooser = driver.find_element(By.ID, "files")
        chooser.send_keys("\n".join(str(p) for p in [*images[:2], tmp_path / "notes.jpg"]))
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done, .result.failed")) == 3)
        for card in driver.find_elements(By.CSS_SELECTOR, ".result.done"):
            name = card.get_attribute("data-file")
            bars = card.find_elements(By.CSS_SELECTOR, ".bar")
            probs = {b.get_attribute("data-class"): float(b.get_attribute("data-prob"))
                     for b in bars}
            assert_as_predict({"file": name, "label": max(probs, key=probs.get),
                               "probs": probs}, rows)
            assert card.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0"
        failed = driver.find_element(By.CSS_SELECTOR, ".result.failed")
        assert "notes.jpg is not an image" in failed.text
    finally:
        driver.quit()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_a_port_in_use_is_one_line(trained):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = run_script("serve", "--checkpoint", trained, "--device", "cpu", "--port", port)
    assert ran.status == 2 and ran.error.startswith(f"could not listen on 127.0.0.1:{port}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_curl_commands_docs_serve_md_shows_work(trained, expected, tmp_path):
    """Each `curl` line of the page's first code block, run as written against a real server
    (its photos: two val images under the names the page uses)."""
    images, rows = expected
    page = (REPO / "docs" / "serve.md").read_text(encoding="utf-8")
    block = page.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()
                if line.startswith("curl")]
    assert len(commands) == 2
    for name, image in zip(("photo.jpg", "other.jpg"), images):
        shutil.copy(image, tmp_path / name)
    proc, url = start_server(trained, tmp_path)
    try:
        answers = [json.loads(subprocess.run(command.replace("http://127.0.0.1:8000", url),
                                             shell=True, cwd=tmp_path, capture_output=True,
                                             text=True, check=True).stdout)
                   for command in commands]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    names = {"photo.jpg": images[0].name, "other.jpg": images[1].name}
    predictions = answers[0]["predictions"]
    assert [p["file"] for p in predictions] == ["photo.jpg", "other.jpg"]
    for prediction in predictions:
        assert_as_predict({**prediction, "file": names[prediction["file"]]}, rows)
    assert answers[1]["classes"] == ["bird", "airplane", "train", "boat"]
