//! Continuous load: clients that send `GET /` without pause, each on a new
//! connection per request or on one keep-alive connection at a time, and
//! keep a [`Record`] of every request. Each caller computes what it needs
//! from the records: a [`Tally`], resets against the drain's window, the
//! errors of each client, a series over time.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use http_body_util::BodyExt;
use tokio::{sync::Notify, task::JoinHandle};

use super::{get_request, one_request, try_http1_client, within, Http1Client, Outcome, Tally};

/// How the clients of a [`Load`] send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A new connection per request, `Connection: close`.
    ConnectionPerRequest,
    /// One HTTP/1.1 keep-alive connection at a time, `GET /` back to back
    /// on it until it ends: after a response that says `Connection: close`,
    /// or closed between requests (hyper gives the request back unsent,
    /// which is no request). Then a new connection, unless
    /// [`LoadBuilder::stop_when_closed`].
    KeepAlive,
}

/// One request: what became of it, and when it was in progress.
#[derive(Debug, Clone)]
pub struct Record {
    /// The index of the client that sent it.
    pub client: usize,
    /// A 200 whose body is not `hello` is an [`Outcome::Other`]; a
    /// keep-alive client's failed connection attempt is a request too.
    pub outcome: Outcome,
    pub started: Instant,
    pub ended: Instant,
}

/// What one keep-alive client saw of its connections, besides requests.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    /// Connections opened.
    pub opened: usize,
    /// Requests hyper gave back unsent: the connection had closed before
    /// they were written, so nobody read them.
    pub unsent: usize,
    /// Connections that ended with an error, described.
    pub errors: Vec<String>,
}

/// What the clients of a [`Load`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every request, client by client, each client's in the order sent.
    pub requests: Vec<Record>,
    /// Each client's connections, by client index (keep-alive clients
    /// only: a new connection per request is the request's own record).
    pub clients: Vec<Connections>,
}

impl Seen {
    /// The requests' outcomes, counted.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for record in &self.requests {
            tally.add(&record.outcome);
        }
        tally
    }

    /// The requests client `client` sent.
    pub fn of_client(&self, client: usize) -> impl Iterator<Item = &Record> {
        self.requests.iter().filter(move |r| r.client == client)
    }
}

/// How a [`Load`] is set up: [`Load::builder`].
#[derive(Debug, Clone)]
pub struct LoadBuilder {
    addr: SocketAddr,
    clients: usize,
    client: Client,
    stop_when_refused: bool,
    stop_when_closed: bool,
    max_requests: usize,
}

impl LoadBuilder {
    /// How many clients (6 unless told).
    pub fn clients(mut self, clients: usize) -> Self {
        self.clients = clients;
        self
    }

    /// How each client sends ([`Client::ConnectionPerRequest`] unless told).
    pub fn client(mut self, client: Client) -> Self {
        self.client = client;
        self
    }

    /// Each client stops once a connection attempt of its was refused.
    pub fn stop_when_refused(mut self) -> Self {
        self.stop_when_refused = true;
        self
    }

    /// [`Client::KeepAlive`]: each client stops once its first connection
    /// ended, instead of opening another.
    pub fn stop_when_closed(mut self) -> Self {
        self.stop_when_closed = true;
        self
    }

    /// Each client stops after `requests` requests, whatever happens.
    pub fn max_requests(mut self, requests: usize) -> Self {
        self.max_requests = requests;
        self
    }

    /// Starts the clients; keep-alive clients have each opened (or tried)
    /// their first connection when this returns.
    pub async fn start(self) -> Load {
        let shared = Arc::new(Shared::default());
        let mut clients = Vec::with_capacity(self.clients);
        for index in 0..self.clients {
            let recorder = Recorder {
                index,
                shared: shared.clone(),
                setup: self.clone(),
                requests: Vec::new(),
                connections: Connections::default(),
            };
            clients.push(match self.client {
                Client::ConnectionPerRequest => tokio::spawn(recorder.connection_per_request()),
                Client::KeepAlive => {
                    let started = Instant::now();
                    let first = try_http1_client(self.addr).await;
                    tokio::spawn(recorder.keep_alive(first, started))
                }
            });
        }
        Load { shared, clients }
    }
}

/// What the clients and the [`Load`] share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Requests completed so far, whatever their outcome.
    done: AtomicUsize,
    /// Requests answered 200 so far.
    served: AtomicUsize,
    /// Notified at each completed request.
    progress: Notify,
}

/// Clients that send requests without pause: see [`LoadBuilder`].
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<(Vec<Record>, Connections)>>,
}

impl Load {
    /// Clients of `addr`: 6 opening a new connection per request, until
    /// stopped, unless the builder says otherwise.
    pub fn builder(addr: SocketAddr) -> LoadBuilder {
        LoadBuilder {
            addr,
            clients: 6,
            client: Client::ConnectionPerRequest,
            stop_when_refused: false,
            stop_when_closed: false,
            max_requests: usize::MAX,
        }
    }

    /// Waits until `requests` more requests have completed, whatever their
    /// outcome.
    pub async fn wait_for(&self, requests: usize) {
        self.wait(&self.shared.done, requests).await;
    }

    /// Waits until `requests` more requests have been answered 200.
    pub async fn wait_served(&self, requests: usize) {
        self.wait(&self.shared.served, requests).await;
    }

    async fn wait(&self, count: &AtomicUsize, more: usize) {
        let target = count.load(Ordering::Relaxed) + more;
        within("the load to make progress", async {
            loop {
                let progressed = self.shared.progress.notified();
                tokio::pin!(progressed);
                progressed.as_mut().enable();
                if count.load(Ordering::Relaxed) >= target {
                    return;
                }
                progressed.await;
            }
        })
        .await;
    }

    /// Stops the clients; what they saw.
    pub async fn stop(self) -> Seen {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Waits for the clients to stop by themselves (refused, closed, or
    /// at their maximum); what they saw.
    pub async fn join(self) -> Seen {
        let mut seen = Seen::default();
        for client in self.clients {
            let (requests, connections) = within("a client to stop", client).await.unwrap();
            seen.requests.extend(requests);
            seen.clients.push(connections);
        }
        seen
    }

    /// Stops the clients; asserts every request got a 200 and returns how
    /// many were sent.
    pub async fn assert_all_served(self) -> usize {
        let seen = self.stop().await;
        let failed: Vec<_> = seen
            .requests
            .iter()
            .filter(|r| !r.outcome.is_ok())
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {failed:?}",
            failed.len(),
            seen.requests.len()
        );
        seen.requests.len()
    }
}

/// One client of a [`Load`]: what it has seen, and when to stop.
struct Recorder {
    index: usize,
    shared: Arc<Shared>,
    setup: LoadBuilder,
    requests: Vec<Record>,
    connections: Connections,
}

impl Recorder {
    fn running(&self) -> bool {
        !self.shared.stop.load(Ordering::Relaxed) && self.requests.len() < self.setup.max_requests
    }

    /// Notes that a request started at `started` ended with `outcome`;
    /// whether the client goes on (it stops once refused, if told to).
    fn record(&mut self, outcome: Outcome, started: Instant) -> bool {
        let refused = outcome == Outcome::Refused;
        if outcome.is_ok() {
            self.shared.served.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.push(Record {
            client: self.index,
            outcome,
            started,
            ended: Instant::now(),
        });
        self.shared.done.fetch_add(1, Ordering::Relaxed);
        self.shared.progress.notify_waiters();
        !(refused && self.setup.stop_when_refused)
    }

    fn finish(self) -> (Vec<Record>, Connections) {
        (self.requests, self.connections)
    }

    async fn connection_per_request(mut self) -> (Vec<Record>, Connections) {
        while self.running() {
            let started = Instant::now();
            let outcome = one_request(self.setup.addr, "/").await;
            if !self.record(outcome, started) {
                break;
            }
        }
        self.finish()
    }

    /// Requests on `first` (tried since `started`), then on new
    /// connections unless told to stop when it closed.
    async fn keep_alive(
        mut self,
        first: std::io::Result<Http1Client>,
        started: Instant,
    ) -> (Vec<Record>, Connections) {
        let mut next = Some((first, started));
        while self.running() {
            let (connection, started) = match next.take() {
                Some(first) => first,
                None => (try_http1_client(self.setup.addr).await, Instant::now()),
            };
            let goes_on = match connection {
                Ok(connection) => self.requests_on(connection).await,
                Err(error) => self.record(Outcome::of_error(&error), started),
            };
            if !goes_on || self.setup.stop_when_closed {
                break;
            }
        }
        self.finish()
    }

    /// Sends `GET /` back to back on `connection` until it ends or the
    /// load stops; waits for the connection to end.
    async fn requests_on(&mut self, (mut sender, conn): Http1Client) -> bool {
        self.connections.opened += 1;
        // `ready` fails once the connection has closed.
        while self.running() && sender.ready().await.is_ok() {
            let started = Instant::now();
            let response = match sender.try_send_request(get_request("/")).await {
                Ok(response) => response,
                Err(e) if e.message().is_some() => {
                    self.connections.unsent += 1;
                    break;
                }
                Err(e) => {
                    self.record(Outcome::of_hyper_error(e.error()), started);
                    break;
                }
            };
            let outcome = Outcome::of_response(&response);
            let outcome = match response.into_body().collect().await {
                Ok(body) => match body.to_bytes() {
                    body if outcome.is_ok() && &body[..] != b"hello" => {
                        Outcome::Other(format!("200 with body {body:?}"))
                    }
                    _ => outcome,
                },
                Err(e) => Outcome::of_hyper_error(&e),
            };
            let closing = matches!(
                outcome,
                Outcome::Response {
                    connection_close: true,
                    ..
                }
            );
            self.record(outcome, started);
            if closing {
                break;
            }
        }
        drop(sender);
        if let Err(e) = within("a client connection to end", conn).await.unwrap() {
            self.connections.errors.push(format!("{e:?}"));
        }
        true
    }
}
