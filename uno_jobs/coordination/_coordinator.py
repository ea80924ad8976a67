"""``WorkerCoordinator``: cluster membership, leader election and commands over Redis.

Every ``heartbeat_interval`` seconds (and at once when pub/sub wakes it) the coordinator
runs one *tick* for the workers registered with it:

1. heartbeat: for each worker, a compare-and-extend of its ``alive`` key (TTL =
   ``missed_heartbeats x heartbeat_interval``) and its ``members`` entry rewritten
   (state, type, queue, host, pid, current jobs, last heartbeat);
2. reconcile: the worker's desired state (the newest command for it or for all) is read
   from Redis and applied through the worker's public ``pause``/``resume``/``shutdown``.
   Pub/sub only makes this happen sooner: a worker that missed the message obeys at its
   next heartbeat;
3. leadership: the leader renews its lease (compare-and-extend), the others try to take
   it when it is free (``SET NX PX``, with a fencing token from ``INCR``);
4. sweep: ``members`` entries whose ``alive`` key has expired are removed.

A worker killed without a goodbye is out of the listing once its ``alive`` key expires:
within ``missed_heartbeats x heartbeat_interval`` seconds of its last heartbeat. A leader
killed so loses its lease at most ``leader_lease`` seconds later, and another node takes it
at its next tick: within ``leader_lease + heartbeat_interval``, less than two leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from uno_jobs.config import redact_url, resolve_cluster_key_prefix
from uno_jobs.coordination._members import (
    ACTIONS,
    MAX_HELD_REPORTED,
    ClusterMember,
    CoordinatorOptions,
    Recovery,
)
from uno_jobs.coordination._scripts import (
    ALL,
    CLAIM_ID,
    COMMAND,
    HEARTBEAT,
    LEADER_ACQUIRE,
    LEADER_RELEASE,
    LEADER_RENEW,
    RELEASE_ID,
    ClusterKeys,
)
from uno_jobs.errors import ConfigurationError, CoordinationError, WorkerIdInUseError

if TYPE_CHECKING:
    from uno_jobs.worker import BaseWorker

__all__ = ["ACTIONS", "ClusterMember", "CoordinatorOptions", "Recovery", "WorkerCoordinator"]

log = logging.getLogger("uno_jobs.coordination")

DEFAULT_KEY_PREFIX = "uno_jobs:"
_STOPPING = ("shutting_down", "stopped")
SOCKET_TIMEOUT_SECONDS = 5.0


class _Registration:
    """One worker registered with this coordinator."""

    __slots__ = ("commands_after", "orphan", "recovery", "token", "worker")

    def __init__(self, worker: BaseWorker, token: str, recovery: Recovery | None) -> None:
        self.worker = worker
        self.token = token
        self.recovery = recovery
        #: Shutdown commands up to this seq predate the registration: not for this worker.
        self.commands_after = 0
        #: The member entry of a dead earlier process with this worker id, which this
        #: registration replaced before anyone swept it: recovered at the first heartbeat.
        self.orphan: dict[str, Any] | None = None


class WorkerCoordinator:
    """Membership, heartbeats, leader election and cluster-wide commands, kept in Redis.

    Args:
        storage_url: ``redis://`` or ``rediss://`` URL; ``?key_prefix=`` puts the cluster's
            keys under another prefix (else ``UNO_JOBS_CLUSTER_KEY_PREFIX``, else
            ``uno_jobs:``).
        cluster_id: The cluster's name; clusters with different ids share nothing.
        heartbeat_interval: Seconds between heartbeats.
        missed_heartbeats: A worker is dead after this many intervals without a heartbeat.
        leader_lease: Seconds a leader holds the lease without renewing it (default: the
            heartbeat TTL). It renews it at every heartbeat.

    Raises:
        ConfigurationError: a URL that is not Redis, or an option out of range (named).
    """

    def __init__(
        self,
        storage_url: str,
        cluster_id: str = "default",
        *,
        heartbeat_interval: float = 5.0,
        missed_heartbeats: int = 3,
        leader_lease: float | None = None,
    ) -> None:
        try:
            self.options = CoordinatorOptions(
                cluster_id=cluster_id,
                heartbeat_interval=heartbeat_interval,
                missed_heartbeats=missed_heartbeats,
                leader_lease=leader_lease,
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigurationError(
                f"WorkerCoordinator: option {err['loc'][0]!r}: {err['msg']} "
                f"(got {err.get('input')!r})"
            ) from None
        parts = urlsplit(storage_url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(
                f"WorkerCoordinator: storage_url must be redis:// or rediss://, "
                f"got {redact_url(storage_url)!r}"
            )
        prefix = resolve_cluster_key_prefix(
            parse_qs(parts.query).get("key_prefix", [None])[0], DEFAULT_KEY_PREFIX
        )
        self.storage_url = storage_url
        self.cluster_id = self.options.cluster_id
        self.heartbeat_interval = self.options.heartbeat_interval
        self.ttl_seconds = self.heartbeat_interval * self.options.missed_heartbeats
        self.leader_lease = self.options.leader_lease or self.ttl_seconds
        #: This coordinator's name in the cluster (leadership is held by a node).
        self.node = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._keys = ClusterKeys(prefix, self.cluster_id)
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            decode_responses=True,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
        )
        self._claim = self._client.register_script(CLAIM_ID)
        self._heartbeat = self._client.register_script(HEARTBEAT)
        self._release_id = self._client.register_script(RELEASE_ID)
        self._acquire = self._client.register_script(LEADER_ACQUIRE)
        self._renew = self._client.register_script(LEADER_RENEW)
        self._release_leader = self._client.register_script(LEADER_RELEASE)
        self._command = self._client.register_script(COMMAND)
        self._workers: dict[str, _Registration] = {}
        self._lease: str | None = None  # "{token}:{node}" while leader
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._started = False
        self._leadership_listeners: list[Callable[[bool], None]] = []

    def __repr__(self) -> str:
        return (
            f"<WorkerCoordinator cluster={self.cluster_id} {redact_url(self.storage_url)} "
            f"workers={len(self._workers)} leader={self.is_leader}>"
        )

    # -- leadership ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this node held the leader lease at its last tick."""
        return self._lease is not None

    @property
    def fencing_token(self) -> int | None:
        """The leader's fencing token: larger at every election; ``None`` unless leader.

        Work done as leader should carry it, so that a store can refuse the writes of a
        deposed leader that still believes it leads (its token is smaller).
        """
        return int(self._lease.split(":", 1)[0]) if self._lease else None

    def add_leadership_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when this node becomes leader, ``(False)`` when it stops."""
        self._leadership_listeners.append(listener)

    def _set_lease(self, lease: str | None) -> None:
        was, self._lease = self._lease is not None, lease
        if was != (lease is not None):
            for listener in self._leadership_listeners:
                try:
                    listener(lease is not None)
                except Exception:
                    log.exception("cluster %s: a leadership listener failed", self.cluster_id)

    async def release_leadership(self) -> None:
        """Give the lease up now (a shutdown hands over) and wake the other nodes."""
        lease = self._lease
        self._set_lease(None)
        if lease is not None:
            with contextlib.suppress(RedisError):
                await self._release_leader(keys=[self._keys.leader, self._keys.wake], args=[lease])
                log.info("cluster %s: %s gave up leadership", self.cluster_id, self.node)

    async def _lead(self) -> None:
        lease_ms = int(self.leader_lease * 1000)
        if self._lease is not None:
            if await self._renew(keys=[self._keys.leader], args=[self._lease, lease_ms]):
                return
            log.warning("cluster %s: %s lost leadership", self.cluster_id, self.node)
            self._set_lease(None)
        if all(r.worker.state in _STOPPING for r in self._workers.values()):
            return  # only nodes that run workers lead, and not while they stop
        token = int(
            await self._acquire(
                keys=[self._keys.leader, self._keys.leader_epoch], args=[self.node, lease_ms]
            )
        )
        if token:
            self._set_lease(f"{token}:{self.node}")
            log.info("cluster %s: %s is leader (token %d)", self.cluster_id, self.node, token)

    # -- membership ---------------------------------------------------------------------

    async def register_worker(self, worker: BaseWorker, recovery: Recovery | None = None) -> None:
        """Claim ``worker.worker_id`` in the cluster and report the worker from now on.

        Args:
            worker: The worker (any type).
            recovery: How its held jobs are recovered if it dies, and how it recovers
                those of dead members on the same broker (``DistributedWorker`` gives one).

        Raises:
            WorkerIdInUseError: a live worker of the cluster holds that id.
            CoordinationError: Redis cannot be reached.
        """
        worker_id = worker.worker_id
        if worker_id == ALL:
            raise ConfigurationError(f"worker id {ALL!r} is reserved for 'every worker'")
        if worker_id in self._workers:
            raise WorkerIdInUseError(worker_id, self.cluster_id, "registered here already")
        registration = _Registration(worker, uuid.uuid4().hex, recovery)
        info = await self._info(registration)
        try:
            ok, detail, *previous = await self._claim(
                keys=[self._keys.alive(worker_id), self._keys.members, self._keys.command_seq],
                args=[registration.token, int(self.ttl_seconds * 1000), worker_id, info],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if ok and previous and previous[0]:
            # A restart with the id of a process that died unswept: its jobs are recovered
            # once this worker consumes (a worker registers before it opens its broker).
            registration.orphan = json.loads(_text(previous[0]))
        if not ok:
            member = await self._member_text(worker_id)
            where = "held by another process"
            if member is not None:
                data = json.loads(member)
                where = f"host {data['host']}, pid {data['pid']}"
            raise WorkerIdInUseError(worker_id, self.cluster_id, where)
        registration.commands_after = int(detail)
        self._workers[worker_id] = registration
        log.info("cluster %s: worker %s registered", self.cluster_id, worker_id)

    async def unregister_worker(self, worker: BaseWorker) -> None:
        """Leave the cluster: the id is free at once, and the worker out of the listing."""
        registration = self._workers.pop(worker.worker_id, None)
        if registration is None:
            return
        with contextlib.suppress(RedisError):
            await self._release_id(
                keys=[self._keys.alive(worker.worker_id), self._keys.members],
                args=[registration.token, worker.worker_id],
            )
        if not self._workers:
            await self.release_leadership()

    async def members(self, include_dead: bool = False) -> list[ClusterMember]:
        """The cluster's workers, sorted by id; dead ones (not yet swept) on request.

        Raises:
            CoordinationError: Redis cannot be reached.
        """
        try:
            raw = await self._client.hgetall(self._keys.members)
            leader = await self._client.get(self._keys.leader)
            entries = {_text(k): _text(v) for k, v in raw.items()}
            ids = sorted(entries)
            alive = await self._client.mget([self._keys.alive(i) for i in ids]) if ids else []
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        leader_node = _text(leader).split(":", 1)[1] if leader else None
        found = [
            ClusterMember.from_json(entries[i], leader_node, token is not None)
            for i, token in zip(ids, alive, strict=True)
        ]
        return [m for m in found if include_dead or m.alive]

    async def leader(self) -> tuple[int, str] | None:
        """``(fencing token, node)`` of the current leader, or ``None``."""
        try:
            value = await self._client.get(self._keys.leader)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if not value:
            return None
        token, node = _text(value).split(":", 1)
        return int(token), node

    # -- commands -----------------------------------------------------------------------

    async def send(self, action: str, worker_id: str | None = None) -> int:
        """Set the desired state of one worker (or all, ``None``) and wake the cluster.

        Args:
            action: ``pause``, ``resume`` or ``shutdown``.
            worker_id: The worker; ``None`` for every worker. A pause or resume for all
                also applies to workers that join later; a shutdown only to the workers
                registered when it was sent.

        Returns:
            The command's sequence number.

        Raises:
            ConfigurationError: an unknown action.
            CoordinationError: Redis cannot be reached.
        """
        if action not in ACTIONS:
            raise ConfigurationError(
                f"unknown cluster command {action!r} (allowed: {', '.join(ACTIONS)})"
            )
        target = ALL if worker_id is None else worker_id
        try:
            seq = await self._command(
                keys=[self._keys.command_seq, self._keys.desired, self._keys.wake],
                args=[target, action],
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return int(seq)

    async def pause(self, worker_id: str | None = None) -> int:
        """``send("pause", worker_id)``."""
        return await self.send("pause", worker_id)

    async def resume(self, worker_id: str | None = None) -> int:
        """``send("resume", worker_id)``."""
        return await self.send("resume", worker_id)

    async def shutdown(self, worker_id: str | None = None) -> int:
        """``send("shutdown", worker_id)``: graceful shutdown of the worker(s)."""
        return await self.send("shutdown", worker_id)

    async def _reconcile(self, registration: _Registration) -> None:
        worker = registration.worker
        own, every = await self._client.hmget(self._keys.desired, [worker.worker_id, ALL])
        newest = max((_parse_desired(_text(v)) for v in (own, every) if v), default=None)
        if newest is None:
            return
        seq, action = newest
        state = worker.state
        if action == "shutdown":
            if seq > registration.commands_after and state in ("running", "paused"):
                log.info("cluster %s: shutting down %s", self.cluster_id, worker.worker_id)
                self._background(worker.shutdown())
        elif action == "pause" and state == "running":
            log.info("cluster %s: pausing %s", self.cluster_id, worker.worker_id)
            await worker.pause()
        elif action == "resume" and state == "paused":
            log.info("cluster %s: resuming %s", self.cluster_id, worker.worker_id)
            await worker.resume()

    # -- the loop -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start heartbeating, obeying commands and running for leader; returns at once.

        Raises:
            CoordinationError: Redis cannot be reached.
        """
        if self._started:
            return
        try:
            await self._tick()
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self._started = True
        self._tasks = [
            asyncio.create_task(self._beat(), name=f"uno-coordinator-{self.cluster_id}"),
            asyncio.create_task(self._listen(), name=f"uno-coordinator-wake-{self.cluster_id}"),
        ]

    async def stop(self) -> None:
        """Stop the loop, unregister every worker, hand leadership over, close."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for registration in list(self._workers.values()):
            await self.unregister_worker(registration.worker)
        await self.release_leadership()
        self._started = False
        await self._client.aclose()

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_interval)
            self._wake.clear()
            try:
                await self._tick()
            except RedisError as exc:
                # Jobs do not depend on the coordinator: keep working, try again next beat.
                log.warning("cluster %s: heartbeat failed: %s", self.cluster_id, exc)

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.wake)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake.set()
            except RedisError as exc:
                log.warning("cluster %s: wake-up channel failed: %s", self.cluster_id, exc)
                await asyncio.sleep(self.heartbeat_interval)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _tick(self) -> None:
        for registration in list(self._workers.values()):
            worker = registration.worker
            if worker.state == "stopped":
                await self.unregister_worker(worker)
                continue
            if not await self._beat_one(registration):
                continue
            orphan = registration.orphan
            if orphan is not None and worker.state in ("running", "paused"):
                registration.orphan = None  # its broker is open now
                await self._recover(worker.worker_id, orphan)
            await self._reconcile(registration)
        await self._lead()
        await self._sweep()

    async def _beat_one(self, registration: _Registration) -> bool:
        worker = registration.worker
        held = await self._heartbeat(
            keys=[self._keys.alive(worker.worker_id), self._keys.members],
            args=[
                registration.token,
                int(self.ttl_seconds * 1000),
                worker.worker_id,
                await self._info(registration),
            ],
        )
        if held:
            return True
        # Our key expired (we were silent too long) and another process took the id.
        log.error(
            "cluster %s: worker id %s was taken by another process after this one missed "
            "its heartbeats; shutting this worker down",
            self.cluster_id,
            worker.worker_id,
        )
        self._workers.pop(worker.worker_id, None)
        self._background(worker.shutdown())
        return False

    async def _sweep(self) -> None:
        entries = [_text(k) for k in await self._client.hkeys(self._keys.members)]
        if not entries:
            return
        alive = await self._client.mget([self._keys.alive(i) for i in entries])
        for worker_id, token in zip(entries, alive, strict=True):
            if token is not None:
                continue
            text = await self._client.hget(self._keys.members, worker_id)
            # One coordinator wins the removal, and only it recovers the held jobs.
            if text is None or not await self._client.hdel(self._keys.members, worker_id):
                continue
            log.warning("cluster %s: dead worker %s removed", self.cluster_id, worker_id)
            await self._recover(worker_id, json.loads(_text(text)))

    async def _recover(self, worker_id: str, info: dict[str, Any]) -> None:
        held = [str(k) for k in info.get("held") or []]
        if not held:
            return
        for registration in self._workers.values():
            recovery = registration.recovery
            if recovery is not None and recovery.broker == info.get("broker"):
                restored = await asyncio.to_thread(recovery.restore, held)
                log.warning(
                    "cluster %s: %d job(s) held by dead worker %s made deliverable again",
                    self.cluster_id,
                    restored,
                    worker_id,
                )
                return

    # -- helpers ------------------------------------------------------------------------

    async def _info(self, registration: _Registration) -> str:
        worker, recovery = registration.worker, registration.recovery
        current = 0
        if worker.state in ("running", "paused", "shutting_down"):
            current = int((await worker.get_health())["current_jobs"])
        return json.dumps(
            {
                "worker_id": worker.worker_id,
                "state": worker.state,
                "type": type(worker).__name__,
                "queue": worker.queue_name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "current_jobs": current,
                "in_flight": worker.in_flight,
                "last_heartbeat": time.time(),
                "node": self.node,
                "broker": recovery.broker if recovery else None,
                "held": recovery.held()[:MAX_HELD_REPORTED] if recovery else [],
            }
        )

    async def _member_text(self, worker_id: str) -> str | None:
        with contextlib.suppress(RedisError):
            text = await self._client.hget(self._keys.members, worker_id)
            return str(text) if text is not None else None
        return None

    def _background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _unavailable(self, exc: Exception) -> CoordinationError:
        return CoordinationError(
            f"cluster {self.cluster_id!r}: coordinator store {redact_url(self.storage_url)} "
            f"failed: {exc}"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_desired(value: str) -> tuple[int, str]:
    seq, action = value.split(":", 1)
    return int(seq), action
