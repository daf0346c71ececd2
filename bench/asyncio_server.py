"""
A reference beyond Twisted: the plainest asyncio TLS server that answers
GNP/1 ECHO, on uvloop when it is installed (``pip install -e '.[bench]'``).

The same job as bench/floor_server.py: after the handshake it sends
C{OK\\r\\n}; for each request head (up to CRLF CRLF) it replies C{OK}, the
Sequence, Size and the arguments joined by single spaces. No admission,
no timeouts, no bodies, no flow control. The TLS setup matches ours as far
as the standard library's C{ssl} allows: TLS 1.2+, the server's certificate
and key, a client certificate asked for (C{CERT_OPTIONAL}; the data
directory's client certificate is trusted, since C{ssl} cannot accept any
certificate without verifying it). It links the Python interpreter's
OpenSSL, not pyOpenSSL's: see the header bench/run.py prints.

    python bench/asyncio_server.py --port 4501 --cert D/server.pem --key D/server.key --client-ca D/client.pem
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""
        # asyncio calls connection_made once the TLS handshake is done.
        transport.write(b"OK\r\n")

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out = []
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            pos = end + 4
            first, _, rest = head.partition(b"\r\n")
            args = b" ".join(first.split()[1:])
            seq = b""
            for line in rest.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sequence":
                    seq = value.strip()
                    break
            if args:
                out.append(b"OK\r\nSequence: %s\r\nSize: %d\r\n\r\n%s" % (seq, len(args), args))
            else:
                out.append(b"OK\r\nSequence: %s\r\n\r\n" % seq)
        self.buffer = buf[pos:]
        if out:
            self.transport.write(b"".join(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca", required=True, help="the client certificate(s) to trust")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(a.client_ca)
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    if not a.no_uvloop:
        try:
            import uvloop
        except ImportError:
            sys.exit("uvloop is not installed: pip install -e '.[bench]' (or --no-uvloop)")
        uvloop.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(Echo, a.interface, a.port, ssl=ctx, backlog=1024)
    )
    print(f"listening on {a.interface}:{a.port} ({type(loop).__module__})", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
