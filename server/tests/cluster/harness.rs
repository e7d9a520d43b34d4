//! Starting, killing, freezing and stopping the processes of a cluster.

use crate::helpers::{SECRET, TestApp};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Instances heartbeat every third of this, so a frozen or killed one
/// leaves the registry within it (scripts/cluster uses the default 15 s).
pub const SERVICE_TTL_SECS: u64 = 3;
/// A failsafe for cluster start-up and recovery; no test waits for it to
/// pass.
pub const RECOVERY: Duration = Duration::from_secs(60);

/// The roles, by the prefix of their `SERVICE_ID`.
fn role_of(id: &str) -> &'static str {
    for role in ["edge", "auth", "chat", "presence"] {
        if id.starts_with(role) {
            return role;
        }
    }
    panic!("unknown role in {id}")
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

pub struct Cluster {
    /// Logs and data dirs: target/cluster-tests/<run>/ (kept for reading
    /// after a failure).
    pub dir: PathBuf,
    pub run: String,
    env: Vec<(String, String)>,
    processes: BTreeMap<String, Child>,
    /// HTTP address of each edge, by id.
    pub edges: BTreeMap<String, SocketAddr>,
    pub nginx: SocketAddr,
    nginx_process: Option<Child>,
}

impl Cluster {
    /// auth-1, chat-1, chat-2, presence-1, edge-1, edge-2 and nginx, all
    /// ready (every edge's `/ready` is 200, nginx answers `/health`).
    pub async fn start() -> Self {
        let run = format!("c{}", &parley::ids::new_session_id()[..10]);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster-tests")
            .join(&run);
        std::fs::create_dir_all(&dir).unwrap();
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("PARLEY_TEST_REAL is set but {name} is not"))
        };
        let env = vec![
            ("KAFKA_BROKERS".into(), var("KAFKA_BROKERS")),
            ("REDIS_URL".into(), var("REDIS_URL")),
            ("MONGODB_URL".into(), var("MONGODB_URL")),
            ("PARLEY_TOPIC_PREFIX".into(), format!("{run}.")),
            ("PARLEY_REDIS_PREFIX".into(), run.clone()),
            ("PARLEY_MONGODB_DATABASE".into(), run.clone()),
            ("PARLEY_PARTITIONS".into(), "4".into()),
            (
                "PARLEY_SERVICE_TTL_SECS".into(),
                SERVICE_TTL_SECS.to_string(),
            ),
            ("PARLEY_OFFLINE_GRACE_SECS".into(), "1".into()),
            ("JWT_SECRET".into(), SECRET.into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        let mut cluster = Self {
            dir,
            run,
            env,
            processes: BTreeMap::new(),
            edges: BTreeMap::new(),
            nginx: SocketAddr::from(([127, 0, 0, 1], free_port())),
            nginx_process: None,
        };
        for id in ["auth-1", "chat-1", "chat-2", "presence-1"] {
            cluster.spawn(id);
        }
        for id in ["edge-1", "edge-2"] {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            cluster.edges.insert(id.to_owned(), addr);
            cluster.spawn(id);
        }
        for id in ["edge-1", "edge-2"] {
            cluster.wait_ready(id).await;
        }
        cluster.start_nginx().await;
        cluster
    }

    /// Starts (or restarts) the process with this id.
    pub fn spawn(&mut self, id: &str) {
        let role = role_of(id);
        let log = std::fs::File::create(self.dir.join(format!("{id}.log"))).unwrap();
        let data = self.dir.join(id);
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        command
            .arg(role)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SERVICE_ID", id)
            .env("PARLEY_DATA_DIR", &data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(addr) = self.edges.get(id) {
            command.env("PORT", addr.port().to_string());
        }
        let child = command.spawn().unwrap();
        if let Some(mut old) = self.processes.insert(id.to_owned(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    fn pid(&self, id: &str) -> String {
        self.processes[id].id().to_string()
    }

    fn signal(&self, id: &str, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(id)])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {id}");
    }

    /// kill -9: no shutdown, no deregistration.
    pub fn kill(&mut self, id: &str) {
        if let Some(mut child) = self.processes.remove(id) {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and waits (at most [`RECOVERY`]) for the process to exit.
    pub fn terminate(&mut self, id: &str) -> std::process::ExitStatus {
        self.signal(id, "-TERM");
        let mut child = self.processes.remove(id).unwrap();
        let deadline = std::time::Instant::now() + RECOVERY;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{id} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub fn freeze(&self, id: &str) {
        self.signal(id, "-STOP");
    }

    pub fn thaw(&self, id: &str) {
        self.signal(id, "-CONT");
    }

    /// A client of one edge, bypassing nginx.
    pub fn edge(&self, id: &str) -> TestApp {
        TestApp::at(self.edges[id])
    }

    /// A client of the cluster through nginx.
    pub fn front(&self) -> TestApp {
        TestApp::at(self.nginx)
    }

    /// The database the cluster stores into.
    pub async fn database(&self) -> mongodb::Database {
        let url = std::env::var("MONGODB_URL").unwrap();
        mongodb::Client::with_uri_str(&url)
            .await
            .unwrap()
            .database(&self.run)
    }

    /// `GET /api/services` through one edge: instance ids by kind.
    pub async fn services(&self, via: &str) -> BTreeMap<String, Vec<Value>> {
        let (status, body) = self.edge(via).get("/api/services", None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["services"].clone()).unwrap()
    }

    /// Polls an edge's `/ready` until it is 200 (its services registered
    /// and serving). Start-up has no event to await from outside the
    /// process, so this is a bounded poll.
    pub async fn wait_ready(&self, id: &str) {
        let what = format!("{id} /ready (logs in {})", self.dir.display());
        answers_ok(&self.edge(id), "/ready", &what).await;
    }

    /// nginx from the same template scripts/cluster fills in.
    async fn start_nginx(&mut self) {
        let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../nginx/local.conf.template");
        let prefix = self.dir.join("nginx");
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(prefix.join("tmp").join(sub)).unwrap();
        }
        let config = std::fs::read_to_string(template)
            .unwrap()
            .replace("@PREFIX@", prefix.to_str().unwrap())
            .replace("@LISTEN@", &self.nginx.to_string())
            .replace("@EDGE1@", &self.edges["edge-1"].to_string())
            .replace("@EDGE2@", &self.edges["edge-2"].to_string());
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let nginx = program("NGINX", "/usr/sbin/nginx");
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {nginx}: {e} (scripts/infra installs it)"));
        self.nginx_process = Some(child);
        let what = format!("nginx /health (see {})", prefix.display());
        answers_ok(&self.front(), "/health", &what).await;
    }
}

/// Polls `path` until it answers 200, failing after [`RECOVERY`].
async fn answers_ok(app: &TestApp, path: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        if let Ok(resp) = app.http.get(app.url(path)).send().await
            && resp.status() == 200
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no 200 from {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Cluster {
    /// Stops what is left: SIGCONT (a frozen process cannot die of SIGTERM
    /// until thawed), SIGTERM so instances deregister, then SIGKILL for any
    /// that lingers.
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx_process.take() {
            // TERM lets the master take its workers down with it.
            let _ = Command::new("kill")
                .args(["-TERM", &nginx.id().to_string()])
                .status();
            let _ = nginx.wait();
        }
        for child in self.processes.values() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for child in self.processes.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
