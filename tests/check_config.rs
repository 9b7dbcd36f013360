//! `dialex-worker check-config` as an operator runs it: the real binary, a clean environment
//! plus the variables each scenario sets, the printed configuration read back.

use std::path::PathBuf;
use std::process::{Command, Output};

use dialex_worker::config::Settings;

/// Runs `check-config` with only PATH and `env` in its environment.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dialex-worker"));
    command.arg("check-config").args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("dialex-worker runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// A fresh directory for one test's files.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dialex-check-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn default_configuration_prints_as_toml_and_exits_zero() {
    let output = check_config(&[], &[]);
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    for expected in ["[amqp]", "[shutdown]", "drain_timeout_ms = 25000", "[ccc]"] {
        assert!(out.contains(expected), "no {expected} in:\n{out}");
    }
}

#[test]
fn secrets_are_redacted_but_users_and_hosts_stay_visible() {
    let output = check_config(
        &[],
        &[
            ("DIALEX_AMQP__URL", "amqp://alice:s3cret-pw@rabbit:5672/%2f"),
            ("DIALEX_STORE__URL", "redis://:r3dis-pw@redis:6379/0"),
            ("DIALEX_COOLDOWN__HASH_KEY", "hash-key-value"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ak-secret-value"),
        ],
    );
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    for expected in [
        "url = \"amqp://alice:***@rabbit:5672/%2f\"",
        "url = \"redis://:***@redis:6379/0\"",
        "hash_key = \"***\"",
        "# ALIBABA_CLOUD_ACCESS_KEY_SECRET: set",
        "# ALIBABA_CLOUD_ACCESS_KEY_ID: not set",
        "# ALIBABA_CLOUD_SECURITY_TOKEN: not set",
    ] {
        assert!(out.contains(expected), "no {expected} in:\n{out}");
    }
    let all = format!("{out}{}", stderr(&output));
    for secret in ["s3cret-pw", "r3dis-pw", "hash-key-value", "ak-secret-value"] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
}

#[test]
fn missing_credentials_are_reported_without_failing() {
    let output = check_config(&[], &[]);
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        out.contains("# ALIBABA_CLOUD_ACCESS_KEY_ID: not set"),
        "{out}"
    );
    assert!(
        out.contains("# warning: `run` will refuse to start"),
        "{out}"
    );

    let output = check_config(
        &[],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ak-id-value"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ak-secret-value"),
            ("ALIBABA_CLOUD_SECURITY_TOKEN", "sts-token-value"),
            ("DIALEX_COOLDOWN__HASH_KEY", "a-real-secret"),
        ],
    );
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(out.contains("# ALIBABA_CLOUD_SECURITY_TOKEN: set"), "{out}");
    assert!(
        out.contains("# `run` signs with credentials from the environment provider."),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");

    // RRSA's three variables instead of an AccessKey.
    let output = check_config(
        &[],
        &[
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            (
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
                "acs:ram::1:oidc-provider/p",
            ),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/var/run/token"),
            ("DIALEX_COOLDOWN__HASH_KEY", "a-real-secret"),
        ],
    );
    let out = stdout(&output);
    assert!(
        out.contains("# ALIBABA_CLOUD_ROLE_ARN: set")
            && out.contains("credentials from the OIDC (RRSA) provider."),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
    for secret in ["ak-id-value", "ak-secret-value", "sts-token-value"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
}

#[test]
fn an_invalid_value_fails_and_names_the_key() {
    for (variable, key) in [
        ("DIALEX_CCC__MAX_ATTEMPTS", "ccc.max_attempts"),
        (
            "DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS",
            "shutdown.drain_timeout_ms",
        ),
    ] {
        let output = check_config(&[], &[(variable, "0")]);
        assert!(!output.status.success(), "{variable}=0 accepted");
        let err = stderr(&output);
        assert!(err.contains(key), "{variable}=0: {err}");
        assert!(
            stdout(&output).is_empty(),
            "{variable}=0 printed a configuration"
        );
    }
}

#[test]
fn a_config_file_override_shows_in_the_output() {
    let dir = temp_dir();
    let file = dir.join("override.toml");
    std::fs::write(
        &file,
        "[shutdown]\ndrain_timeout_ms = 4000\n\n[ccc]\nregion_id = \"cn-beijing\"\n",
    )
    .expect("write config");
    let output = check_config(&["--config", file.to_str().expect("UTF-8 path")], &[]);
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(out.contains("drain_timeout_ms = 4000"), "{out}");
    assert!(out.contains("region_id = \"cn-beijing\""), "{out}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn printed_configuration_loads_back_to_the_same_values() {
    let env = [
        ("DIALEX_AMQP__URL", "amqp://alice:s3cret-pw@rabbit:5672/%2f"),
        ("DIALEX_AMQP__PREFETCH", "17"),
        ("DIALEX_DEFERRAL__TIERS_MS", "1000,60000"),
        (
            "DIALEX_BUSINESS_HOURS__WEEKLY__SAT",
            "08:00-12:00,13:00-17:00",
        ),
        ("DIALEX_LIMITS__CALLS_PER_SECOND", "2.5"),
        ("DIALEX_SHUTDOWN__DRAIN_TIMEOUT_MS", "9000"),
    ];
    let output = check_config(&[], &env);
    assert!(output.status.success(), "{}", stderr(&output));
    let dir = temp_dir();
    let printed = dir.join("effective.toml");
    std::fs::write(&printed, stdout(&output)).expect("write printed configuration");

    let expected = Settings::load_from(None, env.map(|(k, v)| (k.to_owned(), v.to_owned())))
        .expect("the same settings load in-process");
    let reloaded =
        Settings::load_from(Some(&printed), Vec::new()).expect("printed configuration loads");
    assert_eq!(reloaded.amqp.prefetch, 17);
    assert_eq!(reloaded.deferral.tiers_ms, [1000, 60000]);
    assert_eq!(
        reloaded.business_hours.default.weekly["sat"],
        ["08:00-12:00", "13:00-17:00"]
    );
    assert_eq!(reloaded.limits.calls_per_second, 2.5);
    assert_eq!(reloaded.shutdown.drain_timeout_ms, 9000);
    // Every other key too: both print the same, secrets included (redacted alike).
    assert_eq!(
        reloaded.to_redacted_toml().expect("renders"),
        expected.to_redacted_toml().expect("renders")
    );
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn the_public_hash_key_with_the_embedded_store_is_warned_about() {
    let local = check_config(&[], &[]);
    assert!(local.status.success(), "{}", stderr(&local));
    assert!(
        stdout(&local)
            .contains("# warning: cooldown.hash_key is the public default, and the embedded store"),
        "{}",
        stdout(&local)
    );
    let keyed = check_config(&[], &[("DIALEX_COOLDOWN__HASH_KEY", "a-real-secret")]);
    assert!(!stdout(&keyed).contains("hash_key is the public default"));
}

#[test]
fn the_public_hash_key_with_the_redis_store_is_warned_about() {
    let shared = check_config(&[], &[("DIALEX_STORE__BACKEND", "redis")]);
    assert!(shared.status.success(), "{}", stderr(&shared));
    assert!(
        stdout(&shared).contains("# warning: cooldown.hash_key is the public default"),
        "{}",
        stdout(&shared)
    );
    let keyed = check_config(
        &[],
        &[
            ("DIALEX_STORE__BACKEND", "redis"),
            ("DIALEX_COOLDOWN__HASH_KEY", "a-real-secret"),
        ],
    );
    assert!(keyed.status.success(), "{}", stderr(&keyed));
    assert!(!stdout(&keyed).contains("hash_key is the public default"));
}
