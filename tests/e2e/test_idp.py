"""Identity-provider tokens end to end (SPEC §4 "The front door"): keys the
test generates, tokens minted by PyJWT (a library nobody here wrote), the
key set served as a JWKS by a small HTTP server on loopback that the test
controls (rotate, go down, answer HTML), and the real binary checking them.
Every wait is bounded."""
import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.request

import jwt as pyjwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from websockets.exceptions import InvalidStatus

from conftest import BIN
from pollcap_server import Server

AUD = "pollcap-e2e"
ISS = "https://idp.e2e.test"
ALGS = {"RS256": "rsa", "ES256": "ec", "EdDSA": "ed"}


def new_key(alg):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def jwk(alg, kid, key):
    """The public JWK of `key`, as PyJWT writes it, with its kid."""
    d = json.loads(pyjwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    d.update(kid=kid, use="sig", alg=alg)
    return d


def mint(alg, kid, key, **claims):
    now = int(time.time())
    body = {"sub": "alice", "aud": AUD, "iss": ISS, "iat": now, "exp": now + 600}
    body.update(claims)
    return pyjwt.encode(body, key, algorithm=alg, headers={"kid": kid})


class Jwks:
    """A JWKS endpoint on loopback: `keys` is served at /jwks.json;
    `mode` "ok", "html" (a 200 that is not a key set) or "down" (the
    listener closed). Counts the requests it answered."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.mode = "ok"
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits += 1
                if owner.mode == "html":
                    body, ctype = b"<html><body>Service Unavailable</body></html>", "text/html"
                else:
                    body, ctype = json.dumps({"keys": owner.keys}).encode(), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def down(self):
        self.mode = "down"
        self.httpd.shutdown()
        self.httpd.server_close()

    def close(self):
        if self.mode != "down":
            self.down()


@pytest.fixture
def keys():
    """One key per algorithm: {alg: (kid, private key)}."""
    return {alg: (f"{name}-1", new_key(alg)) for alg, name in ALGS.items()}


@pytest.fixture
def idp(keys):
    j = Jwks(jwk(alg, kid, k) for alg, (kid, k) in keys.items())
    yield j
    j.close()


@pytest.fixture
def servers():
    started = []

    def make(jwks_url, *args, env=None):
        s = Server(["--app", "echo", "--jwks-url", jwks_url, "--jwt-audience", AUD,
                    "--jwt-issuer", ISS, *args], env=env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def status(server, token):
    """101 or the refusal's status, and its body."""
    async def go():
        try:
            async with websockets.connect(server.url, open_timeout=10,
                                          additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), 10) == "ping"
                return 101, ""
        except InvalidStatus as e:
            return e.response.status_code, e.response.body.decode()
    return asyncio.run(asyncio.wait_for(go(), 30))


def health(server):
    with urllib.request.urlopen(server.http + "/health", timeout=5) as r:
        return r.status, json.loads(r.read())


def eventually(what, f, limit=15.0):
    deadline = time.monotonic() + limit
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, f"not within {limit} s: {what}"
        time.sleep(0.05)


def test_rs256_es256_and_eddsa_tokens_are_accepted(idp, keys, servers):
    s = servers(idp.url)
    for alg, (kid, key) in keys.items():
        assert status(s, mint(alg, kid, key)) == (101, ""), alg
    code, h = health(s)
    assert code == 200 and h["status"] == "healthy" and h["jwks"]["keys"] == 3, h


def test_wrong_claims_unknown_kid_none_and_confusion_are_refused_with_their_reason(idp, keys, servers):
    s = servers(idp.url)
    kid, key = keys["RS256"]
    now = int(time.time())
    cases = [
        (mint("RS256", kid, key, aud="another-app"), "audience"),
        (mint("RS256", kid, key, iss="https://evil.example"), "issuer"),
        # Past the 30 s leeway.
        (mint("RS256", kid, key, exp=now - 100), "expired"),
        (mint("RS256", "nobody", key), "unknown token signing key"),
        (mint("ES256", kid, keys["ES256"][1]), "unsupported token algorithm"),
    ]
    # alg none, with the kid of a real key.
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    body = enc(json.dumps({"sub": "mallory", "aud": AUD, "iss": ISS, "exp": now + 600}).encode())
    none = enc(json.dumps({"alg": "none", "kid": kid, "typ": "JWT"}).encode())
    cases.append((f"{none}.{body}.", "unsupported token algorithm"))
    # Algorithm confusion: HS256 "signed" with the RSA public key's PEM as
    # the secret (PyJWT refuses to do this, so by hand).
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    head = enc(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    sig = enc(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    cases.append((f"{head}.{body}.{sig}", "unsupported token algorithm"))
    for token, reason in cases:
        code, text = status(s, token)
        assert code == 401 and reason in text, (reason, code, text)


def test_rotation_a_new_kid_at_once_and_a_removed_key_after_the_next_refresh(idp, keys, servers):
    s = servers(idp.url, "--jwks-refresh", "2")
    old_kid, old = keys["RS256"]
    assert status(s, mint("RS256", old_kid, old))[0] == 101
    # The provider rotates: a new key is published, the old one withdrawn.
    new = new_key("RS256")
    idp.keys = [jwk("RS256", "rsa-2", new)]
    # The new kid is unknown to the set in use: the refusal starts a fetch
    # at once, and the next attempt passes (no wait for the schedule).
    first = status(s, mint("RS256", "rsa-2", new))
    assert first[0] in (101, 401), first
    eventually("the new kid accepted",
               lambda: status(s, mint("RS256", "rsa-2", new))[0] == 101, limit=5)
    # The removed key is refused once a refresh has run.
    eventually("the removed key refused",
               lambda: status(s, mint("RS256", old_kid, old))[0] == 401, limit=10)
    code, text = status(s, mint("RS256", old_kid, old))
    assert "unknown token signing key" in text


def test_made_up_kids_start_at_most_one_fetch_per_30_s(idp, keys, servers):
    s = servers(idp.url)
    assert idp.hits == 1  # the start-up fetch
    kid, key = keys["RS256"]
    for i in range(20):
        assert status(s, mint("RS256", f"made-up-{i}", key))[0] == 401
    eventually("the one kid-triggered fetch", lambda: idp.hits == 2)
    time.sleep(0.5)  # room for a second fetch, were there one to see
    assert idp.hits == 2
    _, h = health(s)
    assert h["jwks"]["kid_refreshes"] == 1


@pytest.mark.parametrize("outage", ["down", "html"])
def test_the_provider_down_or_answering_html_keeps_the_last_good_set(idp, keys, servers, outage):
    s = servers(idp.url, "--jwks-refresh", "0.3")
    if outage == "html":
        idp.mode = "html"
    else:
        idp.down()
    eventually("/health degraded", lambda: health(s)[1]["status"] == "degraded")
    code, h = health(s)
    assert code == 200 and h["jwks"]["up"] == 0 and h["jwks"]["fetches_failed"] >= 1, h
    for alg, (kid, key) in keys.items():
        assert status(s, mint(alg, kid, key))[0] == 101, alg
    # One log line for the change of state, not one per failed fetch.
    eventually("two more failed fetches", lambda: health(s)[1]["jwks"]["fetches_failed"] >= 3)
    lines = [l for l in s.log if "could not be refreshed" in l]
    assert len(lines) == 1, lines
    metrics = urllib.request.urlopen(s.http + "/metrics", timeout=5).read().decode()
    assert "pollcap_jwks_up 0" in metrics
    if outage == "html":
        idp.mode = "ok"
        eventually("healthy again", lambda: health(s)[1]["status"] == "healthy")
        assert any("reachable again" in l for l in s.log)


def test_start_up_without_a_key_set_exits_2_naming_the_url(idp):
    idp.down()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLCAP_")}
    p = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--jwks-url", idp.url,
                        "--jwt-audience", AUD], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("pollcap:")]
    assert len(lines) == 1 and idp.url in lines[0] and "connect" in lines[0], p.stderr
    # And a key set without an audience is refused before any fetch.
    p = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--jwks-url", idp.url],
                       env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--jwt-audience" in p.stderr, p.stderr


def test_a_key_set_file_is_reloaded_when_it_changes(keys, tmp_path):
    path = tmp_path / "jwks.json"
    kid, key = keys["ES256"]
    path.write_text(json.dumps({"keys": [jwk("ES256", kid, key)]}))
    s = Server(["--app", "echo", "--jwks-file", str(path), "--jwt-audience", AUD,
                "--jwks-refresh", "0.5"])
    try:
        assert status(s, mint("ES256", kid, key))[0] == 101
        new = new_key("EdDSA")
        path.write_text(json.dumps({"keys": [jwk("EdDSA", "ed-2", new)]}))
        eventually("the new file's key accepted",
                   lambda: status(s, mint("EdDSA", "ed-2", new))[0] == 101, limit=10)
        assert status(s, mint("ES256", kid, key))[0] == 401
        # A broken file: the last good set stays, /health degraded.
        path.write_text("{not json")
        eventually("degraded", lambda: health(s)[1]["status"] == "degraded", limit=10)
        assert status(s, mint("EdDSA", "ed-2", new))[0] == 101
    finally:
        s.stop()


def test_hs256_gets_the_same_audience_and_issuer_checks(idp, keys, servers):
    secret = "e2e-hs256-secret-0123456789-abcdef"
    s = servers(idp.url, env={"POLLCAP_JWT_SECRET": secret})
    now = int(time.time())
    ok = {"sub": "bob", "aud": AUD, "iss": ISS, "exp": now + 600}
    assert status(s, pyjwt.encode(ok, secret, algorithm="HS256"))[0] == 101
    code, text = status(s, pyjwt.encode({**ok, "aud": "other"}, secret, algorithm="HS256"))
    assert code == 401 and "audience" in text
    code, text = status(s, pyjwt.encode({**ok, "iss": "x"}, secret, algorithm="HS256"))
    assert code == 401 and "issuer" in text
    # And the key set still works beside it.
    kid, key = keys["EdDSA"]
    assert status(s, mint("EdDSA", kid, key))[0] == 101
