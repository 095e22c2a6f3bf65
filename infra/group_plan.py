"""The numbers behind a group of replicas (docs/scale-out.md): which zones, how a roll proceeds,
how long autohealing waits, what quota it needs. Pure functions, so the config check, the
resources and the docs all use the same ones.

Google's rules this follows (docs/facts/gcp.md, "Managed instance groups"):
- A regional group's fixed maxSurge and maxUnavailable must each be 0 or at least the number of
  zones the group uses, and at least one of them above 0.
- Autohealing's initial delay is 0-3600 s.
"""

from __future__ import annotations

from dataclasses import dataclass

# The API's limit for an autohealing policy's initial delay.
MAX_INITIAL_DELAY_SECONDS = 3600
# A replica's last word on a failed start is its boot watchdog, which fires up to 30 minutes
# after the ready deadline (the VM runtime's slack for boot, host setup and the image pull).
# Autohealing must not judge a replica before that, or it would recreate one still starting
# (each recreation a new cold start that bills), plus five minutes of margin.
WATCHDOG_AFTER_DEADLINE_SECONDS = 30 * 60
HEALING_MARGIN_SECONDS = 300
# The longest ready deadline a replica may have so that the delay stays within the API's limit.
MAX_GROUP_READY_TIMEOUT_MINUTES = (
    MAX_INITIAL_DELAY_SECONDS - WATCHDOG_AFTER_DEADLINE_SECONDS - HEALING_MARGIN_SECONDS
) // 60
# gcp.readyTimeoutMinutes in a group when the stack does not set it.
GROUP_DEFAULT_READY_TIMEOUT_MINUTES = MAX_GROUP_READY_TIMEOUT_MINUTES


@dataclass(frozen=True)
class GroupPlan:
    zones: tuple[str, ...]
    max_surge: int
    max_unavailable: int
    initial_delay_seconds: int
    gpus_per_replica: int
    replicas: int

    @property
    def gpus_needed(self) -> int:
        """GPUs the region's quota must hold at the peak of a roll."""
        return (self.replicas + self.max_surge) * self.gpus_per_replica

    @property
    def serving_during_roll(self) -> int:
        """Replicas that keep serving while a roll replaces the others."""
        return self.replicas - self.max_unavailable


def plan(
    *,
    region_zones: list[str],
    replicas: int,
    max_surge: int,
    ready_timeout_minutes: int,
    gpus_per_replica: int,
) -> GroupPlan:
    """The group's zones and roll settings.

    Without surge (the default: no GPU beyond `replicas` is ever asked for), a roll takes down
    as many replicas at once as the group has zones, so the group uses at most `replicas - 1`
    zones and one replica always keeps serving. With `max_surge` > 0 the group uses up to that
    many zones, creates that many new replicas before deleting old ones, and keeps all serving.
    """
    if replicas < 2 or not region_zones:
        raise ValueError("a group needs 2+ replicas and a zone offering the machine type")
    if max_surge > 0:
        zones = tuple(region_zones[:max_surge])
        surge, unavailable = len(zones), 0
    else:
        zones = tuple(region_zones[: replicas - 1])
        surge, unavailable = 0, len(zones)
    delay = ready_timeout_minutes * 60 + WATCHDOG_AFTER_DEADLINE_SECONDS + HEALING_MARGIN_SECONDS
    return GroupPlan(
        zones=zones,
        max_surge=surge,
        max_unavailable=unavailable,
        initial_delay_seconds=min(delay, MAX_INITIAL_DELAY_SECONDS),
        gpus_per_replica=gpus_per_replica,
        replicas=replicas,
    )
