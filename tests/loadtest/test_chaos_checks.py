"""The chaos report's usage check on small synthetic runs: an answer the client got whole must be
in Postgres; a request that died with the killed replica may be, once; the check says which
answers are missing and names the suspects (answered by the replica just before its death)."""

from loadtest.chaos.checks import answered_before_kills, check_usage, in_flight_at_kills
from loadtest.chaos.rundata import RunData

KILLED, OTHER = "http://127.0.0.1:1001", "http://127.0.0.1:1002"
KILL_T = 1000.0


def answer(rid: str, key: str, t0: float, prompt: int, completion: int, **extra: object) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"kind": "rest", "key": key, "id": rid, "t0": t0, "dt": 0.5, "status": 200,
            "complete": True, "usage": usage, **extra}  # fmt: skip


def served(rid: str, server: str, start: float, end: float, status: int = 200) -> dict:
    return {"id": rid, "server": server, "status": status, "origin": status, "start": start,
            "end": end, "retries": 0, "path": "/v1/completions"}  # fmt: skip


def run(records: list[dict], access: list[dict], usage: dict[str, dict[str, int]]) -> RunData:
    kill = {"kind": "replica_killed", "url": KILLED, "t": KILL_T, "dead_at": KILL_T + 0.05}
    return RunData(records=records, phases={}, events=[kill], access=access, usage=usage,
                   limits={}, leases={}, series={}, settings={}, profile={})  # fmt: skip


def billed(requests: int, prompt: int, completion: int) -> dict[str, int]:
    return {"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion}


def base() -> tuple[list[dict], list[dict]]:
    """Two whole answers of key a: one long before the kill (elsewhere), one just before it
    on the replica that was killed (the 0.14 s of run 20261203-073718)."""
    records = [answer("early", "a", 900.0, 10, 2), answer("late", "a", KILL_T - 0.64, 62, 8)]
    access = [served("early", OTHER, 900.0, 900.5), served("late", KILLED, 999.36, 999.86)]
    return records, access


def test_every_whole_answer_in_postgres_passes() -> None:
    records, access = base()
    check, rows = check_usage(run(records, access, {"a": billed(2, 72, 10)}))
    assert check.passed, check.detail
    assert rows[0]["billed_died"] == 0 and rows[0]["missing"]["requests"] == 0
    assert "answered but missing from Postgres: none" in check.detail


def test_an_answer_missing_from_postgres_fails_and_is_named() -> None:
    records, access = base()
    data = run(records, access, {"a": billed(1, 10, 2)})  # "late" was answered, not billed
    check, rows = check_usage(data)
    assert not check.passed
    assert rows[0]["missing"] == billed(1, 62, 8)
    # Not reported as "-1 settled" requests of the killed replica, as it once was.
    assert rows[0]["billed_died"] == 0 and "0 had been settled before" in check.detail
    assert "a 1 (62 prompt, 8 completion tokens" in check.detail
    assert "late (62+8 tokens, answered 0.14 s before the kill; same tokens" in check.detail
    assert "early" not in check.detail


def test_a_request_settled_before_its_replica_died_may_be_billed_once() -> None:
    records, access = base()
    records.append({"kind": "rest", "key": "a", "id": "died", "t0": KILL_T - 0.2, "status": 502})
    access.append(served("died", KILLED, KILL_T - 0.2, KILL_T + 0.06, status=502))
    check, rows = check_usage(with_in_flight(run(records, access, {"a": billed(3, 92, 12)})))
    assert check.passed, check.detail
    assert rows[0]["billed_died"] == 1 and rows[0]["died"] == 1
    # Twice is not once: more than died is a failure (not a missing answer).
    check, _ = check_usage(with_in_flight(run(records, access, {"a": billed(4, 112, 14)})))
    assert not check.passed and "keys that differ otherwise: ['a']" in check.detail


def with_in_flight(data: RunData) -> RunData:
    data.in_flight = in_flight_at_kills(data)  # as run_checks fills it
    return data


def test_suspects_are_the_killed_replicas_whole_answers_just_before_it_died() -> None:
    records, access = base()
    # A WebSocket answer goes by its socket's replica; one on the other replica is no suspect.
    records.append(answer("ws1", "b", KILL_T - 1.0, 5, 1, kind="ws", conn="chaos-ws-1"))
    records.append(answer("other", "b", KILL_T - 1.0, 5, 1))
    access += [served("chaos-ws-1", KILLED, 950.0, 1000.1), served("other", OTHER, 999, 999.5)]
    suspects = answered_before_kills(run(records, access, {}))
    assert [r["id"] for r in suspects] == ["ws1", "late"]
    assert round(suspects[1]["before_kill"], 2) == 0.14
