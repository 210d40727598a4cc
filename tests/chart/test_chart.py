"""Tests of the Helm chart (helm/tokenvend) and the Dockerfile, without a cluster, a helm
binary or docker. Run through scripts/test-chart, which provides the virtualenv.

- Helm: helm-python-sdk, Helm v4's Go engine through ctypes. Chart.render() validates the
  values against values.schema.json and runs the templates (a `fail` raises HelmRenderError);
  lint() runs `helm lint --strict`. Lint reports a failing `required`/`fail` only as a log
  line, which is why every scenario is rendered too.
- Kubernetes schemas: lint does not check them, so every rendered manifest goes through
  `kubernetes-validate --strict -k 1.30` (offline, bundled schemas). The one exception is the
  ServiceMonitor: a CRD (monitoring.coreos.com/v1) the tool has no schema for; it is left out
  of that run and its fields are checked by hand below.
- The Dockerfile is checked statically against the chart (user, ports, data dir, entrypoint).

Plain unittest; the last line printed is "chart: N passed, N failed[, N skipped]".
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import helm_python as helm
import jsonschema
import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the clone
sys.path.insert(0, str(Path(__file__).resolve().parent))
import values_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tokenvend"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KUBE_VERSION = "1.30"
RELEASE = "tv"
NAMESPACE = "tokenvend"
FULLNAME = "tv-tokenvend"

# Names dashboards and alerts depend on (crates/server/src/metrics.rs).
METRICS = {
    "tokenvend_get_token_duration_seconds": "histogram",
    "tokenvend_provider_requests_total": "counter",
    "tokenvend_provider_request_duration_seconds": "histogram",
    "tokenvend_singleflight_joined_total": "counter",
    "tokenvend_refresh_ahead_total": "counter",
    "tokenvend_cached_tokens": "gauge",
    "tokenvend_lease_wait_seconds": "histogram",
}

# Planted secret values: they must never appear outside a Secret manifest.
TRIAL_DB_URL = "postgres://tv:Pl4nted-DB-Passw0rd@db.example.internal:5432/tokenvend"
TRIAL_MASTER_KEYS = "k1:UGxhbnRlZE1hc3RlcktleVBsYW50ZWRNYXN0ZXJLZXk="
TRIAL_ADMIN_KEY = "tv_Pl4ntedBootstrapAdminKey0123456789"

EXISTING = {
    "database": {"existingSecret": "tv-db", "existingSecretKey": "url"},
    "masterKeys": {"existingSecret": "tv-master-keys", "existingSecretKey": "ring"},
    "bootstrapAdminKey": {"existingSecret": "tv-admin", "existingSecretKey": "key"},
}


def merge(*dicts: dict) -> dict:
    """Deep merge (later wins), like Helm's coalescing of -f files."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = v
    return out


SCENARIOS: dict[str, dict] = {
    # Chart defaults plus a trial bootstrap key: SQLite, one replica, chart-made Secret.
    "trial": {"bootstrapAdminKey": {"value": TRIAL_ADMIN_KEY}},
    # Nothing at all.
    "bare-defaults": {},
    # Production shape: PostgreSQL and every secret from existing Secrets, 3 replicas.
    "postgres": merge(EXISTING, {"replicaCount": 3}),
    # Everything optional on.
    "full": merge(
        EXISTING,
        {
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5},
            "podDisruptionBudget": {"enabled": True},
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "networkPolicy": {
                "enabled": True,
                "allowedNamespaces": ["payments"],
                "allowedPeers": [{"podSelector": {"matchLabels": {"app": "billing"}}}],
                "egress": {"databaseTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
            },
            "otel": {"endpoint": "http://otel-collector.observability:4317"},
            "publicUrl": "https://tokenvend.example.com",
        },
    ),
    "tls": merge(
        EXISTING,
        {
            "replicaCount": 2,
            "tls": {
                "enabled": True,
                "existingSecret": "tv-tls",
                "clientCA": {"existingSecret": "tv-client-ca", "key": "ca.pem"},
                "clientAuth": "required",
            },
        },
    ),
    "dashboard": {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}}},
    # Trial values for everything, PostgreSQL: chart Secret plus the migration hook Secret.
    "trial-postgres": {
        "replicaCount": 2,
        "database": {"url": TRIAL_DB_URL},
        "masterKeys": {"value": TRIAL_MASTER_KEYS},
        "bootstrapAdminKey": {"value": TRIAL_ADMIN_KEY},
    },
    "sqlite-persistent": {"persistence": {"enabled": True, "storageClass": "fast"}},
}

_chart: helm.Chart | None = None


def chart() -> helm.Chart:
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(str(CHART))
    return _chart


def render(values: dict, *, is_install: bool = True) -> dict[str, str]:
    """{template path: rendered text}, as `helm template` would produce."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=is_install)


def manifests(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template__"] = path
                docs.append(doc)
    return docs


def notes(rendered: dict[str, str]) -> str:
    return next((t for p, t in rendered.items() if p.endswith("NOTES.txt")), "")


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod_owner: dict) -> dict:
    containers = pod_owner["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def values_yaml() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def kubernetes_validate(docs: list[dict], label: str) -> None:
    """Runs the real `kubernetes-validate --strict -k 1.30` CLI over the manifests.

    ServiceMonitor is a CRD the tool has no schema for (it would only warn "Couldn't find
    schema"): it is left out here and checked field by field in its own test."""
    checkable = [{k: v for k, v in d.items() if k != "__template__"} for d in docs if d["kind"] != "ServiceMonitor"]
    assert checkable, label
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"tokenvend-{label}-") as f:
        yaml.safe_dump_all(checkable, f, sort_keys=False)
        f.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBE_VERSION, f.name],
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{label}: kubernetes-validate failed:\n{out}"
    bad = [line for line in out.splitlines() if line.startswith(("WARN", "ERROR", "CRITICAL"))]
    assert not bad, f"{label}: kubernetes-validate:\n{out}"
    passed = out.count(" passed for resource ")
    assert passed == len(checkable), f"{label}: {passed} of {len(checkable)} resources passed:\n{out}"


def render_error(values: dict) -> str:
    try:
        render(values)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"rendering should have failed for {values}")


# --------------------------------------------------------------------------------------
# 1. Every scenario renders, lints (strict) and validates against Kubernetes 1.30 schemas.
# --------------------------------------------------------------------------------------
class T1RenderLintValidate(unittest.TestCase):
    def test_validator_catches_errors(self) -> None:
        """Negative control: the kubernetes-validate run rejects a wrong field and a wrong type."""
        bad = [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
             "spec": {"ports": [{"port": 80, "appProtocl": "grpc"}]}},
        ]
        with self.assertRaises(AssertionError):
            kubernetes_validate(bad, "negative-unknown-field")
        bad = [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                "spec": {"replicas": "3", "selector": {}, "template": {}}}]
        with self.assertRaises(AssertionError):
            kubernetes_validate(bad, "negative-type")

    def test_scenarios(self) -> None:
        expected_kinds = {
            "trial": {"ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"},
            "bare-defaults": {"ConfigMap", "Deployment", "Service", "ServiceAccount"},
            "postgres": {"ConfigMap", "Deployment", "Job", "Service", "ServiceAccount"},
            "full": {"ConfigMap", "Deployment", "Job", "Service", "ServiceAccount",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"},
            "tls": {"ConfigMap", "Deployment", "Job", "Service", "ServiceAccount"},
            "dashboard": {"ConfigMap", "Deployment", "Service", "ServiceAccount"},
            "trial-postgres": {"ConfigMap", "Deployment", "Job", "Secret", "Service", "ServiceAccount"},
            "sqlite-persistent": {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim"},
        }
        for name, values in SCENARIOS.items():
            with self.subTest(scenario=name):
                chart().validate_schema(values)
                docs = manifests(render(values))
                self.assertEqual({d["kind"] for d in docs}, expected_kinds[name])
                for d in docs:
                    self.assertIn(d["metadata"].get("namespace"), (NAMESPACE,), d["metadata"])
                report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
                problems = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(report["errors"], [], report)
                self.assertEqual(problems, [], report)
                kubernetes_validate(docs, name)


# --------------------------------------------------------------------------------------
# 2. What the rendered manifests say.
# --------------------------------------------------------------------------------------
class T2Manifests(unittest.TestCase):
    def test_security_context(self) -> None:
        for scenario in ("trial", "postgres"):
            docs = manifests(render(SCENARIOS[scenario]))
            owners = find(docs, "Deployment") + find(docs, "Job")
            self.assertEqual(len(owners), 1 if scenario == "trial" else 2)
            for owner in owners:
                with self.subTest(scenario=scenario, kind=owner["kind"]):
                    pod = owner["spec"]["template"]["spec"]
                    psc = pod["securityContext"]
                    self.assertIs(psc["runAsNonRoot"], True)
                    self.assertEqual((psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]), (65532, 65532, 65532))
                    self.assertEqual(psc["seccompProfile"], {"type": "RuntimeDefault"})
                    csc = container(owner)["securityContext"]
                    self.assertIs(csc["readOnlyRootFilesystem"], True)
                    self.assertIs(csc["allowPrivilegeEscalation"], False)
                    self.assertIs(csc["runAsNonRoot"], True)
                    self.assertEqual(csc["capabilities"], {"drop": ["ALL"]})
                    self.assertEqual(csc["seccompProfile"], {"type": "RuntimeDefault"})
                    self.assertIs(pod["automountServiceAccountToken"], False)
                    # Read-only root: the only writable paths are volumes.
                    mounts = {m["mountPath"]: m for m in container(owner)["volumeMounts"]}
                    self.assertIn("/tmp", mounts)
                    self.assertIn("/var/lib/tokenvend", mounts)
                    for path, m in mounts.items():
                        if path.startswith("/etc/tokenvend/secrets/"):
                            self.assertIs(m.get("readOnly"), True, m)
        sa = one(manifests(render({})), "ServiceAccount")
        self.assertIs(sa["automountServiceAccountToken"], False)

    def test_probes_ports_and_service(self) -> None:
        docs = manifests(render(SCENARIOS["postgres"]))
        dep = one(docs, "Deployment", FULLNAME)
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(ports, {"grpc": 50051, "http": 8080})
        self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http"})
        self.assertEqual(c["startupProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
        self.assertEqual(c["args"], ["serve"])
        svc = one(docs, "Service", FULLNAME)
        by_name = {p["name"]: p for p in svc["spec"]["ports"]}
        self.assertEqual(by_name["grpc"]["appProtocol"], "grpc")
        self.assertEqual(by_name["grpc"]["port"], 50051)
        self.assertEqual(by_name["grpc"]["targetPort"], "grpc")
        self.assertEqual(by_name["http"]["appProtocol"], "http")
        self.assertEqual(by_name["http"]["targetPort"], "http")
        # The Service selects exactly the server pods (not the migration Job's).
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"])
        self.assertTrue(set(svc["spec"]["selector"].items()) <= set(pod_labels.items()))
        job_labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
        self.assertFalse(set(svc["spec"]["selector"].items()) <= set(job_labels.items()))
        # The listen addresses follow the container ports.
        cm = one(docs, "ConfigMap", FULLNAME)["data"]
        self.assertEqual(cm["TOKENVEND_GRPC_ADDR"], "0.0.0.0:50051")
        self.assertEqual(cm["TOKENVEND_HTTP_ADDR"], "0.0.0.0:8080")
        moved = manifests(render(merge(SCENARIOS["postgres"], {"containerPorts": {"grpc": 9090}})))
        self.assertEqual(one(moved, "ConfigMap")["data"]["TOKENVEND_GRPC_ADDR"], "0.0.0.0:9090")

    def test_deployment_settings(self) -> None:
        docs = manifests(render(SCENARIOS["postgres"]))
        dep = one(docs, "Deployment")
        spec = dep["spec"]
        self.assertEqual(spec["replicas"], 3)
        self.assertEqual(spec["strategy"], {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
        pod = spec["template"]["spec"]
        self.assertEqual(pod["terminationGracePeriodSeconds"], 30)
        tsc = pod["topologySpreadConstraints"]
        self.assertEqual(len(tsc), 1)
        self.assertEqual(tsc[0]["topologyKey"], "kubernetes.io/hostname")
        self.assertEqual(tsc[0]["whenUnsatisfiable"], "ScheduleAnyway")
        self.assertEqual(tsc[0]["labelSelector"]["matchLabels"], spec["selector"]["matchLabels"])
        c = container(dep)
        env = env_map(c)
        self.assertEqual(env["TOKENVEND_REPLICA_ID"]["valueFrom"], {"fieldRef": {"fieldPath": "metadata.name"}})
        self.assertEqual(c["envFrom"], [{"configMapRef": {"name": FULLNAME}}])
        self.assertEqual(c["image"], "tokenvend:0.1.0")  # tag defaults to appVersion
        cm = one(docs, "ConfigMap")["data"]
        self.assertEqual(cm["TOKENVEND_LOG_FORMAT"], "json")
        self.assertEqual(cm["TOKENVEND_LOG"], "info")
        self.assertEqual(cm["TOKENVEND_DATA_DIR"], "/var/lib/tokenvend")
        self.assertEqual((cm["TOKENVEND_SHUTDOWN_DELAY"], cm["TOKENVEND_SHUTDOWN_TIMEOUT"]), ("5s", "20s"))
        for k in cm:
            self.assertNotRegex(k, r"DATABASE_URL|MASTER_KEYS|BOOTSTRAP_ADMIN_KEY", "secret setting in the ConfigMap")
        # Embedded SQLite: one pod at a time (lock file, volume), so Recreate.
        trial = one(manifests(render(SCENARIOS["trial"])), "Deployment")
        self.assertEqual(trial["spec"]["strategy"], {"type": "Recreate"})
        self.assertEqual(trial["spec"]["replicas"], 1)
        vols = {v["name"]: v for v in trial["spec"]["template"]["spec"]["volumes"]}
        self.assertIn("emptyDir", vols["data"])
        self.assertIn("emptyDir", vols["tmp"])
        persistent = manifests(render(SCENARIOS["sqlite-persistent"]))
        pvc = one(persistent, "PersistentVolumeClaim")
        vols = {v["name"]: v for v in one(persistent, "Deployment")["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["data"]["persistentVolumeClaim"]["claimName"], pvc["metadata"]["name"])
        self.assertEqual(pvc["spec"]["storageClassName"], "fast")
        self.assertEqual(one(persistent, "Deployment")["spec"]["strategy"]["type"], "Recreate")
        # extraConfig lands in the ConfigMap, extraEnv in the container.
        extra = manifests(render({"extraConfig": {"TOKENVEND_RATE_LIMIT": "100", "TOKENVEND_RATE_LIMIT_BURST": 2000000,
                                                  "TOKENVEND_ALLOW_INSECURE_ENDPOINTS": False},
                                  "extraEnv": [{"name": "TOKENVEND_AUDIT_RETENTION", "value": "720h"}]}))
        data = one(extra, "ConfigMap")["data"]
        self.assertEqual(data["TOKENVEND_RATE_LIMIT"], "100")
        self.assertEqual(data["TOKENVEND_RATE_LIMIT_BURST"], "2000000")
        self.assertEqual(data["TOKENVEND_ALLOW_INSECURE_ENDPOINTS"], "false")
        self.assertEqual(env_map(container(one(extra, "Deployment")))["TOKENVEND_AUDIT_RETENTION"]["value"], "720h")
        # otel
        full = manifests(render(SCENARIOS["full"]))
        cm = one(full, "ConfigMap")["data"]
        self.assertEqual(cm["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://otel-collector.observability:4317")
        self.assertEqual(cm["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc")
        self.assertEqual(cm["OTEL_SERVICE_NAME"], FULLNAME)
        self.assertEqual(cm["TOKENVEND_PUBLIC_URL"], "https://tokenvend.example.com")

    def test_migration_job(self) -> None:
        for scenario in ("postgres", "trial-postgres"):
            with self.subTest(scenario=scenario):
                docs = manifests(render(SCENARIOS[scenario]))
                job = one(docs, "Job", f"{FULLNAME}-migrate")
                ann = job["metadata"]["annotations"]
                self.assertEqual(ann["helm.sh/hook"], "pre-install,pre-upgrade")
                self.assertEqual(ann["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded")
                c = container(job)
                self.assertEqual(c["args"], ["migrate"])
                self.assertEqual(c["image"], container(one(docs, "Deployment"))["image"])
                pod = job["spec"]["template"]["spec"]
                self.assertEqual(pod["restartPolicy"], "Never")
                # A pre-install hook runs before the release's resources exist: it must not
                # use the chart's ServiceAccount, ConfigMap or (non-hook) Secret.
                self.assertEqual(pod["serviceAccountName"], "default")
                self.assertNotIn("envFrom", c)
                env = env_map(c)
                self.assertEqual(set(env), {"TOKENVEND_DATABASE_URL_FILE", "TOKENVEND_DATA_DIR"})
                path = env["TOKENVEND_DATABASE_URL_FILE"]["value"]
                secret_name, key = self.assert_file_from_secret(job, path)
                if scenario == "postgres":
                    self.assertEqual((secret_name, key), ("tv-db", "url"))
                else:
                    hook_secret = one(docs, "Secret", secret_name)
                    self.assertNotEqual(secret_name, FULLNAME)
                    hann = hook_secret["metadata"]["annotations"]
                    self.assertEqual(hann["helm.sh/hook"], "pre-install,pre-upgrade")
                    self.assertLess(int(hann["helm.sh/hook-weight"]), int(ann["helm.sh/hook-weight"]))
                    self.assertEqual(base64.b64decode(hook_secret["data"][key]).decode(), TRIAL_DB_URL)
                    self.assertEqual(set(hook_secret["data"]), {"database-url"})  # the URL only
        # Embedded SQLite migrates at start: no Job. migration.enabled=false: no Job either.
        self.assertEqual(find(manifests(render(SCENARIOS["trial"])), "Job"), [])
        off = merge(SCENARIOS["trial-postgres"], {"migration": {"enabled": False}})
        docs = manifests(render(off))
        self.assertEqual(find(docs, "Job"), [])
        self.assertEqual([s["metadata"]["name"] for s in find(docs, "Secret")], [FULLNAME])
        # An existing ServiceAccount (create: false) is used by the Job as well.
        sa = merge(SCENARIOS["postgres"], {"serviceAccount": {"create": False, "name": "tokenvend-sa"}})
        job = one(manifests(render(sa)), "Job")
        self.assertEqual(job["spec"]["template"]["spec"]["serviceAccountName"], "tokenvend-sa")

    def assert_file_from_secret(self, owner: dict, path: str) -> tuple[str, str]:
        """`path` is a file inside a read-only mount of a Secret volume (no subPath, so
        rotated Secrets reach the pod); returns (secret name, key)."""
        pod = owner["spec"]["template"]["spec"]
        mounts = container(owner)["volumeMounts"]
        vols = {v["name"]: v for v in pod["volumes"]}
        for m in mounts:
            prefix = m["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix):
                self.assertIs(m.get("readOnly"), True, m)
                self.assertNotIn("subPath", m)
                secret = vols[m["name"]]["secret"]
                rel = path[len(prefix):]
                items = [i for i in secret["items"] if i["path"] == rel]
                self.assertEqual(len(items), 1, f"{path}: no item {rel} in {secret}")
                self.assertEqual(secret["defaultMode"], 0o440)
                return secret["secretName"], items[0]["key"]
        raise AssertionError(f"{path} is not inside any mounted volume")

    def test_file_env_vars_point_at_mounted_secret_files(self) -> None:
        cases = {
            "postgres": {
                "TOKENVEND_DATABASE_URL_FILE": ("tv-db", "url"),
                "TOKENVEND_MASTER_KEYS_FILE": ("tv-master-keys", "ring"),
                "TOKENVEND_BOOTSTRAP_ADMIN_KEY_FILE": ("tv-admin", "key"),
            },
            "trial-postgres": {
                "TOKENVEND_DATABASE_URL_FILE": (FULLNAME, "database-url"),
                "TOKENVEND_MASTER_KEYS_FILE": (FULLNAME, "master-keys"),
                "TOKENVEND_BOOTSTRAP_ADMIN_KEY_FILE": (FULLNAME, "bootstrap-admin-key"),
            },
            "trial": {"TOKENVEND_BOOTSTRAP_ADMIN_KEY_FILE": (FULLNAME, "bootstrap-admin-key")},
            "bare-defaults": {},
            "tls": {
                "TOKENVEND_DATABASE_URL_FILE": ("tv-db", "url"),
                "TOKENVEND_MASTER_KEYS_FILE": ("tv-master-keys", "ring"),
                "TOKENVEND_BOOTSTRAP_ADMIN_KEY_FILE": ("tv-admin", "key"),
                "TOKENVEND_TLS_CERT_FILE": ("tv-tls", "tls.crt"),
                "TOKENVEND_TLS_KEY_FILE": ("tv-tls", "tls.key"),
                "TOKENVEND_TLS_CLIENT_CA_FILE": ("tv-client-ca", "ca.pem"),
            },
        }
        for scenario, expected in cases.items():
            with self.subTest(scenario=scenario):
                docs = manifests(render(SCENARIOS[scenario]))
                dep = one(docs, "Deployment")
                env = env_map(container(dep))
                file_vars = {k for k in env if k.endswith("_FILE")}
                self.assertEqual(file_vars, set(expected))
                for var, (secret, key) in expected.items():
                    self.assertIn("value", env[var])
                    self.assertTrue(env[var]["value"].startswith("/etc/tokenvend/secrets/"), env[var])
                    self.assertEqual(self.assert_file_from_secret(dep, env[var]["value"]), (secret, key), var)
                # The secret settings themselves are never plain env vars.
                for name in ("TOKENVEND_DATABASE_URL", "TOKENVEND_MASTER_KEYS", "TOKENVEND_BOOTSTRAP_ADMIN_KEY"):
                    self.assertNotIn(name, env)
                for secret in find(docs, "Secret"):
                    if secret["metadata"]["name"] == FULLNAME:
                        used = {k for s, k in expected.values() if s == FULLNAME}
                        self.assertEqual(set(secret["data"]), used)
        tls_env = env_map(container(one(manifests(render(SCENARIOS["tls"])), "Deployment")))
        self.assertEqual(tls_env["TOKENVEND_TLS_CLIENT_AUTH"]["value"], "required")
        plain_env = env_map(container(one(manifests(render(SCENARIOS["postgres"])), "Deployment")))
        self.assertFalse([k for k in plain_env if k.startswith("TOKENVEND_TLS_")])

    def test_no_secret_value_in_manifests(self) -> None:
        # existingSecrets: the chart renders no Secret, and no manifest or note carries a value.
        for scenario in ("postgres", "full", "tls"):
            with self.subTest(scenario=scenario):
                rendered = render(SCENARIOS[scenario])
                docs = manifests(rendered)
                self.assertEqual(find(docs, "Secret"), [])
                everything = "\n".join(rendered.values())
                self.assertNotIn("postgres://", everything)
                self.assertNotIn("stringData", everything)
                # Only the ConfigMap has a data block, and it holds no secret setting.
                self.assertEqual([d["kind"] for d in docs if "data" in d], ["ConfigMap"])
        # Trial values: each planted value appears only inside Secret manifests (base64), never in
        # the Deployment, Job, ConfigMap, annotations or NOTES.
        rendered = render(SCENARIOS["trial-postgres"])
        planted = [TRIAL_DB_URL, TRIAL_MASTER_KEYS, TRIAL_ADMIN_KEY, "Pl4nted"]
        encoded = [base64.b64encode(p.encode()).decode() for p in planted[:3]]
        for path, text in rendered.items():
            is_secret = any(d and d.get("kind") == "Secret" for d in yaml.safe_load_all(text)) if path.endswith(".yaml") else False
            for p in planted:
                self.assertNotIn(p, text, f"{p!r} in plain text in {path}")
            if not is_secret:
                for e in encoded:
                    self.assertNotIn(e, text, f"an encoded secret in {path}")
        secrets = {s["metadata"]["name"]: s for s in find(manifests(rendered), "Secret")}
        self.assertEqual(base64.b64decode(secrets[FULLNAME]["data"]["master-keys"]).decode(), TRIAL_MASTER_KEYS)

    def test_checksum_annotation_follows_config(self) -> None:
        def checksum(values: dict) -> str:
            dep = one(manifests(render(values)), "Deployment")
            value = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            self.assertRegex(value, r"^[0-9a-f]{64}$")
            return value

        base = SCENARIOS["postgres"]
        first = checksum(base)
        self.assertEqual(first, checksum(base), "not deterministic")
        self.assertNotEqual(first, checksum(merge(base, {"log": {"level": "debug"}})))
        self.assertNotEqual(first, checksum(merge(base, {"extraConfig": {"TOKENVEND_RATE_LIMIT": "7"}})))
        self.assertNotEqual(first, checksum(merge(base, {"shutdown": {"delaySeconds": 3}})))
        # A value outside the ConfigMap/Secret does not roll pods by itself.
        self.assertEqual(first, checksum(merge(base, {"replicaCount": 4})))
        # Trial secrets: changing one rolls the pods.
        trial = SCENARIOS["trial"]
        self.assertNotEqual(checksum(trial), checksum({"bootstrapAdminKey": {"value": TRIAL_ADMIN_KEY + "x"}}))

    def test_invalid_combinations_fail_rendering(self) -> None:
        msg = render_error({"replicaCount": 3})
        self.assertIn("replicaCount is 3 but no database is configured", msg)
        self.assertIn("ONE replica", msg)
        self.assertIn("database.existingSecret", msg)
        msg = render_error({"autoscaling": {"enabled": True}})
        self.assertIn("autoscaling.enabled needs a database", msg)
        self.assertIn("ONE replica", render_error({"replicaCount": 2, "persistence": {"enabled": True}}))
        self.assertIn("TOKENVEND_MASTER_KEYS is required", render_error({"database": {"existingSecret": "db"}}))
        self.assertIn("not both", render_error(merge(EXISTING, {"database": {"url": TRIAL_DB_URL}})))
        self.assertIn("not both", render_error(merge(EXISTING, {"masterKeys": {"value": TRIAL_MASTER_KEYS}})))
        self.assertIn("at least 16 characters", render_error({"bootstrapAdminKey": {"value": "short"}}))
        self.assertIn("tls.existingSecret", render_error({"tls": {"enabled": True}}))
        self.assertIn("needs tls.clientCA.existingSecret",
                      render_error({"tls": {"enabled": True, "existingSecret": "t", "clientAuth": "required"}}))
        self.assertIn("terminationGracePeriodSeconds",
                      render_error({"shutdown": {"delaySeconds": 10, "timeoutSeconds": 20}}))
        self.assertIn("minReplicas must not exceed",
                      render_error(merge(EXISTING, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})))
        self.assertIn("resources.requests.cpu",
                      render_error(merge(EXISTING, {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}})))
        # One replica without a database is fine, and so are many with one.
        render({"replicaCount": 1})
        render(merge(EXISTING, {"replicaCount": 5}))

    def test_autoscaling_pdb(self) -> None:
        docs = manifests(render(SCENARIOS["full"]))
        dep = one(docs, "Deployment")
        self.assertNotIn("replicas", dep["spec"], "the HPA owns the replica count")
        hpa = one(docs, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME})
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (2, 5))
        cpu = hpa["spec"]["metrics"][0]["resource"]
        self.assertEqual((cpu["name"], cpu["target"]["averageUtilization"]), ("cpu", 70))
        pdb = one(docs, "PodDisruptionBudget")
        self.assertEqual(pdb["apiVersion"], "policy/v1")
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        self.assertNotIn("minAvailable", pdb["spec"])
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"])
        pdb = one(manifests(render(merge(SCENARIOS["full"], {"podDisruptionBudget": {"minAvailable": 1}}))), "PodDisruptionBudget")
        self.assertEqual(pdb["spec"], {"minAvailable": 1, "selector": pdb["spec"]["selector"]})

    def test_service_monitor_by_hand(self) -> None:
        """kubernetes-validate has no schema for this CRD: its fields are checked here."""
        docs = manifests(render(SCENARIOS["full"]))
        sm = one(docs, "ServiceMonitor")
        self.assertEqual(sm["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(set(sm), {"apiVersion", "kind", "metadata", "spec", "__template__"})
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        spec = sm["spec"]
        self.assertEqual(set(spec), {"selector", "namespaceSelector", "endpoints"})
        svc = one(docs, "Service")
        # The selector picks this Service (by its labels) and the endpoint names its port.
        self.assertTrue(set(spec["selector"]["matchLabels"].items()) <= set(svc["metadata"]["labels"].items()))
        self.assertEqual(spec["namespaceSelector"], {"matchNames": [NAMESPACE]})
        self.assertEqual(len(spec["endpoints"]), 1)
        ep = spec["endpoints"][0]
        self.assertEqual(set(ep), {"port", "path", "scheme", "interval", "scrapeTimeout"})
        self.assertEqual((ep["port"], ep["path"], ep["scheme"]), ("http", "/metrics", "http"))
        self.assertIn(ep["port"], [p["name"] for p in svc["spec"]["ports"]])
        for k in ("interval", "scrapeTimeout"):
            self.assertRegex(ep[k], r"^[0-9]+(ms|s|m|h)$")

    def test_network_policy(self) -> None:
        docs = manifests(render(SCENARIOS["full"]))
        np = one(docs, "NetworkPolicy")
        dep = one(docs, "Deployment")
        spec = np["spec"]
        self.assertEqual(spec["podSelector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"])
        self.assertEqual(spec["policyTypes"], ["Ingress", "Egress"])
        ing = spec["ingress"][0]
        self.assertEqual({p["port"] for p in ing["ports"]}, {"grpc", "http"})
        self.assertIn({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}}, ing["from"])
        self.assertIn({"podSelector": {"matchLabels": {"app": "billing"}}}, ing["from"])
        egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
        self.assertTrue({(53, "UDP"), (53, "TCP"), (443, "TCP"), (5432, "TCP"), (4317, "TCP")} <= egress_ports, egress_ports)
        db_rule = next(r for r in spec["egress"] if r["ports"][0]["port"] == 5432)
        self.assertEqual(db_rule["to"], [{"ipBlock": {"cidr": "10.20.0.0/16"}}])
        # Without peers: the ports are open to any source; without a database: no 5432 rule.
        open_np = one(manifests(render({"networkPolicy": {"enabled": True}})), "NetworkPolicy")
        self.assertNotIn("from", open_np["spec"]["ingress"][0])
        ports = {p["port"] for rule in open_np["spec"]["egress"] for p in rule["ports"]}
        self.assertEqual(ports, {53, 443})

    def test_tls(self) -> None:
        docs = manifests(render(SCENARIOS["tls"]))
        dep = one(docs, "Deployment")
        vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["tls"]["secret"]["secretName"], "tv-tls")
        self.assertEqual({i["key"] for i in vols["tls"]["secret"]["items"]}, {"tls.crt", "tls.key"})
        self.assertEqual(vols["client-ca"]["secret"]["secretName"], "tv-client-ca")
        for m in container(dep)["volumeMounts"]:
            self.assertNotIn("subPath", m, "subPath mounts never see a renewed certificate")
        text = notes(render(SCENARIOS["tls"]))
        self.assertIn("-cacert", text)
        self.assertNotIn("-plaintext", text)

    def test_grafana_dashboard(self) -> None:
        docs = manifests(render(SCENARIOS["dashboard"]))
        cm = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(cm["metadata"]["annotations"], {"grafana_folder": "Platform"})
        dash = json.loads(cm["data"]["tokenvend.json"])
        self.assertEqual(dash, json.loads((CHART / "dashboards" / "tokenvend.json").read_text()))
        exprs = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("expr", "query", "definition") and isinstance(v, str):
                        exprs.append(v)
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(dash)
        referenced = set()
        for e in exprs:
            for name in re.findall(r"\btokenvend_[a-z_]+", e):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                self.assertIn(base, METRICS, f"unknown metric {name} in {e}")
                if base != name:
                    self.assertEqual(METRICS[base], "histogram", name)
                referenced.add(base)
        self.assertEqual(referenced, set(METRICS), "every metric has a panel")
        # ... and the server really registers each of them (a string literal in its sources).
        sources = "\n".join(p.read_text() for p in (ROOT / "crates").rglob("*.rs"))
        for name in METRICS:
            self.assertIn(f'"{name}"', sources, f"{name} is not registered by the server")
        titles = [p["title"] for p in dash["panels"] if p["type"] != "row"]
        for wanted in ("GetToken rate by outcome", "GetToken latency p50 / p99 by outcome", "Cache hit ratio",
                       "Provider requests by template", "Provider latency p50 / p99 by template",
                       "Provider errors by template", "Single-flight joins", "Refresh-ahead by outcome",
                       "Cached tokens", "Lease wait p50 / p99"):
            self.assertIn(wanted, titles)
        quantiles = " ".join(e for e in exprs if "tokenvend_get_token_duration_seconds_bucket" in e)
        self.assertIn("histogram_quantile(0.5,", quantiles)
        self.assertIn("histogram_quantile(0.99,", quantiles)
        self.assertIn("outcome", quantiles)
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        # Off by default.
        self.assertEqual(find(manifests(render({})), "ConfigMap", f"{FULLNAME}-dashboard"), [])

    def test_notes(self) -> None:
        trial = notes(render(SCENARIOS["trial"]))
        self.assertIn(f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 50051:50051", trial)
        self.assertIn('grpcurl -plaintext -H "authorization: Bearer $KEY" localhost:50051 list', trial)
        self.assertIn("tokenvend.v1.TokenService/GetToken", trial)
        self.assertIn("WARNING: TRIAL SECRETS IN VALUES", trial)
        self.assertIn("WARNING: EMBEDDED SQLITE - ONE REPLICA ONLY", trial)
        self.assertNotIn(TRIAL_ADMIN_KEY, trial)
        prod = notes(render(SCENARIOS["postgres"]))
        self.assertNotIn("WARNING", prod)
        self.assertIn("secret tv-admin", prod)
        self.assertIn("3 replica(s), PostgreSQL", prod)


# --------------------------------------------------------------------------------------
# 3. values.schema.json
# --------------------------------------------------------------------------------------
class T3Schema(unittest.TestCase):
    def schema(self) -> dict:
        return json.loads((CHART / "values.schema.json").read_text())

    def test_rejects(self) -> None:
        rejected = {
            "unknown top-level key": ({"replicas": 3}, "additional properties 'replicas' not allowed"),
            "string replicaCount": ({"replicaCount": "3"}, "/replicaCount"),
            "string tls.enabled": ({"tls": {"enabled": "yes"}}, "/tls/enabled"),
            "unknown nested key": ({"database": {"existingSecretName": "x"}}, "existingSecretName"),
            "bad log format": ({"log": {"format": "xml"}}, "/log/format"),
            "bad clientAuth": ({"tls": {"clientAuth": "maybe"}}, "/tls/clientAuth"),
            "non-postgres database url": ({"database": {"url": "mysql://x"}}, "/database/url"),
            "extraConfig name not a variable": ({"extraConfig": {"TOKENVEND RATE": "1"}}, "invalid propertyName"),
            "extraConfig value not a scalar": ({"extraConfig": {"TOKENVEND_RATE_LIMIT": [1]}}, "/extraConfig"),
        }
        for label, (values, needle) in rejected.items():
            with self.subTest(label):
                with self.assertRaises(helm.HelmValuesError) as cm:
                    chart().validate_schema(values)
                self.assertIn(needle, str(cm.exception))
                # install/upgrade/template refuse them too
                with self.assertRaises(helm.HelmValuesError):
                    render(values)

    def test_schema_is_draft7_and_covers_values(self) -> None:
        schema = self.schema()
        self.assertEqual(schema["$schema"], "http://json-schema.org/draft-07/schema#")
        self.assertIs(schema["additionalProperties"], False)
        jsonschema.Draft7Validator.check_schema(schema)
        defaults = values_yaml()
        jsonschema.Draft7Validator(schema).validate(defaults)
        chart().validate_schema({})
        self.assertEqual(set(schema["properties"]), set(defaults))

        def types_match(value: object, node: dict, path: str) -> None:
            if "type" in node:
                py = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}[node["type"]]
                self.assertIsInstance(value, py, path)
                if node["type"] == "integer":
                    self.assertNotIsInstance(value, bool, path)
            if isinstance(value, dict) and "properties" in node:
                self.assertEqual(set(value), set(node["properties"]), path)
                for k, v in value.items():
                    types_match(v, node["properties"][k], f"{path}.{k}")

        types_match(defaults, schema, "values")

    def test_readme_lists_every_value(self) -> None:
        """README.md's table is exactly the one values_table.py makes from values.yaml (every
        `# --` key, its default, its comment), and every leaf value is documented itself or
        lies under a documented key."""
        readme = (CHART / "README.md").read_text()
        self.assertEqual(values_table.readme_table(readme), values_table.table(),
                         "README.md's values table is stale: run python3 tests/chart/values_table.py --write")
        documented = {k for k, _ in values_table.documented_values((CHART / "values.yaml").read_text())}
        self.assertGreater(len(documented), 50)

        def leaves(node: object, prefix: str = ""):
            if isinstance(node, dict) and node:
                for k, v in node.items():
                    yield from leaves(v, f"{prefix}.{k}" if prefix else k)
            else:
                yield prefix

        for leaf in leaves(values_yaml()):
            parts = leaf.split(".")
            self.assertTrue(any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)), leaf)


# --------------------------------------------------------------------------------------
# 4. The Dockerfile matches the chart.
# --------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


class T4Dockerfile(unittest.TestCase):
    def setUp(self) -> None:
        self.instr = dockerfile_instructions()
        self.args = {}
        for word, rest in self.instr:
            if word == "ARG" and "=" in rest:
                k, v = rest.split("=", 1)
                self.args.setdefault(k, v.strip('"'))
        froms = [i for i, (w, _) in enumerate(self.instr) if w == "FROM"]
        self.assertEqual(len(froms), 2, "multi-stage: build and runtime")
        self.build = self.instr[froms[0]:froms[1]]
        self.runtime = self.instr[froms[1]:]
        docs = manifests(render(SCENARIOS["postgres"]))
        self.dep = one(docs, "Deployment")

    def expand(self, s: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], s)

    def last(self, stage: list[tuple[str, str]], word: str) -> str:
        found = [r for w, r in stage if w == word]
        self.assertTrue(found, f"no {word}")
        return found[-1]

    def test_build_stage(self) -> None:
        image = self.expand(self.build[0][1].split()[0])
        self.assertEqual(image, "rust:1.94-bookworm")
        cargo = (ROOT / "Cargo.toml").read_text()
        rust_version = re.search(r'^rust-version\s*=\s*"([0-9.]+)"', cargo, re.M).group(1)
        self.assertEqual(image.split(":")[1].split("-")[0], rust_version, "the builder image follows rust-version")
        run = " ".join(r for w, r in self.build if w == "RUN")
        self.assertIn("cargo build --profile dist --locked -p tokenvend-server --bin tokenvend", run)
        self.assertIn("--mount=type=cache", run)
        self.assertNotIn("protoc", run.replace("protox", ""))
        env = " ".join(r for w, r in self.build if w == "ENV")
        self.assertIn("TOKENVEND_GIT_REVISION=${GIT_REVISION}", env)
        self.assertIn("GIT_REVISION", [r.split("=")[0] for w, r in self.build if w == "ARG"])

    def test_runtime_matches_chart(self) -> None:
        image = self.expand(self.runtime[0][1].split()[0])
        self.assertRegex(image, r"^gcr\.io/distroless/[a-z0-9-]+:(debug-)?nonroot$", "distroless nonroot runtime")
        pod = self.dep["spec"]["template"]["spec"]
        c = container(self.dep)
        user, _, group = self.last(self.runtime, "USER").partition(":")
        self.assertEqual(int(user), pod["securityContext"]["runAsUser"])
        self.assertEqual(int(group), pod["securityContext"]["runAsGroup"])
        self.assertEqual(int(user), c["securityContext"]["runAsUser"])
        self.assertEqual(int(user), 65532)  # distroless nonroot
        exposed = {int(p.split("/")[0]) for r in (r for w, r in self.runtime if w == "EXPOSE") for p in r.split()}
        self.assertEqual(exposed, {p["containerPort"] for p in c["ports"]})
        env = {}
        for r in (r for w, r in self.runtime if w == "ENV"):
            for k, v in re.findall(r"(\w+)=(\S+)", r):
                env[k] = v
        data_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
        self.assertEqual(self.last(self.runtime, "WORKDIR"), data_mount)
        self.assertEqual(env["TOKENVEND_DATA_DIR"], data_mount)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(env["TOKENVEND_GRPC_ADDR"], f"0.0.0.0:{ports['grpc']}")
        self.assertEqual(env["TOKENVEND_HTTP_ADDR"], f"0.0.0.0:{ports['http']}")
        self.assertEqual(env["TOKENVEND_LOG_FORMAT"], "json")
        entry = json.loads(self.last(self.runtime, "ENTRYPOINT"))
        self.assertEqual(entry, ["/usr/local/bin/tokenvend"])
        self.assertNotIn("command", c, "the chart relies on the image's ENTRYPOINT")
        self.assertEqual(json.loads(self.last(self.runtime, "CMD")), c["args"])
        copies = [r for w, r in self.runtime if w == "COPY"]
        self.assertTrue(any(r.endswith(" /usr/local/bin/tokenvend") for r in copies), copies)

    def test_dockerignore(self) -> None:
        patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
        for wanted in ("target/", ".git/", "tests/oidc/node_modules/"):
            self.assertIn(wanted, patterns)

        def ignored(path: str) -> bool:
            for p in patterns:
                p = p.rstrip("/")
                if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p + "/*") or path.startswith(p + "/"):
                    return True
            return False

        # What the build reads must stay in the context.
        for needed in ("Cargo.toml", "Cargo.lock", "crates/server/src/main.rs", "crates/server/build.rs",
                       "proto/tokenvend/v1/token.proto", "migrations/postgres", "migrations/sqlite",
                       "tests/it/main.rs", "crates/server/benches/stampede.rs"):
            self.assertFalse(ignored(needed), needed)
            self.assertTrue((ROOT / needed).exists(), needed)
        for junk in ("target/release/tokenvend", ".git/HEAD", "tests/oidc/node_modules/x", "fuzz/target/x", "data/tokenvend.db"):
            self.assertTrue(ignored(junk), junk)


def main() -> int:
    start = time.monotonic()
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    if len(sys.argv) > 1:
        def flatten(s):
            for t in s:
                yield from flatten(t) if isinstance(t, unittest.TestSuite) else [t]

        suite = unittest.TestSuite(t for t in flatten(suite) if any(a in t.id() for a in sys.argv[1:]))
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    summary = f"chart: {passed} passed, {failed} failed"
    if result.skipped:
        summary += f", {len(result.skipped)} skipped"
    print(f"chart tests took {time.monotonic() - start:.1f}s")
    print(summary)
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
