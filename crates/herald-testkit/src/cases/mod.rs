//! Every case of the [`Store`](herald_core::Store) contract, one public async function each.
//!
//! Each case takes a fresh, empty store that no other case uses, declares what it needs, runs on
//! tokio's paused clock (it moves time with `tokio::time::advance`, so the store's clock must
//! follow tokio time), and panics with a message naming the broken rule. A store error fails the
//! case with that error. [`store_conformance!`](crate::store_conformance) runs them all.

mod cancel;
mod claim;
mod completion;
mod expiry;
mod history;
mod idempotency;
mod lease;
mod paging;
mod publish;
mod query;
mod reply;
mod retention;
mod schedule;
mod stats;
mod subscription;
mod verdict;
mod wakeup;

pub use cancel::*;
pub use claim::*;
pub use completion::*;
pub use expiry::*;
pub use history::*;
pub use idempotency::*;
pub use lease::*;
pub use paging::*;
pub use publish::*;
pub use query::*;
pub use reply::*;
pub use retention::*;
pub use schedule::*;
pub use stats::*;
pub use subscription::*;
pub use verdict::*;
pub use wakeup::*;
