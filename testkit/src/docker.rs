//! A private Docker Engine (`dockerd` from Debian's `docker.io`) and the
//! `docker` CLI talking to it: data, exec root, socket and config under one
//! short directory, vfs storage, no iptables, no bridge (as DESIGN §5 says
//! works here). Drop stops it (SIGTERM, then SIGKILL) and unmounts what it
//! left.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{
    require_tools, run_with_timeout, tail_file, tail_str, terminate, unique, unmount_under,
    wait_until,
};

pub struct Dockerd {
    /// Short on purpose: dockerd's managed containerd puts unix sockets below it.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd with `daemon_json` as its config file and `env` added
    /// to its environment; waits until the API answers.
    pub fn start(daemon_json: &str, env: &[(&str, &str)]) -> Dockerd {
        require_tools(&["dockerd", "docker"]);
        let dir = PathBuf::from(format!("/tmp/dk{}-{}", std::process::id(), unique()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("daemon.json");
        fs::write(&config, daemon_json).unwrap();
        let socket = dir.join("d.sock");
        let log_path = dir.join("dockerd.log");
        let log = File::create(&log_path).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--config-file")
            .arg(&config)
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--bridge",
                "none",
                "--debug",
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let d = Dockerd {
            dir,
            socket,
            log_path,
            child: Some(child),
        };
        let up = wait_until(Duration::from_secs(60), || {
            d.docker()
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            up,
            "dockerd did not come up:\n{}",
            tail_file(&d.log_path, 6000)
        );
        d
    }

    /// `docker -H unix://<socket>`.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.join("client"));
        c
    }

    /// `docker pull reference`: its wall time, or docker's output.
    pub fn pull(&self, reference: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let mut cmd = self.docker();
        cmd.args(["pull", reference]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(300))
            .map_err(|e| format!("spawn docker: {e}"))?;
        if out.success {
            Ok(started.elapsed())
        } else {
            Err(format!(
                "docker pull {reference}: {}\n{}",
                tail_str(&out.stdout, 2000),
                tail_str(&out.stderr, 4000)
            ))
        }
    }

    /// `docker rmi reference` (must succeed).
    pub fn rmi(&self, reference: &str) {
        let out = self
            .docker()
            .args(["rmi", reference])
            .output()
            .expect("spawn docker");
        assert!(
            out.status.success(),
            "docker rmi {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The image's ID, if the engine has it.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        let out = self
            .docker()
            .args(["image", "inspect", "--format", "{{.Id}}", reference])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        unmount_under(&self.dir);
        if std::env::var_os("REALPARTS_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
