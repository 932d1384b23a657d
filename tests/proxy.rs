//! Restarts behind a real reverse proxy: nginx in front of the reference
//! server, with a keep-alive pool of upstream connections. The race a drain
//! must not lose is nginx sending a request on a pooled connection just as
//! the server closes it, which nginx (with `proxy_next_upstream off`)
//! answers with a 502. This file proves that five handoff restarts in a row
//! under continuous keep-alive load through nginx lose no request: every
//! answer is a 200, and no client sees an error.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{get_request, handoff_path, http1_client, process::Process, within};
use http_body_util::BodyExt;
use tokio::{net::TcpStream, sync::Notify, task::JoinHandle};

/// Where Debian's nginx packages put the binary.
const NGINX: &str = "/usr/sbin/nginx";

/// A real nginx, master and worker, in a process group of its own, killed
/// (the whole group) when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in the foreground with its config, pid file, logs and
    /// temp paths in `dir`, proxying 127.0.0.1 on a free port to `backend`
    /// through a keep-alive pool, and waits until it accepts connections.
    async fn start(dir: &Path, backend: SocketAddr) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: this test needs a real nginx, \
             install it with `apt-get install nginx-light` (on Debian 12 that pulls in \
             the `nginx` package, which holds the binary)"
        );
        std::fs::create_dir_all(dir).unwrap();
        // A port free a moment ago; nginx failing to bind it fails the test.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let d = dir.display();
        let config = format!(
            "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{ server {backend}; keepalive 32; }}
    server {{
        listen {addr};
        # Clients reconnect every 100 requests: nginx closes their connection.
        keepalive_requests 100;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_next_upstream off;
        }}
    }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut nginx = Self {
            child,
            addr,
            dir: dir.to_owned(),
        };
        nginx.wait_until_accepting().await;
        nginx
    }

    /// Polls (every 10 ms) until nginx accepts a connection; fails with its
    /// error log if it exits first.
    async fn wait_until_accepting(&mut self) {
        within("nginx to accept connections", async {
            let mut poll = tokio::time::interval(Duration::from_millis(10));
            loop {
                poll.tick().await;
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("nginx exited with {status}:\n{}", self.error_log());
                }
                if TcpStream::connect(self.addr).await.is_ok() {
                    return;
                }
            }
        })
        .await;
    }

    /// nginx's error log (level `warn` and above).
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master and its worker: the process group nginx leads.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Responses by status.
    statuses: BTreeMap<u16, usize>,
    /// Every failed request or connection, described.
    errors: Vec<String>,
    /// Connections opened to nginx.
    connections: usize,
}

/// Keep-alive clients through nginx: each holds one HTTP/1.1 connection and
/// sends `GET /` on it back to back, opening a new one when nginx closes it.
struct Load {
    stop: Arc<AtomicBool>,
    /// 200 responses so far, and a notification at each.
    served: Arc<(AtomicUsize, Notify)>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new((AtomicUsize::new(0), Notify::new()));
        let clients = (0..clients)
            .map(|_| tokio::spawn(client(addr, stop.clone(), served.clone())))
            .collect();
        Self {
            stop,
            served,
            clients,
        }
    }

    /// Waits until `requests` more requests have been answered 200.
    async fn wait_for(&self, requests: usize) {
        let (count, notify) = &*self.served;
        let target = count.load(Ordering::Relaxed) + requests;
        within("the load to make progress", async {
            loop {
                let progressed = notify.notified();
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

    /// Stops the clients; what they saw, all together.
    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for client in self.clients {
            let tally = within("a client to stop", client).await.unwrap();
            for (status, n) in tally.statuses {
                *total.statuses.entry(status).or_default() += n;
            }
            total.errors.extend(tally.errors);
            total.connections += tally.connections;
        }
        total
    }
}

/// One client of [`Load`]: requests until `stop`, counting each 200 in
/// `served`.
async fn client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<(AtomicUsize, Notify)>,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let (mut sender, conn) = http1_client(addr).await;
        tally.connections += 1;
        // `ready` fails once nginx closed the connection (after a response
        // with `Connection: close`, at its `keepalive_requests`).
        while !stop.load(Ordering::Relaxed) && sender.ready().await.is_ok() {
            let response = match sender.send_request(get_request("/")).await {
                Ok(response) => response,
                Err(e) => {
                    tally.errors.push(format!("request: {e:?}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(body) => {
                    *tally.statuses.entry(status).or_default() += 1;
                    let body = body.to_bytes();
                    if status == 200 && &body[..] != b"hello" {
                        tally.errors.push(format!("200 with body {body:?}"));
                    } else if status == 200 {
                        served.0.fetch_add(1, Ordering::Relaxed);
                        served.1.notify_waiters();
                    }
                }
                Err(e) => tally.errors.push(format!("body of a {status}: {e:?}")),
            }
        }
        drop(sender);
        if let Err(e) = within("a client connection to end", conn).await.unwrap() {
            tally.errors.push(format!("connection: {e:?}"));
        }
    }
    tally
}

/// The number before `what` in a drain report logged by the server.
fn reported(report: &str, what: &str) -> usize {
    let before = report
        .split(what)
        .next()
        .filter(|before| before.len() < report.len())
        .unwrap_or_else(|| panic!("no {what:?} in the report {report:?}"));
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {report:?}"))
}

/// Five handoff restarts of the reference server behind nginx, whose
/// keep-alive pool holds connections to the old server at each: every
/// request through nginx is answered 200, every old server exits 0, and each
/// old server retired pooled connections with a response (so the pool was
/// in use when it drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_behind_nginx_keep_alive_lose_nothing() {
    let path = handoff_path("proxy");
    let handoff = format!("--handoff {}", path.display());
    let mut server = Process::start("", &handoff).await;
    let args = format!("--addr {} {handoff}", server.addr);
    let nginx = Nginx::start(&path.with_file_name("nginx"), server.addr).await;

    let load = Load::start(nginx.addr, 16);
    load.wait_for(500).await;
    for restart in 1..=5 {
        let mut successor = Process::start_with("", &args, Stdio::null()).await;
        assert_eq!(successor.addr, server.addr);
        successor
            .wait_for_log("took over from the predecessor")
            .await;
        let report = server
            .wait_for_log("keep-alive connections retired by a response")
            .await;
        eprintln!("restart {restart}: {report}");
        assert_eq!(reported(&report, "listeners left to another process"), 1);
        let retired = reported(&report, "keep-alive connections retired by a response");
        assert!(retired > 0, "no pooled connection was retired: {report}");
        assert_eq!(server.exit().await.code(), Some(0));
        server = successor;
        load.wait_for(500).await;
    }

    let tally = load.stop().await;
    let requests: usize = tally.statuses.values().sum();
    eprintln!(
        "through nginx: {requests} requests on {} client connections, by status {:?}, {} errors",
        tally.connections,
        tally.statuses,
        tally.errors.len()
    );
    let log = nginx.error_log();
    let log_head: Vec<_> = log.lines().take(5).collect();
    eprintln!(
        "nginx error log: {} lines, the first: {log_head:#?}",
        log.lines().count()
    );
    assert!(
        tally.errors.is_empty(),
        "{} errors: {:?}",
        tally.errors.len(),
        tally.errors
    );
    assert_eq!(
        tally.statuses.keys().collect::<Vec<_>>(),
        [&200],
        "every response must be a 200: {:?}",
        tally.statuses
    );

    server.signal("TERM");
    assert_eq!(server.exit().await.code(), Some(0));
}
