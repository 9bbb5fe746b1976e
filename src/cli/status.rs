//! `tender status`: a running tender's cache and hit ratio, from its metrics,
//! its peers with their health (the cluster tier), from `/cluster`, and its
//! pinned images, from `/pinned`.

use super::{mib, runtime, CliError};

pub fn run(base: &str) -> Result<i32, CliError> {
    let client =
        crate::prefetch::local_client(base).map_err(|e| CliError::Failed(e.to_string()))?;
    let get = |path: &str| {
        let url = format!("{base}{path}");
        let client = client.clone();
        async move {
            let r = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = r.status();
            let text = r.text().await.map_err(|e| format!("{url}: {e}"))?;
            Ok::<_, String>((status, text))
        }
    };
    let (metrics, cluster, pinned) = runtime()?.block_on(async {
        let metrics = match get("/metrics").await {
            Ok((s, text)) if s.is_success() => Ok(text),
            Ok((s, _)) => Err(format!("{base}/metrics: HTTP {s}")),
            Err(e) => Err(e),
        };
        (metrics, get("/cluster").await, get("/pinned").await)
    });
    let text = metrics.map_err(|e| CliError::Failed(format!("tender is not answering: {e}")))?;
    print!("{}", Summary::from_metrics(&text).render(base));
    match cluster {
        Ok((s, body)) if s.is_success() => print!("{}", render_cluster(&body)),
        // 404: no cluster tier configured.
        _ => println!("  cluster tier     off"),
    }
    if let Ok((s, body)) = pinned {
        if s.is_success() {
            print!("{}", render_pinned(&body));
        }
    }
    Ok(0)
}

/// The pinned images, from `/pinned`'s JSON (nothing if none are configured).
fn render_pinned(body: &str) -> String {
    let Ok(r) = serde_json::from_str::<crate::cache::pins::PinnedReport>(body) else {
        return "  pinned           (unreadable report)\n".into();
    };
    if r.images.is_empty() {
        return String::new();
    }
    let complete = r.images.iter().filter(|i| i.pinned && i.complete).count();
    let mut out = format!(
        "  pinned           {complete}/{} images complete, {:.1} MiB of {:.1} MiB\n",
        r.images.len(),
        mib(r.pinned_bytes),
        mib(r.pinned_max_bytes)
    );
    for i in &r.images {
        let state = match (i.pinned, i.complete) {
            (true, true) => "complete".to_string(),
            (true, false) => format!("incomplete ({}/{} objects)", i.objects_stored, i.objects),
            (false, _) => "NOT PINNED".to_string(),
        };
        out.push_str(&format!("    {:<40} {state}\n", i.image));
        if let Some(p) = &i.problem {
            out.push_str(&format!("      {p}\n"));
        }
    }
    out
}

/// The peers section, from `/cluster`'s JSON.
fn render_cluster(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return "  cluster tier     (unreadable status)\n".into();
    };
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let up = peers.iter().filter(|p| p["state"] == "up").count();
    let mut out = format!(
        "  cluster tier     this node is {}; {} peers, {up} up\n",
        v["advertise"].as_str().unwrap_or("?"),
        peers.len()
    );
    for p in &peers {
        out.push_str(&format!(
            "    {:<40} {}\n",
            p["url"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?")
        ));
    }
    out
}

/// The numbers `tender status` shows. Counters are whole numbers.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    hits: u64,
    misses: u64,
    coalesced: u64,
    errors: u64,
    cache_bytes: u64,
    entries: u64,
    from_cache: u64,
    from_upstream: u64,
    from_peers: u64,
    in_flight: u64,
    evictions: u64,
}

impl Summary {
    fn from_metrics(text: &str) -> Summary {
        let sum = |prefix: &str, label: Option<&str>| -> u64 {
            let total: f64 = text
                .lines()
                .filter(|l| l.starts_with(prefix) && label.is_none_or(|x| l.contains(x)))
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .sum();
            // Prometheus prints floats; these are counts (never "-0").
            total.max(0.0).round() as u64
        };
        let requests = |result: &str| {
            sum(
                "tender_requests_total{",
                Some(&format!("result=\"{result}\"")),
            )
        };
        Summary {
            hits: requests("hit"),
            misses: requests("miss"),
            coalesced: requests("coalesced"),
            errors: requests("error"),
            cache_bytes: sum("tender_cache_size_bytes", None),
            entries: sum("tender_cache_entries", None),
            from_cache: sum("tender_bytes_served_total{", Some("source=\"cache\"")),
            from_upstream: sum("tender_bytes_served_total{", Some("source=\"upstream\"")),
            from_peers: sum("tender_bytes_served_total{", Some("source=\"peer\"")),
            in_flight: sum("tender_inflight_fetches", None),
            evictions: sum("tender_cache_evictions_total", None),
        }
    }

    fn render(&self, base: &str) -> String {
        let served = self.hits + self.misses + self.coalesced;
        let ratio = if served > 0 {
            self.hits as f64 / served as f64 * 100.0
        } else {
            0.0
        };
        format!(
            "tender at {base}\n\
             \x20 cache size       {:.1} MiB in {} objects\n\
             \x20 hit ratio        {ratio:.1}% ({} hits, {} misses, {} coalesced, {} errors)\n\
             \x20 bytes served     {:.1} MiB from cache, {:.1} MiB from upstreams, {:.1} MiB from peers\n\
             \x20 in-flight        {} fetches\n\
             \x20 evictions        {}\n",
            mib(self.cache_bytes),
            self.entries,
            self.hits,
            self.misses,
            self.coalesced,
            self.errors,
            mib(self.from_cache),
            mib(self.from_upstream),
            mib(self.from_peers),
            self.in_flight,
            self.evictions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_daemon_shows_whole_zeroes_never_minus_zero() {
        let out = Summary::from_metrics("tender_cache_entries 0\n").render("http://x");
        assert!(
            out.contains("hit ratio        0.0% (0 hits, 0 misses, 0 coalesced, 0 errors)"),
            "{out}"
        );
        assert!(!out.contains("-0"), "{out}");
    }

    #[test]
    fn peers_are_listed_with_their_health() {
        let out = render_cluster(
            r#"{"advertise":"http://10.0.0.1:5051","peers":[{"url":"http://10.0.0.2:5051","state":"up"},{"url":"http://10.0.0.3:5051","state":"down"}]}"#,
        );
        assert!(
            out.contains("this node is http://10.0.0.1:5051; 2 peers, 1 up"),
            "{out}"
        );
        assert!(out.contains("http://10.0.0.3:5051"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.contains("10.0.0.3") && l.ends_with("down")),
            "{out}"
        );
    }

    #[test]
    fn counts_are_summed_over_labels() {
        let text = "tender_requests_total{kind=\"blob\",result=\"hit\"} 3\n\
                    tender_requests_total{kind=\"manifest\",result=\"hit\"} 1\n\
                    tender_requests_total{kind=\"blob\",result=\"miss\"} 4\n";
        let s = Summary::from_metrics(text);
        assert_eq!((s.hits, s.misses), (4, 4));
        assert!(s.render("u").contains("50.0%"));
    }

    #[test]
    fn pinned_images_are_listed_with_their_state() {
        let body = r#"{"pinned_bytes":1048576,"pinned_max_bytes":4194304,"images":[
          {"image":"registry.k8s.io/pause:3.10","pinned":true,"complete":true,"bytes":1,"objects_stored":5,"objects":5,"missing":[],"problem":null},
          {"image":"docker.io/library/big:1","pinned":false,"complete":false,"bytes":1,"objects_stored":1,"objects":5,"missing":[],"problem":"over pinned_max_size"}]}"#;
        let out = render_pinned(body);
        assert!(
            out.contains("1/2 images complete, 1.0 MiB of 4.0 MiB"),
            "{out}"
        );
        assert!(out.contains("registry.k8s.io/pause:3.10"), "{out}");
        assert!(
            out.contains("NOT PINNED") && out.contains("over pinned_max_size"),
            "{out}"
        );
        assert_eq!(
            render_pinned(r#"{"pinned_bytes":0,"pinned_max_bytes":1,"images":[]}"#),
            ""
        );
    }
}
