"""Forms that protect the admin: a cut of a limit by more than half waits for a confirmation
that shows before and after; a number that would lose characters ("10k") is an error, never a
smaller number; a failed form opens on an error summary that links to its fields."""

import re

import pytest
from django.test import Client

from pages.views import WINDOW_SESSION_KEY
from tenants.models import AdminAction, Tenant

pytestmark = pytest.mark.django_db

# The tenant fixture: rpm 600, tpm 100000, burst 20, weight 1.
FORM = {"rpm": 600, "tpm": 100000, "max_inflight": "", "burst_percent": 20, "scheduling_weight": 1}
LIMITS_URL = "/console/tenants/acme/limits/"


def limit_changes() -> int:
    return AdminAction.objects.filter(action=AdminAction.Action.LIMITS_CHANGED).count()


def hidden_inputs(html: str, form_id: str) -> dict[str, str]:
    """The name/value pairs of a form's hidden inputs, as the browser would post them."""
    form = html.split(f'id="{form_id}"', 1)[1].split("</form>", 1)[0]
    pairs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    return dict(pairs)


# --- the confirm step ---------------------------------------------------------------------------


def test_a_cut_of_more_than_half_shows_before_and_after_and_saves_nothing(
    staff: Client, tenant: Tenant
) -> None:
    response = staff.post(LIMITS_URL, {**FORM, "rpm": 60, "tpm": 90000})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="confirm-limits"' in html and "Nothing is saved yet" in html
    review = {change.name: change for change in response.context["review"]}
    assert (review["rpm"].before, review["rpm"].after, review["rpm"].is_big_cut) == (600, 60, True)
    assert (review["tpm"].before, review["tpm"].after, review["tpm"].is_big_cut) == (
        100000,
        90000,
        False,
    )
    assert re.search(r'data-field="rpm" class="big-cut">.*?600.*?60.*?cut by 90%', html, re.S)
    tenant.refresh_from_db()
    assert (tenant.rpm, tenant.tpm) == (600, 100000)
    assert limit_changes() == 0


def test_confirming_re_posts_the_same_values_and_saves_them(staff: Client, tenant: Tenant) -> None:
    first = staff.post(LIMITS_URL, {**FORM, "rpm": 60, "tpm": 90000}).content.decode()
    posted = hidden_inputs(first, "confirm-limits-form")
    assert posted["rpm"] == "60" and posted["tpm"] == "90000" and posted["confirm"]
    response = staff.post(LIMITS_URL, posted)
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.rpm, tenant.tpm) == (60, 90000)
    action = AdminAction.objects.get(action=AdminAction.Action.LIMITS_CHANGED)
    assert action.before and action.after
    assert (action.before["rpm"], action.after["rpm"]) == (600, 60)
    page = staff.get(response["Location"]).content.decode()
    assert "Limits saved (rpm, tpm)" in page and "rpm 600 → 60; tpm 100000 → 90000" in page


@pytest.mark.parametrize("confirm", ["", "yes", "0" * 32])
def test_a_wrong_or_missing_confirmation_saves_nothing(
    staff: Client, tenant: Tenant, confirm: str
) -> None:
    response = staff.post(LIMITS_URL, {**FORM, "rpm": 10, "confirm": confirm})
    assert response.status_code == 200 and "confirm-limits" in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.rpm == 600 and limit_changes() == 0


def test_a_confirmation_of_a_stale_page_asks_again(staff: Client, tenant: Tenant) -> None:
    """Someone changed the tenant between the confirmation page and the click: the admin
    confirmed a cut from 600, not from what is there now, so they are asked again."""
    posted = hidden_inputs(
        staff.post(LIMITS_URL, {**FORM, "rpm": 100}).content.decode(), "confirm-limits-form"
    )
    Tenant.objects.filter(pk=tenant.pk).update(rpm=5000)
    response = staff.post(LIMITS_URL, posted)
    assert response.status_code == 200
    assert [(c.before, c.after) for c in response.context["review"]] == [(5000, 100)]
    tenant.refresh_from_db()
    assert tenant.rpm == 5000 and limit_changes() == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"rpm": 300},  # exactly half: not more than half
        {"rpm": 6000},  # a raise
        {"rpm": ""},  # removing a limit
        {"max_inflight": 1},  # adding one where there was none
        {"scheduling_weight": 1, "burst_percent": 1},  # not limits
    ],
)
def test_other_changes_save_at_once_and_say_before_and_after(
    staff: Client, tenant: Tenant, changes: dict
) -> None:
    response = staff.post(LIMITS_URL, {**FORM, **changes}, follow=True)
    html = response.content.decode()
    assert "Limits saved" in html and "→" in html
    assert limit_changes() == 1


# --- numbers that would lose characters ---------------------------------------------------------


LOSSY = ["10k", "1,000", "5 000", "1e3", "10.0", "1_000", "١٠", "+5", "0x10"]


@pytest.mark.parametrize("typed", LOSSY)
@pytest.mark.parametrize("field", ["rpm", "tokens_per_month", "burst_percent", "scheduling_weight"])
def test_a_number_with_other_characters_is_an_error_not_a_smaller_number(
    staff: Client, tenant: Tenant, field: str, typed: str
) -> None:
    response = staff.post(LIMITS_URL, {**FORM, field: typed})
    assert response.status_code == 400
    errors = response.context["limits_form"].errors[field]
    assert len(errors) == 1 and errors[0].startswith(f"“{typed}” is not a whole number: ")
    assert "takes digits only" in errors[0] and "Nothing was saved." in errors[0]
    tenant.refresh_from_db()
    assert (tenant.rpm, tenant.tokens_per_month, tenant.burst_percent) == (600, None, 20)
    assert limit_changes() == 0


def test_a_new_tenant_with_10k_is_refused_and_not_created(staff: Client) -> None:
    response = staff.post("/console/tenants/", {"slug": "globex", **FORM, "rpm": "10k"})
    assert response.status_code == 400
    assert response.context["form"].errors["rpm"][0].startswith("“10k” is not a whole number")
    assert not Tenant.objects.exists()


def test_digits_with_surrounding_spaces_are_a_number(staff: Client, tenant: Tenant) -> None:
    response = staff.post(LIMITS_URL, {**FORM, "rpm": " 1200 "})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.rpm == 1200


def test_number_fields_are_text_inputs_the_browser_cannot_trim(
    staff: Client, tenant: Tenant
) -> None:
    """A type=number input drops what it cannot parse before the server sees it ("10k" is
    posted as "10"), so the fields are text inputs with a numeric keyboard."""
    html = staff.get("/console/tenants/acme/").content.decode()
    for name in ("rpm", "tpm", "burst_percent", "scheduling_weight"):
        tag = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
        assert tag, name
        assert 'type="text"' in tag.group(0) and 'inputmode="numeric"' in tag.group(0)
    assert 'type="number"' not in html


# --- the error summary --------------------------------------------------------------------------


def summary_of(html: str, summary_id: str) -> str:
    match = re.search(rf'<div class="error-summary"[^>]*id="{summary_id}".*?</div>', html, re.S)
    assert match, f"no error summary {summary_id}"
    return match.group(0)


def test_a_failed_limits_form_opens_on_a_summary_linking_each_field(
    staff: Client, tenant: Tenant
) -> None:
    response = staff.post(LIMITS_URL, {**FORM, "rpm": "10k", "burst_percent": 0})
    html = response.content.decode()
    summary = summary_of(html, "limits-errors")
    assert 'role="alert"' in summary and 'tabindex="-1"' in summary
    assert "There are 2 problems" in summary
    links = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', summary)
    assert [anchor for anchor, _ in links] == ["id_rpm", "id_burst_percent"]
    assert links[0][1].startswith("Requests per minute: “10k” is not a whole number")
    for anchor, _ in links:
        assert f'id="{anchor}"' in html  # each link has a field to land on
    # At the top of the form: before its first field.
    form = html.split('id="limits-form"', 1)[1]
    assert form.index("limits-errors") < form.index('name="rpm"')
    # Only the failed form has one.
    assert 'id="issue-errors"' not in html


def test_the_new_tenant_form_and_the_issue_form_have_summaries(
    staff: Client, tenant: Tenant
) -> None:
    html = staff.post("/console/tenants/", {"slug": "Not A Slug", **FORM}).content.decode()
    assert re.search(r'href="#id_slug">Slug: Use 1-64', summary_of(html, "new-tenant-errors"))
    response = staff.post("/console/tenants/acme/keys/", {"name": "x", "once": "abc"})
    summary = summary_of(response.content.decode(), "issue-errors")
    assert 'href="#id_scopes_0">Scopes: Pick at least one scope.' in summary


def test_a_form_error_without_a_field_is_listed_without_a_link(client: Client) -> None:
    response = client.post("/console/login/", {"username": "nobody", "password": "wrong"})
    summary = summary_of(response.content.decode(), "login-errors")
    assert "<a " not in summary and "<li>" in summary


def test_a_field_in_error_is_marked_and_described_by_its_message(
    staff: Client, tenant: Tenant
) -> None:
    html = staff.post(LIMITS_URL, {**FORM, "rpm": "10k"}).content.decode()
    tag = re.search(r'<input[^>]*name="rpm"[^>]*>', html)
    assert tag and 'aria-invalid="true"' in tag.group(0)
    described = re.search(r'aria-describedby="([^"]+)"', tag.group(0))
    assert described and "id_rpm_error" in described.group(1).split()
    for target in described.group(1).split():
        assert f'id="{target}"' in html  # every id it names is on the page
    assert re.search(r'id="id_rpm_error">\s*<li>“10k” is not a whole number', html)


def test_a_page_without_errors_has_no_summary(staff: Client, tenant: Tenant) -> None:
    assert "error-summary" not in staff.get("/console/tenants/acme/").content.decode()


def test_the_script_focuses_the_summary() -> None:
    """The focus itself is checked in Chromium (tests/e2e/console/test_console_phone.py)."""
    from pathlib import Path

    script = (Path(__file__).parents[2] / "static/console/console.js").read_text()
    assert 'querySelector(".error-summary")' in script and "summary.focus()" in script


# --- the window kept across pages ---------------------------------------------------------------


def test_the_chosen_window_is_kept_for_the_next_pages(staff: Client, tenant: Tenant) -> None:
    assert staff.get("/console/").context["win"].name == "24h"
    staff.get("/console/?window=7d")
    assert staff.session[WINDOW_SESSION_KEY] == "7d"
    assert staff.get("/console/tenants/acme/").context["win"].name == "7d"
    assert staff.get("/console/").context["win"].name == "7d"
    staff.get("/console/tenants/acme/?window=1h")
    assert staff.get("/console/").context["win"].name == "1h"
    staff.get("/console/?window=bogus")  # an unknown name changes nothing
    assert staff.get("/console/").context["win"].name == "1h"
