//! How one case runs: on its own current-thread runtime with tokio's clock paused, so that
//! `tokio::time::advance` moves the store's clock and nothing waits in real time.

use std::future::Future;

/// Runs `case` to completion on a new current-thread runtime whose clock starts paused.
///
/// The runtime is built here rather than by `#[tokio::test]` so that a crate using
/// [`store_conformance!`](crate::store_conformance) needs no tokio features of its own.
pub fn run_paused<F: Future>(case: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(case),
        Err(e) => panic!("cannot start the tokio runtime for a conformance case: {e}"),
    }
}
