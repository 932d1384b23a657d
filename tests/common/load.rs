//! Continuous load for restarts: clients that each open a new connection
//! per request, without pause, and keep every outcome.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::{sync::Notify, task::JoinHandle};

use super::{one_request, within, Outcome};

/// Clients that each open a new connection per request, without pause.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests completed so far, whatever their outcome.
    done: Arc<AtomicUsize>,
    progress: Arc<Notify>,
    clients: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(Notify::new());
        let clients = (0..clients)
            .map(|_| {
                let (stop, done, progress) = (stop.clone(), done.clone(), progress.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        outcomes.push(one_request(addr, "/").await);
                        done.fetch_add(1, Ordering::Relaxed);
                        progress.notify_waiters();
                    }
                    outcomes
                })
            })
            .collect();
        Self {
            stop,
            done,
            progress,
            clients,
        }
    }

    /// Waits until `requests` more requests have completed.
    pub async fn wait_for(&self, requests: usize) {
        let target = self.done.load(Ordering::Relaxed) + requests;
        within("the load to make progress", async {
            loop {
                let progressed = self.progress.notified();
                tokio::pin!(progressed);
                progressed.as_mut().enable();
                if self.done.load(Ordering::Relaxed) >= target {
                    return;
                }
                progressed.await;
            }
        })
        .await;
    }

    /// Stops the clients; what became of every request they sent.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcomes = Vec::new();
        for client in self.clients {
            outcomes.extend(within("a client to stop", client).await.unwrap());
        }
        outcomes
    }

    /// Stops the clients; asserts every request got a 200 and returns how
    /// many were sent.
    pub async fn assert_all_served(self) -> usize {
        let outcomes = self.stop().await;
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.is_ok()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {failed:?}",
            failed.len(),
            outcomes.len()
        );
        outcomes.len()
    }
}
