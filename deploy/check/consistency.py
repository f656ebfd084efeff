"""Cross-file consistency checks of the deployment files (run by scripts/check-deploy.sh).

Schema validators check each file alone; this checks that the files agree with each other and
with the server's interface: probe paths, ports, the drain/grace arithmetic, selectors, the
Redis address, the nginx test markers, pinned images. Every problem is printed as one line
naming the file and what to change; the exit status is 1 if there was any.

Usage: python consistency.py REPO_ROOT
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

# The server's interface this deployment relies on.
CONTAINER_PORT = 8000
READINESS_PATH = "/readyz"
LIVENESS_PATH = "/healthz"
SERVER_NAME = "channels-server"

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def duration_seconds(value: object) -> float | None:
    """A compose duration ("40s", "1m30s", "500ms") or a number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    total = 0.0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def pinned_image(image: object) -> bool:
    """`name:tag` with a tag other than latest (or a digest)."""
    if not isinstance(image, str):
        return False
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def port_of(bind: object) -> int | None:
    if not isinstance(bind, str) or ":" not in bind:
        return None
    try:
        return int(bind.rsplit(":", 1)[1])
    except ValueError:
        return None


def env_map(env: object) -> dict[str, object]:
    """Compose `environment` (map or list) or a Kubernetes `env` list, as name -> value."""
    if isinstance(env, dict):
        return {str(k): v for k, v in env.items()}
    out: dict[str, object] = {}
    for item in env or []:
        if isinstance(item, str):
            name, _, value = item.partition("=")
            out[name] = value
        elif isinstance(item, dict) and "name" in item:
            out[item["name"]] = item.get("value", item.get("valueFrom"))
    return out


def int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


# ---- Kubernetes ------------------------------------------------------------------------------


def load_k8s(root: Path) -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    files = sorted((root / "deploy/k8s").rglob("*.yaml")) + sorted(
        (root / "deploy/k8s").rglob("*.yml")
    )
    if not files:
        problem("deploy/k8s", "no manifests found")
    for path in files:
        rel = str(path.relative_to(root))
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            problem(rel, f"is not valid YAML: {error}")
            continue
        for doc in loaded:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                problem(rel, "a document is not a mapping")
                continue
            name = (doc.get("metadata") or {}).get("name")
            if not doc.get("apiVersion") or not doc.get("kind") or not name:
                problem(rel, "a document lacks apiVersion, kind or metadata.name")
                continue
            if "namespace" in (doc.get("metadata") or {}):
                problem(rel, f"{doc['kind']}/{name} sets metadata.namespace; apply with -n instead")
            docs.append((rel, doc))
    return docs


def find(docs: list[tuple[str, dict]], kind: str, name: str) -> tuple[str, dict] | None:
    for rel, doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return rel, doc
    return None


def selects(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict, port: object) -> int | None:
    """A probe/targetPort (number or port name) resolved against the container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_k8s(root: Path, drain_compose: int | None) -> None:
    docs = load_k8s(root)
    found = find(docs, "Deployment", SERVER_NAME)
    if not found:
        problem("deploy/k8s", f"no Deployment named {SERVER_NAME}")
        return
    rel, deploy = found
    spec = deploy.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selects((spec.get("selector") or {}).get("matchLabels"), pod_labels):
        problem(rel, "the Deployment's selector does not match its pod template labels")
    if (spec.get("replicas") or 0) < 2:
        problem(rel, "the Deployment should run at least 2 replicas (3 is the documented value)")
    containers = pod.get("containers") or []
    if not containers:
        problem(rel, "the Deployment has no containers")
        return
    c = containers[0]
    where = f"{rel} (container {c.get('name')})"

    if not pinned_image(c.get("image")):
        problem(where, f"image {c.get('image')!r} is not pinned to a tag")
    ports = [p.get("containerPort") for p in c.get("ports") or []]
    if CONTAINER_PORT not in ports:
        problem(where, f"containerPort {CONTAINER_PORT} missing (found {ports})")
    env = env_map(c.get("env"))
    if port_of(env.get("CHANNELS_BIND")) != CONTAINER_PORT:
        problem(where, f"CHANNELS_BIND must listen on port {CONTAINER_PORT} (0.0.0.0:8000)")

    for probe_name, path in (
        ("readinessProbe", READINESS_PATH),
        ("livenessProbe", LIVENESS_PATH),
        ("startupProbe", LIVENESS_PATH),
    ):
        probe = c.get(probe_name)
        if probe is None:
            if probe_name != "startupProbe":
                problem(where, f"{probe_name} is missing")
            continue
        get = probe.get("httpGet") or {}
        if get.get("path") != path:
            problem(where, f"{probe_name} must be httpGet {path} (found {get.get('path')!r})")
        if container_port(c, get.get("port")) != CONTAINER_PORT:
            problem(where, f"{probe_name} port {get.get('port')!r} is not the container's 8000")
    live = c.get("livenessProbe") or {}
    window = live.get("failureThreshold", 3) * live.get("periodSeconds", 10)
    if window < 30:
        problem(
            where,
            f"livenessProbe restarts after {window} s of failures; make it generous (>= 30 s)",
        )

    drain = int_or_none(env.get("CHANNELS_DRAIN_TIMEOUT"))
    if drain is None:
        problem(where, "CHANNELS_DRAIN_TIMEOUT must be set to a number of seconds")
        drain = 30
    if drain_compose is not None and drain != drain_compose:
        problem(
            where,
            f"CHANNELS_DRAIN_TIMEOUT {drain} differs from docker-compose.yml's {drain_compose}",
        )
    pre_stop = ((c.get("lifecycle") or {}).get("preStop")) or {}
    sleep = int((pre_stop.get("sleep") or {}).get("seconds", 0))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < sleep + drain:
        problem(
            rel,
            f"terminationGracePeriodSeconds {grace} < preStop sleep {sleep} + "
            f"CHANNELS_DRAIN_TIMEOUT {drain}: a drain would be cut short by SIGKILL",
        )

    security = c.get("securityContext") or {}
    pod_security = pod.get("securityContext") or {}
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problem(where, "runAsNonRoot must be true")
    if not security.get("readOnlyRootFilesystem"):
        problem(where, "readOnlyRootFilesystem must be true")
    if security.get("allowPrivilegeEscalation") is not False:
        problem(where, "allowPrivilegeEscalation must be false")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        problem(where, "capabilities.drop must contain ALL")
    resources = c.get("resources") or {}
    if not resources.get("requests") or not resources.get("limits"):
        problem(where, "resources.requests and resources.limits must both be set")

    # Service in front of the pods.
    service = find(docs, "Service", SERVER_NAME)
    if not service:
        problem("deploy/k8s", f"no Service named {SERVER_NAME}")
    else:
        srel, svc = service
        sspec = svc.get("spec") or {}
        if not selects(sspec.get("selector"), pod_labels):
            problem(srel, "the Service's selector does not match the Deployment's pods")
        if sspec.get("sessionAffinity", "None") != "None":
            problem(srel, "no session affinity: every replica is equal (groups live in Redis)")
        if not any(
            p.get("port") == 80 and container_port(c, p.get("targetPort")) == CONTAINER_PORT
            for p in sspec.get("ports") or []
        ):
            problem(srel, "the Service must map port 80 to the container's port 8000")

    pdb = next(((r, d) for r, d in docs if d["kind"] == "PodDisruptionBudget"), None)
    if not pdb:
        problem("deploy/k8s", "no PodDisruptionBudget")
    else:
        prel, budget = pdb
        bspec = budget.get("spec") or {}
        if not selects((bspec.get("selector") or {}).get("matchLabels"), pod_labels):
            problem(prel, "the PodDisruptionBudget's selector does not match the server pods")
        if bspec.get("maxUnavailable") != 1:
            problem(prel, "maxUnavailable should be 1")

    # CHANNELS_REDIS_URL points at a Service defined here (the demo Redis).
    for url in str(env.get("CHANNELS_REDIS_URL") or "").split(","):
        m = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+)(?::(\d+))?", url)
        if not m:
            problem(where, f"CHANNELS_REDIS_URL {url!r} is not a redis:// URL")
            continue
        host, port = m.group(1), int(m.group(2) or 6379)
        target = find(docs, "Service", host.split(".")[0])
        if not target or not any(
            p.get("port") == port for p in (target[1].get("spec") or {}).get("ports") or []
        ):
            problem(where, f"CHANNELS_REDIS_URL names {host}:{port}, which no Service here has")
    for drel, doc in docs:
        if doc["kind"] == "Deployment":
            for cont in ((doc["spec"].get("template") or {}).get("spec") or {}).get(
                "containers"
            ) or []:
                if not pinned_image(cont.get("image")):
                    problem(drel, f"image {cont.get('image')!r} is not pinned to a tag")

    # HTTPRoute (a CRD: no schema in kubernetes-validate, so its shape is checked here).
    routes = [(r, d) for r, d in docs if d["kind"] == "HTTPRoute"]
    if not routes:
        problem("deploy/k8s", "no HTTPRoute")
    for rrel, route in routes:
        if route["apiVersion"] != "gateway.networking.k8s.io/v1":
            problem(rrel, "HTTPRoute must be gateway.networking.k8s.io/v1")
        rspec = route.get("spec") or {}
        if not rspec.get("parentRefs"):
            problem(rrel, "HTTPRoute needs spec.parentRefs (the Gateway)")
        refs = [b for rule in rspec.get("rules") or [] for b in rule.get("backendRefs") or []]
        if not refs or not all(
            b.get("name") == SERVER_NAME and b.get("port") == 80 for b in refs
        ):
            problem(rrel, f"HTTPRoute backendRefs must point at Service {SERVER_NAME} port 80")
        if any("timeouts" in (rule or {}) for rule in rspec.get("rules") or []):
            problem(rrel, "leave HTTPRoute timeouts unset: they can cut upgraded WebSockets")

    readme = root / "deploy/README.md"
    if readme.exists():
        text = readme.read_text()
        for number, what in ((grace, "grace period"), (sleep, "preStop sleep"), (drain, "drain")):
            if not re.search(rf"\b{number}\s*s\b", text):
                problem(
                    "deploy/README.md",
                    f"does not mention the {what} of {number} s used by the manifests",
                )


# ---- docker compose --------------------------------------------------------------------------


def check_compose(root: Path) -> int | None:
    rel = "docker-compose.yml"
    try:
        compose = yaml.safe_load((root / rel).read_text())
    except (OSError, yaml.YAMLError) as error:
        problem(rel, f"cannot be read as YAML: {error}")
        return None
    services = compose.get("services") or {}
    for name in ("redis", "server", "nginx"):
        if name not in services:
            problem(rel, f"service {name!r} is missing")
    if problems:
        return None
    redis, server, nginx = services["redis"], services["server"], services["nginx"]

    for name, svc in services.items():
        if "image" in svc and "build" not in svc and not pinned_image(svc["image"]):
            problem(rel, f"service {name}: image {svc['image']!r} is not pinned to a tag")
    if not redis.get("healthcheck"):
        problem(rel, "service redis needs a healthcheck (redis-cli ping)")

    if ((server.get("build") or {}).get("dockerfile")) != "deploy/Dockerfile":
        problem(rel, "service server must be built from deploy/Dockerfile")
    if int_or_none((server.get("deploy") or {}).get("replicas")) in (None, 0, 1):
        problem(rel, "service server needs deploy.replicas >= 2 (3 is the documented value)")
    if server.get("ports"):
        problem(rel, "service server must publish no host ports (they clash between replicas)")
    env = env_map(server.get("environment"))
    if port_of(env.get("CHANNELS_BIND")) != CONTAINER_PORT:
        problem(rel, "service server: CHANNELS_BIND must be 0.0.0.0:8000")
    m = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+)", str(env.get("CHANNELS_REDIS_URL") or ""))
    if not m or m.group(1) not in services:
        problem(rel, "service server: CHANNELS_REDIS_URL must name the compose redis service")
    if ((server.get("depends_on") or {}).get("redis") or {}).get("condition") != "service_healthy":
        problem(rel, "service server must depend on redis with condition: service_healthy")
    test = (server.get("healthcheck") or {}).get("test") or []
    if "--healthcheck" not in test:
        problem(rel, "service server: healthcheck must run the binary's --healthcheck")
    drain = int_or_none(env.get("CHANNELS_DRAIN_TIMEOUT"))
    if drain is None:
        problem(rel, "service server: set CHANNELS_DRAIN_TIMEOUT (seconds)")
    grace = duration_seconds(server.get("stop_grace_period", "10s"))
    if drain is not None and (grace is None or grace <= drain):
        problem(
            rel,
            f"service server: stop_grace_period {server.get('stop_grace_period')!r} must be "
            f"above CHANNELS_DRAIN_TIMEOUT ({drain} s), or docker kills a drain",
        )

    if ((nginx.get("depends_on") or {}).get("server") or {}).get("condition") != (
        "service_healthy"
    ):
        problem(rel, "service nginx must depend on server with condition: service_healthy")
    if not any("8080:80" in str(p) for p in nginx.get("ports") or []):
        problem(rel, "service nginx must publish host port 8080 -> 80")
    if not any(
        str(v).startswith("./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf")
        for v in nginx.get("volumes") or []
    ):
        problem(rel, "service nginx must mount ./deploy/nginx/nginx.conf at /etc/nginx/nginx.conf")

    # The upstream line of nginx.conf uses `resolve` only if the pinned image has it (>= 1.27.3).
    conf = (root / "deploy/nginx/nginx.conf").read_text()
    upstream_lines = [line for line in conf.splitlines() if "# test: upstream" in line]
    if any(re.search(r"\bresolve\b", line) for line in upstream_lines):
        tag = str(nginx.get("image", "")).rpartition(":")[2]
        # A tag without the patch number (1.28) follows that branch's latest release.
        version = tuple(int(x) for x in re.findall(r"\d+", tag)[:3])
        if len(version) == 2:
            version += (999,)
        if version < (1, 27, 3):
            problem(
                rel,
                f"nginx image {nginx.get('image')!r} is older than 1.27.3, which open source "
                "`server ... resolve;` (deploy/nginx/nginx.conf) needs",
            )
    return drain


# ---- nginx, Dockerfile -----------------------------------------------------------------------


def check_nginx(root: Path) -> None:
    rel = "deploy/nginx/nginx.conf"
    conf = (root / rel).read_text()
    lines = conf.splitlines()
    # The tests find the lines to replace by their marker text, so it must appear on those lines
    # only (not in comments elsewhere), at the end of a directive.
    listen = [line for line in lines if "test: listen" in line]
    upstream = [line for line in lines if "test: upstream" in line]
    if len(listen) != 1 or not re.match(r"\s*listen\s[^#]*;\s*# test: listen\s*$", listen[0]):
        problem(
            rel,
            "exactly one line may contain the text `test: listen`: the listen directive, as "
            f"`listen 80;  # test: listen` (found {listen})",
        )
    if not upstream or not all(
        re.match(r"\s*server\s[^#]*;\s*# test: upstream\s*$", line) for line in upstream
    ):
        problem(
            rel,
            "the text `test: upstream` may appear only at the end of the upstream's "
            f"`server ...;` line(s), as `# test: upstream` (found {upstream})",
        )
    for line in upstream:
        if not re.search(rf"server\s+server:{CONTAINER_PORT}\b", line):
            problem(rel, f"the upstream must be the compose service, `server server:8000` ({line})")
    code = "\n".join(line.split("#", 1)[0] for line in lines)
    for needed in (
        "least_conn;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
        "proxy_buffering off;",
        "access_log /dev/stdout",
    ):
        if needed not in code:
            problem(rel, f"missing `{needed}`")
    if not re.search(r"proxy_next_upstream\s+[^;]*\berror\b[^;]*\bhttp_503\b", code):
        problem(rel, "proxy_next_upstream must include error and http_503 (draining replicas)")
    for sticky in ("ip_hash", "sticky", "hash "):
        if re.search(rf"^\s*{sticky}", code, re.M):
            problem(rel, f"no sticky sessions: remove `{sticky.strip()}`")
    for directive in ("pid", "daemon", "user"):
        if re.search(rf"^\s*{directive}\s", code, re.M):
            problem(rel, f"must not set `{directive}` (the tests pass it with -g, or it breaks)")
    if re.search(r"proxy_hide_header\s+X-Channels-Replica", code, re.I):
        problem(rel, "X-Channels-Replica must reach the client")
    for log_format in re.findall(r"log_format[^;]*;", code, re.S):
        if re.search(r"\$(request|request_uri|args|query_string)\b", log_format):
            problem(
                rel,
                "log_format must not log the query string ($request, $request_uri, $args): "
                "a connection token may travel as ?token=; log $uri",
            )


def check_dockerfile(root: Path, drain: int | None) -> None:
    rel = "deploy/Dockerfile"
    text = (root / rel).read_text()
    stages: set[str] = set()
    for image, stage in re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        if stage:
            stages.add(stage)
        if image not in stages and not pinned_image(image):
            problem(rel, f"base image {image!r} is not pinned to a tag")
    if not re.search(r"cargo install cargo-chef --locked --version \d+\.\d+\.\d+", text):
        problem(rel, "install cargo-chef with --locked and a pinned --version")
    if "cargo chef cook --release" not in text:
        problem(rel, "dependencies must be cooked with cargo chef cook --release")
    if not re.search(r"cargo build --release --locked -p channels-server", text):
        problem(rel, "build with cargo build --release --locked -p channels-server")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not user or user[-1].split(":")[0] in ("root", "0"):
        problem(rel, "the runtime stage must set a non-root USER")
    if not re.search(rf"^EXPOSE\s+{CONTAINER_PORT}\b", text, re.M):
        problem(rel, f"EXPOSE {CONTAINER_PORT} is missing")
    if f"CHANNELS_BIND=0.0.0.0:{CONTAINER_PORT}" not in text:
        problem(rel, "ENV CHANNELS_BIND=0.0.0.0:8000 is missing")
    if "CHANNELS_LOG_FORMAT=json" not in text:
        problem(rel, "ENV CHANNELS_LOG_FORMAT=json is missing")
    m = re.search(r"CHANNELS_DRAIN_TIMEOUT=(\d+)", text)
    if m and drain is not None and int(m.group(1)) != drain:
        problem(rel, f"CHANNELS_DRAIN_TIMEOUT={m.group(1)} differs from the compose file's {drain}")
    if not re.search(r'HEALTHCHECK[^\n]*(?:\\\n[^\n]*)*CMD \["/channels-server", "--healthcheck"\]', text):
        problem(rel, 'HEALTHCHECK must run CMD ["/channels-server", "--healthcheck"]')
    if not re.search(r"^STOPSIGNAL\s+SIGTERM", text, re.M):
        problem(rel, "STOPSIGNAL SIGTERM is missing")
    ignore_file = root / ".dockerignore"
    ignore = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.strip() and not line.strip().startswith("#")
    ]
    for entry in ("target/", ".venv/", ".git/"):
        if entry not in ignore and entry.rstrip("/") not in ignore:
            problem(".dockerignore", f"must exclude {entry}")
    # cargo needs every workspace member in the build context, even to build one package.
    cargo = (root / "Cargo.toml").read_text()
    members = re.search(r"^members\s*=\s*\[([^\]]*)\]", cargo, re.M | re.S)
    needed = ["Cargo.toml", "Cargo.lock"] + (
        re.findall(r'"([^"]+)"', members.group(1)) if members else []
    )
    for path in needed:
        for entry in ignore:
            if "*" in entry or entry.startswith("!"):
                continue
            stem = entry.strip("/")
            if path == stem or path.startswith(stem + "/"):
                problem(".dockerignore", f"excludes {entry}, but the build needs {path}")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    drain = check_compose(root)
    check_k8s(root, drain)
    check_nginx(root)
    check_dockerfile(root, drain)
    for line in problems:
        print(f"  {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
