"""Static checks of the rendered Kubernetes manifests (no cluster needed)."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Rendered

# Oldest Kubernetes the manifests support, and the newest kubernetes-validate ships schemas
# for (pinned in requirements/test.txt). Strict: an unknown field is an error.
K8S_VERSIONS = ("1.30.0", "1.37.0")

APPS = {"rest", "worker", "logs"}
NAME = "app.kubernetes.io/name"
PART_OF = "app.kubernetes.io/part-of"

# Containers allowed a writable root filesystem, with the reason. None today: every program
# writes only to its volumes and /tmp.
WRITABLE_ROOT_ALLOWED: dict[str, str] = {}


# --- helpers -----------------------------------------------------------------------------


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every pod spec inside an object, whatever its kind (anything with `containers`)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield obj
        for value in obj.values():
            yield from pod_specs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from pod_specs(item)


def workloads(rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects if any(pod_specs(o.get("spec", {})))]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_security_violations(obj: dict[str, Any]) -> list[str]:
    """What in an object's pod specs breaks PSS "restricted" or our probe/resource rules."""
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    problems: list[str] = []
    for spec in pod_specs(obj.get("spec", {})):
        pod_sc = spec.get("securityContext") or {}
        if pod_sc.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
        if pod_sc.get("runAsUser") == 0:
            problems.append(f"{where}: pod runs as uid 0")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag} is set")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        if spec.get("enableServiceLinks") is not False:
            problems.append(f"{where}: enableServiceLinks is not false (injects *_PORT=tcp://<ip>)")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for volume in volumes.values():
            if "hostPath" in volume:
                problems.append(f"{where}: hostPath volume {volume['name']}")
        pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
        containers = [(c, True) for c in spec["containers"]]
        containers += [(c, False) for c in spec.get("initContainers") or []]
        for container, long_running in containers:
            name = f"{where} container {container['name']}"
            sc = container.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{name}: capabilities do not drop ALL")
            if caps.get("add"):
                problems.append(f"{name}: adds capabilities {caps['add']}")
            if sc.get("privileged"):
                problems.append(f"{name}: privileged")
            if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
                problems.append(f"{name}: may run as root")
            if ((sc.get("seccompProfile") or {}).get("type") or pod_seccomp) != "RuntimeDefault":
                problems.append(f"{name}: seccompProfile is not RuntimeDefault")
            if (sc.get("readOnlyRootFilesystem") is not True
                    and container["name"] not in WRITABLE_ROOT_ALLOWED):
                problems.append(f"{name}: readOnlyRootFilesystem is not true")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
                problems.append(f"{name}: no emptyDir at /tmp (the root filesystem is read-only)")
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(section) or {}):
                        problems.append(f"{name}: no {resource} {section[:-1]}")
            image = container.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{name}: image {image!r} is not pinned to a tag")
            for port in container.get("ports") or []:
                if "hostPort" in port:
                    problems.append(f"{name}: hostPort {port['hostPort']}")
            if long_running:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        problems.append(f"{name}: no {probe}")
    return problems


IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# Fields that only ever hold addresses: none may be set in our manifests.
ADDRESS_FIELDS = {
    "clusterIP", "clusterIPs", "externalIPs", "loadBalancerIP", "loadBalancerSourceRanges",
    "ipBlock", "hostAliases", "podIP", "podIPs", "hostIP", "nodeName",
}


def hard_coded_addresses(node: Any, path: str = "", parent: Any = None) -> list[str]:
    """Every IP address in a parsed object, except a bind-all HOST=0.0.0.0 env entry."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ADDRESS_FIELDS:
                found.append(f"{path}.{key} is set")
            found += hard_coded_addresses(value, f"{path}.{key}", node)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += hard_coded_addresses(item, f"{path}[{index}]", node)
    elif isinstance(node, str):
        for match in IPV4.findall(node):
            try:
                ipaddress.ip_address(match)
            except ValueError:
                continue
            bind_all = (
                match == "0.0.0.0" and isinstance(parent, dict) and parent.get("name") == "HOST"
            )
            if not bind_all:
                found.append(f"{path}: {match}")
    return found


def effective_env(container: dict[str, Any], rendered: Rendered) -> dict[str, Any]:
    """A container's environment: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: only configMapRef envFrom is expected"
        env.update(rendered.get("ConfigMap", ref["name"])["data"])
    for var in container.get("env") or []:
        env[var["name"]] = var["value"] if "value" in var else var["valueFrom"]
    return env


def app_container(rendered: Rendered, name: str) -> dict[str, Any]:
    deployment = rendered.get("Deployment", name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def ingress_rules_for(rendered: Rendered, labels: dict[str, str]) -> tuple[int, list]:
    """(number of Ingress-type policies selecting these pod labels, their ingress rules)."""
    policies = [
        p for p in rendered.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], labels)
    ]
    return len(policies), [rule for p in policies for rule in p["spec"].get("ingress") or []]


def component_labels(rendered_all: dict[str, Rendered]) -> dict[str, dict[str, str]]:
    """Pod labels of every component, from the top-level rendering (which has them all)."""
    return {pod_labels(w)[NAME]: pod_labels(w) for w in workloads(rendered_all["base"])}


# --- checks of the checkers: each must catch what it is for -----------------------------


def test_security_walker_reports_a_pod_that_breaks_every_rule() -> None:
    bad = {
        "kind": "Job",
        "metadata": {"name": "bad"},
        "spec": {"template": {"spec": {
            "hostNetwork": True,
            "containers": [{"name": "c", "image": "busybox", "ports": [{"hostPort": 80}]}],
        }}},
    }
    problems = "\n".join(pod_security_violations(bad))
    for expected in (
        "runAsNonRoot", "hostNetwork", "automountServiceAccountToken", "enableServiceLinks",
        "allowPrivilegeEscalation", "drop ALL", "seccompProfile", "readOnlyRootFilesystem",
        "/tmp", "cpu request", "memory limit", "not pinned", "hostPort", "livenessProbe",
        "readinessProbe",
    ):
        assert expected in problems


def test_address_finder_reports_ips_but_not_the_bind_all_host() -> None:
    obj = {
        "env": [{"name": "HOST", "value": "0.0.0.0"}, {"name": "DB", "value": "10.0.3.7"}],
        "spec": {"clusterIP": "None"},
        "image": "redis:7.4.3-alpine",
        "conf": "bind 192.168.1.2:6379",
    }
    found = hard_coded_addresses(obj)
    assert any("10.0.3.7" in f for f in found)
    assert any("192.168.1.2" in f for f in found)
    assert any("clusterIP" in f for f in found)
    assert not any("0.0.0.0" in f for f in found)


def test_strict_schema_validation_rejects_an_unknown_field() -> None:
    import kubernetes_validate

    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "selectr": {"a": "b"}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSIONS[0], strict=True)


# --- rendering and schemas ---------------------------------------------------------------


def test_every_kustomization_renders_objects_with_names(rendered: Rendered) -> None:
    assert rendered.objects, f"{rendered.name} rendered nothing"
    for obj in rendered.objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_strictly_against_kubernetes_schemas(
    rendered: Rendered, version: str
) -> None:
    import kubernetes_validate

    errors = []
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
    assert not errors, f"{rendered.name} against Kubernetes {version}:\n" + "\n".join(errors)


def test_every_object_is_labelled_part_of_facerec(rendered: Rendered) -> None:
    for obj in rendered.objects:
        assert obj["metadata"].get("labels", {}).get(PART_OF) == "facerec", obj["metadata"]["name"]
    for workload in workloads(rendered):
        assert pod_labels(workload).get(PART_OF) == "facerec"


# --- pods --------------------------------------------------------------------------------


def test_every_pod_is_pss_restricted_with_probes_requests_and_limits(rendered: Rendered) -> None:
    assert workloads(rendered), f"{rendered.name} has no workloads"
    problems = [p for obj in rendered.objects for p in pod_security_violations(obj)]
    assert not problems, "\n".join(problems)


def test_no_ip_address_is_hard_coded_anywhere(rendered: Rendered) -> None:
    problems = [p for obj in rendered.objects for p in hard_coded_addresses(obj, obj["kind"])]
    assert not problems, "\n".join(problems)


def test_every_namespace_enforces_pod_security_restricted(rendered: Rendered) -> None:
    for namespace in rendered.of_kind("Namespace"):
        labels = namespace["metadata"]["labels"]
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"


def test_overlays_with_a_namespace_put_everything_in_it(rendered: Rendered) -> None:
    namespaces = [n["metadata"]["name"] for n in rendered.of_kind("Namespace")]
    if rendered.name == "base":
        assert not namespaces, "kubectl apply -k . must deploy into the current namespace"
        return
    assert len(namespaces) == 1
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespaces[0], obj["metadata"]["name"]


# --- wiring: services, secrets, settings -------------------------------------------------


def test_every_service_selects_one_workload_and_targets_its_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        matched = [w for w in workloads(rendered) if selects(
            {"matchLabels": service["spec"]["selector"]}, pod_labels(w))]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)}"
        ports = {
            p.get("name"): p["containerPort"]
            for c in matched[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports") or []
        }
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), (service["metadata"]["name"],
                                                                 target)


def test_apps_find_redis_and_rabbitmq_by_service_name(rendered_all: dict[str, Rendered]) -> None:
    for name in ("base", "dev", "cloud"):
        rendered = rendered_all[name]
        redis = rendered.get("Service", "redis")
        rabbitmq = rendered.get("Service", "rabbitmq")
        for app in APPS:
            env = effective_env(app_container(rendered, app), rendered)
            assert env["REDIS_HOST"] == redis["metadata"]["name"]
            assert int(env["REDIS_PORT"]) in [p["port"] for p in redis["spec"]["ports"]]
            assert env["RABBITMQ_HOST"] == rabbitmq["metadata"]["name"]
            assert int(env["RABBITMQ_PORT"]) in [p["port"] for p in rabbitmq["spec"]["ports"]]
            for var in ("RABBITMQ_VHOST", "MATCH_TOLERANCE", "DETECTION_MODEL",
                        "DETECT_MAX_SIDE", "MAX_UPLOAD_BYTES", "LOG_LEVEL"):
                assert var in env, f"{name}/{app}: {var} is not set"
            assert env["DETECTION_MODEL"] in ("hog", "cnn")
            for var in ("REDIS_PASSWORD", "RABBITMQ_USER", "RABBITMQ_PASSWORD"):
                assert "secretKeyRef" in env[var], f"{name}/{app}: {var} is not from a Secret"


def test_every_setting_in_the_manifests_is_one_the_app_reads_and_accepts(
    rendered_all: dict[str, Rendered],
) -> None:
    from dataclasses import fields

    from facerec.settings import Settings

    known = {f.name.upper() for f in fields(Settings)}
    for name in ("base", "dev", "cloud"):
        rendered = rendered_all[name]
        for app in APPS:
            env = effective_env(app_container(rendered, app), rendered)
            assert set(env) <= known, f"{name}/{app}: unknown {sorted(set(env) - known)}"
            plain = {k: v for k, v in env.items() if isinstance(v, str)}
            Settings.from_env(plain)  # parses and validates, or raises


def test_no_password_is_written_into_a_manifest_outside_a_secret(rendered: Rendered) -> None:
    secretish = re.compile(r"PASS|SECRET|TOKEN|AUTH", re.IGNORECASE)
    for config in rendered.of_kind("ConfigMap"):
        for key in config.get("data", {}):
            assert not secretish.search(key), f"ConfigMap {config['metadata']['name']}: {key}"
    for workload in workloads(rendered):
        for spec in pod_specs(workload["spec"]):
            for container in spec["containers"]:
                for var in container.get("env") or []:
                    if secretish.search(var["name"]):
                        assert "secretKeyRef" in var.get("valueFrom", {}), var["name"]


def test_every_secret_reference_resolves_where_secrets_are_shipped(rendered: Rendered) -> None:
    refs = {
        (ref["name"], ref["key"], ref.get("optional", False))
        for workload in workloads(rendered)
        for spec in pod_specs(workload["spec"])
        for container in spec["containers"]
        for var in container.get("env") or []
        for ref in [var.get("valueFrom", {}).get("secretKeyRef")] if ref
    }
    assert {(name, key) for name, key, _ in refs} <= {
        ("facerec-redis", "password"),
        ("facerec-rabbitmq", "username"),
        ("facerec-rabbitmq", "password"),
        ("facerec-api", "token"),
        ("facerec-api", "keys"),
    }, "README.md (Deploying on Kubernetes) lists the Secrets to create: keep it in step"
    if rendered.name == "cloud":
        assert not rendered.of_kind("Secret"), "the cloud overlay must not ship credentials"
        assert not [r for r in refs if r[2]], "in the cloud every credential is required"
        return
    for name, key, optional in refs:
        if optional:
            continue
        secret = rendered.get("Secret", name)
        assert key in secret["data"], (name, key)
        assert "example" in secret["metadata"]["annotations"]["facerec/notice"]


# --- network exposure --------------------------------------------------------------------


def test_every_pod_is_isolated_by_a_network_policy(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        count, _ = ingress_rules_for(rendered, pod_labels(workload))
        assert count >= 1, f"{workload['metadata']['name']} accepts traffic from anyone"


@pytest.mark.parametrize(("target", "port"), [("redis", 6379), ("rabbitmq", 5672)])
def test_redis_and_rabbitmq_accept_only_rest_worker_and_logs(
    rendered_all: dict[str, Rendered], target: str, port: int
) -> None:
    components = component_labels(rendered_all)
    stranger = {NAME: "rest"}  # another application's "rest" in the same namespace
    for rendered in rendered_all.values():
        _, rules = ingress_rules_for(rendered, components[target])
        assert rules
        allowed = set()
        for rule in rules:
            assert [p["port"] for p in rule.get("ports") or []] == [port], rule
            peers = rule.get("from")
            assert peers, f"{rendered.name}: {target} has a rule open to every source"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"{target} admits {sorted(peer)}"
                assert not selects(peer["podSelector"], stranger)
                allowed |= {n for n, labels in components.items()
                            if selects(peer["podSelector"], labels)}
        assert allowed == APPS, f"{rendered.name}: {target} admits {sorted(allowed)}"


def test_only_rest_is_exposed(rendered: Rendered, rendered_all: dict[str, Rendered]) -> None:
    components = component_labels(rendered_all)
    for name, labels in components.items():
        _, rules = ingress_rules_for(rendered, labels)
        open_rules = [r for r in rules if not r.get("from")]
        if name == "rest":
            if "rest" in {pod_labels(w)[NAME] for w in workloads(rendered)}:
                assert open_rules, "rest must accept traffic from the ingress controller"
                for rule in open_rules:
                    assert [p["port"] for p in rule["ports"]] == [5000]
        else:
            assert not open_rules, f"{rendered.name}: {name} is open to everyone"
    for service in rendered.of_kind("Service"):
        if service["spec"].get("type", "ClusterIP") != "ClusterIP":
            assert service["metadata"]["name"] == "rest", service["metadata"]["name"]
    for ingress in rendered.of_kind("Ingress"):
        spec = ingress["spec"]
        backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
        backends += [path["backend"] for rule in spec.get("rules") or []
                     for path in rule.get("http", {}).get("paths") or []]
        assert backends and {b["service"]["name"] for b in backends} == {"rest"}


# --- components --------------------------------------------------------------------------


def test_redis_persists_every_acknowledged_write_with_aof(rendered: Rendered) -> None:
    deployment = rendered.get("Deployment", "redis")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    config_mount = next(m for m in container["volumeMounts"] if args[0].startswith(m["mountPath"]))
    config_volume = next(v for v in spec["volumes"] if v["name"] == config_mount["name"])
    config = rendered.get("ConfigMap", config_volume["configMap"]["name"])
    conf = dict(
        line.split(None, 1) for line in config["data"][args[0].rsplit("/", 1)[1]].splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    data_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == conf["dir"])
    data_volume = next(v for v in spec["volumes"] if v["name"] == data_mount["name"])
    rendered.get("PersistentVolumeClaim", data_volume["persistentVolumeClaim"]["claimName"])
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one writer on an RWO volume
    assert args[1:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    password = next(v for v in container["env"] if v["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "facerec-redis"


def test_rabbitmq_is_a_persistent_statefulset_with_credentials_and_readiness(
    rendered: Rendered,
) -> None:
    statefulset = rendered.get("StatefulSet", "rabbitmq")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/lib/rabbitmq"} in container[
        "volumeMounts"]
    assert container["image"].startswith("rabbitmq:3.")
    service = rendered.get("Service", "rabbitmq")
    assert {p["port"] for p in service["spec"]["ports"]} == {5672, 15672}
    assert "readinessProbe" in container
    env = {v["name"]: v.get("valueFrom", {}) for v in container["env"]}
    for var in ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"):
        assert env[var]["secretKeyRef"]["name"] == "facerec-rabbitmq"


def test_rest_is_gunicorn_behind_health_and_readiness_probes(rendered: Rendered) -> None:
    if rendered.name == "dev-infra":
        return
    container = app_container(rendered, "rest")
    assert container["command"] == ["python", "-m", "rest"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = effective_env(container, rendered)
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "5000"
    assert {"WEB_CONCURRENCY", "WEB_THREADS"} <= set(env)
    assert "secretKeyRef" in env["API_TOKEN"]
    replicas = rendered.get("Deployment", "rest")["spec"]["replicas"]
    assert replicas == (1 if rendered.name == "dev" else 2)


def test_worker_scales_on_cpu_and_outlives_its_longest_image(rendered: Rendered) -> None:
    if rendered.name == "dev-infra":
        return
    deployment = rendered.get("Deployment", "worker")
    # The HPA owns the replica count; a count here would be re-applied over its decisions.
    assert "replicas" not in deployment["spec"]
    hpa = rendered.get("HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    assert hpa["spec"]["minReplicas"] == (1 if rendered.name == "dev" else 2)
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 90  # one image takes under 60 s
    container = app_container(rendered, "worker")
    assert container["command"] == ["python", "-m", "worker"]
    check = ["python", "-m", "worker", "--check"]
    assert container["livenessProbe"]["exec"]["command"] == check
    assert container["startupProbe"]["exec"]["command"] == check
    # Liveness tolerates one heartbeat period of 60 s during a long image.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_logs_runs_the_listener_from_the_rest_image(rendered: Rendered) -> None:
    if rendered.name == "dev-infra":
        return
    logs = app_container(rendered, "logs")
    assert logs["command"] == ["python", "-m", "logs"]
    assert logs["image"] == app_container(rendered, "rest")["image"]


def test_logs_probe_passes_only_while_an_amqp_connection_is_established(
    rendered_all: dict[str, Rendered],
) -> None:
    probe = app_container(rendered_all["base"], "logs")["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["python", "-c"]

    def run_probe(port: int) -> int:
        env = {"RABBITMQ_PORT": str(port), "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-c", probe[2]], env=env, timeout=10).returncode

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert run_probe(port) != 0  # listening, nobody connected
        with socket.create_connection(("127.0.0.1", port)) as client:
            peer, _ = server.accept()
            with peer:
                assert run_probe(port) == 0
            del client


# --- overlays ----------------------------------------------------------------------------


def test_dev_runs_one_replica_of_local_images_on_a_node_port(
    rendered_all: dict[str, Rendered],
) -> None:
    dev = rendered_all["dev"]
    for workload in workloads(dev):
        assert workload["spec"].get("replicas", 1) == 1, workload["metadata"]["name"]
    for app in APPS:
        assert app_container(dev, app)["image"].endswith(":dev")
        assert "/" not in app_container(dev, app)["image"]  # built locally, no registry
    assert dev.get("Service", "rest")["spec"]["type"] == "NodePort"
    assert not dev.of_kind("Ingress")


def test_dev_infra_objects_are_identical_to_the_dev_overlays(
    rendered_all: dict[str, Rendered],
) -> None:
    dev = {(o["kind"], o["metadata"]["name"]): o for o in rendered_all["dev"].objects}
    infra = rendered_all["dev-infra"].objects
    assert {o["metadata"]["name"] for o in workloads(rendered_all["dev-infra"])} == {
        "redis", "rabbitmq"}
    for obj in infra:
        assert obj == dev[(obj["kind"], obj["metadata"]["name"])], obj["metadata"]["name"]


def test_cloud_serves_rest_through_a_tls_ingress_from_a_registry(
    rendered_all: dict[str, Rendered],
) -> None:
    cloud = rendered_all["cloud"]
    (ingress,) = cloud.of_kind("Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    assert ingress["spec"].get("ingressClassName")
    body_limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body_limit.endswith("m")
    max_upload = int(cloud.get("ConfigMap", app_container(cloud, "rest")["envFrom"][0][
        "configMapRef"]["name"])["data"]["MAX_UPLOAD_BYTES"])
    assert int(body_limit[:-1]) * 1024 * 1024 > max_upload, "the proxy would cut uploads short"
    for app in APPS:
        image = app_container(cloud, app)["image"]
        assert "/" in image and not image.endswith(":dev"), image
    for workload in workloads(cloud):
        assert workload["metadata"]["namespace"] == "facerec"


def test_every_overlay_is_checked(repo: Path, kustomizations: dict[str, str]) -> None:
    overlays = {p.name for p in (repo / "deploy" / "overlays").iterdir() if p.is_dir()}
    assert {f"deploy/overlays/{o}" for o in overlays} == {
        path for path in kustomizations.values() if path != "."}
