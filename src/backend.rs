//! The worker's state outside the process, on the backend `store.backend` names, opened in one
//! place: [`crate::startup`] matches on the setting once and runs the worker on what it got.
//!
//! - **Embedded** ([`Backend::embedded`]): one replica. Dial records, cooldowns and counters
//!   in a local file ([`EmbeddedStore`]); limits in memory ([`LocalLimiter`]).
//! - **Redis** ([`Backend::redis`]): any number of replicas sharing one Redis
//!   ([`crate::store::redis`]): the same state, the limiter's slots, and (with `dnc.shared`)
//!   the do-not-call set.
//!
//! Everything downstream is generic over the store and the limiter, so the choice is made
//! here and nowhere else.

use std::sync::Arc;

use crate::config::Settings;
use crate::gates::dnc::{DncError, SharedList};
use crate::gates::limits::{LimitError, LimitRules, LocalLimiter};
use crate::store::StoreError;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::dnc::{RedisDnc, RedisDncSet};
use crate::store::redis::{RedisAddress, RedisLimiter, RedisStore};

/// One backend's pieces, opened and ready.
pub struct Backend<S, L> {
    /// Dial records and callee state.
    pub store: S,
    /// The pace gate's slots.
    pub limiter: L,
    /// The shared do-not-call set, when `dnc.shared` (Redis only).
    pub shared_dnc: Option<Arc<dyn SharedList>>,
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not open the dial-record store: {0}")]
    Store(#[from] StoreError),
    /// The shared limiter could not be set up.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The shared do-not-call set could not be reached.
    #[error(transparent)]
    Dnc(#[from] DncError),
}

/// The limiter's rules: `[limits]`, with a permit outliving a crashed holder by the dial
/// lease (longer than any dial).
fn limit_rules(settings: &Settings) -> LimitRules {
    LimitRules::from_config(&settings.limits, settings.store.lease())
}

impl Backend<EmbeddedStore, LocalLimiter> {
    /// Opens `store.path`; claims name `worker`.
    pub fn embedded(settings: &Settings, worker: String) -> Result<Self, BackendError> {
        Ok(Backend {
            store: EmbeddedStore::open(&settings.store, worker)?,
            limiter: LocalLimiter::new(limit_rules(settings)),
            shared_dnc: None,
        })
    }
}

impl Backend<RedisStore, RedisLimiter> {
    /// Connects to `store.url` for the store, the limiter and (with `dnc.shared`) the
    /// do-not-call set, each checked before the worker starts; claims name `worker`.
    pub async fn redis(settings: &Settings, worker: String) -> Result<Self, BackendError> {
        let store = &settings.store;
        let limiter = RedisLimiter::connect(
            &RedisAddress::of_store(store),
            &store.key_prefix,
            limit_rules(settings),
        )
        .await?;
        let shared_dnc: Option<Arc<dyn SharedList>> = if settings.dnc.shared {
            Some(Arc::new(
                RedisDncSet::connect(&RedisDnc::from_settings(settings)).await?,
            ))
        } else {
            None
        };
        Ok(Backend {
            store: RedisStore::connect(store, worker).await?,
            limiter,
            shared_dnc,
        })
    }
}
