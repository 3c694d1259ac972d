"""A small local web site to scrape: an HTML gallery of generated images on 127.0.0.1.

Routes: ``/gallery.html`` (``<img src alt>`` tags, one duplicate image), ``/img/<n>.png``,
``/notes.txt`` (not an image), ``/huge.png`` (larger than any sane limit), ``/redirect?to=URL``
(302 to any URL, for the redirect-to-private checks), ``/slow.png`` (answers after a delay).
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image

COLORS = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 200, 40)]
CAPTIONS = ["a red square", "a green square", "a blue square", "a yellow square"]


def make_png(color: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), color)
    for i in range(size):  # a diagonal so the images are not flat colour only
        img.putpixel((i, i), (255, 255, 255))
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_large_png(width: int, height: int) -> bytes:
    """A valid, fully decodable 1-bit black PNG of ``width x height``, built without a canvas.

    For decompression-bomb tests: rows of zeros are streamed through zlib, so a 30,000 x 30,000
    image (900 M pixels, gigabytes once decoded) costs one 4 KB row in memory and about 110 KB of
    file, and the test process never allocates the image it describes.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "None", then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client giving up on /huge.png or /slow.png is expected here, not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FixtureSite:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, public_url: str | None = None) -> None:
        self.images = {f"/img/{i}.png": make_png(c) for i, c in enumerate(COLORS)}
        self.hits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                site.hits.append(url.path)
                if url.path == "/gallery.html":
                    self._send(200, site.gallery_html().encode(), "text/html; charset=utf-8")
                elif url.path in site.images:
                    self._send(200, site.images[url.path], "image/png")
                elif url.path == "/notes.txt":
                    self._send(200, b"not an image\n", "text/plain")
                elif url.path == "/huge.png":
                    self._send(200, b"\x89PNG" + b"\0" * (2 * 1024 * 1024), "image/png")
                elif url.path == "/slow.png":
                    time.sleep(float(parse_qs(url.query).get("s", ["3"])[0]))
                    self._send(200, site.images["/img/0.png"], "image/png")
                elif url.path == "/redirect":
                    target = parse_qs(url.query).get("to", ["/"])[0]
                    self._send(302, b"", "text/plain", {"Location": target})
                else:
                    self._send(404, b"not found", "text/plain")

        self.server = _QuietServer((host, port), Handler)
        self.port = int(self.server.server_address[1])
        # The absolute URL in the gallery: where scrapers reach the site (a Service name in a cluster).
        self.base_url = public_url.rstrip("/") if public_url else f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def gallery_html(self) -> str:
        tags = [f'<img src="/img/{i}.png" alt="{cap}">' for i, cap in enumerate(CAPTIONS)]
        tags.append(f'<img src="{self.base_url}/img/0.png" alt="the red square again">')  # duplicate
        tags.append('<img src="/notes.txt" alt="not an image">')
        return "<html><body><h1>Gallery</h1>\n" + "\n".join(tags) + "\n</body></html>\n"

    def start(self) -> FixtureSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Serve the site until killed: ``python -m imagineer_worker.testing.fixture_site --port 8080``.

    The cluster smoke test (tests/smoke/) runs it in a pod from the worker image, as the web site
    the scraper fetches from.
    """
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--public-url", help="the site's URL as scrapers see it (default: host and port)")
    args = parser.parse_args(argv)
    site = FixtureSite(args.host, args.port, args.public_url)
    print(f"fixture site on {args.host}:{site.port}, gallery at {site.base_url}/gallery.html", flush=True)
    site.server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
