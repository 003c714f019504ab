# Tests for qwenvl/server/images.py: every refusal path of load_image_url and check_image_bytes.
# Network safety: an autouse guard replaces DNS with a fake table and fails any connect to a non-loopback
# address; the only servers contacted are http.server instances these tests start on 127.0.0.1 / 127.0.0.2.
from __future__ import annotations

import base64
import functools
import io
import ipaddress
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from qwenvl.server import images
from qwenvl.server.images import ImagePolicy, ImageRefused, check_image_bytes, is_blocked_address, load_image_url

LOCAL_ONLY = lambda ip: ip != ipaddress.ip_address("127.0.0.1")  # test policy: only server A is reachable
LOOPBACK = lambda ip: not ip.is_loopback  # servers A and B both reachable
REAL_CONNECT = socket.socket.connect


class Net:
    """What the code under test tried: DNS lookups, connects; `names` is the fake DNS table."""

    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.connects: list[tuple] = []
        self.violations: list[str] = []
        self.names: dict[str, list[str]] = {}


@pytest.fixture(autouse=True)
def net(monkeypatch):
    n = Net()

    def vet(addr) -> None:
        ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
        if not ip.is_loopback:
            n.violations.append(str(ip))
            raise AssertionError(f"test guard: refused a connection to non-loopback {ip}")

    def connect(self, addr):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            n.connects.append(addr)
            vet(addr)
        return REAL_CONNECT(self, addr)

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        n.lookups.append(host)
        try:
            ips = [str(ipaddress.ip_address(host))]
        except ValueError:
            if host not in n.names:
                raise socket.gaierror(socket.EAI_NONAME, "not in the test resolver") from None
            ips = n.names[host]
            if host.startswith("rebind"):  # one answer per lookup: a second lookup would get the next one
                ips = [ips.pop(0)]
        out = []
        for ip in ips:
            v6 = ":" in ip
            out.append((socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                        (ip, port, 0, 0) if v6 else (ip, port)))
        return out

    def forbidden(*a, **k):
        raise AssertionError("test guard: no other name lookups or connections")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getfqdn"):
        monkeypatch.setattr(socket, name, forbidden)
    yield n
    assert not n.violations


def test_guard_refuses_non_loopback(net):
    with socket.socket() as s, pytest.raises(AssertionError, match="non-loopback"):
        s.connect(("10.0.0.5", 80))
    with pytest.raises(AssertionError):
        socket.create_connection(("example.com", 80))
    assert net.violations == ["10.0.0.5"]
    net.violations.clear()


def png(size=(8, 6), color=(200, 30, 30), fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def _noise_png() -> bytes:
    buf = io.BytesIO()
    Image.frombytes("L", (64, 64), bytes(range(256)) * 16).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


@functools.cache
def bomb_png(w: int, h: int) -> bytes:
    """A valid 1-bit grey PNG of w x h zero pixels, zlib-compressed in chunks: ~50 KB for 20000x20000."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (1 + (w + 7) // 8)
    z, parts = zlib.compressobj(9), []
    for _ in range(h // 256):
        parts.append(z.compress(row * 256))
    parts += [z.compress(row * (h % 256)), z.flush()]
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def refused(url: str, policy: ImagePolicy, code: str) -> ImageRefused:
    with pytest.raises(ImageRefused) as info:
        load_image_url(url, policy)
    assert info.value.code == code, str(info.value)
    assert "Traceback" not in str(info.value)
    return info.value


# ---------- addresses ----------

@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.5", "172.16.3.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                                "0.1.2.3", "100.64.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1",
                                "255.255.255.255", "198.18.0.1", "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.5",
                                "fc00::1", "fd12::1", "fe80::1", "ff02::1", "64:ff9b::a00:5", "2002:a00:5::1",
                                "2001:db8::1", "2001::1", "fec0::1"])
def test_blocked_addresses(ip):
    assert is_blocked_address(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1"])
def test_public_addresses_allowed(ip):
    assert not is_blocked_address(ipaddress.ip_address(ip))


# ---------- data: URLs and the decoder ----------

@pytest.mark.parametrize("fmt,media", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                       ("GIF", "image/gif"), ("BMP", "image/bmp")])
def test_data_url_good(fmt, media):
    img = load_image_url(data_url(png(fmt=fmt), media), ImagePolicy())
    assert img.size == (8, 6) and img.format == fmt


@pytest.mark.parametrize("url,code", [
    ("data:image/png," + "iVBORw0KGgo=", "not_base64"),
    ("data:image/png;base64,not*base64!", "not_base64"),
    ("data:image/png;base64,iVBOR w0KGgo=", "not_base64"),
    ("data:image/png;base64", "bad_url"),
    ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "unsupported_media_type"),
    ("data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode(), "unsupported_media_type"),
    (data_url(b"just some text, not a png"), "not_an_image"),
    (data_url(b""), "not_an_image"),
])
def test_data_url_refusals(url, code):
    refused(url, ImagePolicy(), code)


def test_truncated_and_corrupt_png():
    good = _noise_png()
    refused(data_url(good[: len(good) // 2]), ImagePolicy(), "corrupt_image")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    refused(data_url(bytes(flipped)), ImagePolicy(), "corrupt_image")
    assert load_image_url(data_url(good), ImagePolicy()).size == (64, 64)


def test_data_url_oversize_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images.binascii, "a2b_base64", lambda *a, **k: pytest.fail("decoded an oversize data URL"))
    refused("data:image/png;base64," + "A" * 30_000_000, ImagePolicy(), "too_large")
    refused("data:image/png;base64," + "A" * 2000, ImagePolicy(max_bytes=1000), "too_large")


def test_data_url_oversize_after_decoding():
    data = png(size=(40, 40), color=7, mode="L") + b"\0" * 1000
    refused(data_url(data), ImagePolicy(max_bytes=len(data) - 1), "too_large")
    with pytest.raises(ImageRefused, match="larger"):
        check_image_bytes(data, ImagePolicy(max_bytes=len(data) - 1))


@pytest.mark.parametrize("side,max_pixels", [(20000, 50_000_000), (20000, 10**12), (8000, 50_000_000)])
def test_decompression_bomb_refused_from_header(monkeypatch, side, max_pixels):
    # 20000^2 trips PIL's own bomb error at open, whatever our limit; 8000^2 is under PIL's limit and ours refuses it
    globals_before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a bomb"))
    t = time.monotonic()
    err = refused(data_url(bomb_png(side, side)), ImagePolicy(max_pixels=max_pixels), "too_many_pixels")
    assert time.monotonic() - t < 2 and "pixels" in str(err)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == globals_before


def test_small_bomb_png_is_a_real_png():
    assert load_image_url(data_url(bomb_png(300, 200)), ImagePolicy()).size == (300, 200)


# ---------- schemes, URL shapes ----------

@pytest.mark.parametrize("url,code", [
    ("http://example.com/a.png", "remote_disabled"),
    ("https://example.com/a.png", "remote_disabled"),
    ("file:///etc/passwd", "local_disabled"),
    ("/etc/passwd", "local_disabled"),
    ("ftp://example.com/a.png", "scheme_not_allowed"),
    ("gopher://example.com/", "scheme_not_allowed"),
    ("javascript:alert(1)", "scheme_not_allowed"),
    ("", "bad_url"),
])
def test_default_policy_refusals(net, url, code):
    refused(url, ImagePolicy(), code)
    assert net.lookups == [] and net.connects == []


@pytest.mark.parametrize("url,code", [
    ("http://user:pass@example.test/a.png", "credentials_in_url"),
    ("http://user@example.test/a.png", "credentials_in_url"),
    ("http://example.test:25/a.png", "port_not_allowed"),
    ("https://example.test:22/a.png", "port_not_allowed"),
    ("http:///a.png", "bad_url"),
    ("http://example.test:99999/a.png", "bad_url"),
    ("http://[fe80::1%25eth0]/a.png", "blocked_address"),
    ("http://[::1::2]/a.png", "bad_url"),
    ("ftp://example.test/a.png", "scheme_not_allowed"),
])
def test_remote_url_shape_refusals(net, url, code):
    refused(url, ImagePolicy(allow_remote=True), code)
    assert net.lookups == [] and net.connects == []


# ---------- servers ----------

class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # HTTPServer's version does a reverse DNS lookup (getfqdn)
        import socketserver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits.append((self.path, self.headers.get("Host")))
        self.server.routes[self.path](self)

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _slow(h: _Handler) -> None:
    h.server.stop.wait(5)


def _drip(h: _Handler) -> None:
    h.send(200, headers={"Content-Length": "100"}, length=False)
    for _ in range(50):
        if h.server.stop.wait(0.1):
            return
        h.wfile.write(b"\0")
        h.wfile.flush()


def _start(ip: str):
    try:
        srv = _Server((ip, 0), _Handler)
    except OSError:
        pytest.skip(f"cannot bind {ip}")
    srv.hits, srv.stop = [], threading.Event()
    base = f"http://{ip}:{srv.server_port}"
    srv.routes = {
        "/img.png": lambda h: h.send(200, png(), {"Content-Type": "image/png"}),
        "/slow": _slow,
        "/drip": _drip,
        "/missing": lambda h: h.send(404, b"no"),
        "/huge-declared": lambda h: h.send(200, headers={"Content-Length": str(10**9)}, length=False),
        "/huge-undeclared": lambda h: h.send(200, b"\0" * 5000, length=False),
        "/loop": lambda h: h.send(302, headers={"Location": "/loop"}),
        "/r1": lambda h: h.send(301, headers={"Location": "/img.png"}),
        "/r2": lambda h: h.send(307, headers={"Location": f"{base}/r1"}),
        "/no-location": lambda h: h.send(302),
    }
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return srv, base


@pytest.fixture
def servers(net):
    a, base_a = _start("127.0.0.1")
    b, base_b = _start("127.0.0.2")
    a.routes["/to-b"] = lambda h: h.send(302, headers={"Location": f"{base_b}/img.png"})
    for target in ("meta.test/x", "169.254.169.254/latest", "[::1]/x", "2130706434/x"):
        a.routes[f"/to-{target.split('/')[0]}"] = lambda h, t=target: h.send(303, headers={"Location": f"http://{t}"})
    a.routes["/to-file"] = lambda h: h.send(302, headers={"Location": "file:///etc/passwd"})
    a.routes["/to-data"] = lambda h: h.send(302, headers={"Location": data_url(png())})
    yield a, base_a, b, base_b
    for s in (a, b):
        s.stop.set()
        s.shutdown()
        s.server_close()


def test_remote_png_served(servers):
    a, base, _, _ = servers
    img = load_image_url(f"{base}/img.png", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY))
    assert img.size == (8, 6) and a.hits == [("/img.png", base.removeprefix("http://"))]


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "2130706433", "0x7f.1", "127.1", "0", "localhost",
                                  "LOCALHOST.", "app.localhost"])
def test_loopback_refused_with_default_policy(net, servers, host):
    a, base, _, _ = servers
    port = base.rsplit(":", 1)[1]
    refused(f"http://{host}:{port}/img.png", ImagePolicy(allow_remote=True), "blocked_address")
    assert net.connects == [] and a.hits == []


@pytest.mark.parametrize("answer", [["10.0.0.5"], ["169.254.169.254"], ["::ffff:127.0.0.1"], ["fd00::1"],
                                    ["127.0.0.1", "10.0.0.5"]])
def test_name_resolving_to_blocked_refused_before_connect(net, servers, answer):
    a, base, _, _ = servers
    net.names["img.test"] = answer
    refused(f"http://img.test:{base.rsplit(':', 1)[1]}/img.png", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY),
            "blocked_address")
    assert net.lookups == ["img.test"] and net.connects == [] and a.hits == []


def test_vetted_ip_is_dialled_without_second_lookup(net, servers):
    a, base, _, _ = servers
    port = base.rsplit(":", 1)[1]
    net.names["rebind.test"] = ["127.0.0.1", "10.0.0.5"]  # a second lookup would get the blocked address
    img = load_image_url(f"http://rebind.test:{port}/img.png", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY))
    assert img.size == (8, 6) and net.lookups == ["rebind.test"]
    assert [c[0] for c in net.connects] == ["127.0.0.1"] and a.hits == [("/img.png", f"rebind.test:{port}")]


def test_unknown_host_refused(net):
    refused("http://nowhere.test/a.png", ImagePolicy(allow_remote=True), "dns_failed")
    assert net.connects == []


def test_redirects_followed(servers):
    a, base_a, b, _ = servers
    assert load_image_url(f"{base_a}/to-b", ImagePolicy(allow_remote=True, blocked=LOOPBACK)).size == (8, 6)
    assert b.hits and b.hits[0][0] == "/img.png"
    assert load_image_url(f"{base_a}/r2", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY, max_redirects=2))


@pytest.mark.parametrize("route,code", [("/to-b", "blocked_address"), ("/to-meta.test", "blocked_address"),
                                        ("/to-169.254.169.254", "blocked_address"), ("/to-[::1]", "blocked_address"),
                                        ("/to-2130706434", "blocked_address"), ("/to-file", "scheme_not_allowed"),
                                        ("/to-data", "scheme_not_allowed"), ("/no-location", "bad_redirect")])
def test_redirect_to_refused_target(net, servers, tmp_path, route, code):
    a, base_a, b, _ = servers
    net.names["meta.test"] = ["169.254.169.254"]
    policy = ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY, local_root=tmp_path)
    refused(f"{base_a}{route}", policy, code)
    assert b.hits == [] and {c[0] for c in net.connects} == {"127.0.0.1"}


def test_too_many_redirects(servers):
    a, base, _, _ = servers
    refused(f"{base}/loop", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY), "too_many_redirects")
    assert len(a.hits) == 4  # the first request and 3 redirects
    refused(f"{base}/r2", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY, max_redirects=1), "too_many_redirects")


@pytest.mark.parametrize("route", ["/slow", "/drip"])
def test_slow_server_times_out(servers, route):
    _, base, _, _ = servers
    t = time.monotonic()
    refused(f"{base}{route}", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY, timeout_s=0.6), "timeout")
    assert 0.5 < time.monotonic() - t < 1.5  # the whole download, not each read (the drip sends a byte each 0.1 s)


@pytest.mark.parametrize("route,code", [("/huge-declared", "too_large"), ("/huge-undeclared", "too_large"),
                                        ("/missing", "http_status")])
def test_remote_body_refusals(servers, route, code):
    _, base, _, _ = servers
    err = refused(f"{base}{route}", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY, max_bytes=1000), code)
    assert code != "http_status" or "404" in str(err)


def test_https_to_plain_http_server_is_a_clean_refusal(servers):
    _, base, _, _ = servers
    refused(base.replace("http:", "https:") + "/img.png", ImagePolicy(allow_remote=True, blocked=LOCAL_ONLY),
            "tls_failed")


# ---------- local files ----------

@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "good.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    (root / "sub" / "out.png").symlink_to(tmp_path / "secret.png")
    (root / "in.png").symlink_to(root / "sub" / "good.png")
    (root / "big.png").write_bytes(png() + b"\0" * 5000)
    return root, tmp_path


@pytest.mark.parametrize("form", ["abs", "file", "rel", "symlink-inside"])
def test_local_file_inside_root_accepted(tree, form):
    root, _ = tree
    url = {"abs": f"{root}/sub/good.png", "file": f"file://{root}/sub/good.png", "rel": "sub/good.png",
           "symlink-inside": "in.png"}[form]
    assert load_image_url(url, ImagePolicy(local_root=root)).size == (8, 6)


@pytest.mark.parametrize("url,code", [
    ("{tmp}/secret.png", "outside_root"),
    ("file://{tmp}/secret.png", "outside_root"),
    ("{root}/sub/../../secret.png", "outside_root"),
    ("../secret.png", "outside_root"),
    ("sub/out.png", "outside_root"),
    ("file://{root}/sub/out.png", "outside_root"),
    ("file://otherhost{root}/sub/good.png", "bad_url"),
    ("sub/missing.png", "not_found"),
    ("sub", "not_a_file"),
    ("big.png", "too_large"),
])
def test_local_file_refusals(tree, url, code):
    root, tmp = tree
    err = refused(url.format(root=root, tmp=tmp), ImagePolicy(local_root=root, max_bytes=1000), code)
    assert str(tmp) not in str(err)
