"""Kernel-side servers and load generators for `make bench`, run in the peer namespace.

    peer.py serve BASE_PORT        TCP sink (BASE), source (BASE+1), echo (BASE+2),
                                   hold (BASE+3) and UDP echo (BASE+2); prints "ready"
    peer.py connect HOST PORT SECONDS TASKS
                                   open and close connections to HOST:PORT with TASKS
                                   concurrent tasks for SECONDS; prints the count

Protocols, all on the Linux kernel's sockets:
- sink: read to EOF, then send the byte count as decimal text and close.
- source: read one line holding a byte count N, send N bytes, close.
- echo: send back every byte received; the UDP echo returns each datagram.
- hold: keep the connection open until the client closes it.
"""

import asyncio
import resource
import socket
import sys

SOURCE_BLOCK = bytes(1 << 20)
LISTEN_BACKLOG = 4096


class Sink(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.count = 0

    def data_received(self, data):
        self.count += len(data)

    def eof_received(self):
        self.transport.write(str(self.count).encode())
        self.transport.close()
        return True


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)


class Hold(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def eof_received(self):
        self.transport.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def handle_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        remaining = int(line)
        while remaining > 0:
            block = SOURCE_BLOCK[:min(remaining, len(SOURCE_BLOCK))]
            writer.write(block)
            remaining -= len(block)
            await writer.drain()
    except (ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(base_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(Sink, "0.0.0.0", base_port, backlog=LISTEN_BACKLOG, reuse_address=True)
    await asyncio.start_server(handle_source, "0.0.0.0", base_port + 1, backlog=LISTEN_BACKLOG, reuse_address=True)
    await loop.create_server(Echo, "0.0.0.0", base_port + 2, backlog=LISTEN_BACKLOG, reuse_address=True)
    await loop.create_server(Hold, "0.0.0.0", base_port + 3, backlog=LISTEN_BACKLOG, reuse_address=True)
    await loop.create_datagram_endpoint(UdpEcho, local_addr=("0.0.0.0", base_port + 2))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def connect_loop(host: str, port: int, seconds: float, tasks: int) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    count = 0

    async def one_task() -> None:
        nonlocal count
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.01)
                continue
            count += 1
            writer.close()

    await asyncio.gather(*(one_task() for _ in range(tasks)))
    return count


def main() -> None:
    # tcp_concurrent holds up to 10,000 connections, so raise the descriptor limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    command = sys.argv[1]
    if command == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    elif command == "connect":
        host, port, seconds, tasks = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        print(asyncio.run(connect_loop(host, port, seconds, tasks)), flush=True)
    else:
        sys.exit(f"unknown command {command!r}: expected serve or connect")


if __name__ == "__main__":
    main()
