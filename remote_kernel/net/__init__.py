"""Networking: transports (TCP+TLS, unix, stdio, ssh, memory), the handshake, connection files,
``connect*`` on the client side and :class:`Server` on the serving side, and discovery."""
