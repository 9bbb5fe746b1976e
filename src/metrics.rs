//! Prometheus metrics. [`Metrics`] owns its registry so that every daemon (and
//! every in-process test daemon) has its own counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// `kind` = manifest|blob|tags, `result` = hit|miss|coalesced|error.
    pub requests: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    pub upstream_latency: HistogramVec,
    /// `source` = cache|upstream|peer.
    pub bytes_served: IntCounterVec,
    pub cache_size: IntGauge,
    pub cache_entries: IntGauge,
    /// Tasks alive on tender's runtime (set when scraped): flat under a
    /// steady load, back near its idle value after it.
    pub runtime_tasks: IntGauge,
    /// Configured pinned images by `state` (complete|incomplete|not_pinned),
    /// as of their last pin (each prefetch round and each `/pinned`).
    pub pinned_images: IntGaugeVec,
    /// Disk taken by pinned images ([prefetch] pinned), which the LRU keeps.
    pub cache_pinned: IntGauge,
    pub evictions: IntCounter,
    pub inflight_fetches: IntGauge,
    pub stale_served: IntCounter,
    pub integrity_failures: IntCounter,
    pub passthrough: IntCounterVec,
    /// Stored objects found unreadable or corrupt and evicted, by where (read|scrub).
    pub bad_objects: IntCounterVec,
    /// Scrub: objects re-hashed, by result (ok|corrupt), and bytes read.
    pub scrub_objects: IntCounterVec,
    pub scrub_bytes: IntCounter,
    pub connections_rejected: IntCounter,
    /// 1 while an upstream's circuit breaker is open.
    pub upstream_circuit_open: IntGaugeVec,
    /// Requests between nodes: `direction` = served (on the peer listener,
    /// `result` = hit|miss|coalesced|error) or fetched (from a peer,
    /// `result` = its status, or timeout|connect_error|error|broken_body).
    pub peer_requests: IntCounterVec,
    /// Body bytes between nodes, by `direction` (served|fetched).
    pub peer_bytes: IntCounterVec,
    /// Peers whose breaker is closed (set when scraped).
    pub peers: IntGauge,
    /// The pull quota each upstream last stated (`ratelimit-*` headers).
    pub ratelimit_limit: IntGaugeVec,
    pub ratelimit_remaining: IntGaugeVec,
    pub ratelimit_window: IntGaugeVec,
    /// Hedged requests, by `outcome` (started|won).
    pub upstream_hedges: IntCounterVec,
    /// Blob bodies that made no progress for `progress_timeout` and were
    /// resumed elsewhere.
    pub upstream_stalls: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter_vec(
            "tender_requests_total",
            "Client requests by kind and cache result.",
            &["kind", "result"],
        );
        let upstream_requests = counter_vec(
            "tender_upstream_requests_total",
            "Requests sent to upstreams, by response status (or error class).",
            &["registry", "upstream", "status"],
        );
        let upstream_bytes = counter_vec(
            "tender_upstream_bytes_total",
            "Blob and manifest body bytes received from upstreams.",
            &["registry", "upstream"],
        );
        let bytes_served = counter_vec(
            "tender_bytes_served_total",
            "Body bytes sent to clients, by where they came from.",
            &["source"],
        );
        let scrub_objects = counter_vec(
            "tender_scrub_objects_total",
            "Stored objects re-hashed by the background scrub, by result (ok|corrupt).",
            &["result"],
        );
        let bad_objects = counter_vec(
            "tender_cache_bad_objects_total",
            "Stored objects found unreadable or not matching their digest, evicted so that the next request fetches them again; by where they were found (read|scrub).",
            &["found"],
        );
        let peer_requests = counter_vec(
            "tender_peer_requests_total",
            "Requests between nodes of the cluster tier: served to peers (result hit|miss|coalesced|error) or fetched from peers (result: HTTP status, or timeout|connect_error|error|broken_body).",
            &["direction", "result"],
        );
        let peer_bytes = counter_vec(
            "tender_peer_bytes_total",
            "Blob and manifest body bytes between nodes of the cluster tier, by direction (served|fetched).",
            &["direction"],
        );
        let upstream_hedges = counter_vec(
            "tender_upstream_hedges_total",
            "Requests raced on the next upstream because the one asked was slower than its recent p95, by outcome (started|won).",
            &["registry", "outcome"],
        );
        let upstream_stalls = counter_vec(
            "tender_upstream_stalls_total",
            "Blob bodies that made no progress for progress_timeout while another upstream was usable, resumed there with Range.",
            &["registry", "upstream"],
        );
        let passthrough = counter_vec(
            "tender_passthrough_total",
            "Fetches streamed without being cached, by reason.",
            &["reason"],
        );
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "tender_upstream_response_seconds",
                "Time from sending an upstream request to its response headers.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["registry", "upstream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_latency.clone()))
            .expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        // Every series a dashboard or an alert divides by exists from the
        // start, at 0: increase() and rate() then count the first events too.
        for kind in ["manifest", "blob", "tags"] {
            for result in ["hit", "miss", "coalesced", "error"] {
                requests.with_label_values(&[kind, result]);
            }
        }
        for source in ["cache", "upstream", "peer"] {
            bytes_served.with_label_values(&[source]);
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        const PER_UPSTREAM: &[&str] = &["registry", "upstream"];
        let upstream_circuit_open = gauge_vec(
            "tender_upstream_circuit_open",
            "1 while the upstream's circuit breaker is open (it is being skipped).",
            PER_UPSTREAM,
        );
        let pinned_images = gauge_vec(
            "tender_pinned_images",
            "Configured pinned images by state (complete|incomplete|not_pinned), as of their last pin.",
            &["state"],
        );
        for state in ["complete", "incomplete", "not_pinned"] {
            pinned_images.with_label_values(&[state]);
        }
        Metrics {
            pinned_images,
            ratelimit_limit: gauge_vec(
                "tender_upstream_ratelimit_limit",
                "The pull quota the upstream last stated (ratelimit-limit, e.g. Docker Hub's 100 per 6 h).",
                PER_UPSTREAM,
            ),
            ratelimit_remaining: gauge_vec(
                "tender_upstream_ratelimit_remaining",
                "Pulls left in the upstream's current window, as it last stated (ratelimit-remaining).",
                PER_UPSTREAM,
            ),
            ratelimit_window: gauge_vec(
                "tender_upstream_ratelimit_window_seconds",
                "The window of the upstream's pull quota, in seconds (the w= of ratelimit-limit).",
                PER_UPSTREAM,
            ),
            requests,
            upstream_requests,
            upstream_bytes,
            upstream_latency,
            bytes_served,
            passthrough,
            bad_objects,
            upstream_circuit_open,
            peer_requests,
            peer_bytes,
            upstream_hedges,
            upstream_stalls,
            peers: gauge(
                "tender_peers",
                "Other nodes this node peers with whose breaker is closed (the cluster tier; 0 without one).",
            ),
            scrub_objects,
            scrub_bytes: counter(
                "tender_scrub_bytes_total",
                "Bytes read by the background scrub.",
            ),
            connections_rejected: counter(
                "tender_connections_rejected_total",
                "Connections closed at once because a connection limit was reached.",
            ),
            cache_size: gauge(
                "tender_cache_size_bytes",
                "Disk the cache takes (objects, tag records and directories, by allocated blocks); bounded by cache_max_size.",
            ),
            cache_entries: gauge(
                "tender_cache_entries",
                "Objects (blobs and manifests) in the cache.",
            ),
            runtime_tasks: gauge(
                "tender_runtime_tasks",
                "Tasks alive on tender's async runtime (connections, fills, background work).",
            ),
            cache_pinned: gauge(
                "tender_cache_pinned_bytes",
                "Disk taken by pinned images' manifests, blobs and tag records (never evicted by the LRU); bounded by pinned_max_size.",
            ),
            evictions: counter(
                "tender_cache_evictions_total",
                "Objects evicted by the LRU.",
            ),
            inflight_fetches: gauge(
                "tender_inflight_fetches",
                "Upstream blob fetches under way.",
            ),
            stale_served: counter(
                "tender_stale_tags_served_total",
                "Tag resolutions answered from a stale entry because every upstream failed.",
            ),
            integrity_failures: counter(
                "tender_integrity_failures_total",
                "Upstream bodies rejected for a digest or length mismatch.",
            ),
            registry,
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
