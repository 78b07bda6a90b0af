"""manage.py adapter_add / adapter_remove / adapter_grant / adapter_revoke / adapter_list: each
prints only its result on stdout, refuses with a clear error (stderr, exit 1 from the shell) and
is audited with the CLI actor."""

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from core.tests.adapter_folders import write_adapter, write_base
from tenants.models import Adapter, AdapterGrant, AdminAction
from tenants.services import tenant_create
from tests.childproc import child_env

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path: Path, settings) -> Callable[..., str]:
    settings.INFERENCE_MODEL = str(write_base(tmp_path / "base"))
    settings.INFERENCE_MAX_ADAPTER_RANK = 16

    def write(name: str = "a", **kwargs: object) -> str:
        return str(write_adapter(tmp_path / "adapters" / name, **kwargs))  # type: ignore[arg-type]

    return write


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_commands_print_only_their_result_and_are_audited(folder, tenant) -> None:
    assert run("adapter_add", "support", folder(rank=8, targets=["q", "v", "wo"])) == "support\n"
    assert run("adapter_add", "legal", folder("b")) == "legal\n"
    assert run("adapter_grant", "support", "acme") == "support acme\n"
    assert run("adapter_list") == "legal\t4\tq,v\t-\nsupport\t8\tq,v,wo\tacme\n"
    assert run("adapter_revoke", "support", "acme") == "support acme\n"
    assert run("adapter_remove", "legal") == "legal\n"
    assert run("adapter_list") == "support\t8\tq,v,wo\t-\n"
    audited = AdminAction.objects.filter(action__startswith="adapter.").order_by("id")
    assert [(a.action, a.tenant_id is not None) for a in audited] == [
        ("adapter.added", False),
        ("adapter.added", False),
        ("adapter.granted", True),
        ("adapter.revoked", True),
        ("adapter.removed", False),
    ]
    assert {a.actor for a in audited} == {audited[0].actor}
    assert audited[0].actor.startswith("cli")


def test_the_list_names_every_tenant_of_an_adapter_and_is_empty_without_any(folder) -> None:
    assert run("adapter_list") == ""
    run("adapter_add", "a", folder())
    for slug in ("zeta", "alpha"):
        tenant_create(slug=slug, actor="t")
        run("adapter_grant", "a", slug)
    assert run("adapter_list") == "a\t4\tq,v\talpha,zeta\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("adapter_add", "Bad Name", "{path}"), "an adapter name is 1-64 characters"),
        (("adapter_add", "big", "{big}"), "rank 32 is above this node's maximum (16)"),
        (("adapter_add", "gone", "/no/such/folder"), "'/no/such/folder' does not exist"),
        (("adapter_add", "one", "{path}"), "an adapter named 'one' already exists"),
        (("adapter_grant", "nope", "acme"), "no adapter named 'nope'"),
        (("adapter_grant", "one", "nobody"), "no tenant with slug 'nobody'"),
        (("adapter_grant", "one", "acme"), "'one' is already granted to 'acme'"),
        (("adapter_revoke", "two", "acme"), "'two' is not granted to 'acme'"),
        (("adapter_remove", "nope"), "no adapter named 'nope'"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(folder, tenant, args, message) -> None:
    run("adapter_add", "one", folder("one"))
    run("adapter_add", "two", folder("two"))
    run("adapter_grant", "one", "acme")
    paths = {"path": folder("ok"), "big": folder("big", rank=32)}
    before = (AdminAction.objects.count(), Adapter.objects.count(), AdapterGrant.objects.count())
    with pytest.raises(CommandError) as refused:
        run(*(arg.format(**paths) for arg in args))
    assert message in str(refused.value)
    after = (AdminAction.objects.count(), Adapter.objects.count(), AdapterGrant.objects.count())
    assert after == before


@pytest.mark.django_db(transaction=True)
def test_from_the_shell_the_result_is_on_stdout_and_an_error_on_stderr(folder, tenant) -> None:
    # As an operator runs them: a separate process on the test's database.
    env = child_env(database=True, INFERENCE_MODEL=str(Path(folder()).parent.parent / "base"))
    path = folder("shell")

    def shell(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "manage.py", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    added = shell("adapter_add", "shell", path)
    assert (added.returncode, added.stdout, added.stderr) == (0, "shell\n", "")
    refused = shell("adapter_grant", "shell", "nobody")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "no tenant with slug 'nobody'" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert Adapter.objects.get().name == "shell"
