"""``bridge serve --workers N``: N bridge processes on one host, sharing the requests.

One Python process answers requests on one core; the broker and the database run
beside it on the others. With ``--workers N`` the command starts N ``serve``
processes and watches them. Each has a client id of its own (the bridge's, with
``-w<i>``) and all join one share group (``--share-group``, or ``workers``), so the
broker hands each a share of the requests.

Each keeps a persistent session, as a single bridge does: a worker that dies (even
by SIGKILL) is started again at once under the same client id and gets back from its
session the requests it had not acknowledged, and the share the broker kept for it
meanwhile. (Replicas on separate hosts do without one, see ``BridgeService._connect``,
because nobody restarts a dead replica for them.) A worker that exits with an error
status within ``YOUNG_SECONDS`` of its start (a bad setting, a stolen session) ends
them all, with its status: restarting it would only repeat the failure.

SIGTERM/SIGINT are passed on to every worker, which drains as ``serve`` does; a
worker whose supervisor is gone stops by itself. Worker ``i`` serves its metrics (when
``BRIDGE_METRICS_ADDR`` is set) on the configured port + ``i``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time

from bridge import embedded, logs
from bridge.config import Settings
from bridge.errors import BridgeError, ConfigError

log = logging.getLogger("bridge.workers")

#: The share group of the workers when none is configured.
DEFAULT_GROUP = "workers"
#: A worker that exits sooner than this after its start ends the whole command.
YOUNG_SECONDS = 10.0
#: How often a worker looks whether its supervisor still runs, and the supervisor
#: whether its workers do.
WATCH_SECONDS = 0.5
#: After SIGTERM, how long the workers have to drain and exit (serve's own stop
#: deadline, and a little more) before they are killed.
STOP_SECONDS = 20.0


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: its own client id, the workers' common one (which
    each reserves against devices, with everything under it), the common share group.

    With ``BRIDGE_METRICS_ADDR`` (host:port), worker ``index`` listens on port + index:
    one port cannot be bound by every worker.
    """
    base = settings.mqtt_client_id[:120]
    update: dict[str, object] = {
        "client_id": f"{base}-w{index}",
        # Every worker refuses devices all the workers' ids, not only its own.
        "workers_client_id": base,
        "share_group": settings.share_group or DEFAULT_GROUP,
    }
    if settings.metrics_addr:
        host, _, port = settings.metrics_addr.rpartition(":")
        update["metrics_addr"] = f"{host}:{int(port) + index}"
    return settings.model_copy(update=update)


async def supervise(settings: Settings, workers: int, *, api: bool = False) -> None:
    """Run ``workers`` serve processes until SIGTERM/SIGINT; raise when one fails early."""
    if workers < 1:
        raise ConfigError("--workers must be at least 1.")
    if api:
        raise ConfigError(
            "--api serves from one process: run `bridge api` beside `bridge serve --workers N`."
        )
    if embedded.is_embedded_database(settings) or settings.mqtt_url is None:
        raise ConfigError(
            "--workers needs BRIDGE_DATABASE_URL and BRIDGE_MQTT_URL: the embedded "
            "database and broker belong to a single `bridge serve`."
        )
    settings.server_secret()  # refuse a missing or weak secret before starting anything
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    failure: str | None = None
    try:
        for index in range(workers):
            procs[index] = (_start(settings, index), time.monotonic())
        log.info(
            "workers started",
            extra={
                "event": "workers",
                "workers": workers,
                "pids": [p.pid for p, _ in procs.values()],
            },
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_SECONDS):
                    await stop.wait()
            for index, (proc, since) in list(procs.items()):
                status = proc.poll()
                if status is None or stop.is_set():
                    continue
                # A worker that ended itself at once met a failure a restart would repeat;
                # one killed by a signal (status < 0) is simply started again.
                if status > 0 and time.monotonic() - since < YOUNG_SECONDS:
                    failure = (
                        f"worker {index} exited with status {status} "
                        f"{time.monotonic() - since:.1f} s after it started; see its log lines."
                    )
                    stop.set()
                    break
                log.warning(
                    "worker exited; starting it again",
                    extra={"event": "worker_restart", "worker": index, "status": status},
                )
                procs[index] = (_start(settings, index), time.monotonic())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await _stop_all([proc for proc, _ in procs.values()])
    if failure is not None:
        raise ConfigError(failure)


def _start(settings: Settings, index: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 (this interpreter, this package's module)
        [sys.executable, "-m", "bridge.workers", str(os.getpid())], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    # The settings travel whole (secrets included) through a pipe only the child reads.
    proc.stdin.write(pickle.dumps(worker_settings(settings, index)))
    proc.stdin.close()
    return proc


async def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:  # noqa: ASYNC110 (a child's exit is polled)
        await asyncio.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:  # noqa: ASYNC110 (nothing signals a parent's exit)
        await asyncio.sleep(WATCH_SECONDS)
    log.warning("the supervisor is gone; stopping", extra={"event": "supervisor_gone"})
    stop.set()


async def _worker(settings: Settings, parent: int) -> None:
    from bridge.runtime import serve  # noqa: PLC0415 (after the settings arrived)

    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_parent(parent, stop))
    try:
        await serve(settings, stop, persistent_session=True)
    finally:
        watcher.cancel()


def _worker_main(parent: int) -> int:
    settings = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 (from the parent's pipe)
    if not isinstance(settings, Settings):
        return 2
    logs.configure()
    try:
        asyncio.run(_worker(settings, parent))
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(int(sys.argv[1])))
