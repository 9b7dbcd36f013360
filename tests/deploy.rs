//! `deploy/` against the worker it deploys: the facts that connect the two and would break
//! silently when one side changes (the drain timeout and the grace period, the probes and the
//! health routes, the environment the worker reads, the mounted configuration, the queue KEDA
//! watches, the metrics the alerts read, the image's build, the RabbitMQ definitions).
//!
//! The manifests' own validity (kustomize renders them, Kubernetes and CRD schemas, YAML
//! lint, Dockerfile lint) is checked by `scripts/check-deploy.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dialex_worker::amqp::topology;
use dialex_worker::ccc::ErrorClass;
use dialex_worker::config::{LogFormat, Settings, StoreBackend};
use dialex_worker::credentials::Credentials;
use dialex_worker::defer::Tiers;
use dialex_worker::gates::hours::BusinessHours;
use dialex_worker::health::{self, Health};
use dialex_worker::metrics::{Metrics, StoreOp};
use dialex_worker::outcome::DeferReason;
use promql_parser::parser::{Expr, VectorSelector};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use yaml_serde::Value;

/// The image's build command; `scripts/check-deploy.sh` runs the same one.
const BUILD_COMMAND: &str = "cargo build --release --locked --bin dialex-worker";
const BASE: &str = "deploy/k8s/base";
const CONFIG_TOML: &str = "deploy/k8s/base/config.toml";
const SECRET_EXAMPLE: &str = "deploy/k8s/base/secret.example.yaml";

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// Every document of a YAML file (`---`-separated).
fn documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The YAML files under `deploy/k8s` (base, components, overlays, the Secret example),
/// relative to the repository.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("deploy/k8s is readable")
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                walk(&entry, found);
            } else if entry.extension().is_some_and(|e| e == "yaml") {
                found.push(entry);
            }
        }
    }
    let root = path("");
    let mut files = Vec::new();
    walk(&path("deploy/k8s"), &mut files);
    files
        .into_iter()
        .map(|file| {
            file.strip_prefix(&root)
                .expect("under the repository")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Every Kubernetes resource in [`yaml_files`] (not kustomizations), with its file.
fn all_resources() -> Vec<(String, Value)> {
    yaml_files()
        .into_iter()
        .flat_map(|file| {
            documents(&file)
                .into_iter()
                .map(move |doc| (file.clone(), doc))
        })
        .filter(|(_, doc)| {
            doc["kind"]
                .as_str()
                .is_some_and(|k| k != "Kustomization" && k != "Component")
        })
        .collect()
}

/// The one resource of `kind` in `relative`.
fn resource(relative: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = documents(relative)
        .into_iter()
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in {relative}");
    found.remove(0)
}

fn deployment() -> Value {
    resource(&format!("{BASE}/deployment.yaml"), "Deployment")
}

fn worker_container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: the worker");
    &containers[0]
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (str_of(k, "label").to_owned(), str_of(v, "label").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// `selector` picks every pod carrying `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Secret example's `stringData`, by Secret name.
fn secret_examples() -> BTreeMap<String, BTreeMap<String, String>> {
    documents(SECRET_EXAMPLE)
        .into_iter()
        .map(|doc| {
            assert_eq!(doc["kind"].as_str(), Some("Secret"), "{SECRET_EXAMPLE}");
            let name = str_of(&doc["metadata"]["name"], "Secret name").to_owned();
            (name, string_map(&doc["stringData"]))
        })
        .collect()
}

/// The `DIALEX_*` variables the Deployment sets, with the Secret example's placeholder values.
fn example_environment() -> Vec<(String, String)> {
    let secrets = secret_examples();
    worker_container(&deployment())["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|entry| {
            let name = str_of(&entry["name"], "env name");
            let reference = &entry["valueFrom"]["secretKeyRef"];
            let secret = &secrets[str_of(&reference["name"], "secret name")];
            let value = secret.get(str_of(&reference["key"], "secret key"))?;
            name.starts_with("DIALEX_")
                .then(|| (name.to_owned(), value.clone()))
        })
        .collect()
}

/// The settings the pods run with: defaults, the ConfigMap's file, the Secret's variables.
fn production_settings() -> Settings {
    Settings::load_from(Some(&path(CONFIG_TOML)), example_environment())
        .unwrap_or_else(|e| panic!("{CONFIG_TOML} with the Secret's variables: {e}"))
}

#[test]
fn the_grace_period_outlasts_the_drain_timeout() {
    let settings = production_settings();
    let deployment = deployment();
    let grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds is set");
    let drain_ms = settings.shutdown.drain_timeout_ms;
    // The drain, then closing the connections: at least 5 s for that, as Kubernetes' own
    // default (30 s) leaves beside the default drain (25 s).
    assert!(
        grace_s * 1000 >= drain_ms + 5_000,
        "terminationGracePeriodSeconds {grace_s} s must exceed shutdown.drain_timeout_ms \
         {drain_ms} ms by at least 5 s, or pods are killed mid-drain"
    );
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"].is_null(),
        "no preStop hook: it would eat into the grace period before SIGTERM reaches the worker"
    );
}

#[tokio::test]
async fn the_probes_ask_the_health_routes_on_the_configured_port() {
    let settings = production_settings();
    let listen = settings.http.listen;
    assert!(
        listen.ip().is_unspecified(),
        "http.listen {listen} must listen on every interface for the kubelet to reach it"
    );
    let container = worker_container(&deployment()).clone();
    let ports = container["ports"].as_sequence().expect("ports");
    let http = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a container port named http");
    assert_eq!(
        http["containerPort"].as_u64(),
        Some(u64::from(listen.port())),
        "the container port is http.listen's"
    );

    // The paths must be the worker's routes, and mean what the probes need: liveness answers
    // 200 with nothing connected; readiness answers 503 until the worker consumes.
    let metrics = Metrics::default();
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let bound = health::start(
        "127.0.0.1:0".parse().unwrap(),
        &metrics,
        health,
        stop.clone(),
    )
    .await
    .expect("health endpoint starts");
    let client = reqwest::Client::new();
    for (probe, expected) in [
        ("startupProbe", 200),
        ("livenessProbe", 200),
        ("readinessProbe", 503),
    ] {
        let get = &container[probe]["httpGet"];
        assert!(!get.is_null(), "{probe} is an httpGet probe");
        let port_ok = match &get["port"] {
            Value::String(name) => name == "http",
            Value::Number(n) => n.as_u64() == Some(u64::from(listen.port())),
            other => panic!("{probe} port {other:?}"),
        };
        assert!(port_ok, "{probe} asks port http ({})", listen.port());
        let probe_path = str_of(&get["path"], "probe path");
        let status = client
            .get(format!("http://{bound}{probe_path}"))
            .send()
            .await
            .expect("probe request")
            .status()
            .as_u16();
        assert_eq!(
            status, expected,
            "{probe} {probe_path} on a worker that is not consuming"
        );
    }
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    stop.cancel();
}

#[test]
fn the_environment_holds_only_variables_the_worker_reads() {
    let default_keys: toml::Table =
        toml::from_str(dialex_worker::config::DEFAULT_TOML).expect("default.toml parses");
    let secrets = secret_examples();
    let container = worker_container(&deployment()).clone();
    assert!(
        container["envFrom"].is_null(),
        "explicit env only: envFrom would pass any key of the Secret, typos included"
    );
    let env = container["env"].as_sequence().expect("env");
    let mut names = Vec::new();
    for entry in env {
        let name = str_of(&entry["name"], "env name");
        names.push(name.to_owned());
        assert_ne!(name, "HOSTNAME", "Kubernetes sets HOSTNAME (the pod name)");
        let reference = &entry["valueFrom"]["secretKeyRef"];
        assert!(
            !reference.is_null(),
            "{name} comes from a Secret (everything else belongs in config.toml)"
        );
        let secret_name = str_of(&reference["name"], "secret name");
        let key = str_of(&reference["key"], "secret key");
        let optional = reference["optional"].as_bool().unwrap_or(false);
        assert!(
            secrets
                .get(secret_name)
                .is_some_and(|keys| keys.contains_key(key)),
            "{name}: key {key} of Secret {secret_name} is in {SECRET_EXAMPLE}"
        );
        match name {
            // Optional: the pods may assume a RAM role instead (RRSA), and the worker refuses
            // to start with one of the two and not the other.
            Credentials::ACCESS_KEY_ID | Credentials::ACCESS_KEY_SECRET => {
                assert!(
                    optional,
                    "{name} is left out of the Secret with RRSA: optional"
                )
            }
            Credentials::SECURITY_TOKEN => {
                assert!(optional, "{name} is only for STS credentials: optional")
            }
            dialex if dialex.starts_with("DIALEX_") => {
                // A real key of config/default.toml ...
                let key_path: Vec<String> = dialex["DIALEX_".len()..]
                    .split("__")
                    .map(str::to_lowercase)
                    .collect();
                let mut node = toml::Value::Table(default_keys.clone());
                for part in &key_path {
                    node = node
                        .get(part)
                        .cloned()
                        .unwrap_or_else(|| panic!("{dialex} names no key of config/default.toml"));
                }
                // ... and the worker takes the value from this variable.
                let value = secrets[secret_name][key].clone();
                let settings = Settings::load_from(
                    Some(&path(CONFIG_TOML)),
                    [(dialex.to_owned(), value.clone())],
                )
                .unwrap_or_else(|e| panic!("{dialex}={value}: {e}"));
                let seen: &SecretString = match key_path.join(".").as_str() {
                    "amqp.url" => &settings.amqp.url,
                    "store.url" => &settings.store.url,
                    "cooldown.hash_key" => &settings.cooldown.hash_key,
                    other => panic!("{dialex}: {other} is not a secret; set it in config.toml"),
                };
                assert_eq!(seen.expose_secret(), value, "{dialex} reaches the settings");
            }
            other => panic!("the worker does not read {other}"),
        }
    }
    for required in [
        Credentials::ACCESS_KEY_ID,
        Credentials::ACCESS_KEY_SECRET,
        Credentials::SECURITY_TOKEN,
        "DIALEX_AMQP__URL",
        "DIALEX_STORE__URL",
        "DIALEX_COOLDOWN__HASH_KEY",
    ] {
        assert!(names.iter().any(|n| n == required), "{required} is set");
    }

    // That is the only place the environment is set: no other Deployment, no patch.
    for (file, doc) in all_resources() {
        if doc["kind"].as_str() == Some("Deployment") {
            assert_eq!(file, format!("{BASE}/deployment.yaml"), "one Deployment");
        }
    }
    for file in yaml_files() {
        if file != format!("{BASE}/deployment.yaml") && file != SECRET_EXAMPLE {
            let text = read(&file);
            assert!(
                !text.contains("DIALEX_") && !text.contains("ALIBABA_CLOUD_"),
                "{file} sets the worker's environment; keep it in {BASE}/deployment.yaml, \
                 where this test checks it"
            );
        }
    }

    // The operator guide's command creates every key the Deployment needs.
    let guide = read("deploy/README.md");
    for entry in env {
        let key = str_of(&entry["valueFrom"]["secretKeyRef"]["key"], "secret key");
        if entry["valueFrom"]["secretKeyRef"]["optional"].as_bool() != Some(true) {
            assert!(
                guide.contains(&format!("--from-literal={key}=")),
                "deploy/README.md's `kubectl create secret` sets {key}"
            );
        }
    }
}

#[test]
fn the_secret_example_holds_placeholders_only_and_is_never_applied() {
    for (name, keys) in secret_examples() {
        for (key, value) in keys {
            assert!(
                value.contains("CHANGE-ME"),
                "{SECRET_EXAMPLE}: {name}.{key} must be an obvious placeholder"
            );
        }
    }
    for (file, doc) in all_resources() {
        if file != SECRET_EXAMPLE {
            assert_ne!(
                doc["kind"].as_str(),
                Some("Secret"),
                "{file}: Secrets are created by hand, never committed"
            );
        }
    }
    for kustomization in [
        "deploy/k8s/base/kustomization.yaml",
        "deploy/k8s/overlays/example/kustomization.yaml",
    ] {
        let doc = resource(kustomization, "Kustomization");
        let resources = doc["resources"].as_sequence().expect("resources");
        assert!(
            resources
                .iter()
                .all(|r| !r.as_str().unwrap_or("").contains("secret")),
            "{kustomization} must not apply the Secret example"
        );
    }
}

#[test]
fn the_configmap_config_passes_check_config_and_is_mounted_where_run_reads_it() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dialex-worker"));
    command
        .args(["check-config", "--config"])
        .arg(path(CONFIG_TOML))
        .env_clear()
        .envs(example_environment());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = command.output().expect("dialex-worker runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check-config --config {CONFIG_TOML}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in ["backend = \"redis\"", "format = \"json\""] {
        assert!(stdout.contains(expected), "no {expected} in:\n{stdout}");
    }
    let settings = production_settings();
    assert_eq!(
        settings.store.backend,
        StoreBackend::Redis,
        "many replicas share Redis"
    );
    assert_eq!(settings.log.format, LogFormat::Json);
    assert!(
        !read(CONFIG_TOML).contains("url ="),
        "URLs carry passwords: they come from the Secret, not config.toml"
    );

    // run --config <mount>/<file>, the mount is the generated ConfigMap, the file its key.
    let deployment = deployment();
    let container = worker_container(&deployment);
    assert!(
        container["command"].is_null(),
        "the image's entrypoint is the worker; only args are given"
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(args.first(), Some(&"run"), "args: {args:?}");
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(Path::new)
        .expect("run --config <file>");
    let mount_dir = config_path.parent().expect("a directory");
    let file_name = config_path.file_name().expect("a file").to_string_lossy();
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(mount_dir))
        .unwrap_or_else(|| panic!("a volume mounted at {}", mount_dir.display()));
    let volume_name = str_of(&mount["name"], "volume");
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .expect("the mounted volume");
    let config_map = str_of(&volume["configMap"]["name"], "configMap volume");
    let kustomization = resource(&format!("{BASE}/kustomization.yaml"), "Kustomization");
    let generator = kustomization["configMapGenerator"]
        .as_sequence()
        .expect("configMapGenerator")
        .iter()
        .find(|g| g["name"].as_str() == Some(config_map))
        .unwrap_or_else(|| panic!("a configMapGenerator named {config_map}"));
    let files: Vec<&str> = generator["files"]
        .as_sequence()
        .expect("files")
        .iter()
        .map(|f| str_of(f, "file"))
        .collect();
    let config_file = Path::new(CONFIG_TOML)
        .file_name()
        .expect("file name")
        .to_string_lossy();
    assert_eq!(
        files,
        [config_file.as_ref()],
        "the ConfigMap is made of {CONFIG_TOML}"
    );
    assert_eq!(file_name, config_file, "the key run --config reads");
}

#[test]
fn the_calendar_reads_as_its_comments_say() {
    let settings = production_settings();
    let calendar_settings = &settings.business_hours.default;
    assert_eq!(calendar_settings.timezone, "Asia/Shanghai");
    let hours = BusinessHours::new(&settings.business_hours).expect("calendar");
    let calendar = hours.default_calendar();
    let at = |date: &str, hour: i8, minute: i8| {
        let date: jiff::civil::Date = date.parse().expect("date");
        date.at(hour, minute, 0, 0)
            .in_tz(&calendar_settings.timezone)
            .expect("zoned")
            .timestamp()
    };
    assert!(
        !calendar_settings.closed_dates.is_empty(),
        "public holidays"
    );
    assert!(
        !calendar_settings.open_dates.is_empty(),
        "make-up working days"
    );
    for date in &calendar_settings.closed_dates {
        assert!(
            !calendar.is_open(at(date, 10, 0)),
            "holiday {date} is closed"
        );
    }
    for (date, windows) in &calendar_settings.open_dates {
        let parsed: jiff::civil::Date = date.parse().expect("date");
        assert!(
            matches!(
                parsed.weekday(),
                jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday
            ),
            "make-up working day {date} falls at a weekend"
        );
        let start = windows[0].split('-').next().expect("HH:MM");
        let (h, m) = start.split_once(':').expect("HH:MM");
        assert!(
            calendar.is_open(at(date, h.parse().unwrap(), m.parse().unwrap())),
            "make-up working day {date} opens at {start}"
        );
    }
    for day in ["sat", "sun"] {
        assert_eq!(
            calendar_settings.weekly.get(day),
            Some(&Vec::new()),
            "{day} is closed, written out (a missing day keeps the default hours)"
        );
    }
}

#[test]
fn keda_scales_on_the_request_queue() {
    let settings = production_settings();
    let scaled = resource(
        "deploy/k8s/components/keda/scaledobject.yaml",
        "ScaledObject",
    );
    let spec = &scaled["spec"];
    let deployment = deployment();
    assert_eq!(
        spec["scaleTargetRef"]["name"].as_str(),
        deployment["metadata"]["name"].as_str(),
        "KEDA scales the worker's Deployment"
    );
    let min = spec["minReplicaCount"].as_u64().expect("minReplicaCount");
    let max = spec["maxReplicaCount"].as_u64().expect("maxReplicaCount");
    assert!(1 <= min && min <= max, "replicas {min}..={max}");

    let triggers = spec["triggers"].as_sequence().expect("triggers");
    assert_eq!(triggers.len(), 1);
    let trigger = &triggers[0];
    assert_eq!(trigger["type"].as_str(), Some("rabbitmq"));
    let metadata = &trigger["metadata"];
    assert_eq!(
        metadata["queueName"].as_str(),
        Some(settings.amqp.names.request_queue.as_str()),
        "the trigger watches amqp.names.request_queue"
    );
    assert_eq!(
        metadata["protocol"].as_str(),
        Some("http"),
        "the management API counts unacknowledged messages too"
    );
    assert_eq!(metadata["mode"].as_str(), Some("QueueLength"));
    let value: f64 = str_of(&metadata["value"], "value")
        .parse()
        .expect("a number");
    assert!(
        value > f64::from(settings.amqp.prefetch),
        "value {value} per replica must exceed amqp.prefetch {}: a replica's own \
         unacknowledged deliveries count",
        settings.amqp.prefetch
    );

    let auth = resource(
        "deploy/k8s/components/keda/triggerauthentication.yaml",
        "TriggerAuthentication",
    );
    assert_eq!(
        trigger["authenticationRef"]["name"].as_str(),
        auth["metadata"]["name"].as_str()
    );
    let secrets = secret_examples();
    for target in auth["spec"]["secretTargetRef"].as_sequence().expect("refs") {
        let name = str_of(&target["name"], "secret");
        let key = str_of(&target["key"], "key");
        assert!(
            secrets.get(name).is_some_and(|s| s.contains_key(key)),
            "Secret {name} key {key} is in {SECRET_EXAMPLE}"
        );
        if target["parameter"].as_str() == Some("host") {
            let url = url::Url::parse(&secrets[name][key]).expect("management URL");
            assert!(
                matches!(url.scheme(), "http" | "https"),
                "protocol http needs the management API's URL, not amqp://"
            );
        }
    }
}

#[test]
fn selectors_and_port_names_meet() {
    let deployment = deployment();
    let pod_labels = string_map(&deployment["spec"]["template"]["metadata"]["labels"]);
    assert!(
        selects(
            &string_map(&deployment["spec"]["selector"]["matchLabels"]),
            &pod_labels
        ),
        "the Deployment's selector picks its pods"
    );
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_sequence()
        .expect("topologySpreadConstraints")
    {
        assert!(
            selects(
                &string_map(&constraint["labelSelector"]["matchLabels"]),
                &pod_labels
            ),
            "topology spread counts the worker's pods"
        );
    }
    let pdb = resource(
        &format!("{BASE}/poddisruptionbudget.yaml"),
        "PodDisruptionBudget",
    );
    assert!(
        selects(
            &string_map(&pdb["spec"]["selector"]["matchLabels"]),
            &pod_labels
        ),
        "the PodDisruptionBudget covers the worker's pods"
    );
    let service = resource(&format!("{BASE}/service.yaml"), "Service");
    assert!(
        selects(&string_map(&service["spec"]["selector"]), &pod_labels),
        "the Service selects the worker's pods"
    );
    let service_port = &service["spec"]["ports"][0];
    let container = worker_container(&deployment);
    let http = &container["ports"][0];
    assert_eq!(
        service_port["targetPort"].as_str(),
        http["name"].as_str(),
        "the Service targets the container's named port"
    );
    assert_eq!(
        service_port["port"].as_u64(),
        http["containerPort"].as_u64()
    );
    let monitor = resource(
        "deploy/k8s/components/monitoring/servicemonitor.yaml",
        "ServiceMonitor",
    );
    assert!(
        selects(
            &string_map(&monitor["spec"]["selector"]["matchLabels"]),
            &string_map(&service["metadata"]["labels"])
        ),
        "the ServiceMonitor selects the Service"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), service_port["name"].as_str());
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert_eq!(
        service["spec"]["ports"].as_sequence().map(Vec::len),
        Some(1),
        "one port"
    );
    let account = resource(&format!("{BASE}/serviceaccount.yaml"), "ServiceAccount");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        account["metadata"]["name"].as_str()
    );
}

#[test]
fn the_pods_run_locked_down() {
    let deployment = deployment();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let container = worker_container(&deployment);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        security["capabilities"]["drop"][0].as_str(),
        Some("ALL"),
        "every capability dropped"
    );
    // A read-only root filesystem leaves the worker nowhere to write: fine with the Redis
    // store, not with the embedded one (store.data_dir).
    assert_eq!(production_settings().store.backend, StoreBackend::Redis);
    let resources = &container["resources"];
    for key in ["requests", "limits"] {
        assert!(!resources[key]["memory"].is_null(), "memory {key} set");
    }
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<String> {
    let text = read("deploy/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn the_image_builds_this_worker_and_runs_it_as_deployed() {
    let instructions = dockerfile();
    let find = |prefix: &str| -> Vec<&String> {
        instructions
            .iter()
            .filter(|i| i.starts_with(prefix))
            .collect()
    };
    let stages = find("FROM ");
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");

    // The builder's Rust is at least the crate's rust-version.
    let builder = stages[0].split_whitespace().nth(1).expect("builder image");
    let tag = builder
        .strip_prefix("rust:")
        .expect("an official rust image");
    let version = tag.split('-').next().expect("version");
    let version_of = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        version_of(version) >= version_of(env!("CARGO_PKG_RUST_VERSION")),
        "builder Rust {version} < rust-version {}",
        env!("CARGO_PKG_RUST_VERSION")
    );

    // The build: the command CI runs, for this package's binary.
    let runs = find("RUN ");
    let build = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build.contains(BUILD_COMMAND),
        "the image builds with `{BUILD_COMMAND}` (as scripts/check-deploy.sh): {build}"
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .file_name()
        .expect("binary name")
        .to_string_lossy()
        .into_owned();
    assert!(BUILD_COMMAND.ends_with(&format!("--bin {binary}")));
    let built = format!("target/release/{binary}");
    let installed = build
        .split(&format!("cp {built} "))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{built} is copied out of the build: {build}"));

    // What the build needs is in the build stage and in the build context.
    let copies = find("COPY ");
    let context: Vec<&str> = copies
        .iter()
        .filter(|c| !c.contains("--from="))
        .flat_map(|c| {
            let words: Vec<&str> = c.split_whitespace().skip(1).collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    let dockerignore = read(".dockerignore");
    let allowed: Vec<&str> = dockerignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    assert!(
        dockerignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore sends only what it lists (target/ is gigabytes)"
    );
    for needed in ["Cargo.toml", "Cargo.lock", "src", "config"] {
        assert!(context.contains(&needed), "the build copies {needed}");
        assert!(
            allowed.contains(&needed),
            ".dockerignore lets {needed} through"
        );
    }
    for source in &context {
        assert!(
            allowed.contains(source),
            ".dockerignore lets {source} through"
        );
    }

    // The runtime stage runs that binary, `run` by default, as the Deployment expects.
    let from_build = copies
        .iter()
        .find(|c| c.contains("--from=build"))
        .expect("the binary copied from the build stage");
    let words: Vec<&str> = from_build.split_whitespace().collect();
    assert_eq!(words[2], installed, "the runtime copies the built binary");
    let runtime_binary = words[3];
    let entrypoint: Vec<String> =
        serde_json::from_str(find("ENTRYPOINT ")[0].trim_start_matches("ENTRYPOINT "))
            .expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, [runtime_binary]);
    let cmd: Vec<String> =
        serde_json::from_str(find("CMD ")[0].trim_start_matches("CMD ")).expect("CMD in exec form");
    assert_eq!(cmd, ["run"]);
    assert_eq!(find("STOPSIGNAL ")[0], "STOPSIGNAL SIGTERM");

    let settings = production_settings();
    assert_eq!(
        find("EXPOSE ")[0],
        &format!("EXPOSE {}", settings.http.listen.port()),
        "the image exposes http.listen's port"
    );
    let user = find("USER ")[0].trim_start_matches("USER ").to_owned();
    let uid: u64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("a numeric USER, so runAsNonRoot can be verified");
    assert_ne!(uid, 0, "not root");
    assert_eq!(
        deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64(),
        Some(uid),
        "the Deployment runs as the image's user"
    );

    // The ConfigMap mount does not hide anything the image ships.
    let container = worker_container(&deployment()).clone();
    let mount = str_of(
        &container["volumeMounts"][0]["mountPath"],
        "the config mount",
    )
    .to_owned();
    for copy in &copies {
        let target = copy.split_whitespace().last().expect("COPY target");
        assert!(
            !target.starts_with(&mount),
            "{mount} (the ConfigMap) would hide {target}"
        );
    }
    for instruction in &instructions {
        for word in ["ENV ", "ARG "] {
            if let Some(rest) = instruction.strip_prefix(word) {
                let upper = rest.to_uppercase();
                assert!(
                    ![
                        "SECRET",
                        "PASSWORD",
                        "ACCESS_KEY",
                        "URL",
                        "TOKEN",
                        "HASH_KEY"
                    ]
                    .iter()
                    .any(|s| upper.contains(s)),
                    "no secret baked into the image: {instruction}"
                );
            }
        }
    }
}

/// A RabbitMQ vhost of this test's own, deleted when dropped.
struct ScratchVhost(String);

impl ScratchVhost {
    fn create() -> ScratchVhost {
        let name = format!(
            "dialex-deploy-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        ScratchVhost(name)
    }
}

impl Drop for ScratchVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.0])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (RabbitMQ is installed and running; scripts/services.sh)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `value` with every object's keys in sorted order, whatever serde_json's map keeps.
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

/// The queues, exchanges and bindings of one vhost in definitions form, without the vhost,
/// sorted, so two sets compare as equal when they declare the same things.
fn topology_of(definitions: &serde_json::Value, vhost: &str) -> serde_json::Value {
    let mut result = serde_json::Map::new();
    for section in ["exchanges", "queues", "bindings"] {
        let mut entries: Vec<serde_json::Value> = definitions[section]
            .as_array()
            .unwrap_or_else(|| panic!("definitions have {section}"))
            .iter()
            .filter(|e| e["vhost"] == vhost)
            .map(|e| {
                let mut e = canonical(e);
                e.as_object_mut().expect("an object").remove("vhost");
                e
            })
            .collect();
        entries.sort_by_key(|e| e.to_string());
        result.insert(section.to_owned(), serde_json::Value::Array(entries));
    }
    serde_json::Value::Object(result)
}

/// What `file` lacks, has in excess, or has otherwise than `declared`, one line each.
fn differences(declared: &serde_json::Value, file: &serde_json::Value) -> Vec<String> {
    let key = |section: &str, entry: &serde_json::Value| match section {
        "bindings" => format!(
            "binding {} -> {} ({})",
            entry["source"], entry["destination"], entry["routing_key"]
        ),
        _ => format!("{} {}", section.trim_end_matches('s'), entry["name"]),
    };
    let mut found = Vec::new();
    for section in ["exchanges", "queues", "bindings"] {
        let index = |value: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
            value[section]
                .as_array()
                .expect("a section")
                .iter()
                .map(|entry| (key(section, entry), entry.clone()))
                .collect()
        };
        let (worker, listed) = (index(declared), index(file));
        for (name, entry) in &worker {
            match listed.get(name) {
                None => found.push(format!("missing {name}: the worker declares {entry}")),
                Some(other) if other != entry => found.push(format!(
                    "{name}: the worker declares {entry}, the file says {other}"
                )),
                Some(_) => {}
            }
        }
        for name in listed.keys().filter(|name| !worker.contains_key(*name)) {
            found.push(format!(
                "{name} is in the file, but the worker does not declare it"
            ));
        }
    }
    found
}

/// The worker's [`topology::plan`] for the default settings, in definitions form.
fn planned_definitions() -> serde_json::Value {
    let settings = Settings::load_from(None, Vec::new()).expect("defaults");
    let tiers = Tiers::new(&settings.deferral, &settings.amqp.names);
    let plan = topology::plan(&settings.amqp, &tiers, None);
    let exchanges: Vec<_> = plan
        .exchanges
        .iter()
        .map(|e| {
            json!({"name": e.name, "type": e.kind, "durable": true, "auto_delete": false,
                   "arguments": {}})
        })
        .collect();
    let queues: Vec<_> = plan
        .queues
        .iter()
        .map(|q| {
            let arguments: serde_json::Map<String, serde_json::Value> = q
                .arguments
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        topology::Argument::Text(text) => json!(text),
                        topology::Argument::Number(n) => json!(n),
                    };
                    ((*name).to_owned(), value)
                })
                .collect();
            json!({"name": q.name, "type": "quorum", "durable": true, "auto_delete": false,
                   "arguments": arguments})
        })
        .collect();
    let bindings: Vec<_> = plan
        .bindings
        .iter()
        .map(|b| {
            json!({"source": b.exchange, "destination": b.queue, "destination_type": "queue",
                   "routing_key": b.routing_key, "arguments": {}})
        })
        .collect();
    canonical(&json!({"exchanges": exchanges, "queues": queues, "bindings": bindings}))
}

/// `deploy/rabbitmq/definitions.json` is the worker's topology plan for the default names and
/// tiers (no broker needed; the test below also runs the declaration on a real one).
#[test]
fn rabbitmq_definitions_follow_the_topology_plan() {
    let file: serde_json::Value =
        serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).expect("JSON");
    let differences = differences(&planned_definitions(), &topology_of(&file, "/"));
    assert!(
        differences.is_empty(),
        "deploy/rabbitmq/definitions.json differs from topology::plan:\n{}",
        differences.join("\n")
    );
}

/// `deploy/rabbitmq/definitions.json` is what the worker declares for the default names and
/// tiers, argument for argument: the worker's own `topology::declare` runs against a fresh
/// vhost of a real broker, the broker exports what it made, and the two must be equal. Then
/// the file must import cleanly over it, as an operator would load it.
#[tokio::test]
async fn rabbitmq_definitions_are_what_the_worker_declares() {
    let file: serde_json::Value =
        serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).expect("JSON");
    let expected = topology_of(&file, "/");
    assert_ne!(expected["queues"], json!([]), "queues for vhost \"/\"");

    let settings = Settings::load_from(None, Vec::new()).expect("defaults");
    let vhost = ScratchVhost::create();
    let mut url = url::Url::parse(settings.amqp.url.expose_secret()).expect("amqp.url");
    url.set_path(&format!("/{}", vhost.0));
    let mut in_vhost = settings.amqp.clone();
    in_vhost.url = SecretString::from(url.to_string());
    let connection = dialex_worker::amqp::connect(&in_vhost, "dialex-deploy-test")
        .await
        .expect("RabbitMQ on amqp.url's host (scripts/services.sh starts it)");
    let channel = connection.create_channel().await.expect("channel");
    let tiers = Tiers::new(&settings.deferral, &settings.amqp.names);
    topology::declare(&channel, &settings.amqp, &tiers, None)
        .await
        .expect("the worker declares its topology");
    let _ = connection.close(200, "bye".into()).await;

    let exported: serde_json::Value =
        serde_json::from_str(&rabbitmqctl(&["export_definitions", "-"])).expect("export");
    let declared = topology_of(&exported, &vhost.0);
    let differences = differences(&declared, &expected);
    assert!(
        differences.is_empty(),
        "deploy/rabbitmq/definitions.json differs from what the worker declares:\n{}",
        differences.join("\n")
    );

    let imported = std::env::temp_dir().join(format!("{}.json", vhost.0));
    let retargeted = serde_json::to_string(&file)
        .unwrap()
        .replace("\"vhost\":\"/\"", &format!("\"vhost\":\"{}\"", vhost.0));
    std::fs::write(&imported, retargeted).expect("temp file");
    rabbitmqctl(&["import_definitions", imported.to_str().expect("UTF-8 path")]);
    let _ = std::fs::remove_file(&imported);
}

/// Label name to the values seen for it.
type Labels = BTreeMap<String, BTreeSet<String>>;

/// Labels whose values are a closed set the worker defines; an alert matching any other value
/// would never match anything.
const CLOSED_LABELS: [&str; 4] = ["status", "cause", "class", "op"];

/// Labels Prometheus adds to every scraped series (target labels), and so usable in `by (...)`.
const TARGET_LABELS: [&str; 4] = ["namespace", "pod", "instance", "job"];

/// Every sample the worker can export, with its labels and their values, read from the
/// Prometheus text of a [`Metrics`] in which every value of every closed label has a sample.
fn exported_samples() -> BTreeMap<String, Labels> {
    let metrics = Metrics::default(); // every status and pause cause, at 0
    metrics.ccc_attempt(None, Duration::ZERO);
    for class in ErrorClass::ALL {
        metrics.ccc_attempt(Some((class, "Throttling")), Duration::ZERO);
    }
    for op in StoreOp::ALL {
        metrics.store_op(op, Duration::ZERO);
    }
    for reason in DeferReason::ALL {
        metrics.deferred(reason);
    }
    metrics.dead_lettered("invalid_json");
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry).expect("metrics encode");

    let mut samples: BTreeMap<String, Labels> = BTreeMap::new();
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = samples.entry(line[..name_end].to_owned()).or_default();
        let Some((pairs, _)) = line[name_end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
        else {
            continue;
        };
        for pair in pairs.split(',') {
            let (name, value) = pair.split_once('=').expect("label=value");
            labels
                .entry(name.to_owned())
                .or_default()
                .insert(value.trim_matches('"').to_owned());
        }
    }
    samples
}

/// What a PromQL expression reads: its vector selectors, and the labels it groups or matches
/// by (`by`, `without`, `on`, `ignoring`).
#[derive(Default)]
struct Reads {
    selectors: Vec<VectorSelector>,
    labels: Vec<String>,
}

fn reads(expr: &str) -> Result<Reads, String> {
    fn walk(expr: &Expr, reads: &mut Reads) {
        match expr {
            Expr::Aggregate(aggregate) => {
                if let Some(modifier) = &aggregate.modifier {
                    reads
                        .labels
                        .extend(modifier.labels().labels.iter().cloned());
                }
                walk(&aggregate.expr, reads);
                if let Some(param) = &aggregate.param {
                    walk(param, reads);
                }
            }
            Expr::Binary(binary) => {
                if let Some(matching) = binary.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    reads
                        .labels
                        .extend(matching.labels().labels.iter().cloned());
                }
                walk(&binary.lhs, reads);
                walk(&binary.rhs, reads);
            }
            Expr::Unary(unary) => walk(&unary.expr, reads),
            Expr::Paren(paren) => walk(&paren.expr, reads),
            Expr::Subquery(subquery) => walk(&subquery.expr, reads),
            Expr::Call(call) => call.args.args.iter().for_each(|arg| walk(arg, reads)),
            Expr::VectorSelector(selector) => reads.selectors.push(selector.clone()),
            Expr::MatrixSelector(matrix) => reads.selectors.push(matrix.vs.clone()),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let mut found = Reads::default();
    walk(&promql_parser::parser::parse(expr)?, &mut found);
    Ok(found)
}

/// What RabbitMQ's own Prometheus plugin exports that a dashboard of the worker reads: queue
/// depths, per object (`prometheus.return_per_object_metrics`) or from
/// `/metrics/detailed?family=queue_coarse_metrics`, labelled by queue and vhost.
const RABBITMQ_METRICS: [&str; 4] = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages",
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages",
];

/// Checks that `expr` parses and reads only series the worker (or RabbitMQ) exports, with
/// labels they carry and closed-label values they take; `what` names it in a failure.
/// Returns the names of the series it reads.
fn check_expression(what: &str, expr: &str, exported: &BTreeMap<String, Labels>) -> Vec<String> {
    let read = reads(expr).unwrap_or_else(|e| panic!("{what}: not PromQL: {e}"));
    assert!(!read.selectors.is_empty(), "{what} reads some series");
    let mut groupable: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    let mut names = Vec::new();
    for selector in &read.selectors {
        let name = selector.name.as_deref().unwrap_or_default();
        names.push(name.to_owned());
        let rabbitmq: Labels = ["queue", "vhost"]
            .into_iter()
            .map(|label| (label.to_owned(), BTreeSet::new()))
            .collect();
        let known = if RABBITMQ_METRICS.contains(&name) {
            &rabbitmq
        } else {
            exported
                .get(name)
                .unwrap_or_else(|| panic!("{what}: the worker exports no {name:?}"))
        };
        groupable.extend(known.keys().cloned());
        if name.ends_with("_bucket") {
            groupable.insert("le".to_owned());
        }
        let matchers = selector
            .matchers
            .matchers
            .iter()
            .chain(selector.matchers.or_matchers.iter().flatten())
            .filter(|m| m.name != "__name__");
        for matcher in matchers {
            let label = &matcher.name;
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let values = known.get(label).unwrap_or_else(|| {
                panic!("{what}: {name} has no label {label} (it has {known:?})")
            });
            if !CLOSED_LABELS.contains(&label.as_str()) {
                continue;
            }
            // A matcher that keeps every value or none is a typo.
            let kept = values.iter().filter(|v| matcher.is_match(v)).count();
            assert!(
                kept > 0 && (kept < values.len() || values.len() == 1),
                "{what}: {name}{{{matcher}}} keeps {kept} of the values {label} takes ({values:?})"
            );
        }
    }
    for label in &read.labels {
        assert!(
            groupable.contains(label),
            "{what}: groups by {label}, which none of its series carries ({groupable:?})"
        );
    }
    names
}

#[test]
fn every_alert_parses_and_reads_metrics_and_labels_the_worker_exports() {
    let exported = exported_samples();
    assert!(
        exported["dialex_outcomes_total"]["status"].contains("unknown"),
        "the sample set is read correctly: {exported:?}"
    );
    let rules = resource(
        "deploy/k8s/components/monitoring/prometheusrule.yaml",
        "PrometheusRule",
    );
    let mut checked = 0;
    for group in rules["spec"]["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = str_of(&rule["alert"], "alert name");
            let expr = str_of(&rule["expr"], "expr");
            let names = check_expression(alert, expr, &exported);
            assert!(
                names.iter().all(|n| n.starts_with("dialex_")),
                "{alert} alerts on the worker's own metrics: {names:?}"
            );
            checked += names.len();
            for annotation in ["summary", "description"] {
                assert!(
                    !str_of(&rule["annotations"][annotation], annotation).is_empty(),
                    "{alert} says what it means"
                );
            }
        }
    }
    assert!(checked >= 5, "the rules were read: {checked} selectors");
}

/// `expr` with the dashboard's variables filled in as Grafana would.
fn with_dashboard_variables(expr: &str) -> String {
    let filled = expr
        .replace("$__rate_interval", "5m")
        .replace("$namespace", ".*")
        .replace("$request_queue", "dial.requests")
        .replace("$dead_queue", "dial.dead");
    assert!(!filled.contains('$'), "an unknown variable in {expr}");
    filled
}

#[test]
fn the_dashboard_draws_what_operators_ask_for_from_series_that_exist() {
    const DASHBOARD: &str = "deploy/k8s/components/monitoring/grafana-dashboard.json";
    let exported = exported_samples();
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| v["name"].as_str().expect("variable name"))
        .collect();
    assert_eq!(
        variables,
        ["datasource", "namespace", "request_queue", "dead_queue"].into()
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut read_series = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeSet<(u64, u64)> = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "{title}: id reused"
        );
        assert!(
            !panel["description"].as_str().unwrap_or_default().is_empty(),
            "{title} says what it shows"
        );
        // No two panels cover the same cell of the 24-column grid.
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "{title} fits the grid");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(cells.insert(cell), "{title} overlaps another panel");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries something");
        for target in targets {
            let expr = with_dashboard_variables(target["expr"].as_str().expect("expr"));
            read_series.extend(check_expression(title, &expr, &exported));
        }
    }
    for wanted in [
        "dialex_outcomes_total",
        "dialex_ccc_attempts_total",
        "dialex_limit_calls_per_second",
        "dialex_queue_to_dial_seconds_bucket",
        "dialex_in_flight",
        "dialex_paused",
        "dialex_dead_letters_total",
        "dialex_replays_received_total",
        "dialex_amqp_reconnects_total",
        "rabbitmq_detailed_queue_messages_ready",
    ] {
        assert!(read_series.contains(wanted), "no panel draws {wanted}");
    }

    // Shipped beside the alerts as a ConfigMap the Grafana sidecar picks up.
    let kustomization = documents("deploy/k8s/components/monitoring/kustomization.yaml");
    let generator = &kustomization[0]["configMapGenerator"][0];
    assert_eq!(generator["files"][0], "grafana-dashboard.json");
    assert_eq!(generator["options"]["labels"]["grafana_dashboard"], "1");
}

#[test]
fn an_expression_s_selectors_and_groupings_are_read() {
    let read = reads(
        r#"sum by (namespace, op) (rate(dialex_a_total{status="x", op=~"y|z"}[5m]))
           > on (namespace) 0.1 * dialex_b"#,
    )
    .unwrap();
    let names: Vec<_> = read.selectors.iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        [
            Some("dialex_a_total".to_owned()),
            Some("dialex_b".to_owned())
        ]
    );
    let labels: Vec<_> = read.selectors[0]
        .matchers
        .matchers
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(labels, ["status", "op"]);
    assert_eq!(read.labels, ["namespace", "namespace", "op"]);
    assert!(reads("sum by (namespace (dialex_b)").is_err());
}

/// A `key = value` setting of the shipped `rabbitmq.conf`.
fn rabbitmq_conf_setting(key: &str) -> String {
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    let values: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect();
    assert_eq!(values.len(), 1, "one {key} in rabbitmq.conf");
    values[0].to_owned()
}

/// `256Mi` and the like, in bytes.
fn quantity_bytes(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(quantity.trim_end_matches(char::is_alphabetic).len());
    let scale = match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unexpected unit {other:?} in {quantity}"),
    };
    number.parse::<u64>().expect("a whole number") * scale
}

#[test]
fn the_broker_admits_every_valid_request_and_a_full_window_of_the_largest_fits_the_pod() {
    let max_message_size: u64 = rabbitmq_conf_setting("max_message_size")
        .parse()
        .expect("max_message_size is a number of bytes");
    // A valid body, with room for the properties and the headers the worker adds when it
    // parks or defers one (reason, detail, attempts, times) and the broker's x-death.
    let headroom = 16 * 1024;
    assert!(
        max_message_size >= dialex_worker::validate::MAX_BODY_BYTES as u64 + headroom,
        "max_message_size {max_message_size} would refuse valid requests"
    );
    let settings = production_settings();
    let limit = quantity_bytes(str_of(
        &worker_container(&deployment())["resources"]["limits"]["memory"],
        "memory limit",
    ));
    // The README's measured peak under load (37 MB) rounded up, plus a prefetch window of
    // the largest messages, each copied once when it is parked.
    let baseline = 64 << 20;
    let window = u64::from(settings.amqp.prefetch) * max_message_size * 2;
    assert!(
        baseline + window <= limit,
        "amqp.prefetch {} x max_message_size {max_message_size} does not fit the {limit}-byte limit",
        settings.amqp.prefetch
    );
}
