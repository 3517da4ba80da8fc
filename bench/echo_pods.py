"""One UDP echo process standing in for any number of worker pods on loopback addresses.

    .venv/bin/python bench/echo_pods.py [PORT]     # prints the port, then echoes until killed

Worker pods get addresses of their own (127.1.x.y, all local on Linux). One socket bound to
0.0.0.0:PORT receives for all of them; each datagram is answered `<pod IP>: <payload>` *from the
address it was sent to* (IP_PKTINFO): Envoy's UDP proxy talks to its upstream over a connected
socket, which would drop an answer from any other source address.
"""

from __future__ import annotations

import socket
import struct
import sys

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python does not export it
PKTINFO = struct.Struct("I4s4s")  # struct in_pktinfo: ifindex, spec_dst (source to use), addr (destination)


def echo_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    return sock


def destination(ancillary: list[tuple[int, int, bytes]]) -> bytes:
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_PKTINFO:
            return PKTINFO.unpack(data[: PKTINFO.size])[2]
    raise RuntimeError("no IP_PKTINFO on a received datagram")


def serve(sock: socket.socket) -> None:
    while True:
        payload, ancillary, _, sender = sock.recvmsg(65535, socket.CMSG_SPACE(PKTINFO.size))
        local = destination(ancillary)
        answer = socket.inet_ntoa(local).encode() + b": " + payload
        source = PKTINFO.pack(0, local, bytes(4))
        sock.sendmsg([answer], [(socket.SOL_IP, IP_PKTINFO, source)], 0, sender)


def main(argv: list[str]) -> int:
    sock = echo_socket(int(argv[0]) if argv else 0)
    print(sock.getsockname()[1], flush=True)
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
