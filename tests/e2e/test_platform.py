"""Deployment manifests in platform/ agree with the profile they select:
every figure is compared with the real binary's `pollcap config --json`
under the manifest's environment, and probe paths are asked of a running
server."""
import json
import os
import re
import subprocess
import urllib.error
import urllib.request

import yaml

from conftest import BIN, ROOT
from pollcap_server import eventually, free_port, health
from test_agent_upstream import Agent, ask, connect, readme_agent, run

PLATFORM = os.path.join(ROOT, "platform")


def config(env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "POLLCAP_", "ENVIRONMENT", "PORT"))}
    out = subprocess.run([BIN, "config", "--json"], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def close_plus_cap(cfg):
    return cfg["timeouts_s"]["close"] + (cfg["poll_cap_ms"] or 0) / 1000


def probe_status(server, path):
    try:
        return urllib.request.urlopen(f"http://{server.addr}{path}", timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


def env_list(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def secret_refs(container):
    """The container's variables read from secrets: name -> (secret, key)."""
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def arg(command, flag):
    return command[command.index(flag) + 1]


def agent_config(env, extra):
    """`pollcap config --json` under a manifest's environment with its agent
    URL, and a stand-in for the agent's bearer secret (a secret's value is
    not in the manifest)."""
    keys = ("ENVIRONMENT", "POLLCAP_STORE", "POLLCAP_RESUME_WINDOW", "POLLCAP_AGENT_URL")
    return config({k: env[k] for k in keys} | {"POLLCAP_AGENT_TOKEN": "from-the-secret"} | extra)


def test_every_target_has_a_readme():
    for target in ["container", "cloudrun", "kubernetes", "systemd", "windows"]:
        assert os.path.isfile(os.path.join(PLATFORM, target, "README.md")), target


def test_cloudrun_request_timeout_exceeds_connection_lifetime(server):
    svc = yaml.safe_load(open(os.path.join(PLATFORM, "cloudrun", "service.yaml")))
    spec = svc["spec"]["template"]["spec"]
    notes = svc["spec"]["template"]["metadata"]["annotations"]
    c = spec["containers"][0]
    env = env_list(c)
    assert env["ENVIRONMENT"] == "staging"
    cfg = config({"ENVIRONMENT": env["ENVIRONMENT"], "K_SERVICE": "pollcap"})
    assert cfg["environment"]["cloud"] == "gcp-cloud-run"
    assert spec["timeoutSeconds"] > cfg["timeouts_s"]["connection"]
    assert notes["run.googleapis.com/sessionAffinity"] == "false"
    assert "POLLCAP_JWT_SECRET" in env, "non-loopback listen needs auth"
    for probe in ("startupProbe", "livenessProbe"):
        assert probe_status(server, c[probe]["httpGet"]["path"]) == 200


def test_kubernetes_grace_period_and_probes(server):
    docs = list(yaml.safe_load_all(open(os.path.join(PLATFORM, "kubernetes", "deployment.yaml"))))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert any(d["kind"] == "Service" for d in docs)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_list(c)
    cfg = config({"ENVIRONMENT": env["ENVIRONMENT"], "KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert cfg["profile"] == "production"
    assert pod["terminationGracePeriodSeconds"] > close_plus_cap(cfg)
    assert probe_status(server, c["readinessProbe"]["httpGet"]["path"]) == 200
    assert "tcpSocket" in c["livenessProbe"], "a draining pod (503) must not fail liveness"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def unit_section(path, name):
    """A systemd unit section as key -> [values] (keys may repeat)."""
    section, out = None, {}
    for line in open(path):
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == name and "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_systemd_unit_is_hardened_and_waits_for_the_drain():
    svc = unit_section(os.path.join(PLATFORM, "systemd", "pollcap.service"), "Service")
    env = dict(v.split("=", 1) for v in svc["Environment"])
    cfg = config({"ENVIRONMENT": env["ENVIRONMENT"]})
    assert float(svc["TimeoutStopSec"][-1]) > close_plus_cap(cfg)
    assert svc["DynamicUser"] == ["yes"] and svc["ProtectSystem"] == ["strict"]
    assert svc["Restart"] == ["on-failure"] and svc["KillSignal"] == ["SIGTERM"]


def test_dockerfile_is_multistage_nonroot_production_with_healthcheck(server):
    text = open(os.path.join(PLATFORM, "container", "Dockerfile")).read()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    user = re.search(r"^USER (\S+)", text, re.M).group(1)
    assert user not in ("root", "0")
    assert re.search(r"ENVIRONMENT=production", text)
    assert re.search(r"PORT=\d+", text)
    path = re.search(r"HEALTHCHECK .*?http://127\.0\.0\.1:\$\{PORT\}(/\S*)\"", text, re.S).group(1)
    assert probe_status(server, path) == 200
    cfg = config({"ENVIRONMENT": "production", "PORT": "8080"})
    assert cfg["listen"] == "0.0.0.0:8080"


def redis_down_server(server_factory):
    """A server whose Redis is unreachable (nothing listens on the port)."""
    return server_factory("--store", f"redis://127.0.0.1:{free_port()}")


def test_kubernetes_multi_instance_shares_one_redis(server_factory):
    docs = list(yaml.safe_load_all(open(os.path.join(PLATFORM, "kubernetes", "multi-instance.yaml"))))
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    app, redis = deps["pollcap"], deps["pollcap-redis"]
    assert app["spec"]["replicas"] >= 2, "multi-instance"
    pod = app["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_list(c)
    cfg = config({k: env[k] for k in ("ENVIRONMENT", "POLLCAP_STORE", "POLLCAP_RESUME_WINDOW")}
                 | {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert cfg["profile"] == "production"
    assert cfg["resume"]["store"] == env["POLLCAP_STORE"]
    assert cfg["resume"]["resume_window"] == 300
    # The URL names the Redis Service and its port.
    m = re.match(r"redis://([^:/]+):(\d+)", env["POLLCAP_STORE"])
    assert m and m.group(1) in svcs
    assert int(m.group(2)) in [p["port"] for p in svcs[m.group(1)]["spec"]["ports"]]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl", "a bounded total"
    assert "--maxmemory" in args and args[args.index("--save") + 1] == ""
    assert svcs["pollcap"]["spec"].get("sessionAffinity", "None") == "None"
    assert pod["terminationGracePeriodSeconds"] > close_plus_cap(cfg)
    # Readiness stays 200 while Redis is down: an outage never empties the Service.
    server = redis_down_server(server_factory)
    assert probe_status(server, c["readinessProbe"]["httpGet"]["path"]) == 200
    assert "tcpSocket" in c["livenessProbe"]


def test_kubernetes_multi_instance_sends_its_runs_to_the_agent_service(server_factory, tmp_path):
    docs = list(yaml.safe_load_all(open(os.path.join(PLATFORM, "kubernetes", "multi-instance.yaml"))))
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    c = deps["pollcap"]["spec"]["template"]["spec"]["containers"][0]
    env = env_list(c)
    # The URL names the agent Service and one of its ports ...
    url = env["POLLCAP_AGENT_URL"]
    m = re.fullmatch(r"http://([^:/]+):(\d+)(/\S*)", url)
    assert m, url
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    assert host in svcs, f"{url} names no Service of the manifest"
    svc = svcs[host]["spec"]
    svc_port = next(p for p in svc["ports"] if p["port"] == port)
    # ... which selects the agent's pods and reaches the port uvicorn serves.
    dep = next(d for d in deps.values()
               if svc["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items())
    assert dep["metadata"]["name"] == "pollcap-agent"
    pod = dep["spec"]["template"]["spec"]
    a = pod["containers"][0]
    target = next(p["containerPort"] for p in a["ports"]
                  if svc_port["targetPort"] in (p.get("name"), p["containerPort"]))
    cmd = a["command"]
    assert cmd[0] == "uvicorn" and int(arg(cmd, "--port")) == target, cmd
    assert arg(cmd, "--host") == "0.0.0.0", "reachable through the Service"
    # Both sides read the bearer secret from the same key.
    assert secret_refs(c)["POLLCAP_AGENT_TOKEN"] in secret_refs(a).values()
    # pollcap takes the environment as it is.
    cfg = agent_config(env, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert cfg["profile"] == "production"
    assert cfg["agent"]["agent_url"] == f"http://{host}:{port}"
    assert cfg["agent"]["agent_token"] is True
    # Replacing an agent pod lets its runs finish: uvicorn waits for them
    # up to the execution deadline, and Kubernetes waits for uvicorn.
    grace = int(arg(cmd, "--timeout-graceful-shutdown"))
    assert cfg["timeouts_s"]["execution"] <= grace < pod["terminationGracePeriodSeconds"]
    # The agent's command serving README's agent answers the URL's path:
    # one run through pollcap (on loopback; uvicorn's --host/--port given last win).
    readme_agent(tmp_path)
    agent = Agent(cmd[1], tmp_path, args=cmd[2:])
    try:
        server = server_factory("--agent-url", f"http://127.0.0.1:{agent.port}{path}")

        async def go():
            async with connect(server) as ws:
                return await ask(ws, "deployed")
        events = run(go())
        assert events[-1] == events[-1] | {"type": "agent_completed", "final": "deployed "}, events
    finally:
        agent.stop()


def test_cloudrun_multi_instance_sends_its_runs_to_the_internal_agent_service():
    svc = yaml.safe_load(open(os.path.join(PLATFORM, "cloudrun", "multi-instance.yaml")))
    agent = yaml.safe_load(open(os.path.join(PLATFORM, "cloudrun", "agent.yaml")))
    notes = svc["spec"]["template"]["metadata"]["annotations"]
    c = svc["spec"]["template"]["spec"]["containers"][0]
    env = env_list(c)
    name = agent["metadata"]["name"]
    # The URL is the agent service's own run.app URL, on the README's path
    # (the Kubernetes test runs a request on it).
    m = re.fullmatch(rf"https://({re.escape(name)}-[\w.-]+\.run\.app)(/\S*)", env["POLLCAP_AGENT_URL"])
    assert m and m.group(2) == "/agent", env["POLLCAP_AGENT_URL"]
    cfg = agent_config(env, {"K_SERVICE": "pollcap"})
    assert cfg["agent"]["agent_url"] == f"https://{m.group(1)}:443"
    assert cfg["agent"]["agent_token"] is True
    # Internal ingress: pollcap's requests must come from the VPC.
    assert agent["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"
    assert notes["run.googleapis.com/vpc-access-connector"]
    assert notes["run.googleapis.com/vpc-access-egress"] == "all-traffic"
    a = agent["spec"]["template"]["spec"]
    assert secret_refs(c)["POLLCAP_AGENT_TOKEN"] in secret_refs(a["containers"][0]).values()
    # Cloud Run never cuts a run that pollcap would let finish.
    assert a["timeoutSeconds"] > cfg["timeouts_s"]["execution"]
    cmd = a["containers"][0]["command"]
    assert int(arg(cmd, "--port")) == a["containers"][0]["ports"][0]["containerPort"]


def test_cloudrun_multi_instance_reaches_redis_through_the_connector(server_factory):
    svc = yaml.safe_load(open(os.path.join(PLATFORM, "cloudrun", "multi-instance.yaml")))
    spec = svc["spec"]["template"]["spec"]
    notes = svc["spec"]["template"]["metadata"]["annotations"]
    c = spec["containers"][0]
    env = env_list(c)
    cfg = config({"ENVIRONMENT": env["ENVIRONMENT"], "K_SERVICE": "pollcap",
                  "POLLCAP_STORE": env["POLLCAP_STORE"],
                  "POLLCAP_RESUME_WINDOW": env["POLLCAP_RESUME_WINDOW"]})
    assert cfg["resume"]["store"] == env["POLLCAP_STORE"]
    assert spec["timeoutSeconds"] > cfg["timeouts_s"]["connection"]
    assert notes["run.googleapis.com/vpc-access-connector"]
    assert notes["run.googleapis.com/sessionAffinity"] == "false"
    assert int(notes["autoscaling.knative.dev/minScale"]) >= 2
    server = redis_down_server(server_factory)
    for probe in ("startupProbe", "livenessProbe"):
        assert probe_status(server, c[probe]["httpGet"]["path"]) == 200
    # The first connect attempt may still be under way.
    eventually(5, lambda: not health(server)["store"]["up"], "the unreachable Redis is noticed")
    assert health(server)["status"] == "degraded"


def test_load_balancers_probing_with_head_get_the_head_of_get(server):
    # Some load balancers probe with HEAD: 200, GET's Content-Length, no body.
    get = urllib.request.urlopen(f"http://{server.addr}/", timeout=5)
    body = get.read()
    head = urllib.request.urlopen(urllib.request.Request(f"http://{server.addr}/", method="HEAD"),
                                  timeout=5)
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(body)
    assert head.read() == b""
    req = urllib.request.Request(f"http://{server.addr}/health", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) > 0
