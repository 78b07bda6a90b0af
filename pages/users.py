"""Console accounts: who may use the console and in which role, and their audit trail.

A role is one of the three groups tenants/migrations/0005 makes (docs/console.md, "Roles"). The
writes here are what the Users page does: each one atomic and audited in AdminAction, as the
tenant and key writes are. Sign-ins and failed sign-ins are audited here too.
"""

from django.contrib.auth.models import AbstractBaseUser, Group, User
from django.contrib.auth.tokens import default_token_generator
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from tenants.models import AdminAction

# Highest first: an account in several role groups is shown with its highest.
ROLES = ("Administrator", "Operator", "Viewer")
SUPERUSER = "Superuser"
NO_ROLE = "No role"
USERNAME_MAX = 150


class UserError(ValueError):
    """A console-account change that cannot be done as asked (the message says why)."""


def _audit(
    action: str,
    *,
    actor: str,
    username: str,
    after: dict[str, object],
    before: dict[str, object] | None = None,
) -> None:
    after = {"username": username[:USERNAME_MAX], **after}
    AdminAction.objects.create(actor=actor, action=action, before=before, after=after)


def actor_name(user: AbstractBaseUser) -> str:
    return f"console:{user.get_username()}"


def console_users() -> QuerySet[User]:
    """Staff accounts, with their groups, by username."""
    users = User.objects.filter(is_staff=True)
    return users.prefetch_related("groups").order_by("username")


def role_of(user: User) -> str:
    if user.is_superuser:
        return SUPERUSER
    # Reads the prefetched groups (console_users) rather than one query per account.
    names = {group.name for group in user.groups.all()}
    return next((role for role in ROLES if role in names), NO_ROLE)


def _role_group(role: str) -> Group:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    try:
        return Group.objects.get(name=role)
    except Group.DoesNotExist:
        raise UserError(f"the {role} group is missing: run manage.py migrate") from None


def _check_may_change(user: User, acting_user: User) -> None:
    # An administrator could otherwise lock out the superuser, or themselves by mistake.
    if user.is_superuser:
        raise UserError("A superuser's account is changed in the Django admin only.")
    if user.pk == acting_user.pk:
        raise UserError("You cannot change your own role or deactivate your own account.")


def user_add(*, username: str, role: str, password: str | None, acting_user: User) -> User:
    """Create an active staff account in `role` with `password` (already validated); with
    None, an unusable password until its owner follows a set-password link."""
    group = _role_group(role)
    model = User
    if model.objects.filter(username__iexact=username).exists():
        raise UserError(f"An account named “{username}” exists already.")
    try:
        with transaction.atomic():
            # create_user with None stores an unusable password: no one can sign in as it yet.
            # With None, create_user stores an unusable password: nobody signs in as it yet.
            user = model.objects.create_user(username, password=password, is_staff=True)
            user.groups.add(group)
            _audit(
                AdminAction.Action.USER_ADDED,
                actor=actor_name(acting_user),
                username=username,
                after={"role": role},
            )
    except IntegrityError:  # a concurrent add of the same name
        raise UserError(f"An account named “{username}” exists already.") from None
    return user


def user_set_role(*, user: User, role: str, acting_user: User) -> bool:
    """Put `user` in `role` (and out of the other roles); False when it was in it already."""
    group = _role_group(role)
    _check_may_change(user, acting_user)
    before = role_of(user)
    if before == role:
        return False
    with transaction.atomic():
        user.groups.remove(*Group.objects.filter(name__in=ROLES))
        user.groups.add(group)
        _audit(
            AdminAction.Action.USER_ROLE_SET,
            actor=actor_name(acting_user),
            username=user.get_username(),
            before={"role": before},
            after={"role": role},
        )
    return True


def user_set_active(*, user: User, active: bool, acting_user: User) -> bool:
    """Deactivate (or reactivate) a console account; False when it already was so. An
    inactive account's sessions stop working at its next request (Django's ModelBackend)."""
    _check_may_change(user, acting_user)
    if user.is_active == active:
        return False
    action = AdminAction.Action.USER_REACTIVATED if active else AdminAction.Action.USER_DEACTIVATED
    with transaction.atomic():
        user.is_active = active
        user.save(update_fields=["is_active"])
        _audit(
            action,
            actor=actor_name(acting_user),
            username=user.get_username(),
            before={"active": not active},
            after={"active": active},
        )
    return True


def sign_in_record(*, username: str, address: str | None, succeeded: bool) -> None:
    """Audit a sign-in or a failed one: the username tried and the client address, never the
    password. Attempts refused by the sign-in limiter are not recorded (a flood of them must not
    become a flood of writes); they were never checked."""
    if succeeded:
        action, actor = AdminAction.Action.SIGN_IN, f"console:{username[:USERNAME_MAX]}"
    else:
        action, actor = AdminAction.Action.SIGN_IN_FAILED, "anonymous"
    _audit(action, actor=actor, username=username, after={"address": address or "unknown"})


def password_link_token(*, user: User, acting_user: User) -> str:
    """A one-time token for the account's set-password link (audited, never stored). Django's
    token generator signs the password hash and last sign-in into it, so setting the password
    spends it, and it expires after PASSWORD_RESET_TIMEOUT."""
    _check_may_change(user, acting_user)
    _audit(
        AdminAction.Action.USER_PASSWORD_LINK,
        actor=actor_name(acting_user),
        username=user.get_username(),
        after={},
    )
    return default_token_generator.make_token(user)


def password_set_record(*, user: User) -> None:
    """Audit a password set by its owner through a set-password link."""
    _audit(
        AdminAction.Action.USER_PASSWORD_SET,
        actor=actor_name(user),
        username=user.get_username(),
        after={},
    )
