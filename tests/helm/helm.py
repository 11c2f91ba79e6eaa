#!/usr/bin/env python3
"""Helm's own actions (PyPI helm-sdkpy: Helm 4's Go library) against a real API server.

Used by tests/helm.rs against `pier up`. Reads one JSON request per line on stdin and answers
one JSON line on stdout: {"ok": RESULT} or {"error": "TYPE: MESSAGE"}. The Helm library loads
once for the whole session.

Requests ({"action": ..., ...}; every one has "kubeconfig" and "namespace"):
  install   release, chart, values, create_namespace, take_ownership, server_side_apply,
            validate (the helm CLI's default: manifests validated against the server)
  upgrade   release, chart, values, take_ownership, rollback_on_failure, skip_schema_validation
  list | history release | rollback release, revision | uninstall release | status release
Nothing waits for readiness (wait=False): no controller runs the Deployments and DaemonSets.
"""

import asyncio
import json
import sys

try:
    import helm_sdkpy
except ImportError:
    sys.exit("helm-sdkpy is missing: pip install --ignore-requires-python helm-sdkpy")


def release_summary(release):
    """The parts of a release the test checks (the manifest as Helm rendered it)."""
    if not isinstance(release, dict):
        return release
    info = release.get("info") or {}
    return {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "version": release.get("version"),
        "status": info.get("status"),
        "notes": info.get("notes", ""),
        "manifest": release.get("manifest", ""),
    }


async def run(request):
    config = helm_sdkpy.Configuration(
        namespace=request["namespace"], kubeconfig=request["kubeconfig"])
    action = request["action"]
    release = request.get("release")
    if action == "install":
        result = await helm_sdkpy.Install(config).run(
            release, request["chart"], values=request.get("values") or None,
            create_namespace=request.get("create_namespace", False), wait=False, timeout=60,
            take_ownership=request.get("take_ownership", False),
            server_side_apply=request.get("server_side_apply", False),
            disable_openapi_validation=not request.get("validate", False))
        return release_summary(result)
    if action == "upgrade":
        result = await helm_sdkpy.Upgrade(config).run(
            release, request["chart"], values=request.get("values") or None, wait=False,
            timeout=60, take_ownership=request.get("take_ownership", False),
            rollback_on_failure=request.get("rollback_on_failure", False),
            skip_schema_validation=request.get("skip_schema_validation", False))
        return release_summary(result)
    if action == "list":
        return [release_summary(r) for r in (await helm_sdkpy.List(config).run(all=True)) or []]
    if action == "history":
        return [release_summary(r) for r in (await helm_sdkpy.History(config).run(release)) or []]
    if action == "rollback":
        await helm_sdkpy.Rollback(config).run(release, revision=request["revision"])
        return release_summary(await helm_sdkpy.Status(config).run(release))
    if action == "status":
        return release_summary(await helm_sdkpy.Status(config).run(release))
    if action == "uninstall":
        return await helm_sdkpy.Uninstall(config).run(release, wait=False, timeout=60)
    raise ValueError(f"unknown action {action!r}")


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": asyncio.run(run(json.loads(line)))}
        except Exception as e:  # reported to the Rust test, which fails or expects it
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
