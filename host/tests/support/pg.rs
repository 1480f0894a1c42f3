//! A throwaway PostgreSQL cluster per test binary: `initdb` into a temporary
//! directory, then `postgres` on a free loopback port, stopped when the test
//! process ends (parent-death signal) and its directory removed by the next
//! run. Each test takes a database of its own ([`database`]), so tests share
//! nothing but the server process.
//!
//! PostgreSQL refuses to run as root: as root, the cluster runs as the
//! `postgres` system user (the Debian package creates it). `.ci/run`
//! installs the package when its binaries are missing.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    /// The server's pid, for tests that kill it.
    pub pid: std::sync::atomic::AtomicU32,
    args: Vec<String>,
}

/// How a cluster is tuned: tests skip fsync (they test semantics, not power
/// loss); benchmarks keep PostgreSQL's durable defaults.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Fsync,
    None,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REFOLD_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|p| p.join("postgres").exists())
        .expect("PostgreSQL's server binaries are not installed (apt-get install -y postgresql; .ci/run does it)")
}

/// The uid and gid to run PostgreSQL as: ourselves, or `postgres` when root.
fn run_as() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs the `postgres` system user (the postgresql package creates it)"
    );
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn command(program: &Path, die_with_parent: bool) -> Command {
    let mut cmd = Command::new(program);
    let ids = run_as();
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = ids
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After setuid, which clears it: the server dies with this process.
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes clusters left by test processes that are gone.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("refold-pg-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            && unsafe { libc::kill(pid, 0) } != 0
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Cluster {
    /// A new cluster. Its server is started from a thread that lives as long
    /// as the process, because the parent-death signal follows the thread.
    pub fn start(durability: Durability) -> Cluster {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let parent = std::env::temp_dir();
        sweep(&parent);
        let dir = parent.join(format!(
            "refold-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = run_as() {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
        }
        let data = dir.join("data");
        let bin = bin_dir();
        let out = command(&bin.join("initdb"), false)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.to_str().unwrap().into(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.to_str().unwrap().into(),
            // Unix socket only, in the cluster's own directory: no port can
            // collide with another test binary's cluster.
            "-c".into(),
            "listen_addresses=".into(),
            "-c".into(),
            "max_connections=300".into(),
            "-c".into(),
            "shared_buffers=128MB".into(),
        ];
        if durability == Durability::None {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                args.push("-c".into());
                args.push(setting.into());
            }
        }
        let pid = spawn_server(&dir, &args);
        let cluster = Cluster {
            port,
            dir,
            pid: AtomicU32::new(pid),
            args,
        };
        cluster.wait_ready();
        cluster
    }

    /// Stops the server at once (as a crash would: SIGQUIT, no checkpoint),
    /// waits until it is gone, and starts it again on the same directory.
    pub fn restart(&self) {
        let pid = self.pid.load(Ordering::SeqCst) as i32;
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let started = Instant::now();
        while unsafe { libc::kill(pid, 0) } == 0 || self.dir.join("data/postmaster.pid").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "postgres did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.pid
            .store(spawn_server(&self.dir, &self.args), Ordering::SeqCst);
        self.wait_ready();
    }
}

/// Starts `postgres` from a thread that lives as long as the server: the
/// parent-death signal follows the thread, so the server dies with this
/// process. Returns its pid.
fn spawn_server(dir: &Path, args: &[String]) -> u32 {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let postgres = bin_dir().join("postgres");
    let args = args.to_vec();
    {
        std::thread::Builder::new()
            .name("pg-cluster-parent".into())
            .spawn(move || {
                let mut child = command(&postgres, true)
                    .args(&args)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("starting postgres");
                tx.send(child.id()).unwrap();
                // This thread waits as long as the server runs: the server
                // dies with this thread, so with the process.
                let _ = child.wait();
            })
            .unwrap();
    }
    rx.recv().unwrap()
}

impl Cluster {
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if psql(self, "postgres", "SELECT 1").is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not start; its log: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.dir.display(),
            self.port
        )
    }

    /// Runs `sql` on the database of `db_url` (from [`Cluster::database`]) and
    /// returns psql's unaligned output: for tests that look inside.
    pub fn query(&self, db_url: &str, sql: &str) -> String {
        let db = db_url.rsplit("dbname=").next().unwrap();
        psql(self, db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A new, empty database on this cluster; returns its connection URL.
    pub fn database(&self) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}", SEQ.fetch_add(1, Ordering::Relaxed));
        psql(self, "postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        self.url(&name)
    }
}

fn psql(cluster: &Cluster, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bin_dir().join("psql"))
        .args([
            "-h",
            cluster.dir.to_str().unwrap(),
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-XAtqc",
            sql,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The cluster this test binary shares (fsync off).
pub fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(Durability::None))
}

/// A fresh database on the shared cluster.
pub fn database() -> String {
    shared().database()
}

/// A module record that truly describes `bytes` (its digest and size), for
/// the registry's tests.
pub fn module_record(name: &str, version: &str, bytes: &[u8]) -> refold::store::ModuleRecord {
    use sha2::Digest as _;
    refold::store::ModuleRecord {
        name: name.into(),
        version: version.into(),
        kind: refold::store::ModuleKind::Aggregate,
        digest: sha2::Sha256::digest(bytes).into(),
        size: bytes.len() as u64,
        uploaded_at_ms: 1,
    }
}
