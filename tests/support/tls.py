"""Throwaway TLS material and a TLS-terminating proxy, for testing the Kafka clients' TLS settings.

Why a proxy: Tansu 0.6.0 (the embedded broker) cannot serve TLS. Its ``--cert`` and ``--key`` are
declared in one exclusive argument group (the CLI refuses both together), and even given both, the
listener never uses the TLS acceptor it builds. So the tests put this proxy in front of a plaintext
Tansu whose advertised listener is the proxy: every client connection, bootstrap and broker alike,
then goes through a real TLS handshake (server certificate, hostname, optionally a client
certificate) before any Kafka byte reaches the broker.

Certificates are made with the ``openssl`` command (no extra Python dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make test certificates")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with ``client_key_password``
    client_key_password: str
    other_ca: Path  # a CA that signed nothing here: a client trusting it must refuse the server


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        _openssl(*args, cwd=directory)

    for ca in ("ca", "other-ca"):
        run(*f"req -x509 -newkey rsa:2048 -nodes -days 2 -keyout {ca}.key -out {ca}.pem".split(), "-subj", f"/CN={ca}")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    (directory / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run(*f"req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}".split())
        run(
            *f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out {name}.pem".split(),
            "-extfile",
            f"{name}.ext",
        )
    password = "client-key-pass"
    run("pkcs8", "-topk8", "-in", "client.key", "-out", "client.enc.key", "-passout", f"pass:{password}")
    return Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.enc.key",
        client_key_password=password,
        other_ca=directory / "other-ca.pem",
    )


@dataclass
class TlsProxy:
    """Accepts TLS on ``port`` and pipes each connection to ``upstream`` (plaintext), on a thread of its own."""

    upstream_port: int
    port: int
    certificates: Certificates
    require_client_certificate: bool = False
    host: str = "127.0.0.1"
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificates.server_cert, self.certificates.server_key)
        if self.require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.certificates.ca)
        return context

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_writer.close()
            return
        # Cancelled only when the proxy stops: end quietly (the streams' callback would report a cancelled task).
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError | OSError):
            return  # a client that refused our certificate, or sent none: what the tests provoke
        loop.default_exception_handler(context)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(self._exception_handler)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self._context())

        try:
            loop.run_until_complete(start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shut() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
