"""Headless Debian Chromium driven by Selenium, and the console's steps as methods.

Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium, so Selenium Manager never
downloads anything (SE_OFFLINE as well). Each journey step saves a screenshot."""

import os
import re
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

STAFF_USERNAME, STAFF_PASSWORD = "ada", "console e2e password 7351"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 860)
# The network is closed here: without these flags Chromium keeps trying Google's hosts.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not found: apt-get install chromium chromium-driver (.ci/run does)"
    return None


def make_driver(profile: Path) -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def attribute(element: WebElement, name: str) -> str:
    """An attribute the page must carry (a missing one fails the test)."""
    value = element.get_attribute(name)
    assert value is not None, f"no {name} attribute"
    return value


def replaced(element: WebElement) -> bool:
    """Whether the page that held `element` is gone (ec.staleness_of, plus the inspector error
    Chrome gives instead of a stale reference when the node's document was just replaced)."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


class ConsoleBrowser:
    """The console as an admin uses it: each method is one thing an admin does."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, shots: Path) -> None:
        self.driver, self.base_url, self.shots = driver, base_url, shots
        self.shots.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    # --- plumbing -------------------------------------------------------------------------
    def allow_clipboard(self) -> None:
        """Let the page write and read the clipboard, as a user's click would allow."""
        permissions = ["clipboardReadWrite", "clipboardSanitizedWrite"]
        self.driver.execute_cdp_cmd(
            "Browser.grantPermissions", {"origin": self.base_url, "permissions": permissions}
        )

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, css: str, timeout: float = 10) -> WebElement:
        wait = WebDriverWait(self.driver, timeout)
        return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def fill(self, css: str, value: object) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys("" if value is None else str(value))

    def submit(self, css: str) -> None:
        """Click a submit button and wait for the next page to load."""
        old_html = self.find("html")
        self.find(css).click()
        WebDriverWait(self.driver, 15).until(lambda _: replaced(old_html))

    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base_url)

    def text(self) -> str:
        return self.find("body").text

    def step(self, name: str, *, focus: str | None = None, mask: str | None = None) -> Path:
        """Finish a step: scroll `focus` into view, hide `mask`'s value, save a screenshot."""
        if focus:
            self.driver.execute_script(
                "arguments[0].scrollIntoView({block: 'start'}); window.scrollBy(0, -12);",
                self.find(focus),
            )
        if mask:
            # Screenshots are committed: never a real-looking secret in them.
            self.driver.execute_script(
                "const f = arguments[0]; f.value = f.value.slice(0, 16) + '•'.repeat(24);",
                self.find(mask),
            )
        target = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(target))
        self.taken.append(target)
        return target

    # --- what an admin does ---------------------------------------------------------------
    def login(self, username: str, password: str) -> None:
        self.open("/console/login/")
        self.fill("#id_username", username)
        self.fill("#id_password", password)
        self.submit("form button[type=submit]")

    def create_tenant(self, slug: str, name: str = "", **limits: object) -> None:
        self.open("/console/tenants/")
        self.fill("#id_slug", slug)
        self.fill("#id_name", name)
        for field, value in limits.items():
            self.fill(f"#new-tenant #id_{field}", value)
        self.submit("button[name=create]")

    def issue_key(self, name: str, expires: str = "") -> str:
        """Issue a key on the tenant page being shown; returns the token read off the page."""
        self.fill("#id_name", name)
        Select(self.find("#id_expires_in")).select_by_value(expires)
        self.submit("button[name=issue]")
        return attribute(self.find("#token"), "value")

    def copy_token(self) -> str:
        """Click Copy and return what the clipboard then holds."""
        self.find("#copy-token").click()
        WebDriverWait(self.driver, 5).until(lambda d: self.find("#copy-token").text == "Copied")
        return self.driver.execute_async_script(
            "const done = arguments[0]; navigator.clipboard.readText().then(done, () => done(''));"
        )

    def open_tenant(self, slug: str, window: str = "24h") -> None:
        self.open(f"/console/tenants/{slug}/?window={window}")

    def key_row(self, key_id: str) -> WebElement:
        return self.find(f"#keys-table tr[data-key-id='{key_id}']")

    def key_state(self, key_id: str) -> str:
        return attribute(self.key_row(key_id), "data-state")

    def rotate_key(self, key_id: str, *, custom_grace: str | None = None, grace: str = "") -> str:
        """Rotate from the keys table; returns the new token read off the page."""
        self.key_row(key_id).find_element(By.LINK_TEXT, "Rotate").click()
        self.wait_for("#rotate-form")
        choice = "custom" if custom_grace is not None else grace
        self.find(f"input[name=grace][value='{choice}']").click()
        if custom_grace is not None:
            self.fill("#id_custom_grace", custom_grace)
        self.step("rotate-form", focus="h1")
        self.submit("button[name=rotate]")
        return attribute(self.find("#token"), "value")

    def set_limits(self, **limits: object) -> None:
        for field, value in limits.items():
            self.fill(f"#limits-form #id_{field}", value)
        self.submit("button[name=save-limits]")

    def confirm_limits(self) -> list[str]:
        """On the confirmation page of a big cut: the rows it marks as cuts, then confirm."""
        cuts = [attribute(r, "data-field") for r in self.find_all("#limits-review tr.big-cut")]
        self.submit("button[name=confirm-limits]")
        return cuts

    def field_errors(self, form_css: str) -> list[str]:
        return [e.text for e in self.find_all(f"{form_css} .errors li")]

    def start_revoke(self, key_id: str) -> None:
        self.key_row(key_id).find_element(By.LINK_TEXT, "Revoke").click()
        self.wait_for("#revoke-form")

    def confirm_revoke(self, typed: str) -> None:
        self.fill("#id_confirm", typed)
        self.submit("button[name=revoke]")

    def chart_totals(self, chart_id: str) -> dict[str, int]:
        """A chart's series totals as its legend states them (label -> total)."""
        items = self.find_all(f"#{chart_id} .legend-item")
        return {attribute(i, "data-label"): int(attribute(i, "data-total")) for i in items}

    def hover_chart(self, chart_id: str, fraction: float) -> str:
        """Point at a chart `fraction` of the way across its plot; returns the read-out shown."""
        svg = self.find(f"#{chart_id} svg")
        offset = int(svg.size["width"] * (fraction - 0.5))
        ActionChains(self.driver).move_to_element_with_offset(svg, offset, 0).perform()
        tip = self.find(f"#{chart_id} .chart-tip")
        WebDriverWait(self.driver, 5).until(lambda d: tip.is_displayed())
        return tip.text

    def fetch_text(self, path: str) -> str:
        """GET a URL with the browser's session (e.g. the CSV export) and return its body."""
        script = (
            "const done = arguments[1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(done);"
        )
        return self.driver.execute_async_script(script, self.base_url + path)

    def messages(self) -> list[str]:
        return [m.text for m in self.find_all(".messages .msg")]


TOKEN = re.compile(r"^sk_([0-9A-Za-z]{12})_[0-9A-Za-z]{32,}$")
