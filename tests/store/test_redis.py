"""``RedisHealthStore`` beyond the contract: what other processes see, time, failures of Redis, bounds.

Two stores on one server stand for two processes (each has its own connections, threads and
memory); one test forks a real child. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis_server import RedisServer, free_port, require_redis, wait_until

import openai_lb
from openai_lb import BackendCooled, ConfigurationError, InMemoryHealthStore, StoreDisconnected, StoreReconnected
from openai_lb._clients import transport_class

pytestmark = pytest.mark.timeout(60)

A = "https://a.example.com"
B = "https://b.example.com"
DAY = 86_400.0
Make = Callable[..., Any]


def now() -> float:
    return time.monotonic()


def doubling(failures: int) -> float:
    return 5.0 * 2 ** (failures - 1)


def connected(*stores: Any) -> None:
    wait_until(lambda: all(store.connected for store in stores), 10, "every store connecting")


def test_reads_never_touch_the_network_they_are_the_memory_stores_own() -> None:
    require_redis()
    from openai_lb._redis import RedisHealthStore

    assert RedisHealthStore.blocked is InMemoryHealthStore.blocked
    assert RedisHealthStore.snapshot is InMemoryHealthStore.snapshot
    assert RedisHealthStore.owner is InMemoryHealthStore.owner


def test_a_block_in_one_process_reaches_another_with_its_deadline(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    until = now() + 30
    one.block(A, "gpt-4o", until, "rate_limited")
    wait_until(lambda: other.blocked(A, "gpt-4o", now()) is not None, what="the block reaching the other store")
    found = other.blocked(A, "gpt-4o", now())
    assert found.reason == "rate_limited"
    assert abs(found.until - until) < 0.05, f"deadline moved by {found.until - until:.3f} s on the way"


def test_a_trip_in_one_process_opens_the_breaker_and_sets_the_streak_in_another(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    sent = now()
    assert one.trip(A, sent, now(), doubling) == (1, 5.0)
    wait_until(lambda: other.snapshot(A, now()).failures == 1, what="the streak reaching the other store")
    assert other.blocked(A, "anything", now()).reason == "failure"
    assert other.trip(A, sent, now(), doubling) is None, "an attempt sent before the fleet's trip counted again"


def test_attempts_of_one_outage_failing_in_two_processes_at_once_make_one_fleet_step(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    sent = now()
    # Neither has heard of the other's trip yet: both count locally, Redis counts once.
    assert one.trip(A, sent, now(), doubling) is not None
    assert other.trip(A, sent, now(), doubling) is not None
    time.sleep(0.001)
    fresh = redis_store()
    connected(fresh)
    wait_until(lambda: fresh.snapshot(A, now()).failures == 1, what="a new store learning the fleet's streak")
    wait_until(
        lambda: one.snapshot(A, now()).failures == other.snapshot(A, now()).failures == 1,
        what="both stores settling on the fleet's streak of 1",
    )


def test_a_success_anywhere_resets_the_fleets_streak(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    one.trip(A, now(), now(), lambda failures: 0.05)
    wait_until(lambda: other.snapshot(A, now()).failures == 1, what="the streak reaching the other store")
    wait_until(lambda: other.blocked(A, "x", now()) is None, what="the breaker closing")
    other.count_success(A, "x", now())
    wait_until(lambda: one.snapshot(A, now()).failures == 0, what="the reset reaching the first store")


def test_a_store_that_starts_later_learns_every_block_still_running(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    one.block(A, "gpt-4o", now() + 30, "rate_limited")
    one.block(A, "ended", now() + 0.01, "rate_limited")
    one.trip(A, now(), now(), doubling)
    client: Any = one._client
    wait_until(lambda: len(client.keys(f"{one.namespace}:v1:*")) >= 2, what="the writes reaching Redis")
    late = redis_store()
    connected(late)
    assert late.blocked(A, "gpt-4o", now()).reason == "rate_limited"
    assert late.snapshot(A, now()).failures == 1
    assert late.blocked(A, "ended", now() + 1) in (None, late.blocked(A, "x", now() + 1))


def test_cooldowns_learned_from_the_fleet_are_events_with_origin_fleet(redis_store: Make) -> None:
    events: list[Any] = []
    one, other = redis_store(), redis_store(on_event=events.append)
    connected(one, other)
    one.block(A, "gpt-4o", now() + 30, "rate_limited")
    one.trip(A, now(), now(), doubling)
    wait_until(lambda: len([e for e in events if isinstance(e, BackendCooled)]) == 2, what="two fleet events")
    cooled = [e for e in events if isinstance(e, BackendCooled)]
    assert {e.origin for e in cooled} == {"fleet"}
    assert {(e.deployment, e.reason) for e in cooled} == {("gpt-4o", "rate_limited"), (None, "failure")}
    own: list[Any] = []
    alone = redis_store(on_event=own.append)
    connected(alone)
    alone.block(A, "mine", now() + 30, "rate_limited")
    wait_until(lambda: other.blocked(A, "mine", now()) is not None, what="the block going round")
    assert not [e for e in own if isinstance(e, BackendCooled) and e.deployment == "mine"], (
        "a store announced its own block as the fleet's"
    )


def test_a_deadline_from_a_clock_far_behind_is_cut_to_max_cooldown(redis_store: Make) -> None:
    one = redis_store()
    # This host's wall clock is 10,000 s behind: the fleet's 30 s look like 10,030 s here.
    behind = redis_store(wall_clock=lambda: time.time() - 10_000, max_cooldown=60)
    connected(one, behind)
    one.block(A, "gpt-4o", now() + 30, "rate_limited")
    wait_until(lambda: behind.blocked(A, "gpt-4o", now()) is not None, what="the block arriving")
    assert behind.blocked(A, "gpt-4o", now()).until <= now() + 60, "a skewed deadline was not capped"


def test_a_deadline_converts_through_wall_clock_milliseconds(redis_store: Make) -> None:
    one = redis_store()
    ahead = redis_store(wall_clock=lambda: time.time() + 20)  # 20 s ahead: the fleet's 30 s look like 10 s
    connected(one, ahead)
    sent = now()
    one.block(A, "gpt-4o", sent + 30, "rate_limited")
    wait_until(lambda: ahead.blocked(A, "gpt-4o", now()) is not None, what="the block arriving")
    # However late it arrives, the deadline is the same moment: 30 s after sending, less the 20 s of skew.
    offset = ahead.blocked(A, "gpt-4o", now()).until - (sent + 10)
    assert abs(offset) < 0.05, f"expected the deadline 10 s after sending, off by {offset:.3f} s"


def test_values_are_versioned_json_in_expiring_keys_of_the_namespace(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    one.block(A, "gpt-4o", now() + 30, "rate_limited")
    one.trip(A, now(), now(), doubling)
    client: Any = one._client
    mine = f"{one.namespace}:*"
    wait_until(lambda: len(client.keys(mine)) == 2, what="two keys written")
    for key in client.keys(mine):
        assert key.decode().startswith(f"{one.namespace}:v1:"), key
        value = json.loads(client.get(key))
        assert (value["v"], value["key"]) == (1, A), value
        ttl = client.pttl(key)
        assert 0 < ttl <= (30_000 if value["kind"] == "block" else 5_000 + 300_000), (key, ttl)


def test_keys_vanish_when_their_blocks_end(redis_store: Make) -> None:
    one = redis_store(max_cooldown=0.2)  # the streak outlives its breaker by max_cooldown
    connected(one)
    one.block(A, "gpt-4o", now() + 0.2, "rate_limited")
    one.trip(A, now(), now(), lambda failures: 0.2)
    client: Any = one._client
    mine = f"{one.namespace}:*"
    wait_until(lambda: len(client.keys(mine)) == 2, what="two keys written")
    wait_until(lambda: not client.keys(mine), 5, "the keys expiring")


def test_ten_thousand_distinct_deployments_leave_memory_and_redis_bounded(redis_store: Make) -> None:
    one = redis_store(max_entries=1_000)
    other = redis_store(max_entries=1_000)
    connected(one, other)
    until = now() + 1.0
    for number in range(10_000):
        one.block(A, f"deployment-{number}", until, "rate_limited")
    client: Any = one._client

    def held() -> int:
        return sum(1 for _ in client.scan_iter(match=f"{one.namespace}:*", count=1000))

    wait_until(lambda: not one._queue, 20, "the writes draining")
    assert max(one.size, other.size) <= 1_000, (one.size, other.size)
    wait_until(lambda: held() == 0, 20, "every key expiring with its block")
    time.sleep(0.01)
    one.block(A, "after", now() + 5, "rate_limited")  # writes keep sweeping ended blocks
    assert one.size <= 1_000


def test_malformed_and_foreign_values_in_the_namespace_are_ignored_and_counted(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    client: Any = one._client
    prefix = f"{one.namespace}:v1:"
    client.set(prefix + "block:junk", b"\x80not json")
    client.set(prefix + "block:list", "[1, 2]")
    client.set(prefix + "block:future", json.dumps({"v": 2, "kind": "block"}))
    client.set(prefix + "breaker:bad", json.dumps({"v": 1, "kind": "breaker", "key": A, "until": "soon", "by": "x"}))
    for raw in (b"garbage", json.dumps({"v": 1, "kind": "block", "key": A, "until": 1e400, "by": "x"})):
        client.publish(one.channel, raw)
    wait_until(lambda: one.ignored == 2, what="two published values ignored")
    late = redis_store()
    connected(late)
    assert late.ignored == 4, late.ignored
    late.block(A, "gpt-4o", now() + 30, "rate_limited")
    wait_until(lambda: one.blocked(A, "gpt-4o", now()) is not None, what="the store still working")


def test_a_value_nested_deeper_than_the_parser_goes_is_ignored_and_the_store_stays_connected(
    redis_store: Make,
) -> None:
    one = redis_store()
    connected(one)
    deep = "[" * 10_000 + "]" * 10_000
    one._client.publish(one.channel, deep)
    one._client.set(f"{one.namespace}:v1:block:deep", deep)
    wait_until(lambda: one.ignored == 1, what="the deep published value ignored")
    late = redis_store()
    connected(late)
    assert late.ignored == 1, "the deep stored value was not ignored on resync"
    late.block(A, "gpt-4o", now() + 30, "rate_limited")
    wait_until(lambda: one.blocked(A, "gpt-4o", now()) is not None, what="the fleet still sharing cooldowns")


def test_close_writes_what_is_queued(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    for number in range(200):
        one.block(A, f"d{number}", now() + 30, "rate_limited")
    client: Any = redis_store()._client
    one.close()
    assert len(client.keys(f"{one.namespace}:*")) == 200, "close() left writes behind"
    assert one.closed
    assert not one.connected
    one.block(A, "after", now() + 30, "rate_limited")  # a closed store still answers from memory
    assert one.blocked(A, "after", now()) is not None


def test_a_store_is_a_context_manager(redis_server: RedisServer, namespace: str) -> None:
    with openai_lb.RedisHealthStore(redis_server.url, namespace=namespace) as store:
        connected(store)
    assert store.closed


def test_an_unreachable_redis_at_construction_does_not_raise_and_the_store_works_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_redis()
    events: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="openai_lb"):
        store = openai_lb.RedisHealthStore(f"redis://127.0.0.1:{free_port()}/0", on_event=events.append)
        try:
            store.block(A, "gpt-4o", now() + 30, "rate_limited")
            assert store.blocked(A, "gpt-4o", now()) is not None
            wait_until(lambda: events, what="StoreDisconnected")
            time.sleep(0.3)  # reconnection attempts go on meanwhile
        finally:
            store.close()
    assert [type(e) for e in events] == [StoreDisconnected], events
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_a_wrong_password_fails_open_with_one_warning_and_no_password_anywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret, wrong = "s3cret-Server-Pass", "Wr0ng-Client-Pass"
    with RedisServer(password=secret) as server:
        events: list[Any] = []
        url = server.url.replace(secret, wrong)
        with caplog.at_level(logging.DEBUG, logger="openai_lb"):
            store = openai_lb.RedisHealthStore(url, on_event=events.append, reconnect_base=0.02, reconnect_max=0.05)
            try:
                store.block(A, "gpt-4o", now() + 30, "rate_limited")
                wait_until(lambda: events, what="StoreDisconnected")
                time.sleep(0.3)
                seen = [repr(store), str(store.url), *map(repr, events)]
            finally:
                store.close()
        seen += [r.getMessage() for r in caplog.records]
        assert [type(e) for e in events] == [StoreDisconnected], events
        assert events[0].error == "AuthenticationError", events[0]
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        for text in seen:
            assert wrong not in text, f"the client's password leaked: {text!r}"
            assert secret not in text, f"the server's password leaked: {text!r}"
        with pytest.raises(ConfigurationError) as raised:
            openai_lb.RedisHealthStore(url.replace("redis://", "redis+tls://"))
        assert wrong not in str(raised.value)


def test_a_password_given_as_a_keyword_is_used(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(password="kw-pass") as server:
        url = server.url.replace(":kw-pass@", "")
        with openai_lb.RedisHealthStore(url, password="kw-pass") as store:
            connected(store)
            assert "kw-pass" not in repr(store)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://:pw@127.0.0.1:notaport/0", "redis://h/0?db=x"]
)
def test_a_malformed_url_raises_configuration_error_without_the_password(url: str) -> None:
    require_redis()
    with pytest.raises(ConfigurationError) as raised:
        openai_lb.RedisHealthStore(url)
    assert "pw" not in str(raised.value)


def test_blocks_learned_while_redis_was_down_reach_the_fleet_after_it_returns(namespace: str) -> None:
    with RedisServer() as server:
        events: list[Any] = []
        options: dict[str, Any] = {"namespace": namespace, "reconnect_base": 0.02, "reconnect_max": 0.1}
        with (
            openai_lb.RedisHealthStore(server.url, on_event=events.append, **options) as one,
            openai_lb.RedisHealthStore(server.url, **options) as other,
        ):
            connected(one, other)
            other.block(A, "before", now() + 30, "rate_limited")
            wait_until(lambda: one.blocked(A, "before", now()) is not None, what="the first block")
            server.kill()
            wait_until(lambda: not one.connected and not other.connected, what="both noticing")
            one.block(A, "while-down", now() + 30, "rate_limited")
            server.start()  # empty: it forgot everything
            connected(one, other)
            wait_until(lambda: other.blocked(A, "while-down", now()) is not None, what="the offline block spreading")
            fresh = openai_lb.RedisHealthStore(server.url, **options)
            with fresh:
                connected(fresh)
                assert fresh.blocked(A, "before", now()) is not None, "a block was lost with the server"
            kinds = [type(e) for e in events if not isinstance(e, BackendCooled)]
            assert kinds == [StoreDisconnected, StoreReconnected], kinds


def test_a_slow_redis_never_slows_a_request(redis_store: Make, redis_server: RedisServer) -> None:
    one = redis_store()
    connected(one)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.perf_counter()
        for number in range(100):
            one.block(A, f"d{number}", now() + 30, "rate_limited")
            one.trip(A, now(), now(), doubling)
            one.count_success(A, f"d{number}", now())
            one.blocked(A, f"d{number}", now())
            one.remember([f"resp_{number}"], A, now() + DAY, 1_000)
            one.owner(f"resp_{number}", now())
            one.forget(f"resp_{number}")
        spent = time.perf_counter() - started
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert spent < 2.0, f"700 store calls took {spent:.3f} s while Redis hung"
    wait_until(lambda: one.connected, 10, "the store recovering")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_store_made_before_fork_works_in_the_child(redis_store: Make) -> None:
    parent = redis_store()
    connected(parent)
    parent.block(A, "from-parent", now() + 30, "rate_limited")
    wait_until(lambda: not parent._queue, what="the parent's write leaving")
    pid = os.fork()
    if pid == 0:  # the child: its own connection and threads; report by exit code
        code = 1
        try:
            wait_until(lambda: parent.connected, 10)
            assert parent.blocked(A, "from-parent", now()) is not None
            parent.block(A, "from-child", now() + 30, "rate_limited")
            parent.remember(["resp_from_child"], A, now() + DAY, 100)
            parent.close()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (found := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        assert time.monotonic() < deadline, "the child hung"
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(found[1]) == 0, "the store failed in the forked child"
    wait_until(lambda: parent.blocked(A, "from-child", now()) is not None, what="the child's block reaching the parent")
    wait_until(lambda: parent.owner("resp_from_child", now()) == A, what="the child's owner reaching the parent")


def test_a_url_is_one_store_per_process_wherever_health_store_is_accepted(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_lb._stores import process_store, store_for_url

    url = redis_server.url
    transport = transport_class()([openai_lb.Backend(A, api_key="k")], health_store=url)
    assert isinstance(transport.balancer.store, openai_lb.RedisHealthStore)
    assert transport.balancer.store is store_for_url(url)
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", url)
    assert process_store() is transport.balancer.store
    assert transport_class()([openai_lb.Backend(A, api_key="k")]).balancer.store is transport.balancer.store
    monkeypatch.delenv("OPENAI_LB_HEALTH_STORE")
    assert isinstance(process_store(), InMemoryHealthStore)
    assert not isinstance(process_store(), openai_lb.RedisHealthStore)


def test_import_openai_lb_does_not_import_redis() -> None:
    code = "import sys, openai_lb; print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, timeout=60)
    assert out.stdout.strip() == "[]", f"import openai_lb loaded {out.stdout.strip()}"


def test_patch_takes_a_store_url_and_rejects_a_malformed_one_at_once(redis_server: RedisServer) -> None:
    from openai_lb._stores import store_for_url

    backends = [openai_lb.Backend(A, api_key="k")]
    with openai_lb.patch(backends, health_store=redis_server.url):
        import openai

        client: Any = openai.AzureOpenAI(api_key="k", api_version="2024-10-21")
        assert client.balancer is not None, "the patched SDK class did not balance"
        assert client.balancer.store is store_for_url(redis_server.url)
    with pytest.raises(ConfigurationError):
        openai_lb.patch(backends, health_store="memcached://127.0.0.1:11211")


def test_fleets_on_two_databases_of_one_server_stay_apart(redis_server: RedisServer) -> None:
    first = openai_lb.RedisHealthStore(redis_server.url.rsplit("/", 1)[0] + "/1")
    second = openai_lb.RedisHealthStore(redis_server.url.rsplit("/", 1)[0] + "/2")
    same_db = openai_lb.RedisHealthStore(redis_server.url.rsplit("/", 1)[0] + "/1")
    try:
        wait_until(lambda: first.connected and second.connected and same_db.connected, what="three stores connecting")
        first.block(A, "gpt-4o", time.monotonic() + 60, "rate_limited")
        wait_until(
            lambda: same_db.blocked(A, "gpt-4o", time.monotonic()) is not None, what="the same database learning"
        )
        assert second.blocked(A, "gpt-4o", time.monotonic()) is None, "pub/sub leaked a block to another database"
    finally:
        for store in (first, second, same_db):
            store.close()


def test_a_fleet_value_that_could_forge_a_log_line_is_ignored(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    forged = {"v": 1, "kind": "block", "key": "https://a\nFAKE LOG LINE", "deployment": "d"}
    forged.update({"until": (time.time() + 60) * 1000, "reason": "rate_limited", "by": "x"})
    one._client.publish(one.channel, json.dumps(forged))
    wait_until(lambda: one.ignored == 1, what="the forged value being ignored")
    assert one.size == 0


def test_a_resync_learns_every_block_without_an_event_per_block(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    for number in range(50):
        one.block(A, f"d{number}", now() + 60, "rate_limited")
    wait_until(lambda: len(one._client.keys(f"{one.namespace}:v1:block:*")) == 50, what="the blocks reaching Redis")
    events: list[Any] = []
    late = redis_store(on_event=events.append)
    connected(late)
    assert late.size == 50, "the resync did not learn every block"
    assert not [e for e in events if isinstance(e, BackendCooled)], "a resync announced each block"


# -- the owners of stateful objects


def owner_keys(store: Any) -> list[bytes]:
    return sorted(store._client.scan_iter(match=f"{store.namespace}:v1:owner:*", count=1000))


def indexed(store: Any) -> int:
    count: int = store._client.zcard(f"{store.namespace}:v1:owners")
    return count


def test_an_owner_remembered_in_one_process_reaches_another(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    one.remember(["resp_1", "file-1"], A, now() + DAY, 100)
    wait_until(
        lambda: other.owner("resp_1", now()) == A and other.owner("file-1", now()) == A,
        what="the owners reaching the other store",
    )
    one.remember(["resp_1"], B, now() + DAY, 100)
    wait_until(lambda: other.owner("resp_1", now()) == B, what="the new owner reaching the other store")


def test_a_store_that_starts_later_learns_the_owners_redis_holds(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    one.remember(["resp_1", "resp_2"], A, now() + DAY, 100)
    wait_until(lambda: indexed(one) == 2, what="the owners reaching Redis")
    late = redis_store()
    connected(late)
    assert (late.owner("resp_1", now()), late.owner("resp_2", now())) == (A, A), "the resync missed an owner"
    assert late.owner("resp_3", now()) is None


def test_a_forget_in_one_process_reaches_the_others_and_leaves_nothing_in_redis(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    one.remember(["resp_1", "resp_2"], A, now() + DAY, 100)
    wait_until(lambda: other.owner("resp_2", now()) == A, what="the owners reaching the other store")
    other.forget("resp_1")
    wait_until(lambda: one.owner("resp_1", now()) is None, what="the forget reaching the first store")
    assert one.owner("resp_2", now()) == A, "forgetting one id forgot another"
    wait_until(lambda: len(owner_keys(one)) == indexed(one) == 1, what="the key and its index entry deleted")
    late = redis_store()
    connected(late)
    assert late.owner("resp_1", now()) is None, "a store started later learned a forgotten owner"
    assert late.owner("resp_2", now()) == A


def test_an_owner_expires_in_every_process_and_in_redis_with_its_deadline(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    until = now() + 2.0
    one.remember(["resp_1"], A, until, 100)
    wait_until(lambda: other.owner("resp_1", now()) == A, what="the owner reaching the other store")
    (key,) = owner_keys(one)
    assert 0 < one._client.pttl(key) <= 2_000, "the key does not expire with its owner"
    offset = other._owners["resp_1"][1] - until
    assert abs(offset) < 0.05, f"the deadline moved by {offset:.3f} s on the way"
    wait_until(lambda: not owner_keys(one), 5, "the key expiring")
    assert now() >= until - 0.05, "the key expired before its owner's deadline"
    wait_until(lambda: now() >= until, 1, "the deadline")
    assert (one.owner("resp_1", now()), other.owner("resp_1", now())) == (None, None), "an owner outlived its deadline"
    late = redis_store()
    connected(late)
    assert late.owner("resp_1", now()) is None, "a store started later learned an expired owner"


def test_redis_keeps_at_most_the_capacity_newest_owners_and_a_late_store_learns_those(redis_store: Make) -> None:
    one, other = redis_store(), redis_store()
    connected(one, other)
    for number in range(50):
        one.remember([f"resp_{number}"], A, now() + DAY + number, 10)  # each expires after the one before
    wait_until(lambda: other.owner("resp_49", now()) == A, what="the last write reaching the other store")
    assert indexed(one) == 10, "the index outgrew the capacity"
    assert len(owner_keys(one)) == 10, "the owners trimmed from the index kept their keys"
    assert one.owners == 10, "memory held more owners than the capacity"
    late = redis_store()
    connected(late)
    known = [number for number in range(50) if late.owner(f"resp_{number}", now()) == A]
    assert known == list(range(40, 50)), f"the late store learned {known}, not the 10 newest"


def test_owner_keys_are_digests_of_the_ids_and_values_are_versioned_json(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    object_id = "resp_*?[x]\\é"  # a pattern, were it in a key name
    one.remember([object_id], A, now() + DAY, 100)
    wait_until(lambda: indexed(one) == 1, what="the owner reaching Redis")
    (key,) = owner_keys(one)
    name = key.decode()
    assert "resp" not in name, f"the object id is in the key name {name!r}"
    value = json.loads(one._client.get(key))
    assert {k: value[k] for k in ("v", "kind", "id", "key")} == {"v": 1, "kind": "owner", "id": object_id, "key": A}
    assert 0 < one._client.pttl(key) <= DAY * 1000


def test_owner_values_that_could_forge_a_log_line_or_are_malformed_are_ignored(redis_store: Make) -> None:
    one = redis_store()
    connected(one)
    until = (time.time() + 60) * 1000
    forged: list[dict[str, Any]] = [
        {"id": "resp_1\nFAKE LOG LINE", "key": A},
        {"id": "resp/../1", "key": A},
        {"id": "r" * 513, "key": A},
        {"id": 7, "key": A},
        {"id": "resp_1", "key": "https://a\nFAKE LOG LINE"},
        {"id": "resp_1", "key": A, "until": "soon"},
    ]
    for fields in forged:
        one._client.publish(one.channel, json.dumps({"v": 1, "kind": "owner", "until": until, "by": "x", **fields}))
    one._client.publish(one.channel, json.dumps({"v": 1, "kind": "forget", "id": ["resp_1"], "by": "x"}))
    wait_until(lambda: one.ignored == len(forged) + 1, what="every forged value being ignored")
    assert one.owners == 0, "a forged owner was learned"
    prefix = f"{one.namespace}:v1:"
    one._client.set(prefix + "owner:planted", json.dumps({"v": 1, "kind": "owner", "until": until, "by": "x"}))
    one._client.zadd(prefix + "owners", {"planted": until, "missing": until})
    late = redis_store()
    connected(late)
    assert late.ignored == 1, "the planted owner was not ignored on resync"
    assert late.owners == 0


def test_owners_learned_while_redis_was_down_and_held_before_it_restarted_reach_the_fleet(namespace: str) -> None:
    with RedisServer() as server:
        options: dict[str, Any] = {"namespace": namespace, "reconnect_base": 0.02, "reconnect_max": 0.1}
        with (
            openai_lb.RedisHealthStore(server.url, **options) as one,
            openai_lb.RedisHealthStore(server.url, **options) as other,
        ):
            connected(one, other)
            one.remember(["resp_before"], A, now() + DAY, 100)
            wait_until(lambda: other.owner("resp_before", now()) == A, what="the first owner")
            server.kill()
            wait_until(lambda: not one.connected and not other.connected, what="both noticing")
            one.remember(["resp_while_down"], A, now() + DAY, 100)
            server.start()  # empty: it forgot everything
            connected(one, other)
            wait_until(lambda: other.owner("resp_while_down", now()) == A, what="the offline owner spreading")
            with openai_lb.RedisHealthStore(server.url, **options) as fresh:
                connected(fresh)
                wait_until(
                    lambda: fresh.owner("resp_before", now()) == fresh.owner("resp_while_down", now()) == A,
                    what="a store started after the restart learning both owners",
                )


def test_writes_dropped_by_a_full_queue_are_made_good_by_publishing_every_owner(redis_store: Make) -> None:
    one, other = redis_store(max_queue=1), redis_store()
    connected(one, other)
    ids = [f"resp_{number}" for number in range(300)]
    for object_id in ids:  # far faster than one round trip each: the queue of one overflows
        one.remember([object_id], A, now() + DAY, 1_000)
    wait_until(
        lambda: all(other.owner(object_id, now()) == A for object_id in ids),
        10,
        "every owner reaching the other store although the queue dropped writes",
    )
