"""The threaded HTTP server the local stand-ins (Graph API, model server, gates) run on."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LocalServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose listen backlog holds a burst of connections.

    socketserver's default backlog is 5: when hundreds of turns connect at once (a 200-sender delivery),
    the kernel drops or resets the connections past it and the client sees ConnectTimeout or ReadError.
    A real API's backlog is far deeper, so the stand-in's must not be what a test measures.
    """

    daemon_threads = True
    request_queue_size = 1024
