"""The console's adapter pages: the Adapters page (list, register from a folder on the server),
an adapter's page (details, grants, grant, revoke, remove, usage per day and tenant) and the
tenant page's Adapters section. Each write goes through tenants.adapters and is audited; every
write needs tenants.manage_adapters, and a refused POST writes nothing."""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pages.tests.conftest import tenants_permissions
from pages.tests.test_permissions import assert_refused, signed_in
from tenants.adapters import adapter_add, adapter_grant
from tenants.models import Adapter, AdapterGrant, AdapterUsageDay, AdminAction, Tenant
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db

ADAPTERS = "/console/adapters/"
MANAGE = "tenants.manage_adapters (Can grant and remove LoRA adapters)"
VIEW_ADAPTER = "tenants.view_adapter (Can view adapter)"
VIEW_GRANT = "tenants.view_adaptergrant (Can view adapter grant)"


@pytest.fixture
def base_model(settings, tiny_model_dir: Path) -> Path:
    """The served base is the tiny T5: folders are validated against its config.json."""
    settings.INFERENCE_MODEL = str(tiny_model_dir)
    return tiny_model_dir


@pytest.fixture
def folder(base_model: Path) -> Path:
    """A valid peft LoRA folder of the tiny model (rank 4 on q and v)."""
    return base_model / "adapter"


@pytest.fixture
def add(folder: Path) -> Callable[..., Adapter]:
    def register(name: str) -> Adapter:
        return adapter_add(name=name, path=str(folder), actor="test")

    return register


def today() -> date:
    return datetime.now(UTC).date()


def usage(tenant: Tenant, adapter: str, days_ago: int, requests: int) -> AdapterUsageDay:
    return AdapterUsageDay.objects.create(
        tenant=tenant,
        adapter=adapter,
        day=today() - timedelta(days=days_ago),
        requests=requests,
        prompt_tokens=requests * 10,
        completion_tokens=requests * 3,
    )


def audit_state() -> tuple:
    """Everything an adapter write could change or audit."""
    adapters = list(Adapter.objects.order_by("name").values_list("name", "path"))
    grants = list(AdapterGrant.objects.order_by("pk").values_list("adapter__name", "tenant__slug"))
    return adapters, grants, AdminAction.objects.count()


# The Adapters page


def test_the_adapters_page_lists_each_adapter_with_its_tenant_count(
    staff: Client, tenant: Tenant, add, folder: Path
) -> None:
    adapter_grant(adapter=add("support"), tenant=tenant, actor="test")
    add("legal.v2")
    html = staff.get(ADAPTERS).content.decode()
    assert 'id="adapters"' in html and 'id="adapter-form"' in html
    row = html.split('data-adapter="support"')[1].split("</tr>")[0]
    assert '<td class="num">4</td>' in row  # rank
    assert "q, v" in row and str(folder) in row
    assert '<td class="num" data-column="tenants">1</td>' in row
    legal = html.split('data-adapter="legal.v2"')[1].split("</tr>")[0]
    assert '<td class="num" data-column="tenants">0</td>' in legal
    assert 'href="/console/adapters/legal.v2/"' in legal
    assert html.index('data-adapter="legal.v2"') < html.index('data-adapter="support"')


def test_a_node_without_adapters_says_so(staff: Client) -> None:
    html = staff.get(ADAPTERS).content.decode()
    assert 'id="no-adapters"' in html and "Register the first one below" in html


def test_registering_a_folder_saves_and_audits_it_and_opens_its_page(
    staff: Client, folder: Path
) -> None:
    response = staff.post(ADAPTERS, {"name": "support", "path": f" {folder} "})
    assert response.status_code == 302 and response["Location"] == "/console/adapters/support/"
    adapter = Adapter.objects.get(name="support")
    assert (adapter.path, adapter.rank, sorted(adapter.target_modules)) == (
        str(folder),
        4,
        ["q", "v"],
    )
    action = AdminAction.objects.get(action="adapter.added")
    assert action.actor == "console:ada" and action.tenant is None
    page = staff.get(response["Location"]).content.decode()
    assert "Adapter “support” registered (rank 4)" in page
    assert 'id="no-grants"' in page


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/nonexistent/adapter/folder", "/nonexistent/adapter/folder"),
        ("relative/folder", "absolute"),
    ],
)
def test_a_folder_that_fails_validation_is_named_on_the_path_field_and_nothing_is_written(
    staff: Client, base_model: Path, path: str, says: str
) -> None:
    before = audit_state()
    response = staff.post(ADAPTERS, {"name": "support", "path": path})
    assert response.status_code == 400
    form = response.context["form"]
    assert list(form.errors) == ["path"]
    assert says.lower() in form.errors["path"][0].lower()
    html = response.content.decode()
    assert 'id="adapter-errors"' in html and "nothing was saved" in html
    assert 'href="#id_path"' in html
    assert audit_state() == before


def test_the_base_model_folder_is_not_an_adapter(staff: Client, base_model: Path) -> None:
    response = staff.post(ADAPTERS, {"name": "support", "path": str(base_model)})
    assert response.status_code == 400
    assert list(response.context["form"].errors) == ["path"]
    assert not Adapter.objects.exists()


def test_a_rank_above_the_maximum_is_refused_on_the_path_field(
    staff: Client, folder: Path, settings
) -> None:
    settings.INFERENCE_MAX_ADAPTER_RANK = 2
    response = staff.post(ADAPTERS, {"name": "support", "path": str(folder)})
    assert response.status_code == 400
    error = response.context["form"].errors["path"][0]
    assert "4" in error and "2" in error
    assert not Adapter.objects.exists() and not AdminAction.objects.exists()


@pytest.mark.parametrize("name", ["Support", "-lead", "has space", "x" * 65, ""])
def test_a_malformed_name_is_named_on_the_name_field(
    staff: Client, folder: Path, name: str
) -> None:
    response = staff.post(ADAPTERS, {"name": name, "path": str(folder)})
    assert response.status_code == 400
    assert list(response.context["form"].errors) == ["name"]
    assert not Adapter.objects.exists()


def test_a_taken_name_is_named_on_the_name_field(staff: Client, add, folder: Path) -> None:
    add("support")
    before = audit_state()
    response = staff.post(ADAPTERS, {"name": "support", "path": str(folder)})
    assert response.status_code == 400
    assert "registered already" in response.context["form"].errors["name"][0]
    assert audit_state() == before


# An adapter's page


def test_the_adapter_page_shows_details_grants_and_usage_per_day_and_tenant(
    staff: Client, tenant: Tenant, add, folder: Path
) -> None:
    adapter = add("support")
    globex = tenant_create(slug="globex", name="Globex", limits={}, actor="test")
    adapter_grant(adapter=adapter, tenant=tenant, actor="test")
    usage(tenant, "support", 0, 7)
    usage(globex, "support", 2, 5)  # revoked or never granted: usage stays
    usage(tenant, "support", 90, 1000)  # outside the window
    usage(tenant, "other", 0, 99)  # another adapter
    response = staff.get("/console/adapters/support/?window=7d")
    assert response.status_code == 200
    html = response.content.decode()
    assert str(folder) in html and "q, v" in html
    grants = html.split('id="grants-table"')[1].split("</table>")[0]
    assert 'data-tenant="acme"' in grants and 'data-tenant="globex"' not in grants
    assert "/console/adapters/support/grants/acme/revoke/" in grants
    # The grant form offers the tenants that do not hold it yet.
    form = html.split('id="grant-form"')[1].split("</form>")[0]
    assert '<option value="globex">' in form and '<option value="acme">' not in form
    rows = response.context["page"].object_list
    assert {(r.day, r.tenant, r.requests) for r in rows} == {
        (today(), "acme", 7),
        (today() - timedelta(days=2), "globex", 5),
    }
    total = html.split('id="usage-total"')[1].split("</tr>")[0]
    assert [f'<td class="num">{n}</td>' in total for n in (12, 120, 36)] == [True] * 3


def test_an_unknown_adapter_is_a_404(staff: Client) -> None:
    assert staff.get("/console/adapters/nope/").status_code == 404
    assert staff.post("/console/adapters/nope/grants/", {"tenant": "acme"}).status_code == 404


def test_granting_writes_the_grant_and_audits_it(staff: Client, tenant: Tenant, add) -> None:
    add("support")
    response = staff.post("/console/adapters/support/grants/", {"tenant": "acme"})
    assert response.status_code == 302 and response["Location"] == "/console/adapters/support/"
    assert list(AdapterGrant.objects.values_list("adapter__name", "tenant__slug")) == [
        ("support", "acme")
    ]
    action = AdminAction.objects.get(action="adapter.granted")
    assert (action.actor, action.tenant) == ("console:ada", tenant)
    assert "acme may now use “support”" in staff.get(response["Location"]).content.decode()


def test_granting_twice_or_to_no_tenant_is_refused_on_the_field(
    staff: Client, tenant: Tenant, add
) -> None:
    adapter = add("support")
    adapter_grant(adapter=adapter, tenant=tenant, actor="test")
    before = audit_state()
    for data in ({"tenant": "acme"}, {"tenant": "nobody"}, {}):
        response = staff.post("/console/adapters/support/grants/", data)
        assert response.status_code == 400, data
        assert list(response.context["grant_form"].errors) == ["tenant"], data
        assert 'id="grant-errors"' in response.content.decode()
    assert audit_state() == before


def test_revoking_removes_the_grant_and_audits_it(staff: Client, tenant: Tenant, add) -> None:
    adapter_grant(adapter=add("support"), tenant=tenant, actor="test")
    response = staff.post("/console/adapters/support/grants/acme/revoke/")
    assert response.status_code == 302 and response["Location"] == "/console/adapters/support/"
    assert not AdapterGrant.objects.exists()
    action = AdminAction.objects.get(action="adapter.revoked")
    assert (action.actor, action.tenant) == ("console:ada", tenant)
    # A second revoke is refused with the service's message and writes nothing.
    before = audit_state()
    staff.get("/console/adapters/support/")  # shows (and spends) the first message
    response = staff.post("/console/adapters/support/grants/acme/revoke/", follow=True)
    shown = [(m.level_tag, m.message) for m in response.context["messages"]]
    assert shown == [("error", "'support' is not granted to 'acme'.")]
    assert audit_state() == before


def test_removing_needs_the_typed_name_then_removes_it_and_keeps_its_usage(
    staff: Client, tenant: Tenant, add
) -> None:
    adapter_grant(adapter=add("support"), tenant=tenant, actor="test")
    usage(tenant, "support", 0, 3)
    page = staff.get("/console/adapters/support/remove/")
    assert page.status_code == 200 and "granted to 1 tenant" in page.content.decode()
    before = audit_state()
    wrong = staff.post("/console/adapters/support/remove/", {"confirm": "suppor"})
    assert wrong.status_code == 400 and "nothing was removed" in wrong.content.decode()
    assert audit_state() == before
    response = staff.post("/console/adapters/support/remove/", {"confirm": "support"})
    assert response.status_code == 302 and response["Location"] == ADAPTERS
    assert not Adapter.objects.exists() and not AdapterGrant.objects.exists()
    assert AdminAction.objects.get(action="adapter.removed").actor == "console:ada"
    assert AdapterUsageDay.objects.get().adapter == "support"
    # The tenant's page still shows the usage, marked removed, without a link.
    html = staff.get("/console/tenants/acme/").content.decode()
    row = html.split('id="tenant-adapter-usage"')[1].split("</table>")[0]
    assert "support" in row and "removed" in row and "/console/adapters/support/" not in row


# The tenant's page


def test_the_tenant_page_lists_its_adapters_and_its_usage_per_adapter(
    staff: Client, tenant: Tenant, add
) -> None:
    support, legal = add("support"), add("legal")
    add("spare")
    adapter_grant(adapter=support, tenant=tenant, actor="test")
    adapter_grant(adapter=legal, tenant=tenant, actor="test")
    usage(tenant, "support", 0, 4)
    usage(tenant, "support", 1, 6)
    usage(tenant, "legal", 0, 1)
    response = staff.get("/console/tenants/acme/?window=7d")
    html = response.content.decode()
    listed = html.split('id="tenant-adapters"')[1].split("</table>")[0]
    assert listed.index('data-adapter="legal"') < listed.index('data-adapter="support"')
    assert 'href="/console/adapters/support/"' in listed
    assert "/console/adapters/legal/grants/acme/revoke/" in listed
    grant = html.split('id="adapter-grant-form"')[1].split("</form>")[0]
    assert '<option value="spare">' in grant and '<option value="support">' not in grant
    sums = {(t.adapter, t.requests, t.prompt_tokens) for t in response.context["adapters"]["usage"]}
    assert sums == {("legal", 1, 10), ("support", 10, 100)}


def test_granting_from_the_tenant_page_writes_audits_and_returns_there(
    staff: Client, tenant: Tenant, add
) -> None:
    add("support")
    response = staff.post("/console/tenants/acme/adapters/", {"adapter": "support"})
    assert response.status_code == 302 and response["Location"] == "/console/tenants/acme/"
    assert AdapterGrant.objects.get().tenant == tenant
    assert AdminAction.objects.filter(action="adapter.granted", tenant=tenant).count() == 1
    before = audit_state()
    again = staff.post("/console/tenants/acme/adapters/", {"adapter": "support"})
    assert again.status_code == 400
    assert list(again.context["adapters"]["form"].errors) == ["adapter"]
    assert 'id="adapter-grant-errors"' in again.content.decode()
    assert audit_state() == before


def test_revoking_from_the_tenant_page_returns_there(staff: Client, tenant: Tenant, add) -> None:
    adapter_grant(adapter=add("support"), tenant=tenant, actor="test")
    response = staff.post("/console/adapters/support/grants/acme/revoke/", {"back": "tenant"})
    assert response.status_code == 302 and response["Location"] == "/console/tenants/acme/"
    assert not AdapterGrant.objects.exists()
    html = staff.get("/console/tenants/acme/").content.decode()
    assert 'id="no-tenant-adapters"' in html


# Permissions and roles


def writes(tenant: Tenant) -> dict[str, tuple[str, dict]]:
    """Every adapter write of the console, with a valid form (the adapter "support" exists and
    is granted to acme; "legal" exists and is not)."""
    return {
        "register": (ADAPTERS, {"name": "fresh", "path": "/srv/adapters/fresh"}),
        "grant": ("/console/adapters/legal/grants/", {"tenant": tenant.slug}),
        "grant from the tenant": ("/console/tenants/acme/adapters/", {"adapter": "legal"}),
        "revoke": ("/console/adapters/support/grants/acme/revoke/", {}),
        "remove": ("/console/adapters/support/remove/", {"confirm": "support"}),
    }


@pytest.mark.parametrize("role", ["Viewer", "Operator"])
def test_viewers_and_operators_read_the_pages_and_may_write_nothing(
    as_role: Callable[[str], Client], tenant: Tenant, add, role: str
) -> None:
    adapter_grant(adapter=add("support"), tenant=tenant, actor="test")
    add("legal")
    client = as_role(role)
    listing = client.get(ADAPTERS)
    assert listing.status_code == 200
    assert 'data-adapter="support"' in listing.content.decode()
    page = client.get("/console/adapters/support/").content.decode()
    tenant_page = client.get("/console/tenants/acme/").content.decode()
    assert 'id="tenant-adapters"' in tenant_page
    for html in (listing.content.decode(), page, tenant_page):
        for action in ('id="adapter-form"', 'id="grant-form"', "/grants/", "/remove/"):
            assert action not in html
        assert 'id="adapter-grant-form"' not in html
    before = audit_state()
    for url, data in writes(tenant).values():
        assert_refused(client.post(url, data), [MANAGE])
    assert_refused(client.get("/console/adapters/support/remove/"), [MANAGE])
    assert audit_state() == before


def test_an_administrator_sees_and_does_every_adapter_action(
    as_role: Callable[[str], Client], tenant: Tenant, add, folder: Path
) -> None:
    adapter_grant(adapter=add("support"), tenant=tenant, actor="test")
    add("legal")
    client = as_role("Administrator")
    assert 'id="adapter-form"' in client.get(ADAPTERS).content.decode()
    page = client.get("/console/adapters/support/").content.decode()
    assert 'id="grant-form"' in page and 'id="remove-link"' in page
    assert 'id="adapter-grant-form"' in client.get("/console/tenants/acme/").content.decode()
    actions = writes(tenant)
    actions["register"] = (ADAPTERS, {"name": "fresh", "path": str(folder)})
    del actions["grant from the tenant"]  # the same grant as "grant"
    for name, (url, data) in actions.items():
        assert client.post(url, data).status_code == 302, name
    done = AdminAction.objects.filter(actor="console:administrator")
    assert sorted(done.values_list("action", flat=True)) == [
        "adapter.added",
        "adapter.granted",
        "adapter.removed",
        "adapter.revoked",
    ]


def test_reading_needs_the_adapter_view_permissions(django_user_model, tenant: Tenant, add) -> None:
    add("support")
    # Every view permission but the adapters': the tenant page leaves its section out.
    perms = tenants_permissions("view_").exclude(codename__startswith="view_adapter")
    client = signed_in(django_user_model, "old-viewer", perms)
    assert_refused(client.get(ADAPTERS), [VIEW_ADAPTER, VIEW_GRANT])
    assert client.get("/console/adapters/support/").status_code == 403
    html = client.get("/console/tenants/acme/").content.decode()
    # The tenant page needs no adapter permission: it leaves the section out.
    assert client.get("/console/tenants/acme/").status_code == 200
    assert 'id="adapters"' not in html and 'id="adapters-link"' not in html


def test_an_anonymous_visitor_is_sent_to_sign_in(client: Client) -> None:
    response = client.get(ADAPTERS)
    assert response.status_code == 302 and response["Location"].startswith("/console/login/")


def test_a_post_without_the_csrf_token_is_refused(csrf_staff: Client, folder: Path) -> None:
    response = csrf_staff.post(ADAPTERS, {"name": "support", "path": str(folder)})
    assert response.status_code == 403
    assert not Adapter.objects.exists()


# Queries


def queries_of(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def test_the_pages_query_count_does_not_grow_with_the_rows(
    staff: Client, tenant: Tenant, add
) -> None:
    def grow(prefix: str, count: int) -> None:
        for n in range(count):
            adapter = add(f"{prefix}{n}")
            other = tenant_create(slug=f"{prefix}t{n}", name="T", limits={}, actor="test")
            for holder in (tenant, other):
                adapter_grant(adapter=adapter, tenant=holder, actor="test")
                usage(holder, adapter.name, n % 5, n + 1)
            adapter_grant(adapter=support, tenant=other, actor="test")
            usage(other, "support", n % 5, n + 1)

    support = add("support")
    adapter_grant(adapter=support, tenant=tenant, actor="test")
    urls = (ADAPTERS, "/console/adapters/support/?window=7d", "/console/tenants/acme/?window=7d")
    grow("a", 2)
    few = [queries_of(staff, url) for url in urls]
    grow("b", 12)
    assert [queries_of(staff, url) for url in urls] == few


def test_the_pages_stay_within_a_fixed_query_budget(
    staff: Client, tenant: Tenant, add, django_assert_max_num_queries
) -> None:
    support = add("support")
    for n in range(20):
        other = tenant_create(slug=f"t{n}", name="T", limits={}, actor="test")
        adapter_grant(adapter=support, tenant=other, actor="test")
        usage(other, "support", n % 7, n + 1)
    for url in (ADAPTERS, "/console/adapters/support/?window=30d"):
        with django_assert_max_num_queries(15):
            assert staff.get(url).status_code == 200
