# Image URL intake for the OpenAI-compatible server: every `image_url.url` of a chat message passes
# load_image_url before the processor sees it. data: URLs are always decoded; http(s) downloads and local
# files only when the ImagePolicy allows them. It must not: connect to a private, loopback, link-local or
# otherwise blocked address (resolved once, then the vetted IP itself is dialled, so DNS rebinding cannot
# swap it), decode an image before its header passed the pixel limit, change PIL globals or warning filters,
# read outside the allowed directory, or put a traceback or a server-side path into an error message.
from __future__ import annotations

import binascii
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # no other decoder (EPS runs Ghostscript) ever sees client bytes
MEDIA_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp"}
REDIRECTS = {301, 302, 303, 307, 308}
# The WHATWG Fetch "bad ports" list: well-known non-HTTP services a browser also refuses to talk HTTP to.
BAD_PORTS = frozenset({
    0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104,
    109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526,
    530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659,
    4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
})
_NETS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4", "::/96", "::ffff:0:0/96", "100::/64", "2001::/32", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8",
)]
_LEGACY_V4 = re.compile(r"[0-9a-fA-FxX.]+")  # 2130706433, 0x7f.1, 0177.0.0.1: forms inet_aton still accepts


class ImageRefused(ValueError):
    """A client error: message says what and why; .code is a short machine string."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def is_blocked_address(ip: IPAddress) -> bool:
    """True for any address a server-side fetch must not reach: private, loopback, link-local, multicast,
    reserved, unspecified, CGNAT, documentation, and IPv6 forms that embed such an IPv4 (mapped, 6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop a %zone
        embedded = ip.ipv4_mapped or ip.sixtofour
        if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_blocked_address(embedded):
            return True
    if any(ip in net for net in _NETS if net.version == ip.version):
        return True
    return bool(not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class ImagePolicy:
    allow_remote: bool = False  # http(s) only with --allow-remote-images
    local_root: Path | None = None  # local paths / file:// only with --allow-local-files DIR
    max_bytes: int = 20 * 2**20  # encoded size limit (data URL after base64 decode, download, file)
    max_pixels: int = 50_000_000  # width*height from the header, checked BEFORE decoding
    timeout_s: float = 10.0  # whole download (connect + read), not per read
    max_redirects: int = 3
    blocked: Callable[[IPAddress], bool] = is_blocked_address


def _too_large(policy: ImagePolicy) -> ImageRefused:
    return ImageRefused(f"image is larger than the {policy.max_bytes} byte limit", "too_large")


def check_image_bytes(data: bytes, policy: ImagePolicy) -> Image.Image:
    """Encoded bytes -> a decoded (loaded) PIL image in its own mode; the processor converts to RGB.
    The header's width*height is checked against policy.max_pixels before any pixel is decoded."""
    if len(data) > policy.max_bytes:
        raise _too_large(policy)
    img = None
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # header only
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageRefused(f"image header says {w}x{h} pixels", "empty_image")
        if w * h > policy.max_pixels:
            raise ImageRefused(f"image is {w}x{h} = {w * h} pixels; the limit is {policy.max_pixels}",
                               "too_many_pixels")
        img.load()  # LOAD_TRUNCATED_IMAGES stays False (its default), so a truncated file raises here
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, coarser limit
        raise ImageRefused("image has too many pixels (decompression bomb)", "too_many_pixels") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:  # UnidentifiedImageError is an OSError
        if img is None:
            raise ImageRefused("data is not a PNG, JPEG, WebP, GIF or BMP image", "not_an_image") from e
        raise ImageRefused(f"{img.format} image is truncated or corrupt", "corrupt_image") from e
    return img


def load_image_url(url: str, policy: ImagePolicy) -> Image.Image:
    """An OpenAI `image_url.url` (data:, http(s):, file: or a path) -> a decoded PIL image, or ImageRefused."""
    if not isinstance(url, str) or not url.strip():
        raise ImageRefused("image url must be a non-empty string", "bad_url")
    url = url.strip()
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", url)
    scheme = m.group(1).lower() if m else ""
    if scheme == "data":
        data = _decode_data_url(url, policy)
    elif scheme in ("http", "https"):
        if not policy.allow_remote:
            raise ImageRefused("remote image URLs are disabled on this server (--allow-remote-images)",
                               "remote_disabled")
        data = _download(url, policy)
    elif scheme in ("file", ""):
        if policy.local_root is None:
            raise ImageRefused("local image files are disabled on this server (--allow-local-files)",
                               "local_disabled")
        data = _read_local(url, policy.local_root, policy)
    else:
        raise ImageRefused(f"URL scheme {scheme[:20]!r} is not allowed for images", "scheme_not_allowed")
    return check_image_bytes(data, policy)


def _decode_data_url(url: str, policy: ImagePolicy) -> bytes:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ImageRefused("data URL has no ',' before its data", "bad_url")
    params = [p.strip().lower() for p in header.split(";")]
    if params[0] not in MEDIA_TYPES:
        kind = "an unsupported image type" if params[0].startswith("image/") else "not an image"
        raise ImageRefused(f"data URL media type {params[0][:40]!r} is {kind}", "unsupported_media_type")
    if params[-1] != "base64":
        raise ImageRefused("data URL is not base64 (expected ';base64,')", "not_base64")
    if len(payload) > 4 * (policy.max_bytes // 3 + 1):  # refused before decoding a 1 GB string
        raise _too_large(policy)
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise ImageRefused("data URL payload is not valid base64", "not_base64") from e
    if len(data) > policy.max_bytes:
        raise _too_large(policy)
    return data


def _read_local(url: str, root: Path, policy: ImagePolicy) -> bytes:
    if url[:5].lower() == "file:":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageRefused("file: URL must not name a host", "bad_url")
        url = unquote(parts.path)
    try:
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(real_root / url))  # relative paths are relative to the root, not the cwd
    except (ValueError, OSError) as e:
        raise ImageRefused("local path is malformed", "bad_url") from e
    if not real.is_relative_to(real_root):  # '..' and symlinks were resolved by realpath
        raise ImageRefused("local file is outside the allowed directory", "outside_root")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as e:
        raise ImageRefused("local file not found", "not_found") from e
    except OSError as e:
        raise ImageRefused("local file cannot be read", "not_a_file") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a directory, FIFO or device: never read
            raise ImageRefused("local path is not a regular file", "not_a_file")
        if st.st_size > policy.max_bytes:
            raise _too_large(policy)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(policy.max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > policy.max_bytes:
        raise _too_large(policy)
    return data


class _Deadline:
    """One clock for the whole download; at the deadline a timer shuts the socket so no slow read outlives it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ImageRefused("image download timed out", "timeout")
        return left

    def _kill(self) -> None:
        if self.sock is not None:
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the fd, bypassing TLS
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def _resolve(host: str, port: int, policy: ImagePolicy) -> list[tuple[int, tuple]]:
    """host -> vetted (family, sockaddr) list; refuses if any address is blocked."""
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        ips = []
        if ":" in host or "%" in host:
            raise ImageRefused("image URL host is not a valid IPv6 literal", "bad_url") from None
        if _LEGACY_V4.fullmatch(host.rstrip(".")):
            try:
                ips = [ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))]
            except OSError:
                pass
    if ips:
        infos = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (str(ip), port)) for ip in ips]
    else:
        if host.rstrip(".").lower().split(".")[-1] == "localhost":  # RFC 6761: never sent to DNS
            raise ImageRefused("image host resolves to a blocked address", "blocked_address")
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as e:
            raise ImageRefused(f"cannot resolve image host {host[:100]!r}", "dns_failed") from e
        infos = [(fam, addr) for fam, _, _, _, addr in found if fam in (socket.AF_INET, socket.AF_INET6)]
        if not infos:
            raise ImageRefused(f"cannot resolve image host {host[:100]!r}", "dns_failed")
    for _, addr in infos:
        if policy.blocked(ipaddress.ip_address(addr[0].split("%")[0])):
            raise ImageRefused("image host resolves to a blocked address", "blocked_address")
    return infos


def _parse_remote(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise ImageRefused("image URL is malformed", "bad_url") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageRefused(f"URL scheme {scheme[:20]!r} is not allowed for images", "scheme_not_allowed")
    if parts.username is not None or parts.password is not None:
        raise ImageRefused("image URLs with credentials (user:pass@) are not allowed", "credentials_in_url")
    if not host:
        raise ImageRefused("image URL has no host", "bad_url")
    port = port if port is not None else (443 if scheme == "https" else 80)
    if port in BAD_PORTS:
        raise ImageRefused(f"port {port} is not allowed for image URLs", "port_not_allowed")
    try:
        host = host if ":" in host else host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise ImageRefused("image URL host is not a valid name", "bad_url") from e
    return scheme, host, port, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _connect(infos: list[tuple[int, tuple]], host: str, dl: _Deadline) -> socket.socket:
    """TCP to the first vetted address that answers; no name is looked up here."""
    for family, addr in infos:
        left = dl.left()
        s = socket.socket(family, socket.SOCK_STREAM)
        dl.sock = s
        try:
            s.settimeout(left)
            s.connect(addr)
            return s
        except OSError:
            s.close()
    dl.left()
    raise ImageRefused(f"cannot connect to image host {host[:100]!r}", "connect_failed")


def _read_body(resp: http.client.HTTPResponse, sock: socket.socket, policy: ImagePolicy, dl: _Deadline) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise _too_large(policy)
    chunks, total = [], 0
    while total <= policy.max_bytes and not resp.isclosed():  # closed: the whole Content-Length arrived
        sock.settimeout(dl.left())
        chunk = resp.read(min(65536, policy.max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > policy.max_bytes:
        raise _too_large(policy)
    dl.left()
    return b"".join(chunks)


def _fetch_once(url: str, policy: ImagePolicy, dl: _Deadline) -> tuple[bytes | None, str | None]:
    """One GET -> (body, None), or (None, next URL) for a redirect."""
    scheme, host, port, target = _parse_remote(url)
    sock = _connect(_resolve(host, port, policy), host, dl)  # _resolve: the only DNS lookup for this hop
    conn: http.client.HTTPConnection | None = None
    try:
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)  # SNI + cert check
            dl.sock = sock
        conn = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(host, port)
        conn.sock = sock  # already connected to the vetted IP: http.client does no lookup of its own
        conn.request("GET", target, headers={"Accept": "image/*", "Accept-Encoding": "identity",
                                             "Connection": "close", "User-Agent": "qwenvl-server"})
        resp = conn.getresponse()
        if resp.status in REDIRECTS:
            loc = resp.getheader("Location")
            if not loc:
                raise ImageRefused(f"image host answered {resp.status} without a Location", "bad_redirect")
            return None, urljoin(url, loc.strip())
        if not 200 <= resp.status < 300:
            raise ImageRefused(f"image host answered HTTP {resp.status} {resp.reason[:60]}", "http_status")
        return _read_body(resp, sock, policy, dl), None
    except ImageRefused:
        raise
    except TimeoutError as e:
        raise ImageRefused("image download timed out", "timeout") from e
    except ssl.SSLError as e:
        raise ImageRefused(f"TLS with image host {host[:100]!r} failed", "tls_failed") from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        dl.left()  # a deadline shutdown surfaces as a reset or short read: report it as the timeout
        raise ImageRefused(f"download from image host {host[:100]!r} failed", "download_failed") from e
    finally:
        (conn or sock).close()


def _download(url: str, policy: ImagePolicy) -> bytes:
    dl = _Deadline(policy.timeout_s)
    try:
        for _ in range(policy.max_redirects + 1):
            body, url = _fetch_once(url, policy, dl)
            if body is not None:
                return body
        raise ImageRefused(f"image URL redirected more than {policy.max_redirects} times", "too_many_redirects")
    finally:
        dl.cancel()
