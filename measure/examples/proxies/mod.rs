//! Real reverse proxies in front of a server: nginx and HAProxy, with
//! keep-alive pools of connections to it and configured so that a request
//! lost on a closing keep-alive connection is answered 502 instead of being
//! retried. `restarts.rs --proxy` measures behind them; `tests/proxy.rs`
//! includes this file to test behind them.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A reverse proxy.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// nginx, with a keep-alive pool of upstream connections and
    /// `proxy_next_upstream off`.
    Nginx,
    /// HAProxy in HTTP mode, with `http-reuse always`, `retries 0` and
    /// health checks on `GET /healthz` every 100 ms (down after 2 failures,
    /// up after 1 success; a server down is checked every 5 s, so checks do
    /// not keep connecting to a server that is closing its socket).
    HAProxy,
}

impl Kind {
    /// `nginx` or `haproxy`, as the `--proxy` flag says it.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "nginx" => Some(Kind::Nginx),
            "haproxy" => Some(Kind::HAProxy),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::HAProxy => "HAProxy",
        }
    }

    /// The Debian package to install for it.
    pub(crate) fn package(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx-light",
            Kind::HAProxy => "haproxy",
        }
    }

    /// Where Debian's packages put the binary.
    fn binary(self) -> &'static str {
        match self {
            Kind::Nginx => "/usr/sbin/nginx",
            Kind::HAProxy => "/usr/sbin/haproxy",
        }
    }

    /// The config file's text: listening on `addr`, proxying to `backends`
    /// (in turn), with every path nginx writes to in `dir`.
    fn config(self, dir: &Path, addr: SocketAddr, backends: &[SocketAddr]) -> String {
        let d = dir.display();
        match self {
            Kind::Nginx => {
                let servers: String = backends.iter().map(|b| format!("server {b}; ")).collect();
                format!(
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
    upstream backend {{ {servers}keepalive 32; }}
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
                )
            }
            Kind::HAProxy => {
                let servers: String = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        format!(
                            "    server s{i} {b} check inter 100ms downinter 5s fall 2 rise 1\n"
                        )
                    })
                    .collect();
                format!(
                    "defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
    # Any idle connection to a server may carry any client's request.
    http-reuse always
    # A request lost on a closing connection is a 502, not a retry.
    retries 0
    option httpchk GET /healthz
frontend front
    bind {addr}
    default_backend back
backend back
{servers}"
                )
            }
        }
    }

    /// The arguments that run it in the foreground with the config file
    /// `config`, and its other files in `dir`.
    fn args(self, dir: &Path, config: &Path) -> Vec<std::ffi::OsString> {
        match self {
            Kind::Nginx => vec![
                "-p".into(),
                dir.into(),
                "-c".into(),
                config.into(),
                "-e".into(),
                dir.join("error.log").into(),
                "-g".into(),
                "daemon off;".into(),
            ],
            Kind::HAProxy => vec!["-db".into(), "-f".into(), config.into()],
        }
    }
}

/// How long a proxy may take to answer its first `GET /` with a 200:
/// generous, for a loaded machine.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// A running proxy, in a process group of its own, killed (the whole group:
/// nginx's master and worker) and its directory removed when dropped.
pub(crate) struct Proxy {
    pub(crate) kind: Kind,
    child: Child,
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl Proxy {
    /// Starts `kind` in the foreground, with its config, logs and other
    /// files in a fresh directory, listening on 127.0.0.1 on a free port
    /// and proxying to `backends`; waits until a `GET /` through it is
    /// answered 200 (for HAProxy: until its health checks have seen a server
    /// up). Fails, naming the package to install, if the binary is missing.
    pub(crate) async fn start(kind: Kind, backends: &[SocketAddr]) -> std::io::Result<Self> {
        let binary = kind.binary();
        if !Path::new(binary).exists() {
            return Err(std::io::Error::other(format!(
                "{binary} is missing: install {} with `apt-get install {}`",
                kind.name(),
                kind.package()
            )));
        }
        // A port free a moment ago.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let dir = std::env::temp_dir().join(format!(
            "tower-drain-restarts-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("proxy.conf");
        std::fs::write(&config, kind.config(&dir, addr, backends))?;
        let child = Command::new(binary)
            .args(kind.args(&dir, &config))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .process_group(0)
            .spawn()?;
        let mut proxy = Self {
            kind,
            child,
            addr,
            dir,
        };
        proxy.wait_until_serving().await?;
        Ok(proxy)
    }

    /// Polls (every 10 ms) until a `GET /` through the proxy is answered
    /// 200; fails with its log if it exits first or takes too long.
    async fn wait_until_serving(&mut self) -> std::io::Result<()> {
        let give_up = tokio::time::Instant::now() + START_PATIENCE;
        while tokio::time::Instant::now() < give_up {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log();
                return Err(std::io::Error::other(format!(
                    "exited with {status}: {log}"
                )));
            }
            if answers_200(self.addr).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = self.log();
        Err(std::io::Error::other(format!("not serving: {log}")))
    }

    /// What the proxy wrote to stderr, then nginx's error log.
    pub(crate) fn log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .filter_map(|file| std::fs::read_to_string(self.dir.join(file)).ok())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a `GET /` to `addr` on a new connection is answered 200.
async fn answers_200(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET / HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n";
    let mut answer = Vec::new();
    stream.write_all(request).await.is_ok()
        && stream.read_to_end(&mut answer).await.is_ok()
        && answer.starts_with(b"HTTP/1.1 200 ")
}
