//! Gates: the checks between a claimed request and its dial. Each gate says "go", "not
//! this one" (a terminal outcome), or "not yet" (deferral).

pub mod cooldown;
pub mod dnc;
pub mod hours;
pub mod limits;
