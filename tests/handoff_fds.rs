//! A server that hands over and takes over 50 times keeps a flat descriptor
//! count: no handoff connection, received socket or copy is leaked. Alone in
//! its binary, so no other test opens descriptors meanwhile.

mod common;

use common::*;
use tower_drain::{
    restart::{Listeners, Origin},
    Watch,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_stay_flat_over_50_handoffs() {
    let path = handoff_path("fds");

    let open = |addr| {
        let watch = Watch::new();
        let builder = Listeners::builder().tcp("http", addr).handoff(&path);
        async move { builder.open(&watch).await.unwrap() }
    };
    let mut listeners = open(localhost()).await;
    let mut server = Server::serve(listeners.tcp("http").unwrap());
    let addr = server.addr;
    let mut first = None;
    for _ in 0..50 {
        let mut listeners = open(addr).await;
        assert_eq!(listeners.origin(), Origin::Predecessor);
        let next = Server::serve(listeners.tcp("http").unwrap());
        let report = server.stopped().await;
        assert_eq!(report.listeners_shared, 1);
        assert!(one_request(addr, "/").await.is_ok());
        server = next;
        // Up to three descriptors of the handoff just done may still be
        // closing in their tasks; a leak of even one per handoff adds 50.
        let fds = open_fds();
        let first = *first.get_or_insert(fds);
        assert!(
            fds <= first + 3,
            "{fds} descriptors open, {first} after the first handoff"
        );
    }
    server.watch.trigger();
    server.stopped().await;
}
