"""Simulated devices: activation load in closed loop (N in flight) or open loop (R per second).

A device connection is expensive for a Python load generator (CONNECT, SUBSCRIBE,
DISCONNECT are three more round trips than the activation itself), so the generator
keeps a pool of connected device clients. Each client has its own MQTT client id,
subscribes to its own reply topic once, and then activates *distinct* identifiers one
after another (a fresh request id each time), one request in flight per client, as a
factory-line station or a gateway activating devices through one connection would.
The bridge sees exactly what it would see from separate devices: one request per
identifier, a reply on the requesting client's topic.

Time to key is measured from the moment the request was due (open loop: its scheduled
time, so a generator that falls behind shows up as latency, not as a gentler load;
closed loop: just before PUBLISH) until the reply carrying the key arrives.

Also runnable on its own against a running bridge::

    python bench/loadgen.py --mqtt mqtt://127.0.0.1:1883 --prefix provision \\
        --vendor acme --model thermo-1 --identifiers ids.txt --rate 300 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from bridge import mqtt, protocol
from bridge.config import parse_mqtt_url

REPLY_TIMEOUT = 10.0


@dataclass
class RunResult:
    """What one run measured."""

    label: str
    mode: str  # "closed" or "open"
    level: float  # N in flight (closed) or offered rate per second (open)
    elapsed: float = 0.0
    completed: int = 0  # warm-up included: what the CPU figures are divided by
    latencies: list[float] = field(default_factory=list)  # seconds, ok replies only
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.codes["ok"]

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        """Latency in milliseconds at quantile ``q`` (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in sorted(self.codes.items()) if code != "ok"}

    def line(self) -> str:
        what = f"N={self.level:g}" if self.mode == "closed" else f"offered {self.level:g}/s"
        errors = ", ".join(f"{c}={n}" for c, n in self.errors.items()) or "none"
        return (
            f"{self.label:<8} {self.mode:<6} {what:<16} {self.throughput:8.0f}/s "
            f"p50 {self.percentile(0.50):7.1f} ms  p95 {self.percentile(0.95):7.1f} ms  "
            f"p99 {self.percentile(0.99):7.1f} ms  ok {self.ok:>7}  errors: {errors}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "mode": self.mode,
            "level": self.level,
            "elapsed": round(self.elapsed, 3),
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.percentile(0.50), 2),
            "p95_ms": round(self.percentile(0.95), 2),
            "p99_ms": round(self.percentile(0.99), 2),
            "ok": self.ok,
            "errors": self.errors,
            **self.extra,
        }


class Device:
    """One connected device client: its own client id, one request at a time."""

    def __init__(self, client: aiomqtt.Client, client_id: str, prefix: str) -> None:
        self._client = client
        self._messages = client.messages
        self._request_topic = protocol.activate_topic(prefix, client_id)
        self._sent = 0
        self.client_id = client_id

    async def activate(self, vendor: str, model: str, identifier: str, *, echo: bool) -> str:
        """The outcome code of one activation ("ok", an error code, or "timeout")."""
        self._sent += 1
        request_id = f"r{self._sent}"
        payload = json.dumps(
            {
                "v": 1,
                "request_id": request_id,
                "vendor": vendor,
                "model": model,
                "identifier": identifier,
            },
            separators=(",", ":"),
        ).encode()
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                await self._client.publish(self._request_topic, payload, qos=1)
                while True:
                    message = await anext(self._messages)
                    reply = json.loads(message.payload)  # type: ignore[arg-type]
                    if reply.get("request_id") != request_id:
                        continue  # a late reply to an earlier request that timed out
                    if echo:
                        return "ok"  # the echo service returns the request itself
                    if reply.get("status") == "ok" and len(reply.get("key", "")) == 40:
                        return "ok"
                    return str(reply.get("code", "bad_reply"))
        except TimeoutError:
            return "timeout"
        except aiomqtt.MqttError:
            return "mqtt_error"


@contextlib.asynccontextmanager
async def device_pool(
    mqtt_url: str, prefix: str, size: int, tag: str
) -> collections.abc.AsyncIterator[list[Device]]:
    """``size`` connected device clients, each subscribed to its own reply topic."""
    endpoint = parse_mqtt_url(mqtt_url)
    async with contextlib.AsyncExitStack() as stack:
        gate = asyncio.Semaphore(32)  # connect in waves: do not flood the broker's accept queue

        async def connect(n: int) -> Device:
            client_id = f"bench-{tag}-{n}"
            async with gate:
                client = await stack.enter_async_context(
                    mqtt.client(endpoint, client_id, persistent=False)
                )
                await client.subscribe(protocol.reply_topic(prefix, client_id), qos=1)
            return Device(client, client_id, prefix)

        devices = await asyncio.gather(*(connect(n) for n in range(size)))
        yield list(devices)


Identifiers = Callable[[], str | None]  # the next fresh identifier, or None when used up


async def closed_loop(
    devices: list[Device],
    identifiers: Identifiers,
    *,
    label: str,
    vendor: str,
    model: str,
    seconds: float,
    warmup: float = 1.0,
    echo: bool = False,
) -> RunResult:
    """Every device sends its next request as soon as it has its reply (N = len(devices))."""
    result = RunResult(label, "closed", len(devices))
    started = time.perf_counter()
    measure_from = started + warmup
    deadline = measure_from + seconds
    last_done = measure_from

    async def device_loop(device: Device) -> None:
        nonlocal last_done
        while time.perf_counter() < deadline:
            identifier = identifiers()
            if identifier is None:
                return
            sent = time.perf_counter()
            code = await device.activate(vendor, model, identifier, echo=echo)
            done = time.perf_counter()
            result.completed += 1
            if sent >= measure_from:
                result.codes[code] += 1
                if code == "ok":
                    result.latencies.append(done - sent)
                last_done = max(last_done, done)

    await asyncio.gather(*(device_loop(d) for d in devices))
    result.elapsed = last_done - measure_from
    return result


async def open_loop(
    devices: list[Device],
    identifiers: Identifiers,
    *,
    label: str,
    vendor: str,
    model: str,
    rate: float,
    seconds: float,
    warmup: float = 1.0,
    echo: bool = False,
) -> RunResult:
    """Requests arrive at ``rate`` per second whatever the replies do (Poisson-free, evenly)."""
    result = RunResult(label, "open", rate)
    idle: asyncio.Queue[Device] = asyncio.Queue()
    for device in devices:
        idle.put_nowait(device)
    total = int(rate * (warmup + seconds))
    measured_from = int(rate * warmup)
    pending: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    first_due = started + warmup
    last_done = first_due

    async def one(k: int, due: float, identifier: str) -> None:
        nonlocal last_done
        device = await idle.get()  # waiting for a free client counts as time to key
        try:
            code = await device.activate(vendor, model, identifier, echo=echo)
        finally:
            idle.put_nowait(device)
        done = time.perf_counter()
        result.completed += 1
        if k >= measured_from:
            result.codes[code] += 1
            if code == "ok":
                result.latencies.append(done - due)
            last_done = max(last_done, done)

    k = 0
    while k < total:
        now = time.perf_counter()
        # Launch every request that is due; sleep until the next one.
        while k < total and started + k / rate <= now:
            identifier = identifiers()
            if identifier is None:
                total = k
                break
            task = asyncio.create_task(one(k, started + k / rate, identifier))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
        if k < total:
            await asyncio.sleep(max(0.0, started + k / rate - time.perf_counter()))
    if pending:
        await asyncio.gather(*pending)
    # Throughput over the measured stretch: from the first measured request's due time.
    result.elapsed = max(last_done - first_due, 1e-9)
    return result


def counter_identifiers(prefix: str) -> Identifiers:
    """Endless distinct identifiers (for the echo service, which looks nothing up)."""
    counter = iter(range(10**12))
    return lambda: f"{prefix}{next(counter):012d}"


def file_identifiers(lines: Iterator[str]) -> Identifiers:
    def take() -> str | None:
        for line in lines:
            if line.strip():
                return line.strip()
        return None

    return take


async def _main(args: argparse.Namespace, lines: list[str]) -> None:
    identifiers = file_identifiers(iter(lines))
    pool = args.in_flight if args.rate is None else args.pool
    async with device_pool(args.mqtt, args.prefix, pool, f"cli{time.time_ns() % 10**8}") as devs:
        if args.rate is None:
            result = await closed_loop(
                devs, identifiers, label="bridge", vendor=args.vendor, model=args.model,
                seconds=args.seconds, echo=args.echo,
            )  # fmt: skip
        else:
            result = await open_loop(
                devs, identifiers, label="bridge", vendor=args.vendor, model=args.model,
                rate=args.rate, seconds=args.seconds, echo=args.echo,
            )  # fmt: skip
    print(result.line())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mqtt", required=True, help="broker URL")
    parser.add_argument("--prefix", default="provision", help="topic prefix")
    parser.add_argument("--vendor", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--identifiers", required=True, help="file: one fresh identifier a line")
    parser.add_argument("--in-flight", type=int, default=64, help="closed loop: N (default 64)")
    parser.add_argument("--rate", type=float, help="open loop: offered activations per second")
    parser.add_argument("--pool", type=int, default=128, help="open loop: device clients")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--echo", action="store_true", help="the far end is bench/echo.py")
    cli = parser.parse_args()
    with open(cli.identifiers) as f:
        given = f.readlines()
    try:
        import uvloop

        uvloop.run(_main(cli, given))
    except ImportError:
        asyncio.run(_main(cli, given))
