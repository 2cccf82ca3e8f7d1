"""The meter's samplers: what polls NVML, and where (a thread of this process, or a child process).

:class:`NvmlPoller` makes one pass over a GPU's NVML reads and emits events ``(kind, t, *values)``
(``tick``, ``power``, ``state``, ``error``) stamped with ``time.perf_counter`` seconds, which a
:class:`energybook.measure.timeline.Timeline` records. :class:`ThreadSampler` runs the passes from a
thread of the measured process; :class:`ProcessSampler` from a child process (``multiprocessing``,
spawn) that opens its own NVML handle by UUID and streams its events back through a queue, drained
whenever the meter is read, so the measured process gets no extra thread. ``perf_counter`` is
``CLOCK_MONOTONIC`` on Linux, one clock for the whole system; a clock handshake at start refuses a
child whose clock disagrees.

Used in :doc:`/book/instruments`.
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import threading
import time

from energybook.measure.nvml_device import MeterUnavailable, bare_uuid, describe, is_not_supported, open_by_uuid, text

logger = logging.getLogger(__name__)

SAMPLERS = ("thread", "process")


class NvmlPoller:
    """One pass over a GPU's NVML reads, emitting events ``(kind, t, *values)``; shared by both samplers.

    Events: ``("tick", t, raw_mJ)`` when the raw counter changed, ``("power", t, W)``,
    ``("state", t, temp_C, sm_MHz, reasons_mask_or_None)`` and ``("error", t, what)``.

    Args:
        nv: The NVML bindings.
        handle: The GPU's NVML handle.
        has_counter: Whether to read the energy counter.
        has_power: Whether to read the power.
        power_period_s: Power sampling period (seconds).
        state_period_s: State (temperature, SM clock, clock-event reasons) sampling period (seconds).
    """

    def __init__(self, nv, handle, has_counter: bool, has_power: bool, power_period_s: float,
                 state_period_s: float = 1.0):
        self.nv, self.h = nv, handle
        self.has_counter, self.has_power = has_counter, has_power
        self.power_period_s, self.state_period_s = power_period_s, state_period_s
        self.last_raw: int | None = None
        self.reasons = None
        for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            fn = getattr(nv, name, None)
            if fn is None:
                continue
            try:
                fn(handle)
            except Exception:  # noqa: BLE001 - FunctionNotFound on older drivers, NotSupported
                continue
            self.reasons = fn
            break
        self.reset()

    def reset(self) -> None:
        """Sample power and state at the next pass."""
        self.next_power = self.next_state = time.perf_counter()

    def once(self, emit) -> None:
        """Read what is due and ``emit(kind, t, *values)`` each result."""
        nv, h = self.nv, self.h
        now = time.perf_counter()
        if self.has_counter:
            try:
                raw = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
            except Exception as exc:  # noqa: BLE001 - every NVML failure is recorded
                emit("error", now, describe("energy counter", exc))
            else:
                if raw != self.last_raw:
                    emit("tick", (now + time.perf_counter()) / 2, raw)
                    self.last_raw = raw
        if self.has_power and now >= self.next_power:
            try:
                p = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception as exc:  # noqa: BLE001
                emit("error", now, describe("power", exc))
            else:
                emit("power", time.perf_counter(), p)
            self.next_power = max(self.next_power + self.power_period_s, now)
        if now >= self.next_state:
            self.next_state = now + self.state_period_s
            emit("state", now, *self._state(emit, now))

    def _state(self, emit, now: float) -> tuple[float, float, int | None]:
        nv, h = self.nv, self.h
        values = []
        for what, read in (("temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                           ("SM clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))):
            try:
                values.append(float(read()))
            except Exception as exc:  # noqa: BLE001
                values.append(float("nan"))
                if not is_not_supported(nv, exc):
                    emit("error", now, describe(what, exc))
        mask = None
        if self.reasons is not None:
            try:
                mask = int(self.reasons(h))
            except Exception as exc:  # noqa: BLE001
                if is_not_supported(nv, exc):
                    self.reasons = None
                else:
                    emit("error", now, describe("clock-event reasons", exc))
        return values[0], values[1], mask


def run_passes(poller: NvmlPoller, emit, poll_s: float, stop) -> None:
    """Poll until ``stop()`` is true; a failure that is not NVML's is recorded as an error event, not raised."""
    while not stop():
        try:
            poller.once(emit)
        except Exception as exc:  # noqa: BLE001 - a bug, not NVML: recorded, the window is then refused
            emit("error", time.perf_counter(), f"sampler failed ({type(exc).__name__}: {exc})")
        time.sleep(poll_s)


class ThreadSampler:
    """Polls from a thread of this process, handing each event to ``ingest(kind, t, *values)``.

    Args:
        poller: The NVML reads.
        ingest: Receives every event.
        poll_s: Polling period (seconds).
    """

    def __init__(self, poller: NvmlPoller, ingest, poll_s: float):
        self.poller, self.ingest, self.poll_s = poller, ingest, poll_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="energybook-meter", daemon=True)

    def _run(self) -> None:
        self.poller.reset()
        run_passes(self.poller, self.ingest, self.poll_s, self._stop.is_set)

    def start(self) -> ThreadSampler:
        """Start the thread."""
        self.thread.start()
        return self

    def drain(self) -> None:
        """Nothing to drain: the thread records its events as it reads them."""

    def dead(self) -> bool:
        """Whether the sampler stopped by itself (a thread never does)."""
        return False

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self.thread.join()


def sampler_process(conn, events, uuid: str, poll_s: float, power_period_s: float, has_counter: bool,
                    has_power: bool, loader, state_period_s: float = 1.0) -> None:
    """Body of the ``sampler="process"`` child: open NVML by UUID, stream events into ``events`` until told to stop."""
    nv = None
    try:
        nv = loader()
        nv.nvmlInit()
        h = open_by_uuid(nv, uuid)
        seen = text(nv.nvmlDeviceGetUUID(h))
        poller = NvmlPoller(nv, h, has_counter, has_power, power_period_s, state_period_s)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises MeterUnavailable
        events.put(("fatal", time.perf_counter(), f"{type(exc).__name__}: {exc}"))
        return
    events.put(("hello", time.perf_counter(), seen, os.getpid()))
    stopped = []

    def stop() -> bool:
        try:
            while conn.poll():
                msg = conn.recv()
                if msg == "stop":
                    stopped.append(True)
                elif msg == "ping":
                    conn.send(time.perf_counter())
        except (EOFError, OSError):  # the parent is gone
            stopped.append(True)
        return bool(stopped)

    run_passes(poller, lambda *event: events.put(event), poll_s, stop)
    events.put(("bye", time.perf_counter()))
    try:
        nv.nvmlShutdown()
    except Exception:  # noqa: BLE001
        pass


class ProcessSampler:
    """Polls from a child process (spawn) that opens the GPU by UUID; its events reach ``ingest`` when drained.

    Args:
        uuid: The GPU's UUID.
        ingest: Receives every event.
        poll_s: Polling period (seconds).
        power_period_s: Power sampling period (seconds).
        state_period_s: State sampling period (seconds).
        has_counter: Whether to read the energy counter.
        has_power: Whether to read the power.
        loader: What the child calls to load NVML (picklable).
        start_timeout_s: How long the child may take to start (seconds).
    """

    def __init__(self, uuid: str, ingest, poll_s: float, power_period_s: float, state_period_s: float,
                 has_counter: bool, has_power: bool, loader, start_timeout_s: float = 60.0):
        self.uuid, self.ingest, self.start_timeout_s = uuid, ingest, start_timeout_s
        self.args = (uuid, poll_s, power_period_s, has_counter, has_power, loader, state_period_s)
        self.proc = self.conn = self.queue = None
        self.bye = False

    def start(self) -> ProcessSampler:
        """Start the child, check that it reads the same GPU on the same clock.

        Raises:
            MeterUnavailable: the child could not start, read the GPU, or has another clock.
        """
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        events = ctx.Queue()
        proc = ctx.Process(target=sampler_process, name="energybook-meter", daemon=True,
                           args=(child_conn, events, *self.args))
        proc.start()
        child_conn.close()

        def fail(why: str):
            proc.kill()
            proc.join(5)
            conn.close()
            events.close()
            raise MeterUnavailable(f"the meter's sampler process {why}: use sampler='thread'")

        deadline = time.perf_counter() + self.start_timeout_s
        hello = None
        while hello is None:
            try:
                hello = events.get(timeout=0.1)
            except queue_module.Empty:
                if not proc.is_alive():  # spawn could not start it (a __main__ read from stdin, say)
                    fail(f"exited at start (exit code {proc.exitcode}; spawn re-imports the main module, which must "
                         "be a file guarded by `if __name__ == '__main__'`)")
                if time.perf_counter() > deadline:
                    fail(f"did not start within {self.start_timeout_s:.0f} s")
        if hello[0] != "hello":
            fail(f"could not read the GPU ({hello[2] if len(hello) > 2 else hello})")
        if bare_uuid(hello[2]) != bare_uuid(self.uuid):
            fail(f"opened GPU {hello[2]}, not the meter's {self.uuid}")
        for _ in range(3):  # clock handshake: the child's perf_counter must fall between the parent's
            a = time.perf_counter()
            conn.send("ping")
            if not conn.poll(10.0):
                fail("did not answer the clock handshake")
            c = conn.recv()
            b = time.perf_counter()
            if not a - 1e-3 <= c <= b + 1e-3:
                fail(f"has another clock (its perf_counter {c:.6f} is outside this process's [{a:.6f}, {b:.6f}])")
        self.proc, self.conn, self.queue, self.bye = proc, conn, events, False
        return self

    def _handle(self, event: tuple) -> None:
        if event[0] == "bye":
            self.bye = True
        elif event[0] in ("tick", "power", "state", "error"):
            self.ingest(*event)

    def drain(self) -> None:
        """Take every event the child has sent so far (no thread: called by the meter's readers)."""
        if self.queue is None:
            return
        while True:
            try:
                event = self.queue.get_nowait()
            except queue_module.Empty:
                return
            except (EOFError, OSError):  # pragma: no cover - the queue is broken
                return
            self._handle(event)

    def dead(self) -> bool:
        """Whether the child died without being told to stop."""
        return self.proc is not None and not self.proc.is_alive() and not self.bye

    def stop(self) -> None:
        """Tell the child to stop, take its last events and wait for it."""
        proc, conn, events = self.proc, self.conn, self.queue
        if proc is None:
            return
        try:
            conn.send("stop")
        except (OSError, ValueError):
            pass
        deadline = time.perf_counter() + 5.0
        while not self.bye and time.perf_counter() < deadline:
            try:
                self._handle(events.get(timeout=0.05))
            except queue_module.Empty:
                if not proc.is_alive():
                    break
        self.drain()
        proc.join(5)
        if proc.is_alive():  # pragma: no cover - a stuck child
            proc.kill()
            proc.join(5)
        conn.close()
        events.close()
        self.proc = self.conn = self.queue = None
