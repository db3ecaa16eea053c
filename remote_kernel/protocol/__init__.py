"""Sans-IO protocol core: bytes in, messages out. No sockets, threads or asyncio here."""
