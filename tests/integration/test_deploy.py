"""The cluster recipes in deploy/: manifests that validate, a container recipe that lints (and builds where
asked), and the container entrypoint and Slurm job wrapper run as plain scripts against the demo warehouse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nccidfs.demo.warehouse import DemoObject
from tests.mounting import PREFIX, MountedDaemon, daemon_env, in_mount_table, seed_demo_bucket

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
WRAPPER = DEPLOY / "slurm" / "nccidfs-job-wrapper.sh"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
TOOLS = Path(sys.executable).parent  # hadolint, shellcheck and kubernetes-validate come with the test extra
# The oldest and newest Kubernetes releases whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")


KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("base", "overlays/irsa", "overlays/static-keys")
# What the daemon's memory must cover, from the README's figures: about 470 bytes per inode it holds (files
# up to --max-inodes, and the warehouse's directories, which only the kernel's reclaim forgets), about
# 1 KiB per listing entry, the views' decode budget and made bytes, a part's body in memory for every GET
# thread (reads, read-ahead and series prefetch), and the interpreter with its libraries.
BYTES_PER_INODE, WAREHOUSE_DIRECTORIES, BYTES_PER_LISTING_ENTRY = 470, 300_000, 1024
BASELINE = 150 * 1024**2


def memory_ceiling() -> int:
    from nccidfs.config import MountConfig, ReadConfig
    from nccidfs.views.generated import DECODE_BUDGET, MADE_BYTES

    mount = MountConfig.__dataclass_fields__
    inodes = mount["max_inodes"].default + WAREHOUSE_DIRECTORIES
    listings = mount["max_listing_entries"].default
    read = {name: field.default for name, field in ReadConfig.__dataclass_fields__.items()}
    gets = (2 * read["fetch_threads"] + read["prefetch_threads"]) * read["part_size"]  # type: ignore[operator]
    return (BASELINE + BYTES_PER_INODE * inodes + BYTES_PER_LISTING_ENTRY * listings  # type: ignore[operator]
            + DECODE_BUDGET + MADE_BYTES + gets)


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY`` for the features deploy/ uses: resources (files and other
    kustomizations), images (newName, newTag) and JSON 6902 patches (add, replace) aimed by kind and name.
    Anything else in a kustomization fails the test rather than being ignored."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images", "patches"}, kustomization
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        documents += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        targets = [d for d in documents if d["kind"] == patch["target"]["kind"]
                   and d["metadata"]["name"] == patch["target"]["name"]]
        assert len(targets) == 1, patch
        for operation in yaml.safe_load((directory / patch["path"]).read_text()):
            apply_json_patch(targets[0], operation)
    for image in kustomization.get("images", []):
        for document in documents:
            for container in pod_containers(document):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return documents


def apply_json_patch(document: dict[str, Any], operation: dict[str, Any]) -> None:
    assert operation["op"] in ("add", "replace"), operation
    *parents, last = operation["path"].strip("/").split("/")
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        if last == "-":
            node.append(operation["value"])
        else:
            node.insert(int(last), operation["value"])
    else:
        assert operation["op"] == "add" or last in node, operation
        node[last] = operation["value"]


def pod_containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def manifests(overlay: str = "overlays/static-keys") -> list[dict[str, Any]]:
    """The rendered overlay and the example training Job."""
    job = [d for d in yaml.safe_load_all((KUSTOMIZE / "training-job.yaml").read_text()) if d]
    return render(KUSTOMIZE / overlay) + job


def pod_spec(kind: str, overlay: str = "overlays/static-keys") -> dict[str, Any]:
    (resource,) = [doc for doc in manifests(overlay) if doc["kind"] == kind]
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def host_paths(spec: dict[str, Any]) -> dict[str, str]:
    return {volume["name"]: volume["hostPath"]["path"] for volume in spec["volumes"] if "hostPath" in volume}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas_offline(version: str, overlay: str) -> None:
    import kubernetes_validate

    documents = manifests(overlay)
    assert {doc["kind"] for doc in documents} >= {"Namespace", "ServiceAccount", "DaemonSet", "Job"}
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown or ill-typed field


def test_each_overlay_sets_the_image_and_its_own_credentials() -> None:
    images = {overlay: {c["image"] for c in pod_containers(next(d for d in render(KUSTOMIZE / overlay)
                                                                 if d["kind"] == "DaemonSet"))}
              for overlay in OVERLAYS}
    assert images["base"] == {"nccidfs:0.1.0"}
    assert images["overlays/irsa"] == {"123456789012.dkr.ecr.eu-west-2.amazonaws.com/nccidfs:0.1.0"}
    irsa = {d["kind"]: d for d in render(KUSTOMIZE / "overlays/irsa")}
    assert irsa["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for overlay in ("base", "overlays/irsa"):
        assert "AWS_SECRET_ACCESS_KEY" not in str(pod_spec("DaemonSet", overlay)) and "Secret" not in {
            d["kind"] for d in render(KUSTOMIZE / overlay)}
    (container,) = pod_spec("DaemonSet")["containers"]
    assert {e["name"] for e in container["env"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_daemonset_is_node_critical_scraped_and_sized_for_a_walk_of_the_warehouse() -> None:
    from nccidfs.config import parse_size

    spec = pod_spec("DaemonSet", "base")
    (daemonset,) = [d for d in render(KUSTOMIZE / "base") if d["kind"] == "DaemonSet"]
    (container,) = spec["containers"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "nccidfs"
    limit = parse_size(container["resources"]["limits"]["memory"].replace("i", ""))
    assert memory_ceiling() <= limit <= 2 * memory_ceiling()
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    port = int(annotations["prometheus.io/port"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert f"--metrics-addr 0.0.0.0:{port}" in env["NCCIDFS_OPTIONS"]
    assert {"name": "metrics", "containerPort": port} in container["ports"]


def test_the_daemonset_shares_its_mount_with_the_node_and_the_job_reads_it() -> None:
    """What the schema cannot check: the API server refuses Bidirectional propagation unless privileged,
    and the training pod sees the daemon's mount only through the same host path with HostToContainer."""
    daemon, job = pod_spec("DaemonSet"), pod_spec("Job")
    (container,) = daemon["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    shared = [m for m in container["volumeMounts"] if m.get("mountPropagation") == "Bidirectional"]
    assert [m["mountPath"] for m in shared] == [env["NCCIDFS_MOUNTPOINT"]]
    assert container["securityContext"]["privileged"] is True
    assert "nccidfs status" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert "fusermount3 -u" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert container["resources"]["limits"]["memory"]
    warehouse_path = host_paths(daemon)[shared[0]["name"]]
    for pod in job["initContainers"] + job["containers"]:
        (reader,) = [m for m in pod["volumeMounts"] if host_paths(job).get(m["name"]) == warehouse_path]
        assert reader["mountPropagation"] == "HostToContainer" and reader["readOnly"] is True


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(name, path=str(TOOLS)) or shutil.which(name)
    if tool is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_the_containerfile_passes_hadolint() -> None:
    result = run_tool("hadolint", str(DEPLOY / "Containerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scripts_pass_shellcheck() -> None:
    scripts = [str(p) for p in (ENTRYPOINT, DEPLOY / "nccidfs-common.sh", *DEPLOY.glob("slurm/*.s*"))]
    result = run_tool("shellcheck", "-x", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def container_engine() -> str | None:
    """docker or podman, if one answers; None if none does."""
    for engine in ("docker", "podman"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True, timeout=30).returncode == 0:
            return engine
    return None


@pytest.mark.skipif(os.environ.get("NCCIDFS_TEST_CONTAINER") != "1",
                    reason="set NCCIDFS_TEST_CONTAINER=1 to build the image (it pulls debian:12-slim and PyPI)")
def test_the_image_builds_and_runs_nccidfs() -> None:
    engine = container_engine()
    if engine is None:
        pytest.skip("no container engine answers (docker info / podman info)")
    tag = "nccidfs:test"
    build = subprocess.run([engine, "build", "-f", str(DEPLOY / "Containerfile"), "-t", tag, str(REPO)],
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    version = subprocess.run([engine, "run", "--rm", "--entrypoint", "nccidfs", tag, "--version"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "0." in version.stdout + version.stderr, version.stderr


# -- the scripts, run as they are against the demo warehouse ------------------------------------------------


@pytest.fixture(scope="module")
def demo_bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, "nccid-deploy-scripts", warehouse)


@pytest.fixture
def script_env(tmp_path: Path, s3_endpoint: str, demo_bucket: str) -> dict[str, str]:
    """What a node would set: the NCCIDFS_* settings, pointed at the demo server and at per-test directories."""
    return dict(daemon_env(), NCCIDFS_CMD=f"{sys.executable} -m nccidfs", NCCIDFS_BUCKET=demo_bucket,
                NCCIDFS_CACHE_SIZE="1G", NCCIDFS_OPTIONS=f"--endpoint-url {s3_endpoint} --no-prefetch",
                NCCIDFS_STATE_DIR=str(tmp_path / "state"), NCCIDFS_CACHE_DIR=str(tmp_path / "cache"))


def wrapper(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WRAPPER), "sh", "-c", command], capture_output=True, text=True, env=env, timeout=120)


def dcm_paths(warehouse: list[DemoObject]) -> list[str]:
    return [o.key[len(PREFIX):] for o in warehouse if o.key.endswith(".dcm")]


@pytest.mark.fuse
def test_the_job_wrapper_mounts_runs_the_command_and_unmounts(script_env: dict[str, str], tmp_path: Path,
                                                               warehouse: list[DemoObject]) -> None:
    image = dcm_paths(warehouse)[0]
    command = (f'find "$NCCIDFS_MOUNTPOINT" -type f | wc -l; cat "$NCCIDFS_MOUNTPOINT/{image}" > /dev/null; '
               f'dcmdump +P PatientID "$NCCIDFS_MOUNTPOINT/{image}"')
    result = wrapper(script_env, command)
    assert result.returncode == 0, result.stderr
    count, patient = result.stdout.splitlines()
    assert int(count) == len(warehouse)
    assert f"[{image.split('/')[1]}]" in patient
    assert not in_mount_table(tmp_path / "state" / "mnt")
    assert not (tmp_path / "state" / "mounted").exists()

    # The next job on the node finds the bytes in the node's cache: reading the image again costs no GET.
    again = wrapper(script_env, f'cat "$NCCIDFS_MOUNTPOINT/{image}" > /dev/null; '
                                'cat "$NCCIDFS_MOUNTPOINT/.nccidfs/status.json"')
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["s3"]["requests"].get("GetObject", 0) == 0
    assert not in_mount_table(tmp_path / "state" / "mnt")


@pytest.mark.fuse
def test_the_job_wrapper_exits_with_the_commands_status_and_still_unmounts(script_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    result = wrapper(script_env, 'test -d "$NCCIDFS_MOUNTPOINT/xray" && exit 3')
    assert result.returncode == 3, result.stderr
    assert not in_mount_table(tmp_path / "state" / "mnt")


@pytest.mark.fuse
def test_the_job_wrapper_unmounts_when_the_job_is_cancelled(script_env: dict[str, str], tmp_path: Path) -> None:
    """scancel and the time limit send SIGTERM to every process of the step (here: the wrapper's group)."""
    job = subprocess.Popen([str(WRAPPER), "sleep", "60"], env=script_env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "state" / "mounted").exists():
        assert job.poll() is None and time.monotonic() < deadline, "the wrapper did not mount"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(timeout=30) == 143
    assert not in_mount_table(tmp_path / "state" / "mnt")


@pytest.mark.fuse
def test_a_failed_mount_fails_the_job_with_nccidfs_status_and_leaves_nothing(script_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    started = time.monotonic()
    result = wrapper(dict(script_env, NCCIDFS_BUCKET="no-such-bucket"), "echo ran")
    assert result.returncode != 0 and "ran" not in result.stdout
    assert "no-such-bucket" in result.stderr
    assert time.monotonic() - started < 20  # no wait on a lock the wrapper itself holds
    assert not (tmp_path / "state" / "mounted").exists()


@pytest.mark.fuse
def test_a_cache_held_by_another_daemon_gives_the_job_a_cache_of_its_own(script_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    import fcntl

    with open(tmp_path / "cache.lock", "w") as lock:  # as another job's daemon would hold it
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = wrapper(script_env, 'test -d "$NCCIDFS_MOUNTPOINT/xray" && echo mounted')
    assert result.returncode == 0 and result.stdout.strip() == "mounted", result.stderr
    assert "using a cache of this job's own" in result.stderr
    assert not (tmp_path / "state" / "cache").exists()
    assert not in_mount_table(tmp_path / "state" / "mnt")


@pytest.fixture
def waiting_job(script_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A wrapped command that holds the mount until the test creates tmp_path/go."""
    # Written under another name and renamed, so the test never reads the file half written.
    command = f'cat "$NCCIDFS_MOUNTPOINT/.nccidfs/status.json" > {tmp_path}/first.tmp; ' \
              f'mv {tmp_path}/first.tmp {tmp_path}/first.json; ' \
              f'while [ ! -e {tmp_path}/go ]; do sleep 0.05; done'
    job = subprocess.Popen([str(WRAPPER), "sh", "-c", command], env=script_env, text=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "first.json").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    yield job
    (tmp_path / "go").touch()
    job.wait(timeout=60)


@pytest.mark.fuse
def test_concurrent_jobs_on_a_node_share_one_mount_and_the_last_one_unmounts(
        script_env: dict[str, str], tmp_path: Path, waiting_job: subprocess.Popen[str]) -> None:
    first_pid = json.loads((tmp_path / "first.json").read_text())["pid"]
    second = wrapper(script_env, 'cat "$NCCIDFS_MOUNTPOINT/.nccidfs/status.json"')
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["pid"] == first_pid
    assert in_mount_table(tmp_path / "state" / "mnt")  # the first job still runs
    (tmp_path / "go").touch()
    assert waiting_job.wait(timeout=60) == 0, waiting_job.stderr.read() if waiting_job.stderr else ""
    assert not in_mount_table(tmp_path / "state" / "mnt")


@pytest.mark.fuse
def test_the_job_wrapper_uses_a_node_mount_as_it_is(script_env: dict[str, str], tmp_path: Path, s3_endpoint: str,
                                                    demo_bucket: str) -> None:
    with MountedDaemon(tmp_path / "node", s3_endpoint, tmp_path / "node-cache", tmp_path / "node.log",
                       bucket=demo_bucket) as node:
        result = wrapper(dict(script_env, NCCIDFS_MOUNTPOINT=str(node.mountpoint)), 'ls "$NCCIDFS_MOUNTPOINT"')
        assert result.returncode == 0, result.stderr
        assert "xray" in result.stdout.split()
        assert in_mount_table(node.mountpoint)
    assert not (tmp_path / "cache").exists()


def wait_for(predicate: Any, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert process.poll() is None, f"the entrypoint exited {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within 30 s"
        time.sleep(0.05)


def status_command(env: dict[str, str], mountpoint: Path) -> subprocess.CompletedProcess[str]:
    """The DaemonSet's readiness probe."""
    return subprocess.run([sys.executable, "-m", "nccidfs", "status", str(mountpoint)], capture_output=True,
                          text=True, env=env, timeout=30)


def start_entrypoint(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen([str(ENTRYPOINT)], env=env, stdout=log, stderr=log)


@pytest.mark.fuse
def test_the_container_entrypoint_mounts_from_env_clears_a_dead_mount_and_unmounts_on_sigterm(
        script_env: dict[str, str], tmp_path: Path, demo_bucket: str) -> None:
    mountpoint, log = tmp_path / "mnt", tmp_path / "entrypoint.log"
    env = dict(script_env, NCCIDFS_MOUNTPOINT=str(mountpoint))
    entrypoint = start_entrypoint(env, log)
    try:
        wait_for(lambda: status_command(env, mountpoint).returncode == 0, "ready mount", entrypoint)
        status = json.loads(status_command(env, mountpoint).stdout)
        assert (status["bucket"], status["mountpoint"]) == (demo_bucket, str(mountpoint))
        entrypoint.kill()  # as an out-of-memory kill would: the dead mount stays behind
        entrypoint.wait()
        assert in_mount_table(mountpoint)

        entrypoint = start_entrypoint(env, log)
        wait_for(lambda: status_command(env, mountpoint).returncode == 0, "ready mount after the kill", entrypoint)
        assert (mountpoint / "xray").is_dir()
        entrypoint.send_signal(signal.SIGTERM)
        assert entrypoint.wait(timeout=30) == 0
        assert not in_mount_table(mountpoint)
        assert "clearing a mount left at" in log.read_text()
    finally:
        if entrypoint.poll() is None:
            entrypoint.kill()
            entrypoint.wait()
        if in_mount_table(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def test_the_slurm_epilog_empties_the_least_recently_used_caches_past_the_node_budget(tmp_path: Path) -> None:
    from nccidfs.cachedir import prepare

    def cache(name: str, size: int, age: float) -> Path:
        directory = prepare(tmp_path / f"nccidfs-cache-{name}")
        (directory / "objects" / "ab").mkdir(parents=True)
        (directory / "objects" / "ab" / "object.map").write_bytes(b"\0" * size)
        (directory / "lock").touch()
        os.utime(directory / "lock", (time.time() - age, time.time() - age))
        return directory

    held, old, recent = cache("held", 1 << 20, 3000), cache("old", 1 << 20, 2000), cache("recent", 400_000, 10)
    (tmp_path / "notes").mkdir()  # matches no cache pattern, never touched
    env = dict(os.environ, NCCIDFS_NODE_CACHE_BUDGET="1.5M", NCCIDFS_CACHE_GLOB=f"{tmp_path}/nccidfs-cache-*",
               NCCIDFS_CMD=f"{sys.executable} -m nccidfs")
    # A running daemon holds its cache's lock, as flock(1) does here.
    with subprocess.Popen(["flock", str(held / "lock"), "sleep", "60"]) as holder:
        time.sleep(0.5)
        result = subprocess.run([str(DEPLOY / "slurm" / "nccidfs-epilog.sh")], env=env, capture_output=True,
                                text=True, timeout=60)
        holder.kill()
    assert result.returncode == 0, result.stderr
    assert (held / "objects").is_dir(), "a cache in use was emptied"
    assert not (old / "objects").exists(), "the least recently used cache was kept past the budget"
    assert (recent / "objects").is_dir(), "more was emptied than the budget needs"
