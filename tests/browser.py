"""Open an HTML report in headless Chromium and say what a person would see wrong with it.

    from browser import check_report, require_browser

    def test_my_report(tmp_path):
        require_browser()                      # skip (or, under INTRUDIM_REQUIRE_BROWSER, fail) without Chromium
        path = write_my_report(tmp_path)
        page = check_report(path, required_selectors=["#verdict", "table.claims"])
        page.assert_ok()                       # every problem in one AssertionError
        assert len(page.images) == 4           # the checks pass vacuously on a page without figures
        page = check_report(path, text_of=["h3"])   # also what a person reads: the visible text of elements
        assert "Intruders per layer" in page.texts["h3"]

What is checked (issue 14, "The report, as a person sees it"):
- every <img> finished loading with naturalWidth > 0 and is not blank (all its pixels one colour): drawn to a
  canvas in the page, or, when Chrome taints the canvas (images from file:// URLs, e.g. ``figures/x.png``
  beside the report), read from disk with PIL;
- the browser console has no error (level SEVERE: uncaught exceptions, resources that failed to load);
- each required CSS selector matches an element that is displayed.

Chromium and its driver come from Debian (``apt-get install chromium chromium-driver``; ``.ci/run`` does it)
and selenium from the dev extra. Override the binaries with ``INTRUDIM_CHROMIUM`` / ``INTRUDIM_CHROMEDRIVER``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

REQUIRE_ENV = "INTRUDIM_REQUIRE_BROWSER"
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_INSTALL_HINT = "install Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver)"
_TIMEOUT_S = 30

# Waits for every <img> (lazy ones are made eager), then reports, per image, whether it loaded and whether all
# of its pixels are one colour. A canvas tainted by a cross-origin (file://) image throws on getImageData: the
# image is then marked tainted and checked from disk by Python.
_IMAGES_JS = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
for (const img of images) { if (img.loading === 'lazy') img.loading = 'eager'; }
const settled = images.map(img => img.complete ? Promise.resolve() : new Promise(resolve => {
  img.addEventListener('load', resolve, {once: true});
  img.addEventListener('error', resolve, {once: true});
}));
Promise.all(settled).then(() => done(images.map(img => {
  const info = {src: img.currentSrc || img.getAttribute('src') || '', alt: img.alt || '', complete: img.complete,
                width: img.naturalWidth, height: img.naturalHeight, uniform: null, tainted: false};
  if (img.complete && img.naturalWidth > 0) {
    try {
      const canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      const context = canvas.getContext('2d', {willReadFrequently: true});
      context.drawImage(img, 0, 0);
      const pixels = new Uint32Array(context.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
      let uniform = true;
      for (let i = 1; i < pixels.length; i++) { if (pixels[i] !== pixels[0]) { uniform = false; break; } }
      info.uniform = uniform;
    } catch (error) { info.tainted = true; }
  }
  return info;
})));
"""


@dataclass(frozen=True)
class ImageCheck:
    """One <img> as the browser rendered it. ``blank`` is None when its pixels could not be read; a data: URI
    ``src`` is kept as its head and length (the full URI would flood an assertion message)."""

    src: str
    alt: str
    loaded: bool
    natural_width: int
    natural_height: int
    blank: bool | None
    pixels_from: str  # "canvas", "file", or why the pixels could not be read

    def describe(self) -> str:
        return f"<img alt={self.alt!r} src={self.src!r}>"

    def problem(self) -> str | None:
        if not self.loaded or self.natural_width <= 0:
            return f"image did not load (naturalWidth {self.natural_width}): {self.describe()}"
        if self.blank is None:
            return f"image pixels could not be checked ({self.pixels_from}): {self.describe()}"
        if self.blank:
            return (f"image is blank (all {self.natural_width}×{self.natural_height} pixels one colour): "
                    f"{self.describe()}")  # fmt: skip
        return None


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw on one page; :meth:`assert_ok` fails on any problem."""

    path: Path
    title: str
    images: tuple[ImageCheck, ...]
    console_errors: tuple[str, ...]
    missing_selectors: tuple[str, ...]  # matched no element
    hidden_selectors: tuple[str, ...]  # matched elements, none of them displayed
    seconds: float = field(default=0.0, compare=False)
    # For each selector asked for in ``text_of``: the text each matching element shows, in page order ("" when
    # the element is not displayed), as the browser renders it (Selenium's WebElement.text).
    texts: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def problems(self) -> list[str]:
        out = [p for p in (image.problem() for image in self.images) if p]
        out += [f"console error: {message}" for message in self.console_errors]
        out += [f"required element missing: {selector!r}" for selector in self.missing_selectors]
        out += [f"required element not visible: {selector!r}" for selector in self.hidden_selectors]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def assert_ok(self) -> None:
        problems = self.problems
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise AssertionError(f"{self.path} has {len(problems)} problem(s) in headless Chromium:\n{lines}")


def _browser_binary() -> str | None:
    if explicit := os.environ.get("INTRUDIM_CHROMIUM"):
        return explicit if Path(explicit).is_file() else None
    return next((found for name in _BROWSER_NAMES if (found := shutil.which(name))), None)


def _driver_binary() -> str | None:
    if explicit := os.environ.get("INTRUDIM_CHROMEDRIVER"):
        return explicit if Path(explicit).is_file() else None
    return shutil.which("chromedriver")


def browser_required() -> bool:
    """Whether $INTRUDIM_REQUIRE_BROWSER asks for a browser (any value but empty or 0; .ci/run sets 1)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def browser_available() -> str | None:
    """None when headless Chromium can be driven here; otherwise the reason it cannot, in words."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for variable, finder in (
        ("INTRUDIM_CHROMIUM", _browser_binary),
        ("INTRUDIM_CHROMEDRIVER", _driver_binary),
    ):
        if os.environ.get(variable) and finder() is None:
            return f"${variable} is {os.environ[variable]!r}, which is not a file"
    if _browser_binary() is None:
        return (
            f"no Chromium browser found ({', '.join(_BROWSER_NAMES)} or $INTRUDIM_CHROMIUM): {_INSTALL_HINT}"
        )
    if _driver_binary() is None:
        return f"no chromedriver found on PATH or $INTRUDIM_CHROMEDRIVER: {_INSTALL_HINT}"
    return None


def require_browser() -> None:
    """Skip the calling test when Chromium is absent, with the reason; fail instead when $INTRUDIM_REQUIRE_BROWSER
    is set (CI sets it, so a browser test can never be skipped there)."""
    import pytest

    reason = browser_available()
    if reason is None:
        return
    if browser_required():
        pytest.fail(f"{REQUIRE_ENV} is set but the browser cannot run: {reason}", pytrace=False)
    pytest.skip(f"headless Chromium not available: {reason}")


def _new_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _browser_binary() or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1024", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=_driver_binary()), options=options)
    driver.set_page_load_timeout(_TIMEOUT_S)
    driver.set_script_timeout(_TIMEOUT_S)
    return driver


def _file_pixels_blank(src: str) -> tuple[bool | None, str]:
    """Whether an image given by a file:// URL is one colour, read from disk with PIL."""
    from PIL import Image, UnidentifiedImageError

    parsed = urlparse(src)
    if parsed.scheme != "file":
        return None, f"canvas tainted and {parsed.scheme or 'relative'} URLs cannot be read from disk"
    path = Path(url2pathname(unquote(parsed.path)))
    try:
        with Image.open(path) as image:
            extrema = image.convert("RGBA").getextrema()
    except (OSError, UnidentifiedImageError) as error:
        return None, f"canvas tainted and PIL cannot read {path}: {error}"
    return all(low == high for low, high in extrema), "file"


def _image_check(info: dict) -> ImageCheck:
    loaded = bool(info["complete"]) and int(info["width"]) > 0
    if not loaded:
        blank, pixels_from = None, "not loaded"
    elif info["tainted"]:
        blank, pixels_from = _file_pixels_blank(info["src"])
    else:
        blank, pixels_from = bool(info["uniform"]), "canvas"
    src = info["src"]
    if src.startswith("data:"):
        src = f"{src[:30]}… ({len(src)} characters)"
    return ImageCheck(src=src, alt=info["alt"], loaded=loaded, natural_width=int(info["width"]),
                      natural_height=int(info["height"]), blank=blank, pixels_from=pixels_from)  # fmt: skip


def check_report(
    path: str | Path, *, required_selectors: Sequence[str] = (), text_of: Sequence[str] = ()
) -> PageCheck:
    """Open ``path`` in headless Chromium, wait for the page and its images, and collect every problem a reader
    would see: images that did not load or are blank, console errors, required elements missing or hidden.
    For each CSS selector in ``text_of``, the visible text of its elements is kept in ``PageCheck.texts``.

    Raises RuntimeError (with the reason) when no browser is available; tests call :func:`require_browser` first.
    """
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    reason = browser_available()
    if reason is not None:
        raise RuntimeError(f"cannot check {path} in a browser: {reason}")
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no report to open at {path}")
    start = time.perf_counter()
    driver = _new_driver()
    try:
        driver.get(path.as_uri())
        WebDriverWait(driver, _TIMEOUT_S).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        images = tuple(_image_check(info) for info in driver.execute_async_script(_IMAGES_JS))
        missing, hidden = [], []
        for selector in required_selectors:
            elements = driver.find_elements(By.CSS_SELECTOR, selector)
            if not elements:
                missing.append(selector)
            elif not any(element.is_displayed() for element in elements):
                hidden.append(selector)
        errors = tuple(
            entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"
        )
        texts = {selector: tuple(element.text for element in driver.find_elements(By.CSS_SELECTOR, selector))
                 for selector in text_of}  # fmt: skip
        title = driver.title
    finally:
        driver.quit()
    return PageCheck(path=path, title=title, images=images, console_errors=errors, missing_selectors=tuple(missing),
                     hidden_selectors=tuple(hidden), seconds=time.perf_counter() - start, texts=texts)  # fmt: skip
