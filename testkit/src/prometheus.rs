//! A real Prometheus server (Debian's `prometheus` package) scraping
//! targets every second, and its HTTP API for queries.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::http::http_get;
use crate::process::{free_port, require_tools, tail_file, terminate, wait_until};

pub struct Prometheus {
    pub port: u16,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Prometheus {
    /// Scrapes each `(job, target)` (`host:port`, path `/metrics`) every
    /// second; data under `dir`.
    pub fn start(dir: &Path, targets: &[(&str, &str)]) -> Prometheus {
        require_tools(&["prometheus"]);
        fs::create_dir_all(dir).unwrap();
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          namespace: tender\n"
            ));
        }
        let config = dir.join("prometheus.yml");
        fs::write(&config, cfg).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            port,
            log,
            child: Some(child),
        };
        let ready = wait_until(Duration::from_secs(30), || {
            http_get(&format!("http://127.0.0.1:{port}/-/ready")).is_ok_and(|r| r.status == 200)
        });
        assert!(
            ready,
            "prometheus did not start:\n{}",
            tail_file(&p.log, 4000)
        );
        p
    }

    /// An instant query: each result's labels and value.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            &[("query", promql)],
        )
        .unwrap();
        let r = http_get(url.as_str()).expect("the Prometheus API answers");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of a query that yields one series (or a scalar sum).
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        (r.len() == 1).then(|| r[0].1)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }
}
