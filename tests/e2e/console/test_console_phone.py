"""The console on a phone (390 x 844 CSS pixels) and without a mouse, in headless Chromium
against a live daphne: every console page fits the screen with Sign out in view, a failed form
puts the focus on its error summary, the skip link works, chart values open as a table from the
keyboard, and a big cut of a limit waits for its confirmation.

The pages are enumerated from pages/urls.py, so a page added there is checked too; a page whose
URL takes a parameter this file cannot fill fails with a message that says so."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from pages.urls import urlpatterns
from tenants.adapters import adapter_add, adapter_grant
from tenants.models import AdapterUsageDay, ApiKey, Tenant
from tenants.services import api_key_issue, api_key_rotate, tenant_create, tenant_set_limits
from tests.e2e.console.browser import STAFF_PASSWORD, STAFF_USERNAME, ConsoleBrowser, attribute
from tests.e2e.console.seed import seed_throttles, seed_usage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# mobile=False: a page wider than the screen then scrolls (a mobile viewport would zoom out).
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": False}
# A long slug and name, as real tenants have: they must wrap, not widen the page.
SLUG = "northwind-traders-europe-production"
NAME = "Northwind Traders Europe GmbH & Co. KG (production)"
# As long as a name may be (64): it must wrap too.
ADAPTER = "northwind-support-assistant.v2-production-europe-west-1-canary-x"


def sample_data() -> tuple[Tenant, ApiKey]:
    tenant = tenant_create(slug=SLUG, name=NAME, limits={"rpm": 600}, actor="cli:seed")
    keys = [
        api_key_issue(tenant=tenant, name=f"backend-service-{n}", actor="cli:seed").api_key
        for n in range(3)
    ]
    for key in keys:
        seed_usage(key, scale=12_000)  # numbers with thousands separators
        seed_throttles(key)
    api_key_rotate(api_key=keys[1], grace=timedelta(hours=1), actor="cli:seed")
    tenant_set_limits(tenant=tenant, changes={"rpm": 900, "tpm": 250_000}, actor="cli:seed")
    return tenant, keys[0]


def sample_adapter(tenant: Tenant, folder: Path) -> str:
    """A registered adapter granted to the tenant, with a few days of usage; returns its name."""
    adapter = adapter_add(name=ADAPTER, path=str(folder), actor="cli:seed")
    adapter_grant(adapter=adapter, tenant=tenant, actor="cli:seed")
    today = timezone.now().date()
    AdapterUsageDay.objects.bulk_create(
        AdapterUsageDay(
            tenant=tenant,
            adapter=ADAPTER,
            day=today - timedelta(days=n),
            requests=12_345 * (n + 1),
            prompt_tokens=1_234_567 * (n + 1),
            completion_tokens=345_678 * (n + 1),
        )
        for n in range(5)
    )
    return adapter.name


def console_urls(sample: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(name, path) of every route of the console app, with sample values for its parameters."""
    for pattern in urlpatterns:
        params = pattern.pattern.converters
        missing = set(params) - set(sample)
        assert pattern.name, f"{pattern.pattern}: every console route is named"
        assert not missing, f"{pattern.name}: add a sample value for {missing} to this test"
        yield (
            pattern.name,
            reverse(f"console:{pattern.name}", kwargs={k: sample[k] for k in params}),
        )


def fetch_kind(console: ConsoleBrowser, path: str) -> tuple[int, str]:
    """Status and content type of a GET with the browser's session (redirects followed)."""
    script = (
        "const done = arguments[1];"
        "fetch(arguments[0], {credentials: 'same-origin'})"
        ".then(r => done([r.status, r.headers.get('content-type') || '']));"
    )
    status, kind = console.driver.execute_async_script(script, console.base_url + path)
    return int(status), kind


def layout(console: ConsoleBrowser) -> dict:
    return console.driver.execute_script(
        """
        const out = {scroll: document.documentElement.scrollWidth, inner: window.innerWidth};
        const button = document.querySelector('.signout button');
        if (button) {
          const box = button.getBoundingClientRect();
          out.signout = {left: box.left, right: box.right, top: box.top, bottom: box.bottom,
                         shown: box.width > 0 && getComputedStyle(button).visibility === 'visible'};
        }
        const wide = [...document.querySelectorAll('main *')]
          .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
          .filter((e) => !e.closest('.table, .table-scroll'))
          .slice(0, 5).map((e) => e.tagName + '.' + e.className + '#' + e.id);
        out.wide = wide;
        return out;
        """
    )


def assert_fits(console: ConsoleBrowser, what: str, *, signed_in: bool = True) -> None:
    # From the top: a failed form scrolls to its error summary, below the header.
    console.driver.execute_script("window.scrollTo(0, 0)")
    box = layout(console)
    assert box["inner"] == PHONE["width"], what
    assert box["scroll"] <= box["inner"], f"{what} scrolls sideways: {box}"
    if signed_in:
        signout = box.get("signout")
        assert signout and signout["shown"], f"{what}: no Sign out"
        assert signout["left"] >= 0 and signout["right"] <= box["inner"], f"{what}: {signout}"
        assert signout["top"] >= 0 and signout["bottom"] <= PHONE["height"], f"{what}: {signout}"


def active_id(console: ConsoleBrowser) -> str:
    return console.driver.execute_script("return document.activeElement.id || ''")


def test_every_console_page_fits_a_phone(
    console: ConsoleBrowser,
    staff_account,
    django_user_model,
    tmp_path: Path,
    settings,
    tiny_model_dir: Path,
) -> None:
    tenant, key = sample_data()
    # Adapters are checked against the served base: the live server's tiny model.
    settings.INFERENCE_MODEL = str(tiny_model_dir)
    adapter = sample_adapter(tenant, tiny_model_dir / "adapter")
    # A second console account: the Users page's routes and its set-password link.
    reader = django_user_model.objects.create_user("reader", is_staff=True)
    sample = {
        "slug": tenant.slug,
        "key_id": key.key_id,
        "user_id": str(reader.pk),
        "uidb64": urlsafe_base64_encode(force_bytes(reader.pk)),
        "token": default_token_generator.make_token(reader),
        "name": adapter,
    }
    console.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    console.open("/console/login/")
    assert_fits(console, "login", signed_in=False)
    console.login(STAFF_USERNAME, STAFF_PASSWORD)
    assert console.path() == "/console/"

    visited, skipped = [], []
    for name, path in console_urls(sample):
        if name == "logout":
            continue  # POST only; visiting it would end the session
        status, kind = fetch_kind(console, path)
        if status == 405 or not kind.startswith("text/html"):
            skipped.append(name)  # a POST-only action, or a download (CSV)
            continue
        assert status == 200, f"{name} {path}: {status}"
        for window in ("", "?window=7d") if name in ("overview", "tenant", "adapter") else ("",):
            console.open(path + window)
            # Kept with the test's temp files for a look at a failure (never in docs/).
            console.driver.save_screenshot(str(tmp_path / f"phone-{name}{window[1:]}.png"))
            assert_fits(console, f"{name} {path}{window}")
        visited.append(name)
    for expected in ("overview", "tenants", "tenant", "audit", "key-rotate", "key-revoke"):
        assert expected in visited
    assert "tenant-throttles" in visited and "key-issue" in skipped
    assert {"adapters", "adapter", "adapter-remove"} <= set(visited)
    assert {"adapter-grant", "adapter-revoke", "tenant-adapter-grant"} <= set(skipped)

    # Pages that only a POST shows: a failed form, the confirmation of a cut, a token.
    console.open("/console/tenants/")
    console.fill("#id_slug", "Bad Slug")
    console.fill("#new-tenant #id_rpm", "10k")
    console.submit("button[name=create]")
    assert_fits(console, "tenant form with errors")
    console.open_tenant(tenant.slug)
    console.set_limits(rpm=5)
    assert console.find("#confirm-limits").is_displayed()
    assert_fits(console, "confirm a cut")
    console.open_tenant(tenant.slug)
    console.issue_key("phone")
    assert_fits(console, "token shown once")
    console.open("/console/adapters/")
    console.fill("#id_name", ADAPTER.replace(".v2", ".v3"))
    console.fill("#id_path", str(tmp_path / "no" / "such" / "adapter" / "folder" / "anywhere"))
    console.submit("button[name=register]")
    assert console.find("#adapter-errors").is_displayed()
    assert_fits(console, "adapter form with errors")


def test_a_failed_submit_opens_on_the_error_summary(console: ConsoleBrowser, staff_account) -> None:
    tenant, _ = sample_data()
    console.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    console.login(STAFF_USERNAME, STAFF_PASSWORD)
    console.open_tenant(tenant.slug)
    # The limits form sits far down the page; "10k" must neither save 10 nor hide its error.
    console.set_limits(rpm="10k")
    WebDriverWait(console.driver, 5).until(lambda d: active_id(console) == "limits-errors")
    summary = console.find("#limits-errors")
    assert attribute(summary, "role") == "alert" and attribute(summary, "tabindex") == "-1"
    top = console.driver.execute_script("return arguments[0].getBoundingClientRect().top", summary)
    assert 0 <= top < PHONE["height"], "the summary is on screen"
    assert "“10k” is not a whole number" in summary.text
    assert Tenant.objects.get(pk=tenant.pk).rpm == 900
    # Its link takes the focus to the field.
    summary.find_element("css selector", "a[href='#id_rpm']").click()
    assert active_id(console) == "id_rpm"

    # A big cut waits for its confirmation, which shows before and after.
    console.open_tenant(tenant.slug)
    console.set_limits(rpm=90)
    row = console.find("#limits-review tr[data-field='rpm']")
    assert "big-cut" in attribute(row, "class")
    cells = [row.find_element("css selector", f"td.{c}").text for c in ("before", "after")]
    assert cells == ["900", "90"] and "cut by 90%" in row.text
    assert Tenant.objects.get(pk=tenant.pk).rpm == 900
    assert console.confirm_limits() == ["rpm"]
    assert Tenant.objects.get(pk=tenant.pk).rpm == 90
    assert any("rpm 900 → 90" in m for m in console.messages())


def test_the_skip_link_and_the_chart_tables_work_from_the_keyboard(
    console: ConsoleBrowser, staff_account
) -> None:
    tenant, key = sample_data()
    console.login(STAFF_USERNAME, STAFF_PASSWORD)
    console.open_tenant(tenant.slug, window="6h")

    # The first Tab reaches the skip link, shown on screen; Enter moves to the content.
    ActionChains(console.driver).send_keys(Keys.TAB).perform()
    skip = console.driver.switch_to.active_element
    assert "skip-link" in (skip.get_attribute("class") or "") and skip.is_displayed()
    assert (
        console.driver.execute_script("return arguments[0].getBoundingClientRect().top", skip) >= 0
    )
    ActionChains(console.driver).send_keys(Keys.ENTER).perform()
    WebDriverWait(console.driver, 5).until(lambda d: active_id(console) == "main")
    ActionChains(console.driver).send_keys(Keys.TAB).perform()
    inside = console.driver.execute_script(
        "return document.getElementById('main').contains(document.activeElement)"
    )
    assert inside, "the next Tab stays in the main content, past the header"

    # The window chosen here is kept on the next page without a query parameter.
    console.open("/console/")
    assert "last 6 hours" in console.find("h1").text

    # A chart's values open as a table with the keyboard, and add up to its legend.
    console.open(f"/console/tenants/{tenant.slug}/")  # no ?window=: the kept 6 hours
    chart = "chart-tenant-requests"  # the tenant's own chart (its keys share one)
    totals = console.chart_totals(chart)
    summary = console.find(f"#{chart} details.chart-values summary")
    console.driver.execute_script("arguments[0].focus()", summary)
    ActionChains(console.driver).send_keys(Keys.ENTER).perform()
    table = console.wait_for(f"#{chart} table.chart-table")
    headers = [
        th.get_attribute("textContent") for th in table.find_elements("css selector", "thead th")
    ]
    assert headers == ["Time (UTC)", "accepted", "errors", "429s"]
    rows = table.find_elements("css selector", "tbody tr")
    assert len(rows) == 6 * 60  # one row per minute of the 6-hour window
    sums = [0, 0, 0]
    for values in console.driver.execute_script(
        "return [...arguments[0].tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent))",
        table,
    ):
        for i, value in enumerate(values[1:]):
            sums[i] += int(value.replace(",", ""))
    assert sums == [totals["accepted"], totals["errors"], totals["429s"]]
    assert sum(sums) > 0
