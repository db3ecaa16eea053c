"""A module only the server imports: its exception class is unknown to the test process."""


class SensorFault(ValueError):
    """Raised on the server only."""


def raise_sensor_fault() -> None:
    raise SensorFault("sensor 3 is unplugged")
