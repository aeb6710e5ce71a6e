//! The conformance suite every herald store passes: the whole [`Store`](herald_core::Store)
//! contract, runnable against any backend with one macro call.
//!
//! [`store_conformance!`] expands to one `#[test]` per case in a module, so each case shows up (and
//! fails) on its own and cases run in parallel. Each case calls the factory once for a fresh store
//! and runs on a current-thread tokio runtime with the clock paused: cases move time with
//! `tokio::time::advance`, so the store's [`Clock`](herald_core::Clock) must follow tokio time (the
//! default [`Clock::new`](herald_core::Clock::new) does). A backend whose tests share one server
//! gives each store from the factory its own namespace (key prefix, schema, file).
//!
//! ```
//! use herald_core::MemoryStore;
//!
//! // In tests/conformance.rs: one test per case, named `store_conformance::<case>`.
//! herald_testkit::store_conformance!(async { MemoryStore::new() });
//!
//! // Several configurations of one backend in one file: name each module.
//! herald_testkit::store_conformance!(mod small_retention, async {
//!     MemoryStore::builder().retain_max(1_000).build()
//! });
//! # fn main() {}
//! ```
//!
//! The cases are also public async functions in [`cases`], for a backend that needs to run them
//! its own way; [`CASES`] names them all.

mod fixture;
mod harness;

pub mod cases;
pub mod crash;
pub mod setup;

/// Runs every conformance case against the stores a factory makes.
///
/// `store_conformance!(factory)` defines the module `store_conformance` with one `#[test]` per
/// case; `store_conformance!(mod name, factory)` names the module. `factory` is an expression
/// evaluated once per case, inside the case's runtime, that gives a future of the store, such as an
/// `async` block or a call of an `async fn`; the store is any type implementing
/// [`Store`](herald_core::Store). Names in the caller's module are in scope in the factory.
///
/// Each test returns the first [`StoreError`](herald_core::StoreError) a case meets, and panics
/// with the broken rule when the store behaves wrongly.
#[macro_export]
macro_rules! store_conformance {
    (mod $module:ident, $factory:expr $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::__for_each_case!(__conformance_tests!($factory));
        }
    };
    ($factory:expr $(,)?) => {
        $crate::store_conformance!(mod store_conformance, $factory);
    };
}

/// Runs every conformance case in turn, each on its own paused-clock runtime against a fresh store
/// from `factory`, and panics naming the first case that fails.
///
/// For a backend whose cases must share what one `#[test]` per case cannot, such as a private
/// server the test starts once; otherwise prefer [`store_conformance!`], whose cases run (and fail)
/// on their own.
///
/// ```
/// use herald_core::MemoryStore;
///
/// herald_testkit::run_every_case!(async { MemoryStore::new() });
/// ```
#[macro_export]
macro_rules! run_every_case {
    ($factory:expr $(,)?) => {
        $crate::__for_each_case!(__run_every_case!($factory))
    };
}

/// Each case in turn, against a fresh store from the factory.
#[doc(hidden)]
#[macro_export]
macro_rules! __run_every_case {
    (($factory:expr) [$($case:ident),* $(,)?]) => {{
        $(
            if let Err(e) = $crate::__private::run_paused(async {
                let store = $factory.await;
                $crate::cases::$case(&store).await
            }) {
                panic!("conformance case {} failed: {e}", stringify!($case));
            }
        )*
    }};
}

/// Calls `$callback!` with `$args` and the list of every case: the one place the list is written.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_case {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*) [
            publish_fans_out_to_every_matching_subscription,
            publish_records_an_unrouted_event,
            single_publish_and_outcome_act_as_batches_of_one,
            events_round_trip_every_field,
            idempotency_key_returns_the_first_event,
            idempotency_key_holds_within_one_batch,
            claims_by_priority_then_due,
            claim_respects_max,
            concurrent_claims_never_share_a_delivery,
            claim_of_an_undeclared_subscription_fails,
            scheduled_delivery_waits_for_its_due_time,
            next_due_reports_the_earliest_time_after,
            leased_delivery_is_claimable_again_once_the_lease_runs_out,
            leases_that_ran_out_go_back_in_line_by_priority,
            next_due_skips_leases_that_already_ran_out,
            extend_keeps_a_delivery_leased,
            extend_refuses_a_lost_lease,
            completion_is_fenced_by_the_lease_token,
            retry_verdict_schedules_the_next_attempt,
            dead_verdict_ends_the_delivery_and_retry_requeues_it,
            retry_refuses_a_delivery_that_is_not_dead,
            released_verdict_does_not_count_the_attempt,
            cancel_ends_deliveries_that_have_not_started,
            cancel_is_too_late_once_every_delivery_started,
            cancel_of_an_unknown_event_is_not_found,
            cancel_as_expired_ends_deliveries_as_expired,
            expired_event_is_never_claimed,
            success_stores_the_reply_and_answers_the_request,
            dead_request_is_answered,
            query_filters_by_topic_pattern,
            query_filters_by_status,
            query_filters_by_subscription_and_status,
            query_filters_by_publication_time,
            query_filters_by_key,
            query_pages_newest_first_without_gaps,
            get_includes_every_attempt,
            stats_count_by_status,
            purge_removes_only_events_finished_before,
            purge_frees_idempotency_keys,
            publish_wakes_with_the_due_time,
            a_batch_due_now_and_later_wakes_with_both_times,
            retry_release_and_requeue_wake_with_the_due_time,
            redeclare_changes_routing_for_later_publishes,
            remove_subscription_stops_routing_and_cancels_its_deliveries,
        ] }
    };
}

/// One `#[test]` per case, each running it against a fresh store from the factory.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (($factory:expr) [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() -> ::core::result::Result<(), $crate::__private::StoreError> {
                $crate::__private::run_paused(async {
                    let store = $factory.await;
                    $crate::cases::$case(&store).await
                })
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_names {
    (() [$($case:ident),* $(,)?]) => {
        &[$(stringify!($case)),*]
    };
}

/// The name of every case in [`cases`], in the order [`store_conformance!`] defines their tests.
pub const CASES: &[&str] = __for_each_case!(__case_names!());

/// What the macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::harness::run_paused;
    pub use herald_core::StoreError;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every public case function, read from the sources, so that a case cannot be written and
    /// then left out of the macro.
    fn defined_cases() -> BTreeSet<String> {
        let sources = [
            include_str!("cases/cancel.rs"),
            include_str!("cases/claim.rs"),
            include_str!("cases/completion.rs"),
            include_str!("cases/expiry.rs"),
            include_str!("cases/history.rs"),
            include_str!("cases/idempotency.rs"),
            include_str!("cases/lease.rs"),
            include_str!("cases/paging.rs"),
            include_str!("cases/publish.rs"),
            include_str!("cases/query.rs"),
            include_str!("cases/reply.rs"),
            include_str!("cases/retention.rs"),
            include_str!("cases/schedule.rs"),
            include_str!("cases/stats.rs"),
            include_str!("cases/subscription.rs"),
            include_str!("cases/verdict.rs"),
            include_str!("cases/wakeup.rs"),
        ];
        sources
            .iter()
            .flat_map(|s| s.lines())
            .filter_map(|line| line.trim_start().strip_prefix("pub async fn "))
            .map(|rest| rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
            .collect()
    }

    #[test]
    fn every_case_is_listed_once() {
        let listed: BTreeSet<String> = super::CASES.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            listed.len(),
            super::CASES.len(),
            "a case is listed twice in __for_each_case!"
        );
        assert_eq!(
            listed,
            defined_cases(),
            "__for_each_case! must list every public case in src/cases"
        );
    }
}
