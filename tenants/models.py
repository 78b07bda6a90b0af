"""Tenants, their API keys, usage, the 429 audit, the audit of admin actions and the LoRA
adapters tenants may be granted."""

from django.db import models
from django.db.models import Q
from django.utils import timezone

# Limit fields shared by Tenant (the limits) and ApiKey (optional per-key overrides).
# None means "no limit at this scope".
LIMIT_FIELDS = ("rpm", "tpm", "max_inflight", "tokens_per_day", "tokens_per_month")

SCOPES = ("completions", "models", "usage")

# A tenant's scheduling weight is 1 to this: relative shares, and a bound that keeps one
# tenant's share of a full queue meaningful.
MAX_WEIGHT = 1000


def _limit_field(verbose_name: str, help_text: str) -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(verbose_name, null=True, blank=True, help_text=help_text)


def _positive_limits(prefix: str) -> list[models.BaseConstraint]:
    return [
        models.CheckConstraint(
            condition=Q(**{f"{name}__isnull": True}) | Q(**{f"{name}__gt": 0}),
            name=f"{prefix}_{name}_positive",
        )
        for name in LIMIT_FIELDS
    ]


class Tenant(models.Model):
    """A customer of the node: its limits apply to all its keys together."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    # False exactly while suspended (suspended_at says since when; a constraint keeps the two
    # together): every key of the tenant is refused with 403 tenant_suspended, its rows stay.
    active = models.BooleanField(default=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    rpm = _limit_field("requests per minute", "Requests per minute across all keys.")
    tpm = _limit_field("tokens per minute", "Prompt + completion tokens per minute.")
    max_inflight = _limit_field("max in-flight", "Requests running at the same time.")
    tokens_per_day = _limit_field("tokens per day", "Quota per UTC calendar day.")
    tokens_per_month = _limit_field("tokens per month", "Quota per UTC calendar month.")
    burst_percent = models.PositiveSmallIntegerField(
        default=20,
        help_text="Share of the per-minute limits that may arrive at once (1-100). "
        "In any trailing minute a client gets at most limit x (1 + burst%).",
    )
    # The database default keeps writers that predate the column (a replica not yet upgraded)
    # working.
    scheduling_weight = models.PositiveSmallIntegerField(
        default=1,
        db_default=1,
        help_text="Share of the model while tenants wait for it together (1-1000): a tenant of "
        "weight 2 is served twice the tokens of one of weight 1.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            *_positive_limits("tenant"),
            models.CheckConstraint(
                condition=Q(burst_percent__gte=1) & Q(burst_percent__lte=100),
                name="tenant_burst_percent_range",
            ),
            models.CheckConstraint(
                condition=Q(active=True, suspended_at__isnull=True)
                | Q(active=False, suspended_at__isnull=False),
                name="tenant_suspended_when_inactive",
            ),
            # The engine's fair queue divides by it (engine/fairness.py).
            models.CheckConstraint(
                condition=Q(scheduling_weight__gte=1) & Q(scheduling_weight__lte=MAX_WEIGHT),
                name="tenant_scheduling_weight_range",
            ),
        ]
        # Console permissions that belong to no model of their own (tenants/migrations/0005
        # gives them to the Administrator role). manage_adapters guards every write of
        # adapters and their grants (register, remove, grant, revoke).
        permissions = [
            ("manage_console_users", "Can add console users and set their roles"),
            ("manage_adapters", "Can grant and remove LoRA adapters"),
        ]

    def __str__(self) -> str:
        return self.slug

    def limits(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> "ApiKeyQuerySet":
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, tenant__active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """An API key: a public key_id (stable through rotation) and the HMAC of its secret."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="keys")
    key_id = models.CharField(max_length=32, unique=True, editable=False)
    name = models.CharField(max_length=200, blank=True)
    # HMAC-SHA256(API_KEY_PEPPER, secret) as hex; the secret itself is never stored.
    secret_hash = models.CharField(max_length=64, editable=False)
    previous_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_valid_until = models.DateTimeField(null=True, blank=True, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rpm = _limit_field("requests per minute", "Override for this key (empty: none).")
    tpm = _limit_field("tokens per minute", "Override for this key (empty: none).")
    max_inflight = _limit_field("max in-flight", "Override for this key (empty: none).")
    tokens_per_day = _limit_field("tokens per day", "Override for this key (empty: none).")
    tokens_per_month = _limit_field("tokens per month", "Override for this key (empty: none).")

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = _positive_limits("apikey")

    def __str__(self) -> str:
        return f"{self.key_id} (…{self.last4})"

    @property
    def state(self) -> str:
        now = timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.previous_valid_until is not None and self.previous_valid_until > now:
            return "rotating"
        return "active"

    def limit_overrides(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


class AdminAction(models.Model):
    """Who changed what and when: key issued/rotated/revoked, tenant created, limits changed."""

    class Action(models.TextChoices):
        TENANT_CREATED = "tenant.created"
        TENANT_UPDATED = "tenant.updated"
        LIMITS_CHANGED = "tenant.limits_changed"
        KEY_ISSUED = "key.issued"
        KEY_ROTATED = "key.rotated"
        KEY_REVOKED = "key.revoked"
        KEY_LIMITS_CHANGED = "key.limits_changed"
        # Console accounts (pages/services.py): no tenant; the username is in `after`.
        SIGN_IN = "console.sign_in", "Signed in"
        SIGN_IN_FAILED = "console.sign_in_failed", "Sign-in failed"
        USER_ADDED = "user.added", "Console user added"
        USER_ROLE_SET = "user.role_set", "Console user's role set"
        USER_DEACTIVATED = "user.deactivated", "Console user deactivated"
        USER_REACTIVATED = "user.reactivated", "Console user reactivated"
        USER_PASSWORD_LINK = "user.password_link", "Set-password link made"
        USER_PASSWORD_SET = "user.password_set", "Password set by link"
        TENANT_RENAMED = "tenant.renamed"
        TENANT_SUSPENDED = "tenant.suspended"
        TENANT_RESUMED = "tenant.resumed"
        # LoRA adapters (tenants/adapters.py): the name is in `after` (`before` on removal);
        # grant and revoke also set the tenant.
        ADAPTER_ADDED = "adapter.added", "Adapter added"
        ADAPTER_REMOVED = "adapter.removed", "Adapter removed"
        ADAPTER_GRANTED = "adapter.granted", "Adapter granted"
        ADAPTER_REVOKED = "adapter.revoked", "Adapter revoked"

    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=40, choices=Action.choices)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL)
    key_id = models.CharField(max_length=32, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor} {self.action}"


class UsageMinute(models.Model):
    """Accepted requests, tokens and error answers per key per UTC minute, moved here from
    Redis in batches."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage")
    minute = models.DateTimeField()
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    # Requests of this key answered with an error other than 401 or 429 (4xx, 500, 503); a
    # request that was accepted and then failed is also in `requests`. The database default
    # keeps writers that predate the column (a replica not yet upgraded) working.
    errors = models.PositiveBigIntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(fields=["api_key", "minute"], name="usage_key_minute")
        ]
        # minute alone: the console's node-wide reads of recent hours (loadtest/console_queries.py)
        indexes = [
            models.Index(fields=["tenant", "minute"]),
            models.Index(fields=["minute"], name="usage_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id}@{self.minute:%Y-%m-%d %H:%M}"


class UsageRollup(models.Model):
    """The sums of UsageMinute rows of one key over a coarser UTC bucket (an hour or a day),
    kept up to date in the same transaction as the minutes (tenants.services.usage_minutes_add)
    so that no read sums raw minutes over days."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="+")
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)

    class Meta:
        abstract = True


class UsageHour(UsageRollup):
    """Usage per key per UTC hour (`hour` is the hour's first minute)."""

    hour = models.DateTimeField()

    class Meta:
        ordering = ["-hour"]
        constraints = [models.UniqueConstraint(fields=["api_key", "hour"], name="usage_key_hour")]
        indexes = [
            models.Index(fields=["tenant", "hour"], name="usage_hour_tenant_idx"),
            models.Index(fields=["hour"], name="usage_hour_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id}@{self.hour:%Y-%m-%d %H:00}"


class UsageDay(UsageRollup):
    """Usage per key per UTC day (`day` is the day's midnight, UTC)."""

    day = models.DateTimeField()

    class Meta:
        ordering = ["-day"]
        constraints = [models.UniqueConstraint(fields=["api_key", "day"], name="usage_key_day")]
        indexes = [
            models.Index(fields=["tenant", "day"], name="usage_day_tenant_idx"),
            models.Index(fields=["day"], name="usage_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id}@{self.day:%Y-%m-%d}"


class UsageBatch(models.Model):
    """A batch of Redis usage counters already applied; makes the move exactly-once."""

    batch_id = models.CharField(max_length=80, unique=True)
    applied_at = models.DateTimeField(default=timezone.now)
    rows = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.batch_id


class ThrottleEvent(models.Model):
    """The 429 audit: refusals aggregated per key, reason and UTC minute."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="throttles")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="throttles")
    reason = models.CharField(max_length=40)
    minute = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    sample_addresses = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "reason", "minute"], name="throttle_key_reason_minute"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "minute"]),
            models.Index(fields=["minute"], name="throttle_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id} {self.reason} x{self.count} @{self.minute:%Y-%m-%d %H:%M}"


# An adapter's NAME is what clients send as `model`: lowercase, no slash, no space.
ADAPTER_NAME_REGEX = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Adapter(models.Model):
    """A LoRA adapter registered on this node (a peft folder on the server), served by NAME as
    a model to the tenants it is granted to."""

    name = models.CharField(max_length=64, unique=True)
    # Absolute; checked against the served base when registered (core/adapters.py).
    path = models.CharField(max_length=1024)
    rank = models.PositiveSmallIntegerField()
    target_modules = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(name__regex=ADAPTER_NAME_REGEX), name="adapter_name_format"
            )
        ]

    def __str__(self) -> str:
        return self.name


class AdapterGrant(models.Model):
    """A tenant's right to decode with an adapter (`model: NAME`)."""

    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="grants")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="adapter_grants")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["adapter__name", "tenant__slug"]
        constraints = [
            models.UniqueConstraint(fields=["adapter", "tenant"], name="adapter_grant_unique")
        ]

    def __str__(self) -> str:
        return f"{self.adapter_id} -> {self.tenant_id}"


class AdapterUsageDay(models.Model):
    """Requests and tokens of one tenant with one adapter per UTC day, moved here from Redis
    with the rest of the usage (ratelimit/flush.py). `adapter` is the NAME, kept after the
    adapter is removed."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="adapter_usage")
    adapter = models.CharField(max_length=64)
    day = models.DateField()
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "adapter"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "adapter", "day"], name="adapter_usage_tenant_adapter_day"
            )
        ]
        indexes = [models.Index(fields=["day"], name="adapter_usage_day_idx")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.adapter}@{self.day:%Y-%m-%d}"
