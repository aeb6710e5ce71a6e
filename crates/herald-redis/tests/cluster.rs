//! The conformance suite on Redis Cluster: a private single-node cluster (`cluster-enabled yes`,
//! every slot on the one node) started by the test. Redis then checks what it checks on any
//! cluster: multi-key commands, and scripts (which carry a `#!lua` shebang, so the server does not
//! fall back to its lenient mode), must keep to the slot of their declared key; a script that
//! touched a key of another slot fails with "Script attempted to access keys that do not hash to
//! the same slot". The store's one hash tag per namespace keeps every key in one slot. (A cluster of several primaries routes by the same slot; this test
//! cannot start one with the client's cluster support left out of the store.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use herald_redis::RedisStore;

/// Runs each named case on its own paused-clock runtime against a fresh namespace on `url`, and
/// returns the names run.
macro_rules! run_cases {
    ($url:expr; $($case:ident),* $(,)?) => {{
        let mut ran: Vec<&'static str> = Vec::new();
        $(
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let result = runtime.block_on(async {
                let store = RedisStore::builder($url)
                    .prefix(format!("cluster-{:08x}", fastrand::u32(..)))
                    .timeouts(None, None)
                    .connect()
                    .await
                    .unwrap();
                let result = herald_testkit::cases::$case(&store).await;
                store.destroy().await.unwrap();
                result
            });
            if let Err(e) = result {
                panic!("conformance case {} failed on the cluster: {e}", stringify!($case));
            }
            ran.push(stringify!($case));
        )*
        ran
    }};
}

#[test]
fn the_conformance_suite_passes_on_a_cluster_node() {
    if !common::redis_server_available("the_conformance_suite_passes_on_a_cluster_node") {
        return;
    }
    let dir = common::TempDir::new("cluster");
    let server = common::Server::start(
        &dir.0,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    let url = server.url();
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    setup.block_on(async {
        server.ready().await;
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async(&mut c)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster did not come up: {info}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let ran = run_cases!(url.as_str();
        publish_fans_out_to_every_matching_subscription,
        publish_records_an_unrouted_event,
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
    );
    let mut ran = ran;
    let mut all: Vec<&str> = herald_testkit::CASES.to_vec();
    ran.sort_unstable();
    all.sort_unstable();
    assert_eq!(ran, all, "this test runs every conformance case: update its list");
    drop(server);
}
