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
    herald_testkit::run_every_case!(async {
        RedisStore::builder(url.as_str())
            .prefix(format!("cluster-{:08x}", fastrand::u32(..)))
            .timeouts(None, None)
            .connect()
            .await
            .unwrap()
    });
    drop(server);
}
