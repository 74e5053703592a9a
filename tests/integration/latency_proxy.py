"""A TCP proxy that delays every request, to make a database slow on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def shut_down(*ends: socket.socket) -> None:
    """End each socket both ways, as a peer going away would; closed ones are skipped."""
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


class LatencyProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``, holding each client chunk ``delay_s``."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop accepting; open connections end with their peers."""
        self._closed.set()
        # Closing alone does not wake a thread blocked in accept(), which would still
        # take the next connection (a client reconnecting at once, say); this does.
        shut_down(self._listener)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed.is_set():  # arrived as the proxy closed: refused
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(
                target=self._pump, args=(client, upstream, self.delay_s), daemon=True
            ).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, delay_s: float) -> None:
        try:
            while chunk := source.recv(65536):
                if delay_s:
                    time.sleep(delay_s)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            shut_down(source, target)
            source.close()
            target.close()
