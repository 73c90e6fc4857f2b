"""An mTLS handshake between two leaves, as two sidecars would do it, in memory."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any


def _context(side: int, leaf: dict[str, Any], roots_pem: str, directory: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_text(leaf["CertPEM"])
    key.write_text(leaf["PrivateKeyPEM"])
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=roots_pem)
    return ctx


def handshake(directory: Path, server_leaf: dict[str, Any], server_roots: str,
              client_leaf: dict[str, Any], client_roots: str) -> dict[str, Any]:
    """Raises ssl.SSLError when either side rejects the other; returns the server's
    view of the client certificate."""
    bios = {name: (ssl.MemoryBIO(), ssl.MemoryBIO()) for name in ("server", "client")}  # (incoming, outgoing)
    server = _context(ssl.PROTOCOL_TLS_SERVER, server_leaf, server_roots, directory, "server").wrap_bio(
        *bios["server"], server_side=True)
    client = _context(ssl.PROTOCOL_TLS_CLIENT, client_leaf, client_roots, directory, "client").wrap_bio(
        *bios["client"], server_side=False)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, side, peer in (("client", client, "server"), ("server", server, "client")):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            data = bios[name][1].read()
            if data:
                bios[peer][0].write(data)
        if all(done.values()):
            # TLS 1.3: the client's certificate is checked after the client finishes
            client.write(b"ping")
            bios["server"][0].write(bios["client"][1].read())
            assert server.read(4) == b"ping"
            return server.getpeercert()
    raise AssertionError("handshake did not finish")
