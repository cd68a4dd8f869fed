"""``RedisHealthStore``: cooldowns and circuit breakers shared by every process on one Redis server.

```python
import openai_lb

client = openai_lb.AzureOpenAI(backends=[...], health_store="redis://cache:6379/0")
# or one store for several clients, closed by the application:
with openai_lb.RedisHealthStore("rediss://cache:6380/0", password="...") as store:
    client = openai_lb.AzureOpenAI(backends=[...], health_store=store)
```

Valkey speaks the same protocol and works the same way. Needs the ``redis`` extra.

Reads never leave the process: the store is an ``InMemoryHealthStore`` that other processes keep up
to date. A write applies to that memory at once and goes to Redis from a background thread, which
publishes it to every process of the namespace (pub/sub); a listener thread applies what the others
publish. Keys expire when their block ends (``SET ... PXAT``), and a process that connects or
reconnects reads every block still running, then publishes the ones it learned while it could not.
Redis being slow, down, refusing the credentials or the writes is a degraded mode: the process
balances on its own state, logs one WARNING and emits ``StoreDisconnected`` / ``StoreReconnected``.

The owners of stateful objects (which backend holds a response, a file, a batch...) travel the same
way: ``remember`` and ``forget`` apply at once and reach the fleet in the background; ``owner`` reads
memory. Each owner is a key expiring with it, under a digest of the object id, listed in a sorted set
by expiry that keeps the newest ``capacity``; a process that connects learns the newest ones. A
``forget`` made while Redis was unreachable is lost: the next request naming the object goes to its
former holder, whose "not found" forgets it then.

**Time.** The core's times are readings of this process's monotonic clock, which means nothing to
another process. Deadlines cross over as wall-clock epoch milliseconds, converted with this store's
``clock`` and ``wall_clock`` (give it the ones the balancers using it are given). A host whose wall
clock is ahead by ``d`` sees the fleet's cooldowns ``d`` shorter and publishes its own ``d`` longer;
NTP keeps ``d`` to milliseconds. So that a skewed clock or a hostile value cannot ban a backend for
long, a deadline received is cut to ``max_cooldown`` seconds from now.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._affinity import is_id
from ._config import Policy
from ._errors import ConfigurationError
from ._events import BackendCooled, Event, EventHook, StoreDisconnected, StoreReconnected, emit, hooks_from
from ._health import BACKEND_WIDE, DEFAULT_NAMESPACE, Block, InMemoryHealthStore, Reason, Trip
from ._logging import log_event

__all__ = ["SCHEMES", "VERSION", "RedisHealthStore", "display_url", "key_prefix"]

VERSION = 1
"""The version of the values (``"v"``) and of the key layout (``{namespace}:v1:...``)."""
SCHEMES = ("redis", "rediss", "unix")
_REASONS: frozenset[str] = frozenset({"rate_limited", "deployment_missing", "failure"})
_STEPS = 32
"""The breaker's cooldown is sent to Redis for streaks of 1 to this; a longer one keeps the last."""
_GRAIN = 0.001
"""Seconds: deadlines travel in milliseconds, so one that differs by less is the same deadline."""
_MAX_VALUE = 65_536
"""Bytes; a longer value in the namespace is not one of ours."""
_MAX_OWNER_TTL = 10 * 366 * 86_400.0
"""Seconds; an owner's deadline further ahead is cut, sent (Redis refuses expiries past its range) or received."""
_BATCH = 500
"""Keys per round trip when reading or writing many."""

# Shared by the scripts: a value of ours, or nil for anything else under the namespace.
_DECODE = """
local function decode(raw)
  if not raw then return nil end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' and value.v == 1 and type(value['until']) == 'number' then return value end
  return nil
end
"""

# KEYS[1] breaker key; ARGV: channel, backend key, started ms, now ms, cooldown ms per streak (JSON),
# ms the streak outlives its block, writer. Counts the failure unless the fleet tripped since it was sent.
_TRIP = (
    _DECODE
    + """
local state = decode(redis.call('GET', KEYS[1]))
if state and type(state.tripped) == 'number' and state.tripped >= tonumber(ARGV[3]) then
  return {0, cjson.encode(state)}
end
local failures = 1
if state and type(state.failures) == 'number' then failures = state.failures + 1 end
local steps = cjson.decode(ARGV[5])
local now = tonumber(ARGV[4])
local ends = now + steps[math.min(failures, #steps)]
if state and state['until'] > ends then ends = state['until'] end
local value = cjson.encode({v = 1, kind = 'breaker', key = ARGV[2], failures = failures, tripped = now,
  ['until'] = ends, by = ARGV[7]})
redis.call('SET', KEYS[1], value, 'PXAT', ends + tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[1], value)
return {1, value}
"""
)

# KEYS[1] block or breaker key; ARGV: channel, value (JSON), expiry ms. A later deadline is kept; a
# breaker's streak and last trip are the later of both.
_BLOCK = (
    _DECODE
    + """
local new = cjson.decode(ARGV[2])
local state = decode(redis.call('GET', KEYS[1]))
if state and state['until'] >= new['until'] then return 0 end
if state and new.kind == 'breaker' then
  if type(state.failures) == 'number' and state.failures > new.failures then new.failures = state.failures end
  if type(state.tripped) == 'number' and state.tripped > new.tripped then new.tripped = state.tripped end
end
local value = cjson.encode(new)
redis.call('SET', KEYS[1], value, 'PXAT', tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[1], value)
return 1
"""
)

# KEYS[1] breaker key; ARGV: channel, writer. A success ends the fleet's streak; a running breaker stands.
_SUCCESS = (
    _DECODE
    + """
local state = decode(redis.call('GET', KEYS[1]))
if not state or type(state.failures) ~= 'number' or state.failures == 0 then return 0 end
state.failures = 0
state.by = ARGV[2]
local value = cjson.encode(state)
redis.call('SET', KEYS[1], value, 'KEEPTTL')
redis.call('PUBLISH', ARGV[1], value)
return 1
"""
)


# KEYS[1] the owners' index (member: an owner key's digest, score: its expiry). ARGV: channel, capacity, now ms,
# owner key prefix, then (digest, expiry ms, value) per owner. Sets, indexes and publishes each; then the
# index drops the expired and, beyond the capacity, the earliest to expire with their keys, and expires
# with its last member.
_OWNERS = """
local index, prefix = KEYS[1], ARGV[4]
for i = 5, #ARGV, 3 do
  redis.call('SET', prefix .. ARGV[i], ARGV[i + 2], 'PXAT', ARGV[i + 1])
  redis.call('ZADD', index, ARGV[i + 1], ARGV[i])
  redis.call('PUBLISH', ARGV[1], ARGV[i + 2])
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[3])
local excess = redis.call('ZCARD', index) - tonumber(ARGV[2])
while excess > 0 do
  local oldest = redis.call('ZRANGE', index, 0, math.min(excess, 1000) - 1)
  local keys = {}
  for i, digest in ipairs(oldest) do keys[i] = prefix .. digest end
  redis.call('DEL', unpack(keys))
  redis.call('ZREM', index, unpack(oldest))
  excess = excess - #oldest
end
local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', index, last[2]) end
return 1
"""


def key_prefix(namespace: str) -> str:
    """What every key (and the channel) of ``namespace`` starts with."""
    return f"{namespace}:v{VERSION}:"


def display_url(url: str) -> str:
    """``url`` without its password and query (where a ``unix://`` URL may carry one), for messages."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    return f"{parts.scheme}://{user}{host}{'' if port is None else f':{port}'}{parts.path}"


class RedisHealthStore(InMemoryHealthStore):
    """A ``HealthStore`` shared by every process (on any host) using the same Redis ``namespace``.

    ``url`` is ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix://[[user]:password@]/path.sock[?db=0]``; ``options`` go to redis-py's connection pool
    (``password=``, ``username=``, ``ssl_ca_certs=``, ``socket_timeout=``, ...). A malformed URL
    raises ``ConfigurationError``; an unreachable server does not: the store connects in the
    background and works on its own state meanwhile. ``on_event`` hooks receive
    ``StoreDisconnected``, ``StoreReconnected`` and the cooldowns learned from other processes
    (``BackendCooled`` with ``origin="fleet"``), in a thread of the store. The owners of objects
    learned from other processes announce nothing.

    ``close()`` writes what is still queued (waiting at most ``timeout`` seconds) and stops the
    threads; a store is also a context manager and is closed at interpreter exit. A client never
    closes a store it was given. After ``os.fork()`` the child gets its own connections and threads.
    """

    __slots__ = (
        "_by",
        "_channel",
        "_client",
        "_clock",
        "_closed",
        "_connected",
        "_down_since",
        "_hooks",
        "_keep_ms",
        "_listener",
        "_options",
        "_overflowed",
        "_owner_index",
        "_prefix",
        "_queue",
        "_scripts",
        "_stopping",
        "_synced",
        "_url",
        "_wake",
        "_wall_clock",
        "_writer",
        "ignored",
        "max_cooldown",
        "namespace",
        "reconnect_base",
        "reconnect_max",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_cooldown: float | None = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_entries: int = 10_000,
        max_queue: int = 10_000,
        reconnect_base: float = 0.1,
        reconnect_max: float = 30.0,
        **options: Any,
    ) -> None:
        self.url = display_url(url) if isinstance(url, str) else "<not a string>"
        if not isinstance(url, str) or urlsplit(url).scheme not in SCHEMES:
            raise ConfigurationError(f"RedisHealthStore needs a redis://, rediss:// or unix:// URL, got {self.url!r}.")
        if not namespace or not namespace.isprintable() or any(c in namespace for c in " *?[]\\"):
            raise ConfigurationError(
                f"RedisHealthStore(namespace=...) must be printable, without spaces or *?[]\\, got {namespace!r}."
            )
        self.max_cooldown = Policy().max_cooldown if max_cooldown is None else float(max_cooldown)
        if not self.max_cooldown > 0 or math.isinf(self.max_cooldown):
            raise ConfigurationError(f"RedisHealthStore(max_cooldown=...) must be positive, got {max_cooldown!r}.")
        self._url = url  # may hold the password: never shown
        self._options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **options}
        self._client = self._make_client()  # checks the URL and options before anything starts
        super().__init__(max_entries=max_entries)
        self.namespace = namespace
        self._prefix = key_prefix(namespace)
        self._owner_index = f"{self._prefix}owners"
        # Keys live in one database, but pub/sub is server-wide: the channel names the database too, so
        # fleets on redis://h/1 and redis://h/2 stay apart.
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._channel = f"{self._prefix}db{db}:events"
        self._keep_ms = math.ceil(self.max_cooldown * 1000)
        self._hooks: tuple[EventHook, ...] = (log_event, *hooks_from(on_event))
        self._clock = clock
        self._wall_clock = wall_clock
        self._queue: deque[tuple[Any, ...]] = deque(maxlen=max_queue)
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self.ignored = 0
        """Values in the namespace that were malformed or not ours, ignored."""
        self._closed = False
        self._start()
        _open.add(self)

    def _make_client(self) -> redis.Redis:
        try:
            # No retries inside redis-py: the store has its own reconnection, and a write must not wait.
            pool = redis.ConnectionPool.from_url(self._url, retry=Retry(NoBackoff(), 0), **self._options)
        except (ValueError, TypeError) as error:
            # The message may quote the URL or an option, password included: say only what failed.
            raise ConfigurationError(
                f"RedisHealthStore: {self.url!r} is not a usable Redis URL ({type(error).__name__})."
            ) from None
        client = redis.Redis(connection_pool=pool)
        # EVALSHA, loading the script again when the server lost it (a restart).
        self._scripts = tuple(client.register_script(source) for source in (_TRIP, _BLOCK, _SUCCESS, _OWNERS))
        return client

    def _start(self) -> None:
        self._by = os.urandom(8).hex()  # tells this process's own messages from the fleet's
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._connected = threading.Event()  # writes go to Redis
        self._synced = threading.Event()  # ... and this memory has learned what Redis held on connecting
        self._down_since: float | None = None
        self._overflowed = False
        self._writer = threading.Thread(target=self._write_loop, name="openai_lb-store-writer", daemon=True)
        self._listener = threading.Thread(target=self._listen_loop, name="openai_lb-store-listener", daemon=True)
        self._writer.start()
        self._listener.start()

    def _after_fork(self) -> None:
        super()._after_fork()
        if self._closed:
            return
        self._queue.clear()
        self._client = self._make_client()  # the parent's connections are the parent's
        self._start()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, namespace={self.namespace!r})"

    @property
    def connected(self) -> bool:
        """Whether the store is in touch with Redis now and has learned what the fleet knew."""
        return self._synced.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channel(self) -> str:
        """The pub/sub channel the stores of this namespace (and database) publish on."""
        return self._channel

    # -- the HealthStore protocol: memory first, Redis in the background

    def block(self, key: str, deployment: str | None, until: float, reason: Reason) -> None:
        InMemoryHealthStore.block(self, key, deployment, until, reason)
        self._enqueue(("block", key, deployment, self._to_wall_ms(until), reason))

    def trip(self, key: str, started: float, now: float, cooldown: Callable[[int], float]) -> Trip | None:
        tripped = InMemoryHealthStore.trip(self, key, started, now, cooldown)
        if tripped is not None:
            # Rounded apart, so that the trip stays after the attempt that made it.
            self._enqueue(("trip", key, self._to_wall_ms(started), self._to_wall_ms(now) + 1, cooldown))
        return tripped

    def count_success(self, key: str, deployment: str, now: float) -> tuple[str | None, ...]:
        failing = self._failures.get(key)
        recovered = InMemoryHealthStore.count_success(self, key, deployment, now)
        if failing:
            self._enqueue(("success", key))
        return recovered

    def remember(self, object_ids: Iterable[str], key: str, until: float, capacity: int) -> None:
        object_ids = tuple(object_ids)
        InMemoryHealthStore.remember(self, object_ids, key, until, capacity)
        if object_ids:
            self._enqueue(("remember", object_ids, key, self._to_wall_ms(until, _MAX_OWNER_TTL), capacity))

    def forget(self, object_id: str) -> None:
        InMemoryHealthStore.forget(self, object_id)
        self._enqueue(("forget", object_id))

    def clear(self) -> None:
        """Forget everything, here and in the namespace (every process of the fleet forgets it)."""
        InMemoryHealthStore.clear(self)
        self._enqueue(("clear",))

    # -- time

    def _to_wall_ms(self, moment: float, limit: float = math.inf) -> int:
        """``moment`` in epoch milliseconds; one later than ``limit`` seconds from now is cut."""
        return math.floor((min(moment - self._clock(), limit) + self._wall_clock()) * 1000)

    def _from_wall_ms(self, milliseconds: float, limit: float | None = None) -> tuple[float, float]:
        """(now, the moment) on this process's clock; a moment later than ``limit`` seconds
        (``max_cooldown`` unless given) from now is cut."""
        now = self._clock()
        ahead = milliseconds / 1000 - self._wall_clock()
        return now, now + min(ahead, self.max_cooldown if limit is None else limit)

    # -- lifecycle

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), stop the threads, close the connections."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        self._stopping.set()  # the listener stops; the writer empties the queue first
        self._writer.join(timeout)
        self._listener.join(max(deadline - time.monotonic(), 0.0))
        self._connected.clear()
        self._synced.clear()
        self._client.close()
        self._client.connection_pool.disconnect()
        _open.discard(self)

    def __enter__(self) -> RedisHealthStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the writer thread

    def _enqueue(self, operation: tuple[Any, ...]) -> None:
        with self._wake:
            if self._closed:
                return
            if len(self._queue) == self._queue.maxlen:
                self._overflowed = True  # the oldest write is dropped: publish the whole state instead
            self._queue.append(operation)
            self._wake.notify()

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed and not self._overflowed:
                    self._wake.wait()
                if not self._queue and self._closed:
                    return
                batch = list(self._queue)
                self._queue.clear()
                overflowed, self._overflowed = self._overflowed, False
            if not self._connected.is_set():
                # Dropped: this memory holds their effect, and reconnecting publishes it.
                if self._closed:
                    return
                continue
            try:
                if overflowed:
                    self._publish_state()
                for operation in batch:
                    self._write(operation)
            except Exception as error:  # the thread must outlive anything Redis answers
                self._lost(error)

    def _write(self, operation: tuple[Any, ...]) -> None:
        what = operation[0]
        client = self._client
        if what == "block":
            _, key, deployment, until, reason = operation
            if deployment is BACKEND_WIDE:
                self._send_breaker(key, self._failures.get(key, 0), self._tripped_wall(key), until)
            else:
                value = {"v": VERSION, "kind": "block", "key": key, "deployment": deployment}
                value.update({"until": until, "reason": reason, "by": self._by})
                self._scripts[1]([self._block_key(key, deployment)], [self._channel, json.dumps(value), until])
        elif what == "trip":
            _, key, started, now, cooldown = operation
            steps = [math.ceil(cooldown(count) * 1000) for count in range(1, _STEPS + 1)]
            counted, state = self._scripts[0](
                [self._breaker_key(key)],
                [self._channel, key, started, now, json.dumps(steps), self._keep_ms, self._by],
            )
            if not counted:
                self._apply(state)  # the fleet tripped since: its streak stands
        elif what == "success":
            self._scripts[2]([self._breaker_key(operation[1])], [self._channel, self._by])
        elif what == "remember":
            _, object_ids, key, until, capacity = operation
            self._send_owners([(object_id, key, until) for object_id in object_ids], capacity)
        elif what == "forget":
            object_id = operation[1]
            digest = _digest(object_id)
            message = json.dumps({"v": VERSION, "kind": "forget", "id": object_id, "by": self._by})
            with client.pipeline() as pipeline:  # MULTI ... EXEC: one round trip, all or nothing
                pipeline.delete(self._owner_key(digest))
                pipeline.zrem(self._owner_index, digest)
                pipeline.publish(self._channel, message)
                pipeline.execute()
        else:
            for keys in _batches(client.scan_iter(match=f"{self._prefix}*", count=500), 500):
                client.unlink(*keys)
            client.publish(self._channel, json.dumps({"v": VERSION, "kind": "clear", "by": self._by}))

    def _send_breaker(self, key: str, failures: int, tripped: int, until: int) -> None:
        value = {"v": VERSION, "kind": "breaker", "key": key, "failures": failures, "tripped": tripped}
        value.update({"until": until, "by": self._by})
        self._scripts[1]([self._breaker_key(key)], [self._channel, json.dumps(value), until + self._keep_ms])

    def _send_owners(self, owners: list[tuple[str, str, int]], capacity: int) -> None:
        """Write (object id, backend key, expiry in epoch ms) of each owner, and publish them."""
        now = math.floor(self._wall_clock() * 1000)
        arguments: list[Any] = [self._channel, capacity, now, self._owner_key("")]
        for object_id, key, until in owners:
            value = {"v": VERSION, "kind": "owner", "id": object_id, "key": key, "until": until, "by": self._by}
            arguments += [_digest(object_id), until, json.dumps(value)]
        self._scripts[3]([self._owner_index], arguments)

    def _tripped_wall(self, key: str) -> int:
        tripped = self._tripped_at.get(key)
        return 0 if tripped is None else self._to_wall_ms(tripped)

    def _publish_state(self, known: dict[str, str] | None = None) -> None:
        """Publish every block of this memory still running (the fleet keeps the later deadlines) and
        every owner, but those Redis is ``known`` to hold already (object id -> backend key)."""
        now = self._clock()
        known = known or {}
        with self._lock:
            held = [
                (key, deployment, block)
                for key, blocks in self._by_key.items()
                for deployment, block in blocks.items()
                if block.until > now
            ]
            owners = [
                (object_id, key, until)
                for object_id, (key, until) in self._owners.items()
                if until > now and known.get(object_id) != key
            ]
            capacity = self._owner_capacity
        for key, deployment, block in held:
            self._write(("block", key, deployment, self._to_wall_ms(block.until), block.reason))
        for batch in _batches(owners, _BATCH):
            wall = [(object_id, key, self._to_wall_ms(until, _MAX_OWNER_TTL)) for object_id, key, until in batch]
            self._send_owners(wall, capacity)

    def _block_key(self, key: str, deployment: str) -> str:
        return f"{self._prefix}block:{_digest(key, deployment)}"

    def _breaker_key(self, key: str) -> str:
        return f"{self._prefix}breaker:{_digest(key, None)}"

    def _owner_key(self, digest: str) -> str:
        return f"{self._prefix}owner:{digest}"

    # -- the listener thread: connection, resync, what the fleet publishes

    def _listen_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
            try:
                pubsub.subscribe(self._channel)
                self._client.ping()
                self._connected.set()  # writes flow again; the resync below overlaps them harmlessly
                self._resync()
                self._synced.set()
                self._reconnected()
                failures = 0
                while not self._stopping.is_set() and self._connected.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
            except Exception as error:  # closing pulls the socket away, too
                self._lost(error)
                failures += 1
            finally:
                with contextlib.suppress(redis.RedisError, OSError):  # the connection may be gone already
                    pubsub.close()
            if failures:
                delay = min(self.reconnect_base * 2 ** min(failures - 1, 30), self.reconnect_max)
                self._stopping.wait(delay * random.uniform(0.5, 1.0))

    def _resync(self) -> None:
        """Learn every block and the newest owners the fleet holds, then publish what this memory
        holds (but the owners Redis has already)."""
        client = self._client
        for kind in ("block", "breaker"):
            for keys in _batches(client.scan_iter(match=f"{self._prefix}{kind}:*", count=_BATCH), _BATCH):
                for raw in client.mget(keys):
                    if raw is not None:
                        self._apply(raw, announce=False)  # thousands of blocks must not become thousands of events
        self._publish_state(self._learn_owners())

    def _learn_owners(self) -> dict[str, str]:
        """Learn the owners Redis holds, the newest ``capacity`` ones; returns object id -> backend key of each."""
        client = self._client
        now = math.floor(self._wall_clock() * 1000)
        newest = client.zrevrangebyscore(self._owner_index, "+inf", now, start=0, num=self._owner_capacity)
        prefix = self._owner_key("").encode()
        values: list[dict[str, Any]] = []
        for digests in _batches(newest, _BATCH):
            for raw in client.mget([prefix + digest for digest in digests]):
                if raw is None:
                    continue  # expired since
                value = _parse(raw)
                if value is None or value["kind"] != "owner":
                    self.ignored += 1
                else:
                    values.append(value)
        for value in reversed(values):  # the oldest first, so that the newest are the last forgotten
            self._learn(value, announce=False)
        return {value["id"]: value["key"] for value in values}

    def _lost(self, error: BaseException) -> None:
        with self._wake:
            if self._closed:
                return
            self._connected.clear()
            self._synced.clear()
            if self._down_since is not None:
                return  # announced once per outage
            self._down_since = self._clock()
        self._emit(StoreDisconnected(self.url, type(error).__name__))

    def _reconnected(self) -> None:
        with self._wake:
            down_since, self._down_since = self._down_since, None
        if down_since is not None:
            self._emit(StoreReconnected(self.url, self._clock() - down_since))

    def _emit(self, event: Event) -> None:
        emit(self._hooks, event)

    def _apply(self, raw: Any, *, announce: bool = True) -> None:
        """Learn one value from the namespace; anything malformed or foreign is counted and ignored."""
        value = _parse(raw)
        if value is None:
            self.ignored += 1
        else:
            self._learn(value, announce=announce)

    def _learn(self, value: dict[str, Any], *, announce: bool) -> None:
        """Apply a value of ours: blocks and breakers merge (the later deadline wins); the rest replace."""
        kind = value["kind"]
        if kind in ("clear", "owner", "forget"):
            # They replace: this process's own, coming back, could undo what it did since.
            if value["by"] != self._by:
                self._learn_others(value)
            return
        key = value["key"]
        now, until = self._from_wall_ms(value["until"])
        fleet = announce and value["by"] != self._by
        if kind == "block":
            deployment, reason = value["deployment"], value["reason"]
            if until <= now:
                return
            found = self._by_key.get(key, {}).get(deployment)
            if found is not None and found.until >= until - _GRAIN:
                return
            InMemoryHealthStore.block(self, key, deployment, until, reason)
            if fleet:
                self._emit(BackendCooled(key, key, deployment, reason, until - now, None, 0, "fleet"))
            return
        failures = value["failures"]
        # Within a millisecond (the resolution on the wire) of its attempt; in the future is a skewed clock.
        tripped = min(self._from_wall_ms(value["tripped"])[1] + _GRAIN, now)
        with self._lock:
            if failures and (until > now or key in self._failures):
                self._failures[key] = failures
            else:
                self._failures.pop(key, None)
            if (until > now or key in self._tripped_at) and self._tripped_at.get(key, -math.inf) < tripped:
                self._tripped_at[key] = tripped
            found = self._by_key.get(key, {}).get(BACKEND_WIDE)
            extended = until > now and (found is None or found.until < until - _GRAIN)
            if extended:
                # Only a running breaker takes a place in memory: an ended one from the fleet adds nothing.
                self._by_key.setdefault(key, {})[BACKEND_WIDE] = Block(until, "failure")
        if extended and fleet:
            self._emit(BackendCooled(key, key, None, "failure", until - now, None, failures, "fleet"))

    def _learn_others(self, value: dict[str, Any]) -> None:
        """Another process cleared the namespace, forgot an owner or learned one (the latest word wins)."""
        kind = value["kind"]
        if kind == "clear":
            InMemoryHealthStore.clear(self)
        elif kind == "forget":
            InMemoryHealthStore.forget(self, value["id"])
        else:
            now, until = self._from_wall_ms(value["until"], _MAX_OWNER_TTL)
            if until > now:
                InMemoryHealthStore.remember(self, (value["id"],), value["key"], until, self._owner_capacity)


def _digest(*parts: str | None) -> str:
    """A short fixed-length name for a (backend, deployment) or an object id: both come from callers."""
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse(raw: Any) -> dict[str, Any] | None:
    """A value of ours (checked field by field), or None."""
    if not isinstance(raw, (bytes, str)) or len(raw) > _MAX_VALUE:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    if not isinstance(value, dict) or value.get("v") != VERSION or not isinstance(value.get("by"), str):
        return None
    kind = value.get("kind")
    if kind == "clear":
        return value
    if kind in ("owner", "forget"):
        object_id = value.get("id")
        if not isinstance(object_id, str) or not is_id(object_id):
            return None
        if kind == "forget":
            return value
    key = value.get("key")
    # A backend key is a normalised URL: printable, without spaces (it reaches logs and events).
    if not isinstance(key, str) or not key.isprintable() or " " in key or not _number(value.get("until")):
        return None
    if kind == "block":
        ok = isinstance(value.get("deployment"), str) and value.get("reason") in _REASONS
    elif kind == "breaker":
        failures = value.get("failures")
        ok = isinstance(failures, int) and not isinstance(failures, bool) and failures >= 0
        ok = ok and _number(value.get("tripped"))
    else:
        ok = kind == "owner"
    return value if ok else None


_open: weakref.WeakSet[RedisHealthStore] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for store in list(_open):
        store.close(timeout=0.5)
