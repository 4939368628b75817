"""An HTTPS proxy (CONNECT to port 443 only) on an address of this machine, for test nodes that have no
route beyond it: their pip reaches the package registry through it, as a cloud node reaches it directly.
It relays bytes and sees no plaintext; every host asked for is counted in `hosts`."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter


class RegistryProxy:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.hosts: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RegistryProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"the registry proxy did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._client, self.host, self.port))
        self._started.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[0].split()
            if len(request) < 2 or request[0] != "CONNECT" or not request[1].endswith(":443"):
                writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                writer.close()
                return
            host = request[1].rsplit(":", 1)[0]
            self.hosts[host] += 1
            up_reader, up_writer = await asyncio.open_connection(host, 443)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
