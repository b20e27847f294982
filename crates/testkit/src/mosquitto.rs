//! A real Mosquitto broker on a free loopback port: config file in a temporary directory,
//! persistence on (so that a restarted broker keeps its sessions), killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the kernel's choice for `127.0.0.1:0`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn mosquitto_binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is not installed: run `apt-get install mosquitto` (scripts/test does this for you)")
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A Mosquitto broker on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    /// Holds `dir` when the broker made its own.
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// More configuration after the plain listener (per_listener_settings is on).
    extra: String,
}

impl Mosquitto {
    /// The broker's process id (None once it is stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// In a temporary directory of its own.
    pub fn start() -> Mosquitto {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto::new(tmp.path(), "");
        m._tmp = Some(tmp);
        m.spawn();
        m
    }

    /// With its config, persistence and log in `dir`.
    pub fn start_in(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, "")
    }

    /// With more configuration after the plain listener, e.g. a TLS listener.
    pub fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let mut m = Mosquitto::new(dir, extra);
        m.spawn();
        m
    }

    fn new(dir: &Path, extra: &str) -> Mosquitto {
        Mosquitto {
            port: free_port(),
            dir: dir.to_path_buf(),
            _tmp: None,
            child: None,
            extra: extra.to_string(),
        }
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("mosquitto dir");
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user {user}\nper_listener_settings true\npersistence true\npersistence_location {dir}/\n\
                 autosave_interval 1\nmax_inflight_messages 1000\nmax_queued_messages 0\nmessage_size_limit 0\n\
                 log_dest file {dir}/mosquitto.log\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n",
                // Started as root, mosquitto would switch to user `mosquitto`, which cannot
                // write persistence into this test's private directory.
                user = current_user(),
                port = self.port,
                dir = self.dir.display(),
                extra = self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "mosquitto did not open port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's own log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("mosquitto.log")
    }

    /// Starts a stopped broker again on the same port, with its persisted sessions.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// SIGTERM and wait: mosquitto saves its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Mosquitto with a plain listener (for publishers) and a TLS listener with a password file
/// (for the service), certificates made fresh by the openssl command line.
#[derive(Debug)]
pub struct TlsBroker {
    pub broker: Mosquitto,
    pub tls_port: u16,
    /// The CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
}

impl TlsBroker {
    /// Below `dir`; the TLS listener admits `user` with `password` only.
    pub fn start(dir: &Path, user: &str, password: &str) -> TlsBroker {
        let certs = dir.join("certs");
        let ca = make_certs(&certs, "real");
        let other_ca = make_certs(&dir.join("other"), "other");
        let passwd = dir.join("passwd");
        let out = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([user, password])
            .output()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls_port = free_port();
        let broker = Mosquitto::start_with(
            &dir.join("mosquitto"),
            &format!(
                "listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 allow_anonymous false\npassword_file {passwd}\n",
                ca = ca.display(),
                dir = certs.display(),
                passwd = passwd.display()
            ),
        );
        assert!(
            wait_for_port(tls_port, Duration::from_secs(10)),
            "no TLS listener"
        );
        TlsBroker {
            broker,
            tls_port,
            ca,
            other_ca,
        }
    }

    /// `mqtts://localhost:{tls_port}` (the certificate names localhost and 127.0.0.1).
    pub fn url(&self) -> String {
        format!("mqtts://localhost:{}", self.tls_port)
    }
}

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl) is installed by scripts/test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it; returns the CA path.
pub fn make_certs(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("cert dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_subject = format!("/CN=meterstand test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &ca_subject,
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    dir.join("ca.pem")
}
