"""deploy/: the Dockerfiles, the Kustomize base and overlays, compose.yaml (no network;
`kubectl kustomize` only when kubectl is on PATH)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from genapi import cli
from genapi.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
OVERLAYS = DEPLOY / "k8s" / "overlays"
YAML_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext))
# Key names that hold a credential (max_output_tokens is not one; auth_token, AWS_SECRET_... are).
SECRETISH = re.compile(r"(password|passwd|secret|api[_-]?keys?|access[_-]?key|credential|(^|_)token$)", re.I)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_objects() -> list[dict]:
    kust = docs(BASE / "kustomization.yaml")[0]
    return [d for r in kust["resources"] for d in docs(BASE / r)]


def find(objs, kind, name):
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(deploy: dict, name: str) -> dict:
    (c,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def pod_labels(deploy: dict) -> dict:
    return deploy["spec"]["template"]["metadata"]["labels"]


def test_every_yaml_parses():
    assert len(YAML_FILES) >= 10
    for p in YAML_FILES:
        assert docs(p), p


def test_base_resources_exist():
    kust = docs(BASE / "kustomization.yaml")[0]
    for r in kust["resources"]:
        assert (BASE / r).is_file(), r
    assert "secret.example.yaml" not in kust["resources"]  # placeholders are never applied


def test_core_grpc_probes_on_the_grpc_port():
    core = container(find(base_objects(), "Deployment", "genapi-core"), "core")
    grpc_port = next(p["containerPort"] for p in core["ports"] if p["name"] == "grpc")
    assert grpc_port == 50051
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert core[probe]["grpc"]["port"] == grpc_port, probe
    assert core["resources"]["requests"]["cpu"] and core["resources"]["requests"]["memory"]


def test_shim_http_health_probes():
    shim = container(find(base_objects(), "Deployment", "genapi-shim"), "shim")
    assert shim["readinessProbe"]["httpGet"]["path"] == "/health"
    # liveness must not depend on the cores: /health is 503 while they load or are down
    assert shim["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert shim["resources"]["requests"]["cpu"]  # the HPA's utilization needs a CPU request


def test_non_root_and_scrape_annotations():
    objs = base_objects()
    for name in ("genapi-core", "genapi-shim"):
        pod = find(objs, "Deployment", name)["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        # the core's metrics port needs no key; the shim's /metrics does (annotations cannot send one)
        scraped = (pod["metadata"].get("annotations") or {}).get("prometheus.io/scrape")
        assert scraped == ("true" if name == "genapi-core" else None), name
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_headless_service_selects_core_pods():
    objs = base_objects()
    svc = find(objs, "Service", "genapi-core-headless")
    assert svc["spec"]["clusterIP"] == "None"
    labels = pod_labels(find(objs, "Deployment", "genapi-core"))
    assert svc["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [50051]


def test_shim_service_and_hpa_target_the_shim():
    objs = base_objects()
    shim = find(objs, "Deployment", "genapi-shim")
    assert find(objs, "Service", "genapi")["spec"]["selector"].items() <= pod_labels(shim).items()
    (hpa,) = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "genapi-shim")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_pdb_selectors_match_pod_labels():
    objs = base_objects()
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 2
    for name in ("genapi-core", "genapi-shim"):
        labels = pod_labels(find(objs, "Deployment", name))
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs), name
        assert find(objs, "Deployment", name)["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_no_secret_in_a_configmap():
    configmaps = [o for p in YAML_FILES for o in docs(p) if o.get("kind") == "ConfigMap"]
    assert configmaps
    for cm in configmaps:
        for key, value in cm.get("data", {}).items():
            assert not SECRETISH.search(key), key
            for line in value.splitlines():
                line = line.split("#", 1)[0]
                if "=" in line:
                    k, v = (s.strip() for s in line.split("=", 1))
                    assert not SECRETISH.search(k), line
                    assert not re.search(r"://[^/\s]*:[^/\s]*@", v), line  # no user:password@ in a URL


def test_secret_key_refs_exist_in_the_example_secret():
    (secret,) = docs(BASE / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    keys = set(secret["stringData"])
    assert all("REPLACE-ME" in v or ".invalid" in v for v in secret["stringData"].values())  # placeholders
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.append(node["secretKeyRef"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for p in (BASE, OVERLAYS):
        for f in p.rglob("*.yaml"):
            walk(docs(f))
    assert refs
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, ref


def test_configmap_toml_loads(tmp_path, monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith("GENAPI_"):
            monkeypatch.delenv(var)
    cm = find(base_objects(), "ConfigMap", "genapi-config")
    path = tmp_path / "genapi.toml"
    path.write_text(cm["data"]["genapi.toml"])
    cfg = load_config(path)
    assert cfg.core_target == "dns:///genapi-core-headless:50051"
    assert (cfg.core_host, cfg.core_port, cfg.shim_port) == ("0.0.0.0", 50051, 8000)
    core = find(base_objects(), "Deployment", "genapi-core")
    assert str(cfg.metrics_port) == core["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
    # the compose config too
    cfg = load_config(DEPLOY / "compose" / "genapi.toml")
    assert cfg.core_target == "dns:///core:50051"


def test_store_url_comes_from_the_secret_and_overrides_the_configmap(tmp_path, monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith("GENAPI_"):
            monkeypatch.delenv(var)
    cm = find(base_objects(), "ConfigMap", "genapi-config")
    env = {e["name"]: e for e in container(find(base_objects(), "Deployment", "genapi-core"), "core")["env"]}
    ref = env["GENAPI_STORE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "genapi-secrets", "key": "GENAPI_STORE_URL"} and not ref.get("optional")
    assert env["GENAPI_STORE_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    example = docs(BASE / "secret.example.yaml")[0]["stringData"]["GENAPI_STORE_URL"]
    path = tmp_path / "genapi.toml"
    path.write_text(cm["data"]["genapi.toml"])
    assert load_config(path).store_url == ""  # no URL (and no password) in the ConfigMap itself
    monkeypatch.setenv("GENAPI_STORE_URL", example)  # as the pod gets it from the Secret
    monkeypatch.setenv("GENAPI_STORE_NODE", "genapi-core-7d9f-abcde")
    cfg = load_config(path)
    assert cfg.store_url == example and example.startswith("postgresql://") and cfg.node_name == "genapi-core-7d9f-abcde"
    compose = docs(DEPLOY / "compose.yaml")[0]["services"]["core"]["environment"]["GENAPI_STORE_URL"]
    assert compose.startswith("postgresql://genapi:${POSTGRES_PASSWORD:?") and compose.endswith("@postgres:5432/genapi")


def test_gpu_overlay_requests_a_gpu_cpu_overlay_does_not():
    gpu = "\n".join(p.read_text() for p in (OVERLAYS / "gpu").glob("*.yaml"))
    cpu = "\n".join(p.read_text() for p in (OVERLAYS / "cpu").glob("*.yaml"))
    assert "nvidia.com/gpu: 1" in gpu and "newTag: cuda" in gpu
    assert "nvidia.com/gpu" not in cpu
    patch = docs(OVERLAYS / "gpu" / "core-gpu.yaml")[0]
    assert container(patch, "core")["resources"]["limits"]["nvidia.com/gpu"] == 1


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_copy_sources_and_commands(name):
    ins = dockerfile_instructions(DEPLOY / name)
    froms = [r for op, r in ins if op == "FROM"]
    assert froms and all(":" in f and not f.endswith(":latest") for f in froms)  # pinned tags
    copies = [shlex.split(r)[:-1] for op, r in ins if op == "COPY"]
    assert copies
    ignored = (ROOT / ".dockerignore").read_text().split()
    for sources in copies:
        for src in sources:
            assert not src.startswith("--")
            assert (ROOT / src).exists(), src
            assert src.rstrip("/") not in ignored, src
    users = [r for op, r in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = {p for op, r in ins if op == "EXPOSE" for p in r.split()}
    assert {"8000", "50051"} <= exposed
    entry = [yaml.safe_load(r) for op, r in ins if op == "ENTRYPOINT"]
    cmd = [yaml.safe_load(r) for op, r in ins if op == "CMD"]
    assert entry == [["genapi"]] and len(cmd) == 1
    assert_cli_accepts(cmd[0])


def cli_subcommands() -> dict[str, "object"]:
    import argparse

    captured = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            cli.main([])
    finally:
        argparse.ArgumentParser.parse_args = real
    parser = captured["parser"]
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, action.choices


def assert_cli_accepts(argv: list[str]) -> None:
    """argv (after `genapi`) names a subcommand and only flags it has."""
    parser, subs = cli_subcommands()
    assert argv[0] in subs, argv
    parser.parse_args(argv)  # argparse exits 2 on an unknown flag


def test_k8s_and_compose_commands_exist_in_the_cli():
    commands = []
    for name in ("genapi-core", "genapi-shim"):
        for c in find(base_objects(), "Deployment", name)["spec"]["template"]["spec"]["containers"]:
            commands.append(c["args"])
    compose = docs(DEPLOY / "compose.yaml")[0]
    for svc in ("core", "shim"):
        commands.append(compose["services"][svc]["command"])
    for argv in commands:
        assert_cli_accepts(argv)


def test_compose_services_and_no_inline_credentials():
    compose = docs(DEPLOY / "compose.yaml")[0]
    assert {"core", "shim", "postgres", "minio", "redis"} <= set(compose["services"])
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key) or key.endswith(("_ROOT_USER", "_KEY_ID")):
                assert str(value).startswith("${") and ":?" in str(value), (name, key)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kubectl_kustomize_renders(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == 2 and kinds.count("PodDisruptionBudget") == 2
    assert "Secret" not in kinds
    core = container(find(objs, "Deployment", "genapi-core"), "core")
    assert core["readinessProbe"]["grpc"]["port"] == 50051 and core["livenessProbe"]["grpc"]["port"] == 50051
    assert core["resources"]["requests"]
    gpu = core["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpu == 1) if overlay == "gpu" else gpu is None
    shim = container(find(objs, "Deployment", "genapi-shim"), "shim")
    registry = shim["image"].rsplit(":", 1)[0]  # every image comes from the overlay's images:
    assert core["image"] == (f"{registry}:cuda" if overlay == "gpu" else shim["image"])
    assert core["image"].endswith(":cuda" if overlay == "gpu" else ":cpu")
    shim = container(find(objs, "Deployment", "genapi-shim"), "shim")
    assert shim["image"].endswith(":cpu")
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        assert "REPLACE-ME" not in str(cm["data"])
