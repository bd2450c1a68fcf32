"""Write the vendored JSON schemas of the two custom resources the manifests use.

    .venv/bin/python config/k8s/schemas/make_schemas.py

Offline validation (tests/test_k8s.py) checks every rendered object against a schema:
``kubernetes-validate`` bundles the built-in kinds; these files add

* ``inferenceservice-serving.kserve.io-v1beta1.json``: KServe's InferenceService (CRD
  serving.kserve.io/v1beta1, KServe 0.11-0.16). Its predictor is KServe's PredictorSpec: the
  core PodSpec inlined (its fields are copied from kubernetes-validate's Kubernetes 1.30
  PodSpec and keep their ``$ref`` s into the bundled definitions) plus KServe's
  ComponentExtensionSpec and the framework fields;
* ``servicemonitor-monitoring.coreos.com-v1.json``: the Prometheus Operator's ServiceMonitor
  (monitoring.coreos.com/v1), the fields of its CRD that a scrape config of a Service uses.

Both are strict (unknown fields fail), as the API server's structural schemas are. They are a
subset of the upstream CRDs, whose full schemas are ~900 kB (KServe) and ~40 kB: a field
that is valid upstream but not listed here fails the test, and is then added here.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate

HERE = Path(__file__).resolve().parent
K8S_VERSION = "1.30.0"
DEFS_FILE = "kubernetes-json-schema/v1.30.0-local-strict/_definitions.json"
DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"


def k8s(name: str) -> dict:
    return {"$ref": DEFS + name}


def strict(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return schema


INT, STR, BOOL, OBJ = (
    {"type": "integer"},
    {"type": "string"},
    {"type": "boolean"},
    {"type": "object"},
)
STR_LIST = {"type": "array", "items": STR}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {  # Prometheus duration, as the ServiceMonitor CRD's pattern
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    "(([0-9]+)ms)?)$",
}


def pod_spec_properties() -> dict:
    """The core PodSpec's properties (descriptions left out), their refs pointing into the
    bundled definitions."""
    root = Path(kubernetes_validate.__file__).parent
    defs = json.loads((root / DEFS_FILE).read_text())
    props = defs["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"]
    props = {name: {k: v for k, v in p.items() if k != "description"} for name, p in props.items()}
    return json.loads(json.dumps(props).replace('"#/$defs/', f'"{DEFS}'))


def with_pod_spec(properties: dict) -> dict:
    """A KServe component: the inlined PodSpec ($defs/podSpec) plus ``properties``, strict."""
    return {
        "type": "object",
        "$ref": "#/$defs/podSpec",
        "properties": properties,
        "unevaluatedProperties": False,
    }


def inference_service() -> dict:
    extension = {  # KServe ComponentExtensionSpec
        "minReplicas": INT,
        "maxReplicas": INT,
        "scaleTarget": INT,
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "scaleMetricType": {"enum": ["Utilization", "AverageValue"]},
        "containerConcurrency": INT,
        "timeout": INT,
        "canaryTrafficPercent": INT,
        "logger": OBJ,
        "batcher": OBJ,
        "labels": STR_MAP,
        "annotations": STR_MAP,
        "deploymentStrategy": k8s("io.k8s.api.apps.v1.DeploymentStrategy"),
        "autoScaling": OBJ,
    }
    frameworks = ("sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface",
                  "pmml", "lightgbm", "paddle", "model", "workerSpec")  # fmt: skip
    component = with_pod_spec(extension)
    predictor = with_pod_spec({**extension, **{f: OBJ for f in frameworks}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"podSpec": {"properties": pod_spec_properties()}},
        "description": "KServe InferenceService serving.kserve.io/v1beta1 (vendored subset; "
        "see make_schemas.py)",
        **strict(
            {
                "apiVersion": {"const": "serving.kserve.io/v1beta1"},
                "kind": {"const": "InferenceService"},
                "metadata": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                "spec": strict(
                    {"predictor": predictor, "transformer": component, "explainer": component},
                    ["predictor"],
                ),
                "status": OBJ,
            },
            ["apiVersion", "kind", "metadata", "spec"],
        ),
    }


def service_monitor() -> dict:
    secret_key = k8s("io.k8s.api.core.v1.SecretKeySelector")
    endpoint = strict(
        {
            "port": STR,
            "targetPort": k8s("io.k8s.apimachinery.pkg.util.intstr.IntOrString"),
            "path": STR,
            "scheme": {"enum": ["http", "https"]},
            "params": {"type": "object", "additionalProperties": {"type": "array"}},
            "interval": DURATION,
            "scrapeTimeout": DURATION,
            "honorLabels": BOOL,
            "honorTimestamps": BOOL,
            "followRedirects": BOOL,
            "enableHttp2": BOOL,
            "filterRunning": BOOL,
            "proxyUrl": STR,
            "bearerTokenSecret": secret_key,
            "authorization": strict({"type": STR, "credentials": secret_key}),
            "basicAuth": strict({"username": secret_key, "password": secret_key}),
            "tlsConfig": OBJ,
            "oauth2": OBJ,
            "relabelings": {"type": "array", "items": OBJ},
            "metricRelabelings": {"type": "array", "items": OBJ},
        }
    )
    spec = strict(
        {
            "jobLabel": STR,
            "targetLabels": STR_LIST,
            "podTargetLabels": STR_LIST,
            "endpoints": {"type": "array", "items": endpoint},
            "selector": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
            "namespaceSelector": strict(
                {"any": BOOL, "matchNames": {"type": "array", "items": STR}}
            ),
            "sampleLimit": INT,
            "targetLimit": INT,
            "labelLimit": INT,
            "labelNameLengthLimit": INT,
            "labelValueLengthLimit": INT,
            "keepDroppedTargets": INT,
            "attachMetadata": strict({"node": BOOL}),
            "scrapeClass": STR,
        },
        ["selector"],
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "Prometheus Operator ServiceMonitor monitoring.coreos.com/v1 (vendored "
        "subset; see make_schemas.py)",
        **strict(
            {
                "apiVersion": {"const": "monitoring.coreos.com/v1"},
                "kind": {"const": "ServiceMonitor"},
                "metadata": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                "spec": spec,
            },
            ["apiVersion", "kind", "metadata", "spec"],
        ),
    }


SCHEMAS = {
    "inferenceservice-serving.kserve.io-v1beta1.json": inference_service,
    "servicemonitor-monitoring.coreos.com-v1.json": service_monitor,
}

if __name__ == "__main__":
    for name, build in SCHEMAS.items():
        (HERE / name).write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {HERE / name}")
