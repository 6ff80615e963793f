"""deploy/k8s renders with kustomize, and what it renders would run.

No cluster here: the overlays are rendered with `kubectl kustomize` and checked for what the
services need. Each container's effective config (the ConfigMap's config.yaml + the env of
the manifest) is resolved with the services' own `resolve()`, so a misspelt option, a bad
value or an endpoint that points at no Service fails here, not in a pod.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from boardlens.services.config import EvaluatorConfig, ProducerConfig, TrainerConfig, resolve

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
COMMANDS = {"produce": ("producer", ProducerConfig), "train": ("trainer", TrainerConfig),
            "evaluate": ("evaluator", EvaluatorConfig)}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing (renders kustomize)")


def render(overlay: str) -> list[dict]:
    r = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


class Rendered:
    """One overlay: objects by kind/name and each service's resolved config."""

    def __init__(self, overlay: str, tmp: Path) -> None:
        self.docs = render(overlay)
        self.by = {(d["kind"], d["metadata"]["name"]): d for d in self.docs}
        (cm,) = [d for d in self.docs if d["kind"] == "ConfigMap"]
        self.config_map = cm
        self.config_file = tmp / f"{overlay}-config.yaml"
        self.config_file.write_text(cm["data"]["config.yaml"])
        self.deployments = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == "Deployment"}
        self.services = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == "Service"}

    def container(self, deployment: str) -> dict:
        (c,) = self.deployments[deployment]["spec"]["template"]["spec"]["containers"]
        return c

    def config(self, deployment: str):
        c = self.container(deployment)
        cmd, flag, path = c["args"][:3]
        assert flag == "--config"
        _, cls = COMMANDS[cmd]
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        return resolve(cls, str(self.config_file), environ=env)


@pytest.fixture(scope="module", params=["cpu", "gpu", "chess"])
def overlay(request, tmp_path_factory):
    return request.param, Rendered(request.param, tmp_path_factory.mktemp("k8s"))


def test_objects(overlay):
    _, r = overlay
    kinds = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap"
                    else d["metadata"]["name"]) for d in r.docs)
    assert kinds == sorted([
        ("ConfigMap", "boardlens-config"), ("PersistentVolumeClaim", "boardlens-runs"),
        *[(k, f"boardlens-{s}") for k in ("Deployment", "Service") for s in ("producer", "trainer", "evaluator")],
    ])
    assert all("namespace" not in d["metadata"] for d in r.docs)
    assert yaml.safe_load(r.config_map["data"]["config.yaml"]).keys() == {"producer", "trainer", "evaluator"}


def test_deployments(overlay):
    _, r = overlay
    for name, dep in r.deployments.items():
        spec = dep["spec"]["template"]["spec"]
        c = r.container(name)
        cmd = c["args"][0]
        assert f"boardlens-{COMMANDS[cmd][0]}" == name
        cfg = r.config(name)
        # config mounted where --config points, from the generated ConfigMap
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        cfg_dir = str(Path(c["args"][2]).parent)
        (vol,) = [n for n, p in mounts.items() if p == cfg_dir]
        assert vols[vol]["configMap"]["name"] == r.config_map["metadata"]["name"]
        # metrics port: config == containerPort == scrape annotation == probes
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == cfg.metrics_port
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(cfg.metrics_port)
        assert ann["prometheus.io/path"] == "/metrics"
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, (name, probe)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), (name, kind)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        # every run_dir is on a writable volume
        if hasattr(cfg, "run_dir"):
            assert any(cfg.run_dir.startswith(p) for p in mounts.values()), (name, cfg.run_dir)
    for single in ("boardlens-producer", "boardlens-trainer"):
        assert r.deployments[single]["spec"]["replicas"] == 1


def test_trainer_keeps_its_run_and_time_to_checkpoint(overlay):
    _, r = overlay
    spec = r.deployments["boardlens-trainer"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60
    cfg = r.config("boardlens-trainer")
    # the trainer's own deadline (checkpoint, then exit) ends before the kubelet's SIGKILL
    assert cfg.stop_grace_s < spec["terminationGracePeriodSeconds"] and cfg.resume == "auto"
    claim = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in r.container("boardlens-trainer")["volumeMounts"]}
    run_dir = r.config("boardlens-trainer").run_dir
    (path,) = [p for p in mounts if run_dir.startswith(p + "/")]
    assert claim[mounts[path]] in {n for k, n in r.by if k == "PersistentVolumeClaim"}


def _host_port(endpoint: str) -> tuple[str, int]:
    assert endpoint.startswith("tcp://"), endpoint
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    return host, int(port)


def test_endpoints_meet(overlay):
    """Binds listen on all interfaces; connects name a Service port that reaches the bind."""
    _, r = overlay
    prod, train, ev = (r.config(f"boardlens-{s}") for s in ("producer", "trainer", "evaluator"))
    for endpoint in (prod.bind, prod.bind_lossy, train.snapshot_bind):
        assert _host_port(endpoint)[0] == "*", endpoint
    pairs = [(train.connect, prod.bind, "boardlens-producer"),
             (ev.connect, prod.bind_lossy, "boardlens-producer"),
             (ev.snapshots, train.snapshot_bind, "boardlens-trainer")]
    for connect, bind, deployment in pairs:
        host, port = _host_port(connect)
        assert host == deployment, connect
        svc = r.services[host]["spec"]
        (sp,) = [p for p in svc["ports"] if p["port"] == port]
        target = {p["name"]: p["containerPort"] for p in r.container(deployment)["ports"]}[sp["targetPort"]]
        assert target == _host_port(bind)[1], (connect, bind)
        selector = r.deployments[deployment]["spec"]["selector"]["matchLabels"]
        assert svc["selector"].items() <= selector.items()
    for svc in r.services.values():  # metrics reachable through each Service
        assert any(p["name"] == "metrics" for p in svc["spec"]["ports"])


def test_overlay_devices(overlay):
    name, r = overlay
    images = {r.container(d)["image"] for d in r.deployments}
    assert len(images) == 1
    (image,) = images
    gpus = {d: r.container(d)["resources"]["limits"].get("nvidia.com/gpu") for d in r.deployments}
    prod, train = r.config("boardlens-producer"), r.config("boardlens-trainer")
    if name == "gpu":
        assert "cuda" in image.split(":")[1]
        assert gpus == {"boardlens-producer": "1", "boardlens-trainer": "1", "boardlens-evaluator": None}
        assert prod.device == "cuda" and train.device == "cuda" and prod.dtype == "bfloat16"
    else:
        assert "cpu" in image.split(":")[1]
        assert set(gpus.values()) == {None}
        assert prod.device == "cpu" and train.device == "cpu" and prod.dtype == "float32"


def test_chess_overlay_streams_the_chess_model_from_stockfish(tmp_path):
    r = Rendered("chess", tmp_path)
    prod = r.config("boardlens-producer")
    assert prod.model == "/app/models/chess-gpt" and prod.source == "stockfish"
    assert (Path(__file__).resolve().parents[2] / "models" / "chess-gpt").is_dir()
    # The CPU limit covers the torch threads plus one core per labelling worker.
    limit = float(r.container("boardlens-producer")["resources"]["limits"]["cpu"])
    assert limit >= prod.threads + prod.label_workers
