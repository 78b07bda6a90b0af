"""Fixtures of the role tests: accounts in the Viewer, Operator and Administrator groups that
tenants/migrations/0005 makes (with the adapter views of 0008).

A transactional test elsewhere empties every table after it runs, groups included (Django
re-creates permissions then, not data-migration rows), so the fixture runs the migration's own
function again first: the groups the tests use are the ones the migration makes."""

import importlib
from collections.abc import Callable

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, User
from django.test import Client

ROLES = ("Viewer", "Operator", "Administrator")
PASSWORD = "correct horse battery staple 42"

roles_migration = importlib.import_module("tenants.migrations.0005_console_roles")
adapters_migration = importlib.import_module("tenants.migrations.0008_adapters")


def ensure_roles() -> None:
    roles_migration.create_roles(apps, None)
    adapters_migration.grant_views(apps, None)


def role_account(django_user_model, role: str, username: str | None = None) -> User:
    ensure_roles()  # a transactional test before this one may have emptied the groups
    user = django_user_model.objects.create_user(
        username or role.lower(), password=PASSWORD, is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def as_role(db, django_user_model) -> Callable[[str], Client]:
    """A client signed in as a fresh account (named after the role) of the given role."""
    ensure_roles()

    def sign_in(role: str) -> Client:
        client = Client()
        client.force_login(role_account(django_user_model, role))
        return client

    return sign_in
