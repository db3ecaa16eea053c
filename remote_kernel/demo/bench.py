"""A simulated lab bench, served with ``remote-kernel serve --service remote_kernel.demo.bench:Lab``.

Four instruments, shared by every client like real hardware: a signal generator (settings
take a moment to apply), a digitizer returning noisy traces of the generated signal, a
temperature stage that approaches its setpoint slowly, and an event source that calls a
client's callback when the temperature crosses a threshold. Out-of-range settings raise
:class:`OutOfRange`, the instrument's own exception.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from remote_kernel.core.service import ClassicService


class OutOfRange(ValueError):
    """A setting outside what the instrument can do."""


class SignalGenerator:
    """Sine generator. ``frequency`` in Hz (1 Hz–1 MHz), ``amplitude`` in volts (0–10 V)."""

    SETTLE = 0.05  # seconds a new setting takes to apply

    def __init__(self) -> None:
        self._frequency = 1000.0
        self._amplitude = 1.0
        self.output_enabled = True

    @property
    def frequency(self) -> float:
        return self._frequency

    @frequency.setter
    def frequency(self, hertz: float) -> None:
        if not 1.0 <= hertz <= 1e6:
            raise OutOfRange(f"frequency {hertz} Hz is outside 1 Hz .. 1 MHz")
        time.sleep(self.SETTLE)
        self._frequency = float(hertz)

    @property
    def amplitude(self) -> float:
        return self._amplitude

    @amplitude.setter
    def amplitude(self, volts: float) -> None:
        if not 0.0 <= volts <= 10.0:
            raise OutOfRange(f"amplitude {volts} V is outside 0 .. 10 V")
        time.sleep(self.SETTLE)
        self._amplitude = float(volts)

    def configure(self, frequency: float | None = None, amplitude: float | None = None) -> None:
        """Set frequency and/or amplitude in one call."""
        if frequency is not None:
            self.frequency = frequency
        if amplitude is not None:
            self.amplitude = amplitude

    def __repr__(self) -> str:
        return f"SignalGenerator({self._frequency:g} Hz, {self._amplitude:g} V)"

    def _repr_html_(self) -> str:
        state = "on" if self.output_enabled else "off"
        return (f"<b>Signal generator</b>: {self._frequency:g} Hz, {self._amplitude:g} V, "
                f"output {state}")


class Digitizer:
    """Samples the generator's output with noise; its input range is ±``range_volts``."""

    def __init__(self, generator: SignalGenerator) -> None:
        self.generator = generator
        self.noise = 0.05
        self.range_volts = 2.5

    def acquire(self, samples: int = 1000, rate: float = 50_000.0) -> Any:
        """A trace of ``samples`` points at ``rate`` samples/s (a numpy array of volts)."""
        import numpy

        if not 1 <= samples <= 50_000_000:
            raise OutOfRange(f"{samples} samples is outside 1 .. 50M")
        t = numpy.arange(samples) / rate
        signal = self.generator.amplitude * numpy.sin(2 * math.pi * self.generator.frequency * t)
        if not self.generator.output_enabled:
            signal[:] = 0.0
        return signal + numpy.random.default_rng().normal(0.0, self.noise, samples)

    def acquire_masked(self, samples: int = 1000, rate: float = 50_000.0) -> Any:
        """A trace as a numpy masked array: samples outside the input range are clipped by
        the hardware, so they are masked (not valid readings), with NaN as fill value."""
        import numpy

        trace = self.acquire(samples, rate)
        clipped = numpy.abs(trace) > self.range_volts
        return numpy.ma.masked_array(numpy.clip(trace, -self.range_volts, self.range_volts),
                                     mask=clipped, fill_value=numpy.nan)

    def sweep(self, frequencies: Any, samples: int = 2000) -> Any:
        """Measure at each frequency: a pandas DataFrame with one row per step (time,
        frequency, RMS and peak volts, clipped samples, and a status category)."""
        import numpy
        import pandas

        rows = []
        for hertz in frequencies:
            self.generator.frequency = hertz
            trace = self.acquire_masked(samples)
            rows.append({"time": pandas.Timestamp.now(tz="UTC"), "frequency": float(hertz),
                         "rms": float(numpy.sqrt((trace.filled(0.0) ** 2).mean())),
                         "peak": float(numpy.abs(trace).max()),
                         "clipped": int(trace.mask.sum()),
                         "status": "clipped" if trace.mask.any() else "ok"})
        table = pandas.DataFrame(rows)
        table["status"] = pandas.Categorical(table["status"], categories=["ok", "clipped"])
        table.index.name = "step"
        return table

    def acquire_slowly(self, seconds: float = 10.0, samples: int = 1000) -> Any:
        """A long acquisition (averaging for ``seconds``); Stop interrupts it."""
        deadline = time.monotonic() + seconds
        total = self.acquire(samples)
        count = 1
        while time.monotonic() < deadline:
            time.sleep(0.1)
            total = total + self.acquire(samples)
            count += 1
        return total / count


class TemperatureStage:
    """A stage that approaches its setpoint exponentially (time constant ``tau`` s)."""

    def __init__(self, start: float = 21.0, tau: float = 2.0) -> None:
        self.tau = tau
        self._start_value = start
        self._setpoint = start
        self._since = time.monotonic()
        self._lock = threading.Lock()

    @property
    def temperature(self) -> float:
        with self._lock:
            elapsed = time.monotonic() - self._since
            return self._setpoint + (self._start_value - self._setpoint) * math.exp(
                -elapsed / self.tau)

    @property
    def setpoint(self) -> float:
        return self._setpoint

    @setpoint.setter
    def setpoint(self, celsius: float) -> None:
        if not -40.0 <= celsius <= 150.0:
            raise OutOfRange(f"setpoint {celsius} °C is outside -40 .. 150 °C")
        current = self.temperature
        with self._lock:
            self._start_value, self._setpoint, self._since = current, float(celsius), \
                time.monotonic()

    def wait_stable(self, tolerance: float = 0.1, timeout: float = 30.0) -> float:
        """Block until within ``tolerance`` of the setpoint; returns the temperature."""
        deadline = time.monotonic() + timeout
        while abs(self.temperature - self._setpoint) > tolerance:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not stable within {timeout} s")
            time.sleep(0.05)
        return self.temperature

    def __repr__(self) -> str:
        return f"TemperatureStage({self.temperature:.2f} °C → {self._setpoint:g} °C)"


class EventSource:
    """Calls a client's callback when the stage temperature crosses a threshold."""

    def __init__(self, stage: TemperatureStage) -> None:
        self.stage = stage

    def watch_threshold(self, callback: Any, threshold: float, period: float = 0.1,
                        duration: float = 30.0) -> None:
        """Call ``callback(temperature, rising)`` on each crossing, for ``duration`` s."""
        def watch() -> None:
            previous = self.stage.temperature
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                time.sleep(period)
                current = self.stage.temperature
                if (previous - threshold) * (current - threshold) < 0:
                    try:
                        callback(round(current, 3), current > previous)
                    except Exception:
                        return  # the client went away
                previous = current

        threading.Thread(target=watch, daemon=True, name="threshold-watch").start()


generator = SignalGenerator()
digitizer = Digitizer(generator)
stage = TemperatureStage()
events = EventSource(stage)


class Lab(ClassicService):
    """The bench: ``root.generator``, ``root.digitizer``, ``root.stage``, ``root.events``,
    also in the remote namespace for ``%%remote`` cells; plus the classic interpreter."""

    exposed_generator = generator
    exposed_digitizer = digitizer
    exposed_stage = stage
    exposed_events = events
    exposed_OutOfRange = OutOfRange

    def __init__(self) -> None:
        super().__init__()
        self.exposed_namespace.update(generator=generator, digitizer=digitizer, stage=stage,
                                      events=events, OutOfRange=OutOfRange)
