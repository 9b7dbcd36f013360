//! TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`): the CA file an operator points the
//! worker at, read the same way for both.

use std::path::Path;

/// The PEM text of the CA file at `path`, or `None` when `path` is empty (the system's roots
/// are used). `setting` names the configuration key in the error. Read at each connection, so
/// a rotated file is picked up on the next reconnect.
pub(crate) fn ca_pem(path: &Path, setting: &str) -> Result<Option<String>, String> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{setting}: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(Some(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_means_the_system_roots_and_a_bad_file_says_which_setting() {
        assert_eq!(ca_pem(Path::new(""), "amqp.tls_ca_file"), Ok(None));

        let missing = ca_pem(Path::new("/nonexistent/ca.pem"), "store.tls_ca_file").unwrap_err();
        assert!(missing.starts_with("store.tls_ca_file: cannot read /nonexistent/ca.pem"));

        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = ca_pem(&not_pem, "amqp.tls_ca_file").unwrap_err();
        assert!(err.ends_with("holds no PEM certificate"), "{err}");

        let pem = dir.join("ca.pem");
        let text = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&pem, text).unwrap();
        assert_eq!(ca_pem(&pem, "amqp.tls_ca_file"), Ok(Some(text.to_owned())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
