#!/usr/bin/env python3
"""Lint and render charts/pier with the real Helm engine (PyPI helm-sdkpy, Helm's Go library).

helm-sdkpy has no `helm template`: it renders through `install`. So this script serves a tiny
in-memory stand-in for the Kubernetes API on 127.0.0.1 (discovery for the kinds the chart uses,
the Secrets Helm keeps releases in, and a create that echoes the object) and installs each case
there, with wait off. Nothing is applied anywhere; the release's manifest is the rendered chart.

Input (stdin): {"chart": PATH, "cases": [{"name": N, "values": {...}}, ...]}
Output (stdout): {"lint": {...}, "cases": [{"name": N, "manifest": YAML, "notes": TEXT,
                  "lint": {...}} | {"name": N, "error": TEXT}]}
Used by tests/chart.rs; needs `pip install --ignore-requires-python helm-sdkpy` and PyYAML.
"""

import asyncio
import copy
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import yaml

try:
    import helm_sdkpy
except ImportError:
    sys.exit("helm-sdkpy is missing: pip install --ignore-requires-python helm-sdkpy")

# (group, version) -> [(resource, kind, namespaced)]
RESOURCES = {
    ("", "v1"): [
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
        ("configmaps", "ConfigMap", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
        ("nodes", "Node", False),
    ],
    ("apps", "v1"): [("deployments", "Deployment", True), ("daemonsets", "DaemonSet", True)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("admissionregistration.k8s.io", "v1"): [
        ("validatingadmissionpolicies", "ValidatingAdmissionPolicy", False),
        ("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", False),
    ],
    ("apiextensions.k8s.io", "v1"): [
        ("customresourcedefinitions", "CustomResourceDefinition", False)
    ],
    ("coordination.k8s.io", "v1"): [("leases", "Lease", True)],
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor", True)],
    ("pier.dev", "v1alpha1"): [
        ("networks", "Network", False),
        ("endpoints", "Endpoint", True),
        ("portpublishes", "PortPublish", True),
    ],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class FakeApi(BaseHTTPRequestHandler):
    store = {}  # collection path -> {name: object}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self, what):
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404, "message": f"{what} not found"})

    def discovery(self, path):
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                      for (g, v) in RESOURCES if g]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for (g, v), res in RESOURCES.items():
            gv = f"{g}/{v}" if g else v
            if path == ("/apis/" + gv if g else "/api/v1"):
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": [{"name": r, "singularName": k.lower(), "namespaced": ns,
                                       "kind": k, "verbs": VERBS} for (r, k, ns) in res]}
        return None

    @staticmethod
    def split(path):
        """(collection path, name or None) of a resource path."""
        parts = path.strip("/").split("/")
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        if rest and rest[0] == "namespaces" and len(rest) >= 3:
            prefix, rest = parts[: base + 2], rest[2:]
        else:
            prefix = parts[:base]
        collection = "/" + "/".join(prefix + rest[:1])
        return collection, (rest[1] if len(rest) > 1 else None)

    def do_GET(self):
        path = urlparse(self.path).path
        found = self.discovery(path)
        if found is not None:
            return self.reply(200, found)
        collection, name = self.split(path)
        with self.lock:
            items = self.store.get(collection, {})
            if name is None:
                return self.reply(200, {"kind": "List", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": "1"},
                                        "items": list(items.values())})
            # Only Helm's own release Secrets are ever found: every chart object is "new", so
            # Helm's ownership check passes even for CRDs it just installed from crds/.
            if name in items and "/secrets" in collection:
                return self.reply(200, items[name])
        self.not_found(path)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # client-go sends core types (Helm's release Secret) as protobuf: keep a stub.
            return {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "release"}}
        return json.loads(raw or b"{}")

    def do_POST(self):
        obj = self.body()
        collection, _ = self.split(urlparse(self.path).path)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("uid", "00000000-0000-0000-0000-000000000001")
        with self.lock:
            self.store.setdefault(collection, {})[meta.get("name")] = obj
        self.reply(201, obj)

    def do_PUT(self):
        obj = self.body()
        collection, name = self.split(urlparse(self.path).path)
        with self.lock:
            self.store.setdefault(collection, {})[name] = obj
        self.reply(200, obj)

    def do_PATCH(self):
        collection, name = self.split(urlparse(self.path).path)
        with self.lock:
            current = self.store.get(collection, {}).get(name)
        if current is None:
            return self.not_found(self.path)
        self.reply(200, current)

    def do_DELETE(self):
        collection, name = self.split(urlparse(self.path).path)
        with self.lock:
            self.store.get(collection, {}).pop(name, None)
        self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def kubeconfig(port):
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                  "namespace": "pier-system"}}],
    })


def merge(base, override):
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


async def render_case(chart, defaults, i, case):
    """Lints and renders one case against its own stand-in API server."""
    # A handler class per case: its own store, so cases run side by side.
    handler = type(f"FakeApi{i}", (FakeApi,), {"store": {}, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    entry = {"name": case["name"]}
    try:
        config = helm_sdkpy.Configuration(
            namespace="pier-system", kubeconfig=kubeconfig(server.server_address[1]))
        # Lint sees only values.yaml: lint a copy whose values.yaml holds this case's values.
        with tempfile.TemporaryDirectory() as tmp:
            copy_dir = os.path.join(tmp, "pier")
            shutil.copytree(chart, copy_dir)
            with open(os.path.join(copy_dir, "values.yaml"), "w") as f:
                yaml.safe_dump(merge(defaults, case["values"]), f)
            entry["lint"] = await helm_sdkpy.Lint(config).run(copy_dir)
        release = await helm_sdkpy.Install(config).run(
            f"pier{i}", chart, values=case["values"] or None, wait=False, timeout=60)
        entry["manifest"] = release.get("manifest", "")
        entry["notes"] = (release.get("info") or {}).get("notes", "")
    except Exception as e:  # reported per case, the Rust test fails on it
        entry["error"] = f"{type(e).__name__}: {e}"
    finally:
        server.shutdown()
    return entry


async def run(request):
    chart = os.path.abspath(request["chart"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    config = helm_sdkpy.Configuration(
        namespace="pier-system", kubeconfig=kubeconfig(server.server_address[1]))
    out = {"lint": await helm_sdkpy.Lint(config).run(chart)}
    server.server_close()
    with open(os.path.join(chart, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    # Eight at a time: each install waits mostly on Helm's own pauses, not on the CPU.
    limit = asyncio.Semaphore(8)

    async def limited(i, case):
        async with limit:
            return await render_case(chart, defaults, i, case)

    out["cases"] = list(await asyncio.gather(
        *(limited(i, case) for i, case in enumerate(request["cases"]))))
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
