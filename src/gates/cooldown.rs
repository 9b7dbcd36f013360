//! The callee cooldown: repeat "call me" clicks are coalesced into one call.
//!
//! A second request for the same (`instance_id`, `callee`) within the window after a dial is
//! not dialed; it ends as `suppressed` with code `cooldown`. Stores never see the number: the
//! key is an HMAC of instance and callee under a configured secret, so a leaked Redis dump
//! cannot be reversed by hashing every possible phone number.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha1::Sha1;

use crate::config::CooldownSettings;
use crate::validate::DialRequest;

/// The cooldown gate's configuration, ready to derive keys.
#[derive(Clone)]
pub struct CooldownGate {
    mac: Hmac<Sha1>,
    window: Duration,
}

impl CooldownGate {
    /// `None` when the cooldown is switched off (`window_ms = 0`).
    pub fn new(settings: &CooldownSettings) -> Option<Self> {
        if settings.window_ms == 0 {
            return None;
        }
        let mac = Hmac::<Sha1>::new_from_slice(settings.hash_key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Some(CooldownGate {
            mac,
            window: settings.window(),
        })
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Hex HMAC-SHA1 of instance and callee: the store key for this callee's cooldown.
    pub fn key(&self, request: &DialRequest) -> String {
        let mut mac = self.mac.clone();
        mac.update(request.instance_id().as_bytes());
        mac.update(b"\n");
        mac.update(request.callee().as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(digest.len() * 2);
        for byte in digest {
            use std::fmt::Write as _;
            let _ = write!(out, "{byte:02x}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn request(instance: &str, callee: &str) -> DialRequest {
        let body = serde_json::json!({
            "request_id": "r", "instance_id": instance, "caller": "02285196281",
            "callee": callee, "answer_mode": "ivr", "rout_point": "flow",
        });
        crate::validate::decode(body.to_string().as_bytes(), None).unwrap()
    }

    #[test]
    fn keys_depend_on_instance_callee_and_secret_but_not_formatting() {
        let settings = Settings::load_from(None, Vec::new()).unwrap();
        let gate = CooldownGate::new(&settings.cooldown).unwrap();
        let a = gate.key(&request("i1", "15732036617"));
        assert_eq!(a, gate.key(&request("i1", "+86 157-3203-6617")));
        assert_ne!(a, gate.key(&request("i2", "15732036617")));
        assert_ne!(a, gate.key(&request("i1", "15732036618")));
        assert_eq!(a.len(), 40);
        assert!(!a.contains("15732036617"));

        let mut other = settings.cooldown.clone();
        other.hash_key = secrecy::SecretString::from("another-secret");
        assert_ne!(
            a,
            CooldownGate::new(&other)
                .unwrap()
                .key(&request("i1", "15732036617"))
        );
    }

    #[test]
    fn a_zero_window_switches_the_gate_off() {
        let mut settings = Settings::load_from(None, Vec::new()).unwrap();
        settings.cooldown.window_ms = 0;
        assert!(CooldownGate::new(&settings.cooldown).is_none());
    }
}
