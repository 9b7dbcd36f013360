//! The callee gate: repeat "call me" clicks are coalesced, and a callee is not called more
//! than a set number of times a day.
//!
//! A second request for the same (`instance_id`, `callee`) within the cooldown window after a
//! dial is not dialed; it ends as `suppressed` with code `cooldown`. With a daily cap, requests
//! over the cap end as `suppressed` with code `daily_cap`; the day runs midnight to midnight in
//! the call centre's timezone. Stores never see the number: the key is an HMAC of instance and
//! callee under a configured secret, so a leaked Redis dump cannot be reversed by hashing every
//! possible phone number.

use std::time::Duration;

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::validate::DialRequest;

/// `[cooldown]`: the per-callee cooldown, the daily cap, and the key numbers are hashed under.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CooldownSettings {
    pub window_ms: u64,
    #[serde(serialize_with = "crate::config::render::serialize_secret")]
    pub hash_key: SecretString,
    pub max_per_day: u32,
}

impl CooldownSettings {
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// The key prints only as whether it is set (`***` or empty), never its value.
/// Keyed hashes of phone numbers (HMAC-SHA1 under `cooldown.hash_key`, hex): what shared
/// stores hold instead of numbers, in callee keys and in the dial store's request fingerprints.
#[derive(Clone)]
pub struct NumberHasher {
    mac: Hmac<Sha1>,
}

impl NumberHasher {
    pub fn new(cooldown: &CooldownSettings) -> Self {
        Self::with_key(&cooldown.hash_key)
    }

    /// Hashes under `key`: `cooldown.hash_key`, which every replica and `dialex-worker dnc`
    /// share.
    pub fn with_key(key: &SecretString) -> Self {
        let mac = Hmac::<Sha1>::new_from_slice(key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        NumberHasher { mac }
    }

    /// Hex HMAC of `parts` joined by newlines.
    pub fn hash(&self, parts: &[&str]) -> String {
        let mut mac = self.mac.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"\n");
            }
            mac.update(part.as_bytes());
        }
        hex(mac)
    }

    /// The request's fingerprint for the dial store: hex HMAC (40 digits, like [`Self::hash`])
    /// of the fields that decide what is dialed (instance, caller, callee, answer mode, rout
    /// point, provider), after validation normalised them. A `request_id` stored with another
    /// fingerprint was used for a different request. The numbers cannot be read back from it.
    ///
    /// Each field goes in with its length in front, and the provider with a mark for present
    /// or absent, so no two different requests feed the HMAC the same bytes; a leading label
    /// keeps fingerprints apart from the [`Self::hash`] keys made under the same secret.
    pub fn fingerprint(&self, request: &DialRequest) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"dial-request-v1\n");
        let fields = [
            request.instance_id(),
            request.caller().as_str(),
            request.callee().as_str(),
            request.answer_mode().as_str(),
            request.rout_point(),
        ];
        let length = |text: &str| u64::try_from(text.len()).unwrap_or(u64::MAX).to_be_bytes();
        for field in fields {
            mac.update(&length(field));
            mac.update(field.as_bytes());
        }
        match request.provider() {
            Some(provider) => {
                mac.update(b"+");
                mac.update(&length(provider));
                mac.update(provider.as_bytes());
            }
            None => mac.update(b"-"),
        }
        hex(mac)
    }
}

/// The finished HMAC as lowercase hex.
fn hex(mac: Hmac<Sha1>) -> String {
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The callee gate's configuration, ready to derive keys and day labels.
#[derive(Clone)]
pub struct CalleeGate {
    hasher: NumberHasher,
    window: Option<Duration>,
    daily: Option<(u32, TimeZone)>,
}

impl CalleeGate {
    /// `None` when both the cooldown (`window_ms = 0`) and the daily cap (`max_per_day = 0`)
    /// are switched off.
    pub fn new(cooldown: &CooldownSettings, day_zone: &TimeZone) -> Option<Self> {
        let window = (cooldown.window_ms > 0).then(|| cooldown.window());
        let daily = (cooldown.max_per_day > 0).then(|| (cooldown.max_per_day, day_zone.clone()));
        if window.is_none() && daily.is_none() {
            return None;
        }
        Some(CalleeGate {
            hasher: NumberHasher::new(cooldown),
            window,
            daily,
        })
    }

    /// The cooldown window, when the cooldown is on.
    pub fn window(&self) -> Option<Duration> {
        self.window
    }

    /// The cap and today's label (`2026-11-25` in the configured timezone), when the daily
    /// cap is on.
    pub fn daily_cap(&self, now: Timestamp) -> Option<(u32, String)> {
        self.daily
            .as_ref()
            .map(|(max, tz)| (*max, tz.to_datetime(now).date().to_string()))
    }

    /// Hex HMAC-SHA1 of instance and callee: the store key for this callee.
    pub fn key(&self, request: &DialRequest) -> String {
        self.hasher
            .hash(&[request.instance_id(), request.callee().as_str()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[cooldown]` defaults of `config/default.toml`.
    fn defaults() -> CooldownSettings {
        CooldownSettings {
            window_ms: 60_000,
            hash_key: SecretString::from("dialex-default-cooldown-key"),
            max_per_day: 0,
        }
    }

    fn request(instance: &str, callee: &str) -> DialRequest {
        let body = serde_json::json!({
            "request_id": "r", "instance_id": instance, "caller": "02285196281",
            "callee": callee, "answer_mode": "ivr", "rout_point": "flow",
        });
        crate::validate::decode(body.to_string().as_bytes(), None).unwrap()
    }

    fn gate(settings: &CooldownSettings) -> Option<CalleeGate> {
        CalleeGate::new(settings, &shanghai())
    }

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    #[test]
    fn keys_depend_on_instance_callee_and_secret_but_not_formatting() {
        let settings = defaults();
        let gate = gate(&settings).unwrap();
        let a = gate.key(&request("i1", "15732036617"));
        assert_eq!(a, gate.key(&request("i1", "+86 157-3203-6617")));
        assert_ne!(a, gate.key(&request("i2", "15732036617")));
        assert_ne!(a, gate.key(&request("i1", "15732036618")));
        assert_eq!(a.len(), 40);
        assert!(!a.contains("15732036617"));

        let mut other = settings.clone();
        other.hash_key = secrecy::SecretString::from("another-secret");
        assert_ne!(
            a,
            CalleeGate::new(&other, &shanghai())
                .unwrap()
                .key(&request("i1", "15732036617"))
        );
    }

    /// A request with every dial-relevant field set; `change` edits the JSON body first.
    fn full_request(change: impl FnOnce(&mut serde_json::Value)) -> DialRequest {
        let mut body = serde_json::json!({
            "request_id": "r-1", "instance_id": "i1", "caller": "02285196281",
            "callee": "15732036617", "answer_mode": "agent", "rout_point": "agent@Domain",
            "provider": "cmcc", "attributes": {"ticket": 1},
        });
        change(&mut body);
        crate::validate::decode(body.to_string().as_bytes(), None).unwrap()
    }

    #[test]
    fn a_fingerprint_covers_every_dial_field_and_nothing_else() {
        let settings = defaults();
        let hasher = NumberHasher::new(&settings);
        let fingerprint =
            |change: fn(&mut serde_json::Value)| hasher.fingerprint(&full_request(change));
        let base = fingerprint(|_| {});
        assert_eq!(base.len(), 40);
        assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!base.contains("15732036617") && !base.contains("02285196281"));

        // The same request, however it is spelled or whatever else it carries: same fingerprint.
        let same: [fn(&mut serde_json::Value); 5] = [
            |b| b["callee"] = "+86 157-3203-6617".into(),
            |b| b["answer_mode"] = 1.into(),
            |b| b["request_id"] = "r-2".into(),
            |b| b["attributes"] = serde_json::json!({"ticket": 2}),
            |b| b["expires_at"] = "2026-01-01T00:00:00Z".into(),
        ];
        for change in same {
            assert_eq!(fingerprint(change), base);
        }

        // Any dial-relevant field changed: another request.
        let different: [fn(&mut serde_json::Value); 7] = [
            |b| b["instance_id"] = "i2".into(),
            |b| b["caller"] = "02285196282".into(),
            |b| b["callee"] = "15732036618".into(),
            |b| {
                b["answer_mode"] = "skill_group".into();
            },
            |b| b["rout_point"] = "agent@domain".into(),
            |b| b["provider"] = "cucc".into(),
            |b| b["provider"] = serde_json::Value::Null,
        ];
        let mut seen = std::collections::HashSet::from([base.clone()]);
        for change in different {
            assert!(
                seen.insert(fingerprint(change)),
                "a change left the fingerprint as it was"
            );
        }

        // Under another secret, another fingerprint; and never a callee key.
        let mut other = settings.clone();
        other.hash_key = secrecy::SecretString::from("another-secret");
        assert_ne!(
            NumberHasher::new(&other).fingerprint(&full_request(|_| {})),
            base
        );
        assert_ne!(base, hasher.hash(&["i1", "15732036617"]));
    }

    #[test]
    fn fingerprint_fields_cannot_run_into_each_other() {
        let settings = defaults();
        let hasher = NumberHasher::new(&settings);
        let split = |rout_point: &str, provider: &str| {
            hasher.fingerprint(&full_request(|b| {
                b["answer_mode"] = "ivr".into();
                b["rout_point"] = rout_point.into();
                b["provider"] = provider.into();
            }))
        };
        // The same bytes in a row, cut at another place.
        assert_ne!(split("flow-ab", "c"), split("flow-a", "bc"));
        assert_ne!(split("flow a", "b"), split("flow", "a b"));
    }

    #[test]
    fn the_gate_is_off_only_when_both_checks_are() {
        let mut settings = defaults();
        settings.window_ms = 0;
        assert!(gate(&settings).is_none());
        settings.max_per_day = 3;
        let g = gate(&settings).unwrap();
        assert!(g.window().is_none());
        assert_eq!(g.daily_cap(Timestamp::UNIX_EPOCH).map(|(m, _)| m), Some(3));
    }

    #[test]
    fn the_day_turns_at_midnight_in_the_call_centres_timezone() {
        let mut settings = defaults();
        settings.max_per_day = 1;
        let g = gate(&settings).unwrap();
        // 15:59:59 UTC is 23:59:59 in Shanghai; a second later it is the next day there.
        let before: Timestamp = "2026-11-25T15:59:59Z".parse().unwrap();
        let after: Timestamp = "2026-11-26T16:00:00Z".parse().unwrap();
        assert_eq!(g.daily_cap(before).unwrap().1, "2026-11-25");
        assert_eq!(
            g.daily_cap("2026-11-25T16:00:00Z".parse().unwrap())
                .unwrap()
                .1,
            "2026-11-26"
        );
        assert_eq!(g.daily_cap(after).unwrap().1, "2026-11-27");
    }
}
