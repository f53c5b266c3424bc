"""deploy/: the manifests raycl relies on, checked against the code (fast: no cluster, no GPU).

The Kubernetes manifests are checked structurally in Python (apiVersion and kind of each
object, metadata.name, the NetworkPolicy's selectors and ports): there is no kubectl, no
cluster and no kubeconform-style schema validator here, and none is installed for the tests.
The launcher config is validated against Ray's own JSON schema. Security is checked as
"closed by default": Ray's ports admitted only from selected pods, no world-writable mode,
TLS mounts, the token never written down, ``raycl submit`` refusing plain http to a remote host.

Also the scaling table of deploy/README.md: :func:`loss_scaling` computes it from the formulas of
the implementation (tiled loss engine, data-parallel gather), and
:func:`test_memory_model_matches_the_tiled_engine` checks those formulas against the live
allocations and the GEMMs of the real engine at a small size.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import socket
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from raycl.config import load_config
from raycl.losses import build_loss
from raycl.losses.base import AUTO_TILE_ENTRIES
from raycl.losses.structure import PairStructure, flatten_batch
from raycl.losses.tiled import default_block_size
from tests.conftest import excluded

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "cluster-aws-gpu.yaml"
RAY_VERSION = "2.60.0"
MOUNT = "/mnt/raycl"  # the shared storage: storage_path of every cluster run
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kuberay_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_all(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in kuberay_docs() if doc["kind"] == kind]


def cluster_specs() -> list[dict[str, Any]]:
    """Every RayCluster spec: the RayCluster's and the one each RayJob creates."""
    specs = [doc["spec"] for doc in of_kind("RayCluster")]
    specs += [doc["spec"]["rayClusterSpec"] for doc in of_kind("RayJob")]
    assert specs
    return specs


def pod_specs(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """The head's pod spec, then each worker group's."""
    heads = [cluster["headGroupSpec"]["template"]["spec"]]
    return heads + [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]


def walk(node: Any, path: str = ""):
    """Every (path, key, value) of a nested manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every container of a manifest (pods, submitter), the autoscaler sidecar's options too."""
    found = []
    for path, key, value in walk(doc):
        if key == "containers":
            found += [(f"{path}.containers[{i}]", c) for i, c in enumerate(value)]
        elif key == "autoscalerOptions":
            found.append((f"{path}.autoscalerOptions", value))
    return found


CREATE_SECRET = re.compile(r"kubectl create secret generic (\S+) --from-file=(\w+)=(\S+)")


def secret() -> tuple[str, str]:
    """The token Secret's name and key, from the command in deploy/README.md that creates it."""
    ((name, key, source),) = set(CREATE_SECRET.findall((DEPLOY / "README.md").read_text()))
    assert source.endswith("/.ray/auth_token")  # the file of step 1, mode 0600
    return name, key


def shared_claim() -> str:
    (doc,) = [d for d in load_all(KUBERAY / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"]
    return doc["metadata"]["name"]


def storage_class() -> dict[str, Any]:
    (doc,) = [d for d in load_all(KUBERAY / "storage.yaml") if d["kind"] == "StorageClass"]
    return doc


def all_pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod this deployment runs: the Ray pods of each cluster and the RayJob submitter."""
    pods = [("cluster", pod) for cluster in cluster_specs() for pod in pod_specs(cluster)]
    pods += [("submitter", job["spec"]["submitterPodTemplate"]) for job in of_kind("RayJob")]
    return pods


def deploy_files() -> list[Path]:
    return [path for path in sorted(DEPLOY.rglob("*")) if path.is_file()]


def entrypoint(job: dict[str, Any]) -> tuple[str, list[str]]:
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "raycl.cli"], words
    return words[3], words[4:]


@cache
def gpu_multinode():
    return load_config(["cluster=gpu_multinode"]).cluster


# --- every manifest ------------------------------------------------------------------------


# the API group/version of every kind deploy/kuberay may hold
API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "PersistentVolumeClaim": "v1",
    "StorageClass": "storage.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


def test_every_manifest_parses():
    paths = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in paths} >= {
        "cluster-aws-gpu.yaml",
        "runtime_env.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/networkpolicy.yaml",
        "kuberay/storage.yaml",
    }
    for path in paths:
        assert load_all(path), path


def test_every_kubernetes_object_is_well_formed():
    """A structural schema check (no kubectl or schema validator offline): apiVersion and kind
    known and matching, a DNS-1123 metadata.name, a spec where the kind has one."""
    kinds = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in load_all(path):
            where = f"{path.name}: {doc.get('kind')}"
            assert API_VERSIONS.get(doc.get("kind")) == doc.get("apiVersion"), where
            name = doc.get("metadata", {}).get("name", "")
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), where
            if doc["kind"] != "StorageClass":
                assert isinstance(doc.get("spec"), dict), where
            kinds.append(doc["kind"])
    assert set(kinds) == set(API_VERSIONS)
    assert "Secret" not in kinds  # the token's Secret is made from its file, never a manifest


def test_ray_version_matches_everywhere():
    assert importlib.metadata.version("ray") == RAY_VERSION
    launcher = load_all(LAUNCHER)[0]
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{RAY_VERSION}-")
    assert launcher["docker"]["image"].endswith("-gpu")
    assert f"ray[default,train,tune]=={RAY_VERSION}" in " ".join(launcher["setup_commands"])
    for cluster in cluster_specs():
        assert cluster["rayVersion"] == RAY_VERSION
    images = [c["image"] for doc in kuberay_docs() for _, c in containers(doc) if "image" in c]
    assert images
    for image in images:
        assert f"ray{RAY_VERSION}" in image and image.endswith("-gpu"), image


# --- cluster launcher ----------------------------------------------------------------------


def test_launcher_config_satisfies_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load_all(LAUNCHER)[0], schema)


def test_launcher_uses_token_auth_and_a_local_dashboard():
    config = load_all(LAUNCHER)[0]
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head + workers
    for commands in (head, workers):
        assert "RAY_AUTH_MODE=token" in commands
        (token_path,) = re.findall(r"RAY_AUTH_TOKEN_PATH=(\S+?);", commands)
        assert token_path in config["file_mounts"]  # the token file is synced to every node
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers
    gpu_types = [
        t for t in config["available_node_types"] if t != config["head_node_type"]
    ]  # the GPU workers autoscale from zero
    assert gpu_types
    for name in gpu_types:
        node = config["available_node_types"][name]
        assert node["min_workers"] == 0 < node["max_workers"] <= config["max_workers"]


def test_launcher_mounts_the_shared_storage_in_every_container():
    config = load_all(LAUNCHER)[0]
    assert f"--volume {MOUNT}:{MOUNT}" in config["docker"]["run_options"]
    mounts = [c for c in config["initialization_commands"] if re.search(r"\bmount -t ", c)]
    assert mounts and all(c.rstrip().endswith(MOUNT) for c in mounts)


# --- KubeRay -------------------------------------------------------------------------------


def test_every_kuberay_container_uses_token_auth_from_the_secret():
    name, key = secret()
    found = [(doc["kind"], where, c) for doc in kuberay_docs() for where, c in containers(doc)]
    kinds = {kind for kind, _, _ in found}
    assert {"RayCluster", "RayJob"} <= kinds
    assert any("submitterPodTemplate" in where for _, where, _ in found)
    for kind, where, container in found:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (kind, where)
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref == {"name": name, "key": key}, (kind, where)
        assert "value" not in env["RAY_AUTH_TOKEN"], (kind, where)  # never inline


def test_the_token_secret_is_created_from_the_file():
    """No manifest holds the token (not even a placeholder that `kubectl apply -f` could turn
    into a well-known token); every instruction makes the Secret from the 0600 file."""
    name, key = secret()
    assert (name, key) == ("raycl-auth-token", "auth_token")
    readme = (DEPLOY / "README.md").read_text()
    assert "chmod 600 ~/.ray/auth_token" in readme and "umask 077" in readme
    for path in deploy_files():
        text = path.read_text()
        assert "--from-literal" not in text, path
        for found in CREATE_SECRET.findall(text):
            assert found[:2] == (name, key), (path, found)
    for manifest in ("raycluster.yaml", "rayjob.yaml"):  # their headers say how, too
        assert CREATE_SECRET.search((KUBERAY / manifest).read_text()), manifest


def test_no_real_token_anywhere_in_deploy():
    """Tokens appear only as references: a Secret's key, a file, or a shell variable."""
    for path in deploy_files():
        text = path.read_text()
        assert not re.search(r"\b[0-9a-f]{32,}\b", text), path
        for value in re.findall(r"RAY_AUTH_TOKEN(?:_PATH)?=(\S*)", text):
            assert value.lstrip("\"'").startswith(("$", "/", "~")), (path, value)
        assert not re.search(r"(?i)(auth_token|token)\s*:\s*[\"']?[\w-]{16,}", text), path
    for doc in kuberay_docs():
        for _, key, value in walk(doc):
            if key == "env":
                for var in value:
                    if "TOKEN" in var["name"]:
                        assert "value" not in var and "secretKeyRef" in var["valueFrom"]


def test_worker_groups_have_gpus_and_match_cluster_gpu_multinode():
    cluster_cfg = gpu_multinode()
    for cluster in cluster_specs():
        assert cluster["enableInTreeAutoscaling"] is True
        total = 0
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            (container,) = group["template"]["spec"]["containers"]
            limits = container["resources"]["limits"]
            gpus = int(limits["nvidia.com/gpu"])
            assert gpus >= 1
            # one Ray Train worker per GPU, each with cluster.cpus_per_worker CPUs
            assert int(limits["cpu"]) >= gpus * cluster_cfg.cpus_per_worker
            total += gpus * group["replicas"]
        assert total >= cluster_cfg.num_workers  # `replicas` runs cluster=gpu_multinode
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_shared_volume_is_mounted_at_the_same_path_in_head_and_workers():
    (pvc,) = [d for d in load_all(KUBERAY / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = shared_claim()
    for cluster in cluster_specs():
        for pod in pod_specs(cluster):
            volumes = {
                v["name"]
                for v in pod["volumes"]
                if v.get("persistentVolumeClaim", {}).get("claimName") == claim
            }
            mounts = {
                m["mountPath"]
                for c in pod["containers"]
                for m in c.get("volumeMounts", [])
                if m["name"] in volumes
            }
            assert mounts == {MOUNT}


def test_no_service_is_public():
    for doc in kuberay_docs():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") not in PUBLIC_SERVICE_TYPES
        for path, key, value in walk(doc):
            if key == "serviceType" or (key == "type" and path.endswith("headService.spec")):
                assert value not in PUBLIC_SERVICE_TYPES, (doc["kind"], path)
    for cluster in cluster_specs():
        assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_rayjob_runs_raycl_on_the_cluster_config_and_shared_storage():
    (job,) = of_kind("RayJob")
    (raycluster,) = of_kind("RayCluster")
    assert job["spec"]["rayClusterSpec"] == raycluster["spec"]  # one cluster, no drift
    command, overrides = entrypoint(job)
    assert command in ("train", "tune")
    assert "cluster=gpu_multinode" in overrides
    assert f"storage_path={MOUNT}" in overrides
    cfg = load_config(overrides, config_name=command)  # the entrypoint composes
    assert cfg.cluster.use_gpu and cfg.cluster.address == "auto"
    assert cfg.storage_path == MOUNT
    if cfg.data.root:
        assert cfg.data.root.startswith(f"{MOUNT}/")  # every worker reads the same files
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert not re.search(r"token|secret|password", json.dumps(runtime_env), re.IGNORECASE)


def test_cluster_gpu_multinode_composes():
    cluster = gpu_multinode()
    assert cluster.use_gpu is True and cluster.num_workers >= 2 and cluster.address == "auto"


# --- closed by default ---------------------------------------------------------------------

RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard + job API, Ray Client
POD_LABELS = {"app.kubernetes.io/name": "raycl"}


def network_policy() -> dict[str, Any]:
    (doc,) = of_kind("NetworkPolicy")
    return doc


def test_network_policy_admits_ray_ports_only_from_selected_pods():
    """Ray's pods take connections from each other and from the KubeRay operator only: every
    `from` is a pod or namespace selector (no ipBlock, no empty peer that would admit all)."""
    spec = network_policy()["spec"]
    assert spec["podSelector"] == {"matchLabels": POD_LABELS}
    assert "Ingress" in spec["policyTypes"]
    rules = spec["ingress"]
    assert rules
    admitted: set[int] = set()
    for rule in rules:
        peers = rule.get("from")
        assert peers, "a rule without `from` admits every source"
        for peer in peers:
            assert peer and set(peer) <= {"podSelector", "namespaceSelector"}, peer
            for selector in peer.values():
                assert selector.get("matchLabels") or selector.get("matchExpressions"), peer
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports:
            assert all(p.get("protocol", "TCP") == "TCP" for p in rule["ports"])
            admitted |= ports
        else:  # every port: only between the cluster's own pods (raylets, workers, NCCL)
            assert peers == [{"podSelector": {"matchLabels": POD_LABELS}}]
    assert admitted >= RAY_PORTS
    operator = [
        peer
        for rule in rules
        for peer in rule["from"]
        if "namespaceSelector" in peer and "podSelector" in peer
    ]
    assert operator and all(
        p["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
        for p in operator
    )


def test_every_pod_it_must_reach_carries_the_policys_labels():
    """The head, the workers and the RayJob submitter carry the labels the policy admits."""
    templates = [
        group["template"]
        for cluster in cluster_specs()
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    ]
    templates += [job["spec"]["submitterPodTemplate"] for job in of_kind("RayJob")]
    for template in templates:
        assert POD_LABELS.items() <= template["metadata"]["labels"].items()


def test_shared_storage_is_owned_by_the_ray_user_and_not_world_writable():
    parameters = storage_class()["parameters"]
    uid, gid = int(parameters["uid"]), int(parameters["gid"])
    assert parameters["directoryPerms"] == "750"
    for kind, pod in all_pod_specs():
        context = pod.get("securityContext") or pod["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True, kind
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
    init = load_all(LAUNCHER)[0]["initialization_commands"]
    assert any(f"chown {uid}:{gid} {MOUNT}" in c and f"chmod 0750 {MOUNT}" in c for c in init)
    (pvc,) = [d for d in load_all(KUBERAY / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["storageClassName"] == storage_class()["metadata"]["name"]


def world_writable(mode: str) -> bool:
    """An octal mode whose last digit grants write to others, or a symbolic a/o/+w grant."""
    mode = mode.strip("\"'")
    if re.fullmatch(r"0?[0-7]{3,4}", mode):
        return bool(int(mode[-1]) & 2)
    return any(
        re.fullmatch(r"[ugoa]*[+=][rwxXst]*", clause)
        and "w" in clause.split("+")[-1].split("=")[-1]
        and (not re.match(r"[ugoa]", clause) or re.match(r"[ugo]*[ao]", clause))
        for clause in mode.split(",")
    )


@pytest.mark.parametrize(
    ("mode", "writable"),
    [
        ("1777", True),
        ("0777", True),
        ("777", True),
        ("0666", True),
        ("a+w", True),
        ("o+rw", True),
        ("+w", True),
        ("0750", False),
        ("750", False),
        ("u+w", False),
        ("g+w", False),
        ("0644", False),
        ("go-w", False),
    ],
)
def test_world_writable_recognises_modes(mode, writable):
    assert world_writable(mode) is writable


def test_no_world_writable_mode_anywhere_in_deploy():
    for path in deploy_files():
        text = path.read_text()
        assert "777" not in text, path
        for mode in re.findall(r"\bchmod\s+(?:-\w+\s+)*(\S+)", text):
            assert not world_writable(mode), (path, mode)
        for mode in re.findall(r"(?i)(?:perms|mode)[\"']?\s*[:=]\s*[\"']?(\d{3,4})\b", text):
            assert not world_writable(mode), (path, mode)


def test_shared_mounts_use_tls():
    assert "tls" in storage_class()["mountOptions"]
    init = " ".join(load_all(LAUNCHER)[0]["initialization_commands"])
    mounts = re.findall(r"\bmount -t (\S+)((?:\s+-o\s+\S+)?)", init)
    assert mounts
    for fstype, options in mounts:
        assert fstype == "efs" and "tls" in options.split()[-1].split(","), (fstype, options)


# --- runtime environment -------------------------------------------------------------------


SHIPPED = [
    "raycl/cli.py",
    "raycl/data/__init__.py",
    "raycl/losses/tiled.py",
    "raycl/conf/train.yaml",
]
SHIPPED += ["raycl/conf/data/cifar10.yaml", "raycl/conf/cluster/gpu_multinode.yaml"]
NOT_SHIPPED = [".venv/bin/python", "data/cifar10/x", "raycl_runs/run/x", ".git/HEAD"]


def test_runtime_env_ships_the_package_and_no_secret():
    env = load_all(DEPLOY / "runtime_env.yaml")[0]
    assert env["working_dir"] == "."
    from raycl.submit import EXCLUDES

    assert env["excludes"] == EXCLUDES  # one exclude list, for the plain Ray CLI too
    match = excluded(env["excludes"])
    for path in SHIPPED:
        assert not match(ROOT / path), f"{path} would not reach the cluster"
    for path in NOT_SHIPPED:
        assert match(ROOT / path), f"{path} would be uploaded"
    assert int(env["env_vars"]["OMP_NUM_THREADS"]) == gpu_multinode().cpus_per_worker
    text = json.dumps(env["env_vars"])
    assert not re.search(r"token|secret|password", text, re.IGNORECASE)


def test_raycl_submit_ships_the_package():
    from raycl.submit import EXCLUDES

    match = excluded(EXCLUDES)
    for path in SHIPPED:
        assert not match(ROOT / path), f"raycl submit would not ship {path}"


# --- raycl submit: where the token may go ------------------------------------------------

PLAIN_REMOTE = "http://10.1.2.3:8265"  # never contacted: the refusal comes before any connection


@pytest.fixture
def offline(monkeypatch):
    """No Ray address variables, and any connection attempt or JobSubmissionClient fails the
    test; the client's arguments are recorded (``calls``) for the one case that may build it."""
    from ray import job_submission

    from raycl.submit import ADDRESS_VARIABLES

    for variable in ADDRESS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-a-real-token-0123")

    def connect(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, connect)
    monkeypatch.setattr(socket, "create_connection", connect)
    calls: list[dict[str, Any]] = []

    class NoClient:
        def __init__(self, address, headers=None, **kwargs):
            calls.append({"address": address, "headers": headers})
            raise ConnectionRefusedError("not contacted in tests")

    monkeypatch.setattr(job_submission, "JobSubmissionClient", NoClient)
    return calls


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("http://10.1.2.3:8265", False),
        ("10.1.2.3:6379", False),  # a GCS address: Ray then reaches its dashboard over http
        ("ray://10.1.2.3:10001", False),
        ("http://raycl-head-svc:8265", False),
        ("http://localhost.example.com:8265", False),
        ("http://127.0.0.1.nip.io:8265", False),  # names are never resolved
        ("https://10.1.2.3:8265", True),
        ("https://ray.example.com", True),
        ("http://127.0.0.1:8265", True),
        ("http://127.8.9.10:8265", True),
        ("http://localhost:8265", True),
        ("http://[::1]:8265", True),
        ("127.0.0.1:6379", True),
        ("auto", True),
    ],
)
def test_the_token_goes_only_over_https_or_to_loopback(offline, address, allowed):
    from raycl.submit import SubmitError, job_api_address

    assert job_api_address(address, insecure=True) == address
    if allowed:
        assert job_api_address(address) == address
    else:
        with pytest.raises(SubmitError, match=r"plain http to .* pass --insecure$"):
            job_api_address(address)


def test_a_ray_address_variable_is_checked_too(offline, monkeypatch):
    """Ray's client prefers RAY_ADDRESS to the address it is given: that is where it goes."""
    from raycl.submit import DEFAULT_ADDRESS, SubmitError, job_api_address

    monkeypatch.setenv("RAY_ADDRESS", PLAIN_REMOTE)
    with pytest.raises(SubmitError, match=f"RAY_ADDRESS {PLAIN_REMOTE}"):
        job_api_address(DEFAULT_ADDRESS)


@pytest.mark.parametrize(
    "action", [["list"], ["status", "raysubmit_1"], ["train", "epochs=1"], ["tune"]]
)
def test_submit_refuses_plain_http_to_a_remote_address_before_connecting(offline, capsys, action):
    from raycl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["submit", "--address", PLAIN_REMOTE, *action])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("raycl: error: refusing to send the auth token")
    assert PLAIN_REMOTE in lines[0] and "--insecure" in lines[0]
    assert "not-a-real-token" not in out + err
    assert offline == []  # no client was built, so nothing was sent


def test_submit_insecure_gets_past_the_refusal(offline, capsys):
    from raycl.cli import main

    with pytest.raises(SystemExit):
        main(["submit", "--address", PLAIN_REMOTE, "--insecure", "list"])
    err = capsys.readouterr().err
    assert "refusing" not in err and "not contacted in tests" in err
    assert offline == [
        {"address": PLAIN_REMOTE, "headers": {"Authorization": "Bearer not-a-real-token-0123"}}
    ]


# --- scaling table -------------------------------------------------------------------------

BYTES_FP32 = 4
PER_ROW_BYTES = 32  # the engine's O(M) state per gathered row (results, weights, sorted ids)


@dataclass(frozen=True)
class Scaling:
    """Per-GPU cost of one data-parallel loss step (forward + backward) on W GPUs."""

    workers: int  # W
    global_batch: int  # B = W × data.batch_size_per_worker items
    embeddings: int  # M = V·B rows of the gathered batch
    rows: int  # R = M / W local anchors
    tile: tuple[int, int]  # the largest similarity tile (rows × columns)
    engine: str  # what loss.impl=auto picks
    loss_bytes: int  # peak loss memory, loss.impl=tiled
    gather_bytes: int  # embeddings received by all-gather (and again by the reduce-scatter)
    flops: int  # GEMM FLOPs of the tiled loss (forward + backward)


def loss_scaling(
    workers: int,
    batch_size: int = 512,
    views: int = 2,
    dim: int = 128,
    block: int | None = None,
) -> Scaling:
    """The cost model of ``raycl.distributed.distributed_loss`` with the tiled engine.

    Rank k computes its R = M/W anchors against the gathered M columns (W = 1: the batch
    against itself, the symmetric path visiting only tiles on and above the diagonal).
    Embeddings are fp32 (``train.py`` casts them before the loss).

    Memory peaks in the backward (``raycl/losses/engine.py``), with one tile's buffers alive
    at a time:

    * the embeddings' state: ẑ and the gradient buffer G of the gathered columns and, W > 1,
      of the local rows, plus the gathered columns themselves (W = 1: the batch is the
      caller's) — 4·d·2M bytes (W = 1) or 4·d·(3M + 2R);
    * one tile: exp(f − c) and either the mirrored coefficient tile (symmetric, off the
      diagonal: 8 bytes per entry) or the two 1-byte masks of a tile whose rows meet its
      columns (6), else 4;
    * one chunk of rows' temporary in the normalisation's backward (4·d per row of a block);
    * per-row vectors (results, weights, the pair structure's sorted ids): about 32 B per
      gathered row.

    Each tile costs one GEMM forward and three backward (recompute S, ∂L/∂S·Z_cols,
    ∂L/∂Sᵀ·Z_rows): 4 × 2·r·c·d FLOPs.
    """
    block = block or default_block_size(torch.device("cuda"))
    global_batch = workers * batch_size
    m = views * global_batch
    rows = m // workers
    symmetric = workers == 1
    me = min(1, workers - 1)  # the rank measured: its rows are columns me·R … (me + 1)·R
    tiles = [
        (min(block, rows - r0), min(block, m - c0), symmetric and c0 != r0, meets)
        for r0 in range(0, rows, block)
        for c0 in range(r0 if symmetric else 0, m, block)
        for meets in [me * rows + r0 < c0 + block and c0 < me * rows + min(r0 + block, rows)]
    ]
    largest = max(r * c * (8 if mirrored else 6 if meets else 4) for r, c, mirrored, meets in tiles)
    embeddings = BYTES_FP32 * dim * (2 * m if symmetric else 3 * m + 2 * rows)
    chunk = BYTES_FP32 * dim * min(block, m)
    loss_bytes = embeddings + largest + chunk + PER_ROW_BYTES * m
    return Scaling(
        workers=workers,
        global_batch=global_batch,
        embeddings=m,
        rows=rows,
        tile=(min(block, rows), min(block, m)),
        engine="tiled" if rows * m > AUTO_TILE_ENTRIES else "materialised",
        loss_bytes=loss_bytes,
        gather_bytes=(workers - 1) * rows * dim * BYTES_FP32,
        flops=sum(4 * 2 * r * c * dim for r, c, _, _ in tiles),
    )


TABLE_WORKERS = (1, 8, 64, 512)


def table_rows() -> list[list[str]]:
    """deploy/README.md's table: d = 128, V = 2, 512 items per GPU, block = CUDA's."""
    rows = []
    for w in TABLE_WORKERS:
        s = loss_scaling(w)
        rows.append(
            [
                f"{w}",
                f"{s.global_batch:,}",
                f"{s.embeddings:,}",
                f"{s.tile[0]:,} × {s.tile[1]:,}",
                s.engine,
                f"{s.loss_bytes / 2**20:,.1f} MiB",
                f"{s.gather_bytes / 2**20:,.1f} MiB",
                f"{s.flops / 1e9:,.1f}",
            ]
        )
    return rows


def readme_table() -> list[list[str]]:
    text = (DEPLOY / "README.md").read_text()
    block = text.split("<!-- scaling-table -->")[1].split("<!-- /scaling-table -->")[0]
    lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
    assert lines[0].startswith("|") and set(lines[1]) <= set("|-: ")
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_readme_scaling_table_matches_the_formulas():
    assert default_block_size(torch.device("cuda")) == 8192
    assert readme_table() == table_rows()


GEMMS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default)


class _LiveMemory(TorchDispatchMode):
    """Bytes of tensor storage allocated inside the mode and still alive (peak kept), and
    the FLOPs of every matrix product."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing is compiled in here: spares importing torch._dynamo (seconds)

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = self.flops = 0

    def _release(self, ptr: int) -> None:
        self.owners[ptr] -= 1
        if self.owners[ptr] == 0:
            del self.owners[ptr]
            self.live -= self.sizes.pop(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in GEMMS:  # mm(a, b); addmm(c, a, b) and addmm_(c, a, b): c + a·b
            a, b = args[-2:]
            (m, k), n = a.shape, b.shape[1]
            self.flops += 2 * m * k * n
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.owners:
                if ptr in inputs:
                    continue  # in place, or a view of a tensor from outside
                self.owners[ptr] = 0
                self.sizes[ptr] = t.untyped_storage().nbytes()
                self.live += self.sizes[ptr]
                self.peak = max(self.peak, self.live)
            self.owners[ptr] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def _measure_rank(workers: int, batch_size: int, dim: int, block: int, views: int = 2):
    """One rank's loss step as ``distributed_loss`` runs it: the local anchors against the
    gathered batch (the structure that ``gather_batch`` builds), forward and backward."""
    loss = build_loss("infonce", temperature=0.1, impl="tiled", block_size=block)
    generator = torch.Generator().manual_seed(0)
    local = [
        flatten_batch(torch.randn(views, batch_size, dim, generator=generator))
        for _ in range(workers)
    ]
    me = min(1, workers - 1)
    parts = [
        (s.ids + k * batch_size, s.index + k * len(s), s.views) for k, (_, s) in enumerate(local)
    ]
    cols = PairStructure(*(torch.cat([p[i] for p in parts]) for i in range(3)))
    z = local[me][0].clone().requires_grad_(True)
    with _LiveMemory() as probe:
        if workers == 1:
            terms = loss.compute(z, local[0][1])
        else:
            gathered = torch.cat([z if k == me else zk for k, (zk, _) in enumerate(local)])
            terms = loss.compute(z, PairStructure(*parts[me]), gathered, cols)
            del gathered
        terms.total.backward()
    return probe.peak, probe.flops


@pytest.mark.parametrize(
    ("workers", "batch_size", "dim", "block"),
    [
        (1, 256, 4, 512),  # one symmetric tile
        (4, 128, 1, 256),  # tiles dominate: 4 column blocks
        (4, 16, 1024, 32),  # embeddings dominate: the backward of F.normalize
    ],
)
def test_memory_model_matches_the_tiled_engine(workers, batch_size, dim, block):
    peak, flops = _measure_rank(workers, batch_size, dim, block)
    model = loss_scaling(workers, batch_size=batch_size, dim=dim, block=block)
    assert flops == model.flops
    assert 0.97 <= peak / model.loss_bytes <= 1.06, (peak, model.loss_bytes)
