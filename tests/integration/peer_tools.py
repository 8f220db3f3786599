"""Small servers that run on the Linux peer, in its network namespace, with
the kernel's sockets. Each prints "ready" once it listens.

    peer_tools.py source PORT NBYTES SEED   send NBYTES of seeded data, print its sha256
    peer_tools.py sink PORT                 read to EOF, print "LENGTH SHA256"
    peer_tools.py udp-echo PORT             echo datagrams until killed
    peer_tools.py half-close PORT           read to EOF, then send "got N" and close
"""

import hashlib
import random
import socket
import sys


def listen(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(8)
    server.settimeout(120)
    print("ready", flush=True)
    return server


def source(port: int, nbytes: int, seed: int) -> None:
    data = random.Random(seed).randbytes(nbytes)
    conn, _ = listen(port).accept()
    conn.sendall(data)
    conn.close()
    print(hashlib.sha256(data).hexdigest(), flush=True)


def sink(port: int) -> None:
    conn, _ = listen(port).accept()
    conn.settimeout(120)
    digest, length = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk)
        length += len(chunk)
    conn.close()
    print(length, digest.hexdigest(), flush=True)


def udp_echo(port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, addr = server.recvfrom(65535)
        server.sendto(data, addr)


def half_close(port: int) -> None:
    conn, _ = listen(port).accept()
    conn.settimeout(60)
    total = 0
    while chunk := conn.recv(65536):
        total += len(chunk)
    conn.sendall(f"got {total}".encode())
    conn.close()


if __name__ == "__main__":
    mode, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"source": source, "sink": sink, "udp-echo": udp_echo, "half-close": half_close}[mode](*args)
