"""End-to-end over TLS: the real Python `websockets` 17 client and
`urllib` against `pollcap serve --tls-cert --tls-key`, with a private CA and
a localhost certificate made by openssl for each test session (SPEC §4
"TLS"). Every wait is bounded by a timeout."""
import asyncio
import ssl
import subprocess
import time

import pytest
import websockets

from pollcap_server import health
from test_agent_chat import check_run, one_run, run


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
            "-out", str(d / f"{name}.pem"))
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(d, "e2e-ca")
    other, _ = make_ca(d, "other-ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"), "-out", str(d / "leaf.csr"))
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                           "basicConstraints=critical,CA:FALSE\n")
    openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext"), "-out", str(d / "cert.pem"))
    return {"ca": ca, "other": other, "cert": d / "cert.pem", "key": d / "key.pem"}


@pytest.fixture
def tls_server(server_factory, certs):
    return server_factory("--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]),
                          "--pacing-ms", "1")


def port(server):
    return server.addr.rsplit(":", 1)[1]


def context(cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))
    return ctx


def test_agent_chat_over_wss(tls_server, certs):
    async def go():
        url = f"wss://localhost:{port(tls_server)}/ws"
        headers = {"Authorization": f"Bearer {tls_server.token()}"}
        async with websockets.connect(url, ssl=context(certs["ca"]), additional_headers=headers,
                                      subprotocols=["agent_chat"], open_timeout=10) as ws:
            assert ws.subprotocol == "agent_chat"
            tls = ws.transport.get_extra_info("ssl_object")
            assert tls.version() in ("TLSv1.3", "TLSv1.2")
            events = await one_run(ws, "hello over tls")
            check_run(events, "hello over tls")
            # A message larger than one TLS record arrives whole.
            events = await one_run(ws, "x" * 40000)
            check_run(events, "x" * 40000)
    run(go())


def test_health_over_https(tls_server, certs):
    h = health(f"https://localhost:{port(tls_server)}", context=context(certs["ca"]))
    assert h["status"] == "healthy"
    assert h["tls"]["enabled"] is True


def test_an_untrusted_certificate_is_refused_by_the_client(tls_server, certs):
    async def go():
        url = f"wss://localhost:{port(tls_server)}/ws"
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(url, ssl=context(certs["other"]), open_timeout=5)
    run(go())


def test_plain_ws_on_the_tls_port_fails_fast_and_the_server_is_unharmed(tls_server, certs):
    async def plain():
        t0 = time.monotonic()
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            await websockets.connect(f"ws://{tls_server.addr}/ws", open_timeout=5)
        assert e.value.response.status_code == 400
        assert b"this port speaks TLS" in e.value.response.body
        assert time.monotonic() - t0 < 2
    run(plain())
    test_agent_chat_over_wss(tls_server, certs)
