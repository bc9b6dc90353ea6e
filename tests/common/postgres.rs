//! A PostgreSQL server of the test's own: `initdb` in a temporary directory, `pg_ctl` on a free
//! loopback port, stopped and started at will, removed on drop. Run as the `postgres` user when the
//! tests run as root (CI does; PostgreSQL refuses to run as root). Debian's `postgresql` package
//! provides the binaries; `.ci/run` installs it, and so does this file when it is missing and the
//! tests run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The password of the server's superuser `postgres` over TCP (scram-sha-256 there, so a wrong
/// password is refused as in production).
pub const PASSWORD: &str = "gauntlet-test";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    root: bool,
    /// With TLS: the PEM file of the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
}

impl Postgres {
    /// A new, running server with an empty `postgres` database.
    pub fn start() -> Self {
        Self::init(false)
    }

    /// As `start`, but TCP clients must use TLS; the server's certificate (for 127.0.0.1) is
    /// signed by a CA of its own, in `ca`.
    pub fn start_tls() -> Self {
        Self::init(true)
    }

    fn init(tls: bool) -> Self {
        let bin = binaries();
        let root = is_root();
        let dir = tempfile::Builder::new().prefix("gauntlet-pg-").tempdir().expect("a temporary directory");
        if root {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()));
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if root {
            run(Command::new("chown").arg("postgres:postgres").arg(&pwfile));
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { dir, bin, port, root, ca: None };
        server.pg(
            "initdb",
            &[
                "-D",
                &server.data().display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                &pwfile.display().to_string(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if tls {
            server.ca = Some(server.certify());
        }
        server.resume();
        server
    }

    /// Makes a CA and a server certificate for 127.0.0.1, turns TLS on and requires it of TCP
    /// clients (`hostssl`); returns the CA's PEM file.
    fn certify(&self) -> PathBuf {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let data = self.data();
        std::fs::write(data.join("server.crt"), server.pem()).unwrap();
        std::fs::write(data.join("server.key"), key.serialize_pem()).unwrap();
        run(Command::new("chmod").arg("600").arg(data.join("server.key")));
        if self.root {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")));
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let text: String = text
            .lines()
            .map(|l| if l.starts_with("host ") { format!("hostssl{}\n", &l[4..]) } else { format!("{l}\n") })
            .collect();
        std::fs::write(&hba, text).unwrap();
        let ca_file = self.dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        ca_file
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres:…@127.0.0.1:port/database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &["-D", &self.data().display().to_string(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
        );
        let until = Instant::now() + Duration::from_secs(60);
        while !blocking(|| self.local().connect(postgres::NoTls).is_ok()) {
            assert!(Instant::now() < until, "PostgreSQL did not accept connections: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast: connections are cut, as when a database host goes away).
    pub fn stop(&self) {
        self.pg("pg_ctl", &["-D", &self.data().display().to_string(), "-m", "fast", "-w", "stop"]);
    }

    /// The server's own connection: its Unix socket, as the superuser (no TLS, no password).
    fn local(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config.host_path(self.dir.path()).port(self.port).user("postgres").dbname("postgres");
        config
    }

    /// Runs `f` on a new connection to the `postgres` database (from async tests too).
    pub fn sql<T>(&self, f: impl FnOnce(&mut postgres::Client) -> T) -> T {
        blocking(|| {
            let mut client = self.local().connect(postgres::NoTls).expect("connecting to the test database");
            f(&mut client)
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn pg(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(self.dir.path());
        run(&mut command)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data().display().to_string();
        let mut command = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = command.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

/// The blocking client runs a runtime of its own, which tokio refuses inside an async test unless
/// the thread is handed over first.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(f),
        Err(_) => f(),
    }
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The newest `/usr/lib/postgresql/<version>/bin`, installed from Debian's packages if missing.
fn binaries() -> PathBuf {
    if let Some(found) = find() {
        return found;
    }
    assert!(
        is_root(),
        "PostgreSQL's server binaries (initdb, pg_ctl) are missing, and the cluster tests start servers of \
         their own: `sudo apt-get install postgresql` (Debian's), or run the tests as root, as `.ci/run` \
         does, and they install it themselves"
    );
    // One install for all the test binaries running at once.
    let lock = std::env::temp_dir().join("gauntlet-apt-postgresql.lock");
    let script = format!(
        "exec 9>{}; flock 9; [ -n \"$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)\" ] || \
         {{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }}",
        lock.display()
    );
    run(Command::new("sh").args(["-c", &script]));
    find().expect("PostgreSQL installed")
}

fn find() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            Path::new(&bin.join("initdb")).exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}
