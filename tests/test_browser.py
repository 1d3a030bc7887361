"""End to end: `stylekit serve` in a real headless Chromium, driven by Playwright."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from stylekit.cli import serve_command
from stylekit.data import load_photos

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it and runs this test", allow_module_level=True)


WAIT_MS = 180_000  # each wait in the page: generous, a slow or busy CPU must not fail the test; a working page is far faster


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(trained_outputs):
    port = _free_port()
    process = subprocess.Popen(serve_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + WAIT_MS / 1000
    while time.time() < deadline:  # wait for the port only: each page request starts a kernel that runs the whole notebook
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_upload_slide_generate_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "photo.png"
    load_photos(split="held_out")[1].image.save(photo)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        # offline, requests to CDNs (the voila page links some) can hang and stall the page: anything not local fails at once
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server) else route.abort())
        page.goto(server, timeout=300_000, wait_until="domcontentloaded")
        generate = page.locator(".stylekit-generate")
        generate.wait_for(timeout=300_000)
        upload = page.locator("button", has_text="Upload photo")
        with page.expect_file_chooser() as chooser:  # the upload widget opens a file dialog
            upload.click()
        chooser.value.set_files(str(photo))
        page.locator("button", has_text="Upload photo (1)").wait_for(timeout=WAIT_MS)
        readout = page.locator(".stylekit-content .widget-readout")
        before_value = readout.inner_text()
        page.locator(".stylekit-content .noUi-handle").press("ArrowLeft")
        page.wait_for_function(
            "v => document.querySelector('.stylekit-content .widget-readout').innerText !== v", arg=before_value, timeout=WAIT_MS
        )
        empty = "() => document.querySelector('img.stylekit-after').naturalWidth === 0"
        assert page.evaluate(empty)  # nothing generated yet
        generate.click()
        page.wait_for_function(
            "() => { const i = document.querySelector('img.stylekit-after'); return i && i.src && i.naturalWidth > 0; }", timeout=WAIT_MS
        )
        browser.close()
