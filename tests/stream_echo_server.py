"""
A raw HTTP/1.1 backend for the passthrough's integration tests
(C{tests.test_integration_upstream}): it answers each request at once, then
sends back every piece of its body as it arrives, so that a client sees
that its first bytes reached the backend before it sent the rest.

 - A request with a C{Content-Length}: C{200}, C{Connection: close}, the
   request line and the C{Host} it got as the first body line, then the body
   as it comes; it closes once the whole body is in.
 - A request with C{Upgrade: websocket}: C{101}, then every byte echoed
   until the client closes.

    python tests/stream_echo_server.py --port 18091
"""

from __future__ import annotations

import argparse
import socket
import threading


def _serve(connection: socket.socket) -> None:
    with connection:
        head = b""
        while b"\r\n\r\n" not in head:
            data = connection.recv(65536)
            if not data:
                return  # a readiness probe, or a client that left
            head += data
        head, _, body = head.partition(b"\r\n\r\n")
        request_line, *lines = head.split(b"\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"upgrade", b"").lower() == b"websocket":
            connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n" + body
            )
            while data := connection.recv(65536):
                connection.sendall(data)
            return
        left = int(fields.get(b"content-length", b"0")) - len(body)
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Connection: close\r\n\r\n%s %s\n%s" % (request_line, fields.get(b"host", b""), body)
        )
        while left > 0:
            data = connection.recv(min(left, 65536))
            if not data:
                return
            left -= len(data)
            connection.sendall(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = socket.create_server(("127.0.0.1", args.port))
    while True:
        connection, _ = server.accept()
        threading.Thread(target=_serve, args=(connection,), daemon=True).start()


if __name__ == "__main__":
    main()
