use super::render::redacted_url;
use super::*;
use crate::ccc::ErrorClass;

fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_from(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// Settings loaded from a configuration file holding `toml`, over the defaults.
fn load_file(toml: &str) -> Result<Settings, ConfigError> {
    let dir = std::env::temp_dir().join(format!("dialex-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let settings = Settings::load_from(Some(&path), Vec::new());
    std::fs::remove_dir_all(dir).unwrap();
    settings
}

#[test]
fn defaults_load_and_validate() {
    let s = load(&[]).unwrap();
    assert_eq!(s.amqp.prefetch, 64);
    assert_eq!(s.amqp.names.request_queue, "dial.requests");
    assert_eq!(s.ccc.endpoint, "https://ccc.cn-shanghai.aliyuncs.com");
    assert_eq!(s.ccc.region_id, "cn-shanghai");
    assert_eq!(s.log.format, LogFormat::Pretty);
}

#[test]
fn environment_overrides_nested_keys() {
    let s = load(&[
        ("DIALEX_AMQP__PREFETCH", "7"),
        ("DIALEX_AMQP__NAMES__REQUEST_QUEUE", "q"),
        ("DIALEX_CCC__ENDPOINT", "http://127.0.0.1:9999"),
        ("OTHER_AMQP__PREFETCH", "9"),
        ("DIALEX_DEFERRAL__TIERS_MS", "1000,60000"),
        (
            "DIALEX_BUSINESS_HOURS__WEEKLY__SAT",
            "08:00-12:00,13:00-17:00",
        ),
    ])
    .unwrap();
    assert_eq!(
        s.business_hours.default.weekly["sat"],
        ["08:00-12:00", "13:00-17:00"]
    );
    assert_eq!(s.deferral.tiers_ms, [1000, 60000]);
    assert_eq!(s.amqp.prefetch, 7);
    assert_eq!(s.amqp.names.request_queue, "q");
    assert_eq!(s.ccc.endpoint, "http://127.0.0.1:9999");
}

#[test]
fn a_file_layers_over_the_defaults() {
    let s = load_file("[ccc]\nregion_id = \"cn-beijing\"\n").unwrap();
    assert_eq!(s.ccc.region_id, "cn-beijing");
    assert_eq!(s.amqp.prefetch, 64);
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("DIALEX_AMQP__PREFETCH", "0")], "amqp.prefetch"),
        (&[("DIALEX_AMQP__URL", "http://x")], "amqp.url"),
        (
            &[("DIALEX_CCC__ENDPOINT", "http://ccc.example.com")],
            "ccc.endpoint",
        ),
        (&[("DIALEX_CCC__ENDPOINT", "ftp://x")], "ccc.endpoint"),
        (&[("DIALEX_CCC__MAX_ATTEMPTS", "0")], "ccc.max_attempts"),
        (
            &[("DIALEX_CCC__REQUEST_TIMEOUT_MS", "1")],
            "ccc.request_timeout_ms",
        ),
        (
            &[("DIALEX_AMQP__NAMES__DEAD_QUEUE", "")],
            "amqp.names.dead_queue",
        ),
        (
            &[("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "0")],
            "shutdown.drain_timeout_ms",
        ),
    ];
    for (env, key) in cases {
        let err = load(env).unwrap_err().to_string();
        assert!(err.contains(key), "{env:?}: {err}");
    }
    // Type errors from the config crate name the key as well.
    let err = load(&[("DIALEX_AMQP__PREFETCH", "lots")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefetch"), "{err}");
}

#[test]
fn error_classes_extend_from_a_file() {
    let s = load_file(
        "[ccc.error_classes]\n\"Busy.*\" = \"retryable\"\n\"Forbidden.Instance\" = \"permanent\"\n",
    )
    .unwrap();
    assert_eq!(
        s.ccc.error_classes.get("Busy.*"),
        Some(&crate::ccc::ErrorClass::Retryable)
    );
    assert!(load_file("[ccc.error_classes]\n\"X\" = \"maybe\"\n").is_err());
}

#[test]
fn insecure_http_needs_the_switch() {
    let s = load(&[
        ("DIALEX_CCC__ENDPOINT", "http://ccc.internal"),
        ("DIALEX_CCC__ALLOW_INSECURE_HTTP", "true"),
    ]);
    assert!(s.is_ok());
}

#[test]
fn drain_timeout_defaults_to_25_seconds_and_must_be_positive() {
    let s = load(&[]).unwrap();
    assert_eq!(s.shutdown.drain_timeout(), Duration::from_secs(25));
    let s = load(&[("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "500")]).unwrap();
    assert_eq!(s.shutdown.drain_timeout(), Duration::from_millis(500));
    let err = load(&[("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "0")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                key: "shutdown.drain_timeout_ms",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_shutdown_keys_are_rejected() {
    let err = load_file("[shutdown]\ndrain_timeout = 5000\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("drain_timeout"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut s = Settings::load_from(None, Vec::new()).unwrap();
    s.amqp.prefetch = 0;
    s.limits.burst = 0;
    s.log.level = " ".into();
    let error = s.validate().expect_err("three problems").to_string();
    assert!(error.starts_with("3 configuration problems:"), "{error}");
    for key in ["amqp.prefetch", "limits.burst", "log.level"] {
        assert!(
            error.contains(&format!("\n  - configuration key `{key}`")),
            "{error}"
        );
    }
    // One problem reads as before.
    s.amqp.prefetch = 64;
    s.limits.burst = 1;
    let error = s.validate().expect_err("one problem").to_string();
    assert_eq!(error, "configuration key `log.level`: must not be empty");
}

#[test]
fn a_ca_file_needs_a_tls_url() {
    let mut s = Settings::load_from(None, Vec::new()).unwrap();
    s.amqp.tls_ca_file = "ca.pem".into();
    let error = s
        .validate()
        .expect_err("amqp:// with a CA file")
        .to_string();
    assert!(error.contains("amqp.tls_ca_file"), "{error}");
    s.amqp.url = SecretString::from("amqps://u:p@broker:5671/%2f");
    s.validate().expect("amqps:// with a CA file");

    s.store.backend = StoreBackend::Redis;
    s.store.tls_ca_file = "ca.pem".into();
    let error = s
        .validate()
        .expect_err("redis:// with a CA file")
        .to_string();
    assert!(error.contains("store.tls_ca_file"), "{error}");
    s.store.url = SecretString::from("rediss://:p@redis:6380/0");
    s.validate().expect("rediss:// with a CA file");
    s.store.url = SecretString::from("http://redis:6379/0");
    let error = s.validate().expect_err("not a Redis URL").to_string();
    assert!(error.contains("store.url"), "{error}");
}

#[test]
fn urls_are_redacted_to_user_host_and_path() {
    let cases = [
        (
            "amqp://alice:s3cret@rabbit:5672/%2f",
            "amqp://alice:***@rabbit:5672/%2f",
        ),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("amqps://bob@rabbit/vh", "amqps://bob@rabbit/vh"),
        ("s3cret", "***"),
    ];
    for (url, shown) in cases {
        assert_eq!(redacted_url(&SecretString::from(url)), shown);
    }
}

#[test]
fn redacted_toml_loads_back_to_the_same_settings() {
    let dir = std::env::temp_dir().join(format!("dialex-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("in.toml");
    std::fs::write(
        &file,
        r#"
[ccc.error_classes]
"Busy.*" = "retryable"

[business_hours]
closed_dates = ["2026-10-01"]
weekly = { sat = [] }
open_dates = { "2026-10-10" = ["09:00-18:00"] }

[business_hours.instances."inst-1"]
timezone = "Europe/Berlin"
weekly = { mon = ["08:00-12:00", "13:00-17:00"] }

[limits.instances."inst-1"]
calls_per_second = 2.5
class = "vip"
"#,
    )
    .unwrap();
    let original = Settings::load_from(
        Some(&file),
        [
            ("DIALEX_AMQP__URL", "amqp://alice:s3cret-pw@rabbit:5672/%2f"),
            ("DIALEX_STORE__URL", "redis://:r3dis-pw@redis:6379/0"),
            ("DIALEX_COOLDOWN__HASH_KEY", "hash-key-value"),
            ("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "12345"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .unwrap();
    let printed = original.to_redacted_toml().unwrap();
    for secret in ["s3cret-pw", "r3dis-pw", "hash-key-value"] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    let out = dir.join("out.toml");
    std::fs::write(&out, &printed).unwrap();
    let reloaded = Settings::load_from(Some(&out), Vec::new()).unwrap();
    assert_eq!(reloaded.to_redacted_toml().unwrap(), printed);
    assert_eq!(reloaded.shutdown.drain_timeout_ms, 12345);
    assert_eq!(
        reloaded.amqp.url.expose_secret(),
        "amqp://alice:***@rabbit:5672/%2f"
    );
    assert_eq!(
        reloaded.business_hours.default.weekly["sat"],
        Vec::<String>::new()
    );
    assert_eq!(
        reloaded.business_hours.instances["inst-1"].weekly["mon"],
        ["08:00-12:00", "13:00-17:00"]
    );
    assert_eq!(
        reloaded.ccc.error_classes.get("Busy.*"),
        Some(&ErrorClass::Retryable)
    );
    let own = &reloaded.limits.instances["inst-1"];
    assert_eq!(own.calls_per_second, Some(2.5));
    assert_eq!(own.class.as_deref(), Some("vip"));
    assert_eq!(own.max_in_flight, None, "left to [limits]");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn per_instance_limits_are_checked_like_the_section() {
    let err = load_file(
        r#"
[limits.instances."inst-1"]
burst = 0
calls_per_second = -1.0
class = "Not A Label"
"#,
    )
    .unwrap_err()
    .to_string();
    for key in [
        "limits.instances.inst-1.burst",
        "limits.instances.inst-1.calls_per_second",
        "limits.instances.inst-1.class",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let typo = load_file("[limits.instances.\"inst-1\"]\ncalls_per_secnd = 2.0\n");
    assert!(typo.is_err(), "an unknown key is refused");
    let many: String = (0..33)
        .map(|i| format!("[limits.instances.\"i{i}\"]\nclass = \"c{i}\"\n"))
        .collect();
    let err = load_file(&many).unwrap_err().to_string();
    assert!(err.contains("33 classes"), "{err}");
}

#[test]
fn the_public_hash_key_is_warned_about_with_either_store() {
    let defaults = Settings::load_from(None, Vec::new()).unwrap();
    assert_eq!(defaults.cooldown.hash_key.expose_secret(), DEFAULT_HASH_KEY);
    let warnings = defaults.warnings();
    assert_eq!(warnings.len(), 1, "embedded store: the file on disk");
    assert!(warnings[0].contains("store.data_dir"));
    let keyed = Settings::load_from(
        None,
        vec![(
            "DIALEX_COOLDOWN__HASH_KEY".to_owned(),
            "a-real-secret".to_owned(),
        )],
    )
    .unwrap();
    assert!(keyed.warnings().is_empty());

    let redis = Settings::load_from(
        None,
        vec![("DIALEX_STORE__BACKEND".to_owned(), "redis".to_owned())],
    )
    .unwrap();
    let warnings = redis.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("DIALEX_COOLDOWN__HASH_KEY"));

    let keyed = Settings::load_from(
        None,
        vec![
            ("DIALEX_STORE__BACKEND".to_owned(), "redis".to_owned()),
            (
                "DIALEX_COOLDOWN__HASH_KEY".to_owned(),
                "a-real-secret".to_owned(),
            ),
        ],
    )
    .unwrap();
    assert!(keyed.warnings().is_empty());
}

#[test]
fn an_empty_hash_key_prints_empty() {
    let mut s = load(&[]).unwrap();
    s.cooldown.hash_key = SecretString::from("");
    assert!(s.to_redacted_toml().unwrap().contains("hash_key = \"\"\n"));
}

#[test]
fn secrets_never_print() {
    let s = load(&[("DIALEX_AMQP__URL", "amqp://u:hunter2@h/%2f")]).unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn amqp_url_names_one_node_or_several() {
    let nodes = |env: &[(&str, &str)]| {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let s = Settings::load_from(None, env.collect::<Vec<_>>()).unwrap();
        s.amqp
            .nodes()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(&[]), ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
    // Comma-separated, as an environment variable carries them; a comma inside a URL (a
    // password) stays in it.
    assert_eq!(
        nodes(&[(
            "DIALEX_AMQP__URL",
            "amqp://u:p,w@rabbit-0:5672/%2f, amqp://u:p,w@rabbit-1:5672/%2f"
        )]),
        [
            "amqp://u:p,w@rabbit-0:5672/%2f",
            "amqp://u:p,w@rabbit-1:5672/%2f"
        ]
    );

    // A TOML list reads as the same, and check-config prints each one redacted.
    let s = load_file(
        "[amqp]\nurl = [\"amqp://u:secret@rabbit-0:5672/%2f\", \"amqps://u:secret@rabbit-1:5671/%2f\"]\n",
    )
    .unwrap();
    assert_eq!(
        s.amqp.nodes(),
        [
            "amqp://u:secret@rabbit-0:5672/%2f",
            "amqps://u:secret@rabbit-1:5671/%2f"
        ]
    );
    let printed = s.to_redacted_toml().unwrap();
    assert!(!printed.contains("secret"), "{printed}");
    assert!(
        printed
            .contains("url = \"amqp://u:***@rabbit-0:5672/%2f,amqps://u:***@rabbit-1:5671/%2f\""),
        "{printed}"
    );

    // Every node must be an AMQP URL; a CA file needs every node on TLS.
    let error = Settings::load_from(
        None,
        vec![(
            "DIALEX_AMQP__URL".to_owned(),
            "amqp://rabbit-0:5672,http://rabbit-1".to_owned(),
        )],
    )
    .expect_err("an http node")
    .to_string();
    assert!(error.contains("amqp.url"), "{error}");
    let mut s = Settings::load_from(None, Vec::new()).unwrap();
    s.amqp.tls_ca_file = "ca.pem".into();
    s.amqp.url = SecretString::from("amqps://rabbit-0:5671,amqp://rabbit-1:5672");
    let error = s.validate().expect_err("one node without TLS").to_string();
    assert!(error.contains("amqp.tls_ca_file"), "{error}");
}

#[test]
fn replicas_are_asked_for_only_with_redis_and_within_a_bounded_wait() {
    let env = [("DIALEX_STORE__MIN_REPLICAS_ACKED", "1")];
    let error = load(&env).expect_err("replicas of the embedded store");
    assert!(
        error.to_string().contains("store.min_replicas_acked"),
        "{error}"
    );

    let redis = [
        ("DIALEX_STORE__BACKEND", "redis"),
        ("DIALEX_STORE__MIN_REPLICAS_ACKED", "1"),
    ];
    let s = load(&redis).expect("one replica of Redis");
    assert_eq!(s.store.min_replicas_acked, 1);
    assert_eq!(s.store.replica_ack_timeout(), Duration::from_millis(500));

    for timeout in ["0", "5000"] {
        let mut env = redis.to_vec();
        env.push(("DIALEX_STORE__REPLICA_ACK_TIMEOUT_MS", timeout));
        let error = load(&env).expect_err("a wait out of bounds");
        assert!(
            error.to_string().contains("store.replica_ack_timeout_ms"),
            "{timeout}: {error}"
        );
    }
}

#[test]
fn sentinels_are_host_ports_with_a_service_for_the_redis_store() {
    let redis = [
        ("DIALEX_STORE__BACKEND", "redis"),
        (
            "DIALEX_STORE__SENTINELS",
            "redis-0.sentinel:26379,redis-1.sentinel:26379,[::1]:26379",
        ),
        ("DIALEX_STORE__SENTINEL_SERVICE", "mymaster"),
        ("DIALEX_STORE__SENTINEL_PASSWORD", "s3ntinel"),
    ];
    let s = load(&redis).expect("three sentinels");
    assert_eq!(
        s.store.sentinels,
        [
            "redis-0.sentinel:26379",
            "redis-1.sentinel:26379",
            "[::1]:26379"
        ]
    );
    assert_eq!(s.store.sentinel_service, "mymaster");
    let printed = s.to_redacted_toml().unwrap();
    assert!(!printed.contains("s3ntinel"), "{printed}");
    assert!(printed.contains("sentinel_password = \"***\""), "{printed}");

    // Each problem names its setting.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("DIALEX_STORE__SENTINELS", "redis-0:26379")],
            "store.sentinels",
        ),
        (
            &[
                ("DIALEX_STORE__BACKEND", "redis"),
                ("DIALEX_STORE__SENTINELS", "redis-0"),
                ("DIALEX_STORE__SENTINEL_SERVICE", "mymaster"),
            ],
            "store.sentinels",
        ),
        (
            &[
                ("DIALEX_STORE__BACKEND", "redis"),
                ("DIALEX_STORE__SENTINELS", "redis-0:26379"),
            ],
            "store.sentinel_service",
        ),
        (
            &[
                ("DIALEX_STORE__BACKEND", "redis"),
                ("DIALEX_STORE__URL", "rediss://redis:6380/0"),
                ("DIALEX_STORE__SENTINELS", "redis-0:26379"),
                ("DIALEX_STORE__SENTINEL_SERVICE", "mymaster"),
            ],
            "store.sentinels",
        ),
    ];
    for (env, key) in cases {
        let error = load(env).expect_err("invalid sentinels").to_string();
        assert!(error.contains(key), "{env:?}: {error}");
    }
}

#[test]
fn a_sentinel_is_a_host_and_a_port() {
    assert_eq!(host_port("redis-0:26379"), Some(("redis-0".into(), 26379)));
    assert_eq!(host_port(" [::1]:26379"), Some(("::1".into(), 26379)));
    for bad in [
        "redis-0",
        ":26379",
        "redis-0:",
        "redis-0:0",
        "redis-0:65536",
        "redis-0:x",
    ] {
        assert_eq!(host_port(bad), None, "{bad}");
    }
}

#[test]
fn the_follow_up_is_off_by_default_and_its_polls_come_from_the_environment() {
    let s = load(&[]).unwrap();
    assert!(!s.followup.enabled);
    assert_eq!(s.followup.polls_ms, [60_000, 180_000, 600_000, 1_800_000]);
    let s = load(&[
        ("DIALEX_FOLLOWUP__ENABLED", "true"),
        ("DIALEX_FOLLOWUP__POLLS_MS", "1000,5000"),
    ])
    .unwrap();
    assert!(s.followup.enabled);
    assert_eq!(
        s.followup.poll_after(1),
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(s.followup.poll_after(2), None);
    assert_eq!(s.followup.polls(), 2);
}

#[test]
fn follow_up_settings_that_cannot_work_name_their_key() {
    let problems = |env: &[(&str, &str)]| load(env).unwrap_err().to_string();
    assert!(problems(&[("DIALEX_FOLLOWUP__POLLS_MS", "5000,1000")]).contains("followup.polls_ms"));
    assert!(problems(&[("DIALEX_FOLLOWUP__POLLS_MS", "0")]).contains("followup.polls_ms"));
    assert!(
        problems(&[("DIALEX_FOLLOWUP__QUERIES_PER_SECOND", "0")])
            .contains("followup.queries_per_second")
    );
    assert!(problems(&[("DIALEX_FOLLOWUP__PREFETCH", "0")]).contains("followup.prefetch"));
    let unnamed = problems(&[
        ("DIALEX_FOLLOWUP__ENABLED", "true"),
        ("DIALEX_AMQP__NAMES__FOLLOWUP_QUEUE", ""),
    ]);
    assert!(unnamed.contains("amqp.names.followup_queue"), "{unnamed}");
}
