"""The connection layer: netrefs, requests and replies, serving threads, interrupts, services
and the by-value helpers (obtain, deliver, async_). Transport-agnostic: a Connection runs over
any :class:`remote_kernel.net.transports.Transport`-like object handed to it."""
