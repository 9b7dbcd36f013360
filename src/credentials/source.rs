//! The credentials every request is signed with: fetched once at start-up, then refreshed in
//! the background well before they expire, and shared by every request in flight.
//!
//! A refresh that fails leaves the current credentials in use until they expire, retrying
//! meanwhile; only then does [`CredentialSource::current`] fail (and the worker pause), and it
//! succeeds again by itself once a refresh does. A first fetch that fails is retried the same
//! way: the worker starts, paused, and says why on `/readyz`.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::{Credentials, Lease, Provider};

/// Credentials this close to their expiry are no longer used: a request signed now must
/// still be valid when the gateway checks it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// The pause after a failed refresh, doubling up to [`RETRY_MAX`] (and never past the
/// expiry: a quarter of the time left, at least [`RETRY_MIN`]).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The credentials to sign with now. Cheap to clone.
#[derive(Clone)]
pub struct CredentialSource(Arc<Inner>);

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSource")
            .field("provider", &self.0.provider)
            .finish_non_exhaustive()
    }
}

struct Inner {
    provider: &'static str,
    state: RwLock<State>,
}

struct State {
    /// `None` until a first fetch succeeds.
    credentials: Option<Arc<Credentials>>,
    /// When they expire, on the wall clock (for messages) and on the runtime's.
    expiry: Option<(Timestamp, Instant)>,
    /// For credentials that do not expire but may change: when to fetch them again.
    recheck_after: Option<Duration>,
    /// Why the refreshes fail, while they do.
    failing: Option<String>,
}

impl State {
    /// When to fetch again, for credentials fetched at `fetched`: before they expire, or
    /// when they are due a look; `None` for credentials that never change.
    fn next_fetch(&self, fetched: Instant) -> Option<Instant> {
        match (self.expiry, self.recheck_after) {
            (Some((_, expires)), _) => Some(refresh_at(fetched, expires, rand::random())),
            (None, Some(after)) => Some(fetched + after),
            (None, None) => None,
        }
    }

    fn new(lease: Lease) -> State {
        State {
            credentials: Some(Arc::new(lease.credentials)),
            expiry: lease.expires_at.map(|at| (at, instant_of(at))),
            recheck_after: lease.recheck_after,
            failing: None,
        }
    }
}

/// No usable credentials: none could be fetched yet, or they expired and no refresh has
/// succeeded since.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(self))]
pub struct Unavailable {
    pub provider: &'static str,
    /// When the last credentials expired; `None` if there never were any.
    pub expired_at: Option<Timestamp>,
    pub reason: String,
}

fn describe(unavailable: &Unavailable) -> String {
    let Unavailable {
        provider,
        expired_at,
        reason,
    } = unavailable;
    match expired_at {
        Some(at) => format!(
            "the credentials from the {provider} provider expired at {at} and could not be refreshed: {reason}"
        ),
        None => format!("the {provider} provider could not fetch credentials: {reason}"),
    }
}

impl CredentialSource {
    /// Credentials that never expire.
    pub fn fixed(credentials: Credentials) -> CredentialSource {
        CredentialSource::new(
            "environment",
            Lease {
                credentials,
                expires_at: None,
                recheck_after: None,
            },
        )
    }

    /// Fetches from `provider` and, if the credentials expire, keeps them fresh in the
    /// background for as long as a clone of the source lives. A first fetch that fails is
    /// logged and retried in the background; until one succeeds, [`CredentialSource::current`]
    /// says why there are none.
    pub async fn start(provider: Arc<dyn Provider>) -> CredentialSource {
        let fetched = Instant::now();
        let source = match provider.fetch().await {
            Ok(lease) => CredentialSource::new(provider.name(), lease),
            Err(error) => {
                tracing::error!(
                    provider = provider.name(),
                    %error,
                    "no credentials yet; the worker stays paused until a fetch succeeds"
                );
                CredentialSource(Arc::new(Inner {
                    provider: provider.name(),
                    state: RwLock::new(State {
                        credentials: None,
                        expiry: None,
                        recheck_after: None,
                        failing: Some(error.to_string()),
                    }),
                }))
            }
        };
        let first = match source.state() {
            state if state.credentials.is_none() => Some(Instant::now() + RETRY_MIN),
            state => state.next_fetch(fetched),
        };
        if let Some(first) = first {
            tokio::spawn(keep_fresh(Arc::downgrade(&source.0), provider, first));
        }
        source
    }

    fn new(provider: &'static str, lease: Lease) -> CredentialSource {
        CredentialSource(Arc::new(Inner {
            provider,
            state: RwLock::new(State::new(lease)),
        }))
    }

    /// The credentials to sign a request with now.
    pub fn current(&self) -> Result<Arc<Credentials>, Unavailable> {
        let state = self.state();
        let unavailable = |expired_at| Unavailable {
            provider: self.0.provider,
            expired_at,
            reason: state
                .failing
                .clone()
                .unwrap_or_else(|| "no refresh has completed yet".to_owned()),
        };
        match (&state.credentials, state.expiry) {
            (None, _) => Err(unavailable(None)),
            (Some(_), Some((expired_at, expires))) if Instant::now() + EXPIRY_MARGIN >= expires => {
                Err(unavailable(Some(expired_at)))
            }
            (Some(credentials), _) => Ok(Arc::clone(credentials)),
        }
    }

    /// The provider the credentials come from, as logs name it.
    pub fn provider(&self) -> &'static str {
        self.0.provider
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.0.state()
    }
}

impl From<Credentials> for CredentialSource {
    fn from(credentials: Credentials) -> CredentialSource {
        CredentialSource::fixed(credentials)
    }
}

impl Inner {
    fn state(&self) -> RwLockReadGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves whole credentials behind.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.write().unwrap_or_else(PoisonError::into_inner));
    }
}

/// `at` on the runtime's clock (which tests may pause and advance).
fn instant_of(at: Timestamp) -> Instant {
    let left = at.duration_since(Timestamp::now());
    let now = Instant::now();
    match Duration::try_from(left) {
        Ok(left) => now + left,
        // Already past.
        Err(_) => now,
    }
}

/// When to refresh credentials fetched at `fetched` that expire at `expires`: once two
/// thirds of their life have passed, earlier by up to a tenth of it (`jitter`, 0 to 1) so
/// replicas that started together do not all ask at once.
fn refresh_at(fetched: Instant, expires: Instant, jitter: f64) -> Instant {
    let life = expires.saturating_duration_since(fetched);
    fetched + life.mul_f64(2.0 / 3.0 - jitter.clamp(0.0, 1.0) / 10.0)
}

/// Refreshes at `next`, then before each new expiry (or at each look a changeable source is
/// due), until the source is dropped or its credentials no longer change.
async fn keep_fresh(source: Weak<Inner>, provider: Arc<dyn Provider>, mut next: Instant) {
    let mut pause = RETRY_MIN;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(inner) = source.upgrade() else {
            return;
        };
        let fetched = Instant::now();
        match provider.fetch().await {
            Ok(lease) => {
                pause = RETRY_MIN;
                let mut recovered = false;
                let mut following = None;
                inner.update(|state| {
                    recovered = state.failing.is_some();
                    *state = State::new(lease);
                    following = state.next_fetch(fetched);
                });
                if recovered {
                    tracing::info!(provider = provider.name(), "credentials refreshed again");
                }
                let Some(following) = following else {
                    return;
                };
                next = following;
            }
            Err(error) => {
                let mut left = Duration::ZERO;
                inner.update(|state| {
                    state.failing = Some(error.to_string());
                    if let Some((_, expires)) = state.expiry {
                        left = expires.saturating_duration_since(fetched);
                    }
                });
                // While some remain valid, retry soon enough to refresh them in time.
                let wait = if left.is_zero() {
                    pause
                } else {
                    pause.min((left / 4).max(RETRY_MIN))
                };
                tracing::warn!(
                    provider = provider.name(),
                    %error,
                    valid_for = ?left,
                    retry_in = ?wait,
                    "could not refresh the credentials; the current ones stay in use until they expire"
                );
                next = Instant::now() + wait;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::{CredentialsError, Fetching};
    use super::*;

    /// Hands out keys `key-1`, `key-2`, … living `life` each, and fails while told to.
    struct Sts {
        life: Duration,
        fetches: AtomicUsize,
        failure: Mutex<Option<String>>,
    }

    impl Sts {
        fn new(life: Duration) -> Arc<Sts> {
            Arc::new(Sts {
                life,
                fetches: AtomicUsize::new(0),
                failure: Mutex::new(None),
            })
        }

        fn fail(&self, reason: Option<&str>) {
            *self.failure.lock().unwrap() = reason.map(str::to_owned);
        }
    }

    impl Provider for Sts {
        fn name(&self) -> &'static str {
            "test STS"
        }

        fn fetch(&self) -> Fetching<'_> {
            let answer = match self.failure.lock().unwrap().clone() {
                Some(reason) => Err(CredentialsError::Fetch {
                    provider: "test STS",
                    reason,
                }),
                None => {
                    let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(Lease {
                        credentials: Credentials::new(format!("key-{n}"), "secret"),
                        expires_at: Some(Timestamp::now() + self.life),
                        recheck_after: None,
                    })
                }
            };
            Box::pin(std::future::ready(answer))
        }
    }

    fn key(source: &CredentialSource) -> String {
        source.current().expect("usable").access_key_id.clone()
    }

    #[test]
    fn a_refresh_comes_after_two_thirds_of_the_life_less_up_to_a_tenth() {
        let fetched = Instant::now();
        let expires = fetched + Duration::from_secs(3600);
        let at = |jitter| refresh_at(fetched, expires, jitter) - fetched;
        assert_eq!(at(0.0), Duration::from_secs(2400));
        assert_eq!(at(1.0), Duration::from_secs(2040));
        assert!((at(0.5) > Duration::from_secs(2040)) && (at(0.5) < Duration::from_secs(2400)));
        // Already expired: at once.
        assert_eq!(refresh_at(expires, fetched, 0.5), expires);
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_credentials_are_replaced_before_they_expire() {
        let sts = Sts::new(Duration::from_secs(5));
        let source = CredentialSource::start(sts.clone()).await;
        assert_eq!(key(&source), "key-1");
        // Every 100 ms for 20 s: always usable, never the same key past its life.
        let mut seen = vec![key(&source)];
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = key(&source);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        // About one refresh every 3 to 3.3 s.
        let fetches = sts.fetches.load(Ordering::SeqCst);
        assert!((7..=8).contains(&fetches), "{fetches} fetches in 20 s");
        assert_eq!(seen.len(), fetches);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refreshes_keep_the_credentials_until_they_expire_then_recover_by_themselves() {
        let sts = Sts::new(Duration::from_secs(30));
        let source = CredentialSource::start(sts.clone()).await;
        sts.fail(Some("AssumeRoleWithOIDC answered NoPermission"));
        // Still usable until a second before the expiry, though every refresh fails.
        tokio::time::sleep(Duration::from_millis(28_900)).await;
        assert_eq!(key(&source), "key-1");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let unavailable = source.current().expect_err("expired");
        assert_eq!(unavailable.provider, "test STS");
        assert!(
            unavailable.to_string().contains("NoPermission"),
            "{unavailable}"
        );
        // The refreshes go on (at most 30 s apart), and the first that succeeds brings the
        // source back.
        sts.fail(None);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_ne!(key(&source), "key-1");
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_credentials_never_expire_and_nothing_refreshes_them() {
        let source = CredentialSource::fixed(Credentials::new("id", "secret"));
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert_eq!(key(&source), "id");
        assert_eq!(source.provider(), "environment");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_fails_at_start_up_is_retried_until_it_answers() {
        let sts = Sts::new(Duration::from_secs(5));
        sts.fail(Some("EntityNotExist.Role"));
        let source = CredentialSource::start(sts.clone()).await;
        let unavailable = source.current().expect_err("nothing fetched yet");
        assert_eq!(
            unavailable.to_string(),
            "the test STS provider could not fetch credentials: test STS: EntityNotExist.Role"
        );
        sts.fail(None);
        // Retried a second after the failure.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(key(&source), "key-1");
    }
}
