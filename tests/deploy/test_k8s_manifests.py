"""deploy/k8s renders with kustomize, and what it renders would run.

No cluster here: the overlays are rendered with `kubectl kustomize` and checked for what the
services need. Each container's effective config (the ConfigMap's config.yaml + the env of
the manifest) is resolved with the services' own `resolve()`, so a misspelt option, a bad
value or an endpoint that points at no Service fails here, not in a pod.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
        (cm,) = [d for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("boardlens-config")]
        self.config_map = cm
        self.config_file = tmp / f"{overlay}-config.yaml"
        self.config_file.write_text(cm["data"]["config.yaml"])
        # The workloads: the producer a StatefulSet, the evaluator a Deployment, the trainer a Job.
        self.deployments = {d["metadata"]["name"]: d for d in self.docs
                            if d["kind"] in ("StatefulSet", "Deployment", "Job")}
        self.services = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == "Service"}

    def container(self, deployment: str) -> dict:
        (c,) = self.deployments[deployment]["spec"]["template"]["spec"]["containers"]
        return c

    def config(self, deployment: str, index: int = 0):
        """The service's config in replica `index` (a StatefulSet ordinal, a Job's completion index)."""
        c = self.container(deployment)
        cmd, flag, path = c["args"][:3]
        assert flag == "--config"
        _, cls = COMMANDS[cmd]
        return resolve(cls, str(self.config_file), environ=container_env(c, index))


INDEX_FIELDS = ("metadata.labels['apps.kubernetes.io/pod-index']",
                "metadata.annotations['batch.kubernetes.io/job-completion-index']")


def container_env(c: dict, index: int) -> dict[str, str]:
    """The environment as the kubelet builds it: entries in order, $(NAME) expanded from the
    entries before it (a later or unknown one stays literal: that fails here), the replica's
    index from the downward API."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "valueFrom" in e:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] in INDEX_FIELDS, e
            env[e["name"]] = str(index)
            continue
        value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        assert "$(" not in value, f"{e['name']}: {e['value']} refers to a variable not defined before it"
        env[e["name"]] = value
    return env


OVERLAYS = ["cpu", "gpu", "chess", "kube-prometheus-stack", "scale"]
MONITORING = [("PodMonitor", "boardlens"), ("PrometheusRule", "boardlens"), ("ConfigMap", "boardlens-dashboard")]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request, tmp_path_factory):
    return request.param, Rendered(request.param, tmp_path_factory.mktemp("k8s"))


def test_objects(overlay):
    name, r = overlay
    kinds = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["metadata"]["name"].startswith(
        "boardlens-config") else d["metadata"]["name"]) for d in r.docs)
    services = ("producer", "trainer", "evaluator")
    assert kinds == sorted([
        ("ConfigMap", "boardlens-config"), ("PersistentVolumeClaim", "boardlens-runs"),
        ("PersistentVolumeClaim", "boardlens-eval"), ("PodDisruptionBudget", "boardlens-producer"),
        ("StatefulSet", "boardlens-producer"), ("Deployment", "boardlens-evaluator"), ("Job", "boardlens-trainer"),
        *[(k, f"boardlens-{s}") for k in ("Service", "NetworkPolicy") for s in services],
        *(MONITORING if name == "kube-prometheus-stack" else []),
    ])
    assert all("namespace" not in d["metadata"] for d in r.docs)
    assert yaml.safe_load(r.config_map["data"]["config.yaml"]).keys() == {"producer", "trainer", "evaluator"}


def test_deployments(overlay):
    overlay_name, r = overlay
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
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, (name, probe)
            assert "initialDelaySeconds" not in c[probe], (name, probe)  # the startupProbe waits
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, name  # model load, compile
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), (name, kind)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        # every run_dir is on a writable volume
        if hasattr(cfg, "run_dir"):
            assert any(cfg.run_dir.startswith(p) for p in mounts.values()), (name, cfg.run_dir)
    ev = r.deployments["boardlens-evaluator"]["spec"]
    assert ev["replicas"] == 1 and ev["strategy"]["type"] == "Recreate"  # its RWO volume
    prod = r.deployments["boardlens-producer"]["spec"]
    assert prod["replicas"] == (2 if overlay_name == "scale" else 1) and prod["serviceName"] == "boardlens-producer"
    assert prod["podManagementPolicy"] == "Parallel" and prod["updateStrategy"]["type"] == "RollingUpdate"


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


def test_trainer_is_a_job_that_resumes_until_done(overlay):
    name, r = overlay
    job = r.deployments["boardlens-trainer"]
    shards = 2 if name == "scale" else 1
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == shards
    # restarted in place (same PVC) after a crash or an eviction: exit 143 before the end
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 5
    from boardlens.services.trainer import EXIT_STOPPED

    assert EXIT_STOPPED != 0


def test_evaluator_history_is_on_its_own_volume(overlay):
    _, r = overlay
    spec = r.deployments["boardlens-evaluator"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in r.container("boardlens-evaluator")["volumeMounts"]}
    (path,) = [p for p in mounts if r.config("boardlens-evaluator").run_dir.startswith(p)]
    (vol,) = [v for v in spec["volumes"] if v["name"] == mounts[path]]
    assert vol["persistentVolumeClaim"]["claimName"] == "boardlens-eval"


def _pods(r: Rendered, selector: dict) -> set[str]:
    """Workloads whose pods a label selector (matchLabels) picks."""
    return {n for n, d in r.deployments.items()
            if selector["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()}


def test_disruption_budget_covers_the_producer_only(overlay):
    _, r = overlay
    pdb = r.by[("PodDisruptionBudget", "boardlens-producer")]["spec"]
    assert pdb["minAvailable"] == 1 and _pods(r, pdb["selector"]) == {"boardlens-producer"}


def test_network_policies_admit_only_the_streams_consumers_and_monitoring(overlay):
    """Each listening port of each pod: who may connect (component names, or 'monitoring')."""
    _, r = overlay
    allowed: dict[tuple[str, str], set[str]] = {}
    for (kind, _), pol in r.by.items():
        if kind != "NetworkPolicy":
            continue
        (target,) = _pods(r, pol["spec"]["podSelector"])
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        for rule in pol["spec"]["ingress"]:
            sources = set()
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    sources.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
                else:
                    (src,) = _pods(r, peer["podSelector"])
                    sources.add(src)
            for port in rule["ports"]:
                allowed.setdefault((target, port["port"]), set()).update(sources)
    assert allowed == {
        ("boardlens-producer", "zmq-lossless"): {"boardlens-trainer"},
        ("boardlens-producer", "zmq-lossy"): {"boardlens-evaluator"},
        ("boardlens-producer", "metrics"): {"monitoring"},
        ("boardlens-trainer", "zmq-snapshots"): {"boardlens-evaluator"},
        ("boardlens-trainer", "metrics"): {"monitoring"},
        ("boardlens-evaluator", "metrics"): {"monitoring"},
    }
    # every named port is a container port of its pod (a typo would admit nothing)
    for target, port in allowed:
        assert port in {p["name"] for p in r.container(target)["ports"]}, (target, port)
    # ... and every container port is covered by a rule
    assert {(d, p["name"]) for d in r.deployments for p in r.container(d)["ports"]} == set(allowed)


def test_kube_prometheus_stack_component(tmp_path):
    """PodMonitor on every service's metrics port (job = boardlens-<component>), the rules file
    as a PrometheusRule, the dashboard as a sidecar ConfigMap; all generated files current."""
    import importlib.util
    import json

    r = Rendered("kube-prometheus-stack", tmp_path)
    pm = r.by[("PodMonitor", "boardlens")]
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert _pods(r, pm["spec"]["selector"]) == set(r.deployments)
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    (relabel,) = ep["relabelings"]
    assert relabel["targetLabel"] == "job" and relabel["replacement"] == "boardlens-$1"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    root = K8S.parents[1]
    rule = r.by[("PrometheusRule", "boardlens")]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load((root / "deploy" / "prometheus" / "rules.yml").read_text())["groups"]
    dash = r.by[("ConfigMap", "boardlens-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["boardlens.json"]) == json.loads((root / "deploy" / "grafana" / "boardlens.json").read_text())
    gen = K8S / "components" / "kube-prometheus-stack" / "generate.py"
    spec = importlib.util.spec_from_file_location("boardlens_kps_generate", gen)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, f"stale generated files: python {gen}"


def _host_port(endpoint: str) -> tuple[str, int]:
    assert endpoint.startswith(("tcp://", "dns+tcp://")), endpoint
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_endpoints_meet(overlay):
    """Binds listen on all interfaces; connects name a headless Service port that reaches the
    bind, through dns+tcp:// so that every replica behind it is connected."""
    _, r = overlay
    prod, train, ev = (r.config(f"boardlens-{s}") for s in ("producer", "trainer", "evaluator"))
    for endpoint in (prod.bind, prod.bind_lossy, train.snapshot_bind):
        assert _host_port(endpoint)[0] == "*", endpoint
    pairs = [(train.connect, prod.bind, "boardlens-producer"),
             (ev.connect, prod.bind_lossy, "boardlens-producer"),
             (ev.snapshots, train.snapshot_bind, "boardlens-trainer")]
    for connect, bind, deployment in pairs:
        assert connect.startswith("dns+tcp://"), connect
        host, port = _host_port(connect)
        assert host == deployment, connect
        svc = r.services[host]["spec"]
        assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
        (sp,) = [p for p in svc["ports"] if p["port"] == port]
        target = {p["name"]: p["containerPort"] for p in r.container(deployment)["ports"]}[sp["targetPort"]]
        assert target == _host_port(bind)[1], (connect, bind)
        pod_labels = r.deployments[deployment]["spec"]["template"]["metadata"]["labels"]
        assert svc["selector"].items() <= pod_labels.items()
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


def test_scale_overlay_splits_the_sweep_and_streams_every_producer_to_every_shard(tmp_path):
    r = Rendered("scale", tmp_path)
    producers = r.deployments["boardlens-producer"]["spec"]["replicas"]
    shards = r.deployments["boardlens-trainer"]["spec"]["completions"]
    assert producers >= 2 and shards >= 2
    prods = [r.config("boardlens-producer", i) for i in range(producers)]
    assert [p.seed for p in prods] == list(range(producers))  # each replica its own games and game ids
    assert all(p.wait_consumers == shards and not p.name for p in prods)  # named host:port: the pod name
    trainers = [r.config("boardlens-trainer", i) for i in range(shards)]
    assert [t.shard for t in trainers] == [f"{i}/{shards}" for i in range(shards)]
    assert len({t.shard_dir for t in trainers}) == shards  # one folder per shard, one writer each
    claim = r.by[("PersistentVolumeClaim", "boardlens-runs")]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"]  # the shards' pods share it


def test_chess_overlay_streams_the_chess_model_from_stockfish(tmp_path):
    r = Rendered("chess", tmp_path)
    prod = r.config("boardlens-producer")
    assert prod.model == "/app/models/chess-gpt" and prod.source == "stockfish"
    assert (Path(__file__).resolve().parents[2] / "models" / "chess-gpt").is_dir()
    # The CPU limit covers the torch threads plus one core per labelling worker.
    limit = float(r.container("boardlens-producer")["resources"]["limits"]["cpu"])
    assert limit >= prod.threads + prod.label_workers


KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
CRDS = {"PodMonitor", "PrometheusRule"}  # prometheus-operator kinds: no schema in kubernetes-validate


@pytest.mark.skipif(not KUBERNETES_VALIDATE.exists(), reason="kubernetes-validate missing (the dev extra has it)")
@pytest.mark.parametrize("name", OVERLAYS)
def test_every_overlay_passes_strict_schema_validation(name, tmp_path):
    """Every rendered object against the Kubernetes OpenAPI schemas, unknown fields refused."""
    rendered = tmp_path / f"{name}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(name)))
    r = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", str(rendered)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in (r.stdout + r.stderr).splitlines():
        assert line.startswith("INFO") or any(f"kind {k} " in line for k in CRDS), line
    assert r.stdout.count("INFO") == len([d for d in render(name) if d["kind"] not in CRDS])


@pytest.mark.skipif(not KUBERNETES_VALIDATE.exists(), reason="kubernetes-validate missing (the dev extra has it)")
def test_strict_validation_refuses_an_unknown_field(tmp_path):
    (dep,) = [d for d in render("cpu") if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "boardlens-producer"]
    dep["spec"]["template"]["spec"]["containers"][0]["startupprobe"] = {}  # misspelt
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dep))
    r = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "startupprobe" in r.stdout + r.stderr
