"""Workload side of the demo: ordinary socket code on sandnet's socket class.

    demo_workload.py serve-http PORT           answer one HTTP request, print "served"
    demo_workload.py udp-round-trip HOST PORT  send a datagram to an echo server, print the answer
    demo_workload.py loopback PORT HOST_PORT   connect to a sandbox listener on 127.0.0.1:PORT and
                                               to 127.0.0.1:HOST_PORT, where only the host listens
"""

import errno
import sys

from sandnet import socket


def serve_http(port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(8)
    print("listening", flush=True)
    listener.settimeout(60)
    conn, peer = listener.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        body = f"hello {peer[0]}, this page is served from inside the sandbox\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(body) + body)
    listener.close()
    print("served", request.split(b"\r\n", 1)[0].decode(), flush=True)


def udp_round_trip(host: str, port: int) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1)
    for attempt in range(5):
        udp.sendto(b"sandnet udp %d" % attempt, (host, port))
        try:
            data, sender = udp.recvfrom(2048)
        except TimeoutError:
            continue
        print(f"echo from {sender[0]}:{sender[1]}: {data.decode()}")
        return
    sys.exit("no UDP echo after 5 tries")


def loopback(port: int, host_port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(("127.0.0.1", port))
    server_side, _ = listener.accept()
    client.sendall(b"inside")
    assert server_side.recv(16) == b"inside"
    print(f"127.0.0.1:{port} reached the sandbox listener")
    for sock in (client, server_side, listener):
        sock.close()

    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(5)
    code = probe.connect_ex(("127.0.0.1", host_port))
    probe.close()
    if code != errno.ECONNREFUSED:
        sys.exit(f"127.0.0.1:{host_port} gave {errno.errorcode.get(code, code)}, expected ECONNREFUSED")
    print(f"127.0.0.1:{host_port} is refused inside the sandbox although the host listens there")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "serve-http":
        serve_http(int(args[0]))
    elif command == "udp-round-trip":
        udp_round_trip(args[0], int(args[1]))
    elif command == "loopback":
        loopback(int(args[0]), int(args[1]))
    else:
        sys.exit(f"unknown command {command!r}")
