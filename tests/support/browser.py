"""A real headless Chromium (Debian's chromium and chromium-driver) driven by Selenium,
and screenshots of pages at desktop and phone widths."""

import os
import pathlib
import re
import shutil
import tempfile

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
DESKTOP = (1280, 900)
PHONE = (390, 844)
MAX_SHOT_HEIGHT = 4000


def screenshots_dir() -> pathlib.Path:
    """Where screenshots go: $INFEREGATOR_SCREENSHOTS, else test-artifacts/screenshots."""
    path = pathlib.Path(os.environ.get("INFEREGATOR_SCREENSHOTS")
                        or ROOT / "test-artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Browser:
    """One headless Chromium with a fresh profile; ``driver`` is the Selenium WebDriver."""

    def __init__(self, size=DESKTOP, timeout: float = 20.0):
        for program in (CHROMIUM, CHROMEDRIVER):
            if not os.access(program, os.X_OK):
                raise RuntimeError(f"{program} is missing: the browser tests need Debian's "
                                   "chromium and chromium-driver (see the README)")
        self.profile = tempfile.mkdtemp(prefix="inferegator-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-extensions", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--user-data-dir={self.profile}",
                    f"--window-size={size[0]},{size[1]}"):
            options.add_argument(arg)
        self.timeout = timeout
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(timeout)
        self.set_size(*size)

    # -- driving --------------------------------------------------------------------------

    def get(self, url: str) -> None:
        self.driver.get(url)

    def wait(self, condition, timeout: float | None = None):
        """Wait for a WebDriverWait condition (a callable of the driver); its value."""
        return WebDriverWait(self.driver, timeout or self.timeout).until(condition)

    def find(self, css: str):
        """The element matching css, once it is in the page."""
        return self.wait(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def find_all(self, css: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def fill(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def submit(self, form_css: str = "main form") -> None:
        """Click the submit button of a form and wait until the next page has loaded."""
        self.click_and_load(self.find(f"{form_css} button[type=submit]"))

    def click_and_load(self, element) -> None:
        """Click an element (or the one matching a CSS selector) that leads to another page,
        and wait until that page has loaded."""
        if isinstance(element, str):
            element = self.find(element)
        # A mark on this page's window object: the next page's window has none. (Waiting for
        # the old <html> to go stale races with chromedriver's own errors mid-navigation.)
        self.driver.execute_script("window.inferegatorOldPage = true")
        element.click()
        WebDriverWait(self.driver, self.timeout, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script("return !window.inferegatorOldPage && "
                                       "document.readyState === 'complete'"),
            "the next page did not load")

    @property
    def path(self) -> str:
        return self.driver.execute_script("return location.pathname + location.search")

    def text(self, css: str) -> str:
        return self.find(css).text

    # -- sizes and screenshots ---------------------------------------------------------------

    def set_size(self, width: int, height: int) -> None:
        """Make the viewport (not the window) width x height CSS pixels."""
        self.driver.set_window_size(width, height)
        inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight]")
        if inner != [width, height]:  # the window has chrome around its viewport
            self.driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])

    def horizontal_overflow(self) -> int:
        """CSS pixels the page is wider than its viewport (0: no horizontal scrolling)."""
        return self.driver.execute_script(
            "return Math.max(0, document.documentElement.scrollWidth - window.innerWidth)")

    def accessibility_problems(self) -> list[str]:
        """What a screen-reader or keyboard user would miss here: form controls with no
        accessible name, and a page without one h1, a main landmark and a nav landmark."""
        return self.driver.execute_script("""
            const problems = [];
            const named = (el) => (el.labels && el.labels.length) || el.getAttribute('aria-label')
                || el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON'
                && el.textContent.trim()) || ['submit', 'button'].includes(el.type) && el.value;
            for (const el of document.querySelectorAll('input, select, textarea, button')) {
              if (el.type === 'hidden') continue;
              if (!named(el)) problems.push('unlabelled ' + el.outerHTML.slice(0, 80));
            }
            if (document.querySelectorAll('h1').length !== 1) problems.push('not one h1');
            if (!document.querySelector('main')) problems.push('no main landmark');
            if (!document.querySelector('nav')) problems.push('no nav landmark');
            if (!document.documentElement.lang) problems.push('no lang');
            return problems;
        """)

    def overflowing_elements(self, limit: int = 5) -> list[str]:
        """Elements that stick out of the viewport on the right and are not clipped by a
        scrolling box (an absolutely positioned one is clipped only by a box at or above its
        containing block): what makes a page scroll sideways, for messages."""
        return self.driver.execute_script("""
            const clips = (el) => getComputedStyle(el).overflowX !== 'visible';
            const positioned = (el) => getComputedStyle(el).position !== 'static';
            function clipped(el) {
              const position = getComputedStyle(el).position;
              if (position === 'fixed') return false;
              let box = el.parentElement;
              if (position === 'absolute') {
                while (box && box !== document.body && !positioned(box)) box = box.parentElement;
              }
              for (; box && box !== document.body; box = box.parentElement) {
                if (clips(box)) return true;
              }
              return false;
            }
            const out = [];
            for (const el of document.querySelectorAll('body *')) {
              const r = el.getBoundingClientRect();
              if (r.right > window.innerWidth + 1 && !clipped(el)) {
                out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                  (el.className && typeof el.className === 'string'
                    ? '.' + el.className.trim().split(/\\s+/).join('.') : '') +
                  ' right=' + Math.round(r.right) +
                  (el.textContent ? ' "' + el.textContent.trim().slice(0, 30) + '"' : ''));
                if (out.length >= arguments[0]) break;
              }
            }
            return out;""", limit)

    def screenshot(self, name: str, size, folder: pathlib.Path | None = None) -> pathlib.Path:
        """A full-page screenshot (its height capped) at size = (width, height)."""
        folder = folder or screenshots_dir()
        width, height = size
        self.set_size(width, height)
        full = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, "
            "document.documentElement.scrollHeight)")
        self.set_size(width, max(height, min(int(full), MAX_SHOT_HEIGHT)))
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        path = folder / f"{safe}-{width}.png"
        self.driver.save_screenshot(str(path))
        self.set_size(width, height)
        return path

    def screenshots(self, name: str, folder: pathlib.Path | None = None) -> list[pathlib.Path]:
        """The page as it is now at desktop and at phone width."""
        return [self.screenshot(name, size, folder) for size in (DESKTOP, PHONE)]

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.quit()
