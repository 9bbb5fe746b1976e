//! Hardening: the background scrub finds a flipped bit, connection limits
//! hold, the listener speaks TLS when configured, errors carry no URLs, a
//! stuck client holds no upstream open, and proxies behave as documented.

use testkit::certs;

use std::io::{Read, Write};
use std::time::Duration;

use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake};
use testkit::http::fetch;
use testkit::rng::random_bytes;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrub_finds_a_flipped_bit_and_evicts_the_object() {
    let fake = Fake::start().await;
    let data = random_bytes(200_000, 1);
    let digest = fake.put_blob(data.clone());
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "scrub_interval = \"200ms\"",
    )
    .await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    assert_eq!(fetch(url.clone(), None).await.unwrap(), data);
    let path = d
        .dir
        .join("blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..]);
    assert!(wait_for(|| path.exists()).await);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4242] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    assert!(
        wait_for(|| !path.exists()).await,
        "the scrub must remove the corrupt blob"
    );
    assert!(d.metric("tender_scrub_objects_total{result=\"corrupt\"}") >= 1.0);
    // The next pull fetches a good copy again.
    assert_eq!(fetch(url.clone(), None).await.unwrap(), data);
    assert_eq!(fake.blob_gets(), 2);
}

/// Whether a connection to `addr` is closed without an answer.
fn closed_at_once(addr: std::net::SocketAddr) -> bool {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    c.read(&mut buf).unwrap_or(0) == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_share_the_total_limit_but_none_can_lock_the_others_out() {
    let fake = Fake::start().await;
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "max_connections = 3\nmax_connections_per_client = 1",
    )
    .await;
    let addr = d.running.as_ref().unwrap().addr;
    // One local process holds two idle connections: on the node every local
    // client is 127.0.0.1, so the per-client limit would lock containerd out.
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!closed_at_once(addr), "a third local connection is served");
    // (Let tender see that one close.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The total limit still holds: with three open, a fourth is closed.
    let _third = std::net::TcpStream::connect(addr).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(closed_at_once(addr), "over max_connections");
    assert!(d.metric("tender_connections_rejected_total") >= 1.0);
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(d.get("/v2/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_tls_when_configured() {
    let dir = std::env::temp_dir().join(format!("tender-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = certs::make(&dir);
    let fake = Fake::start().await;
    let extra = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        certs.cert.display(),
        certs.key.display()
    );
    let d = Daemon::start(&registry_toml("docker.io", true, &[&fake.url()]), &extra).await;
    let addr = d.running.as_ref().unwrap().addr;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let tls_client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = tls_client
        .get(format!("https://{addr}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        client()
            .get(format!("http://{addr}/v2/"))
            .send()
            .await
            .is_err(),
        "plain http must not be served"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused() {
    let fake = Fake::start().await;
    let d = Daemon::over(&[&fake]).await;
    let addr = d.running.as_ref().unwrap().addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = "x".repeat(100 << 10);
        let _ =
            s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).to_string()
    })
    .await
    .unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a 100 KiB header must be refused, got: {}",
        &answer[..answer.len().min(80)]
    );
    assert!(fake.log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_carry_no_urls() {
    let fake = Fake::start().await;
    let digest = fake.put_blob(random_bytes(1000, 50));
    // The first upstream refuses connections, the second redirects to an
    // address tender may not follow: both failures end up in the walk's summary.
    let dead = format!("http://127.0.0.1:{}", testkit::faulty::closed_port());
    fake.set_fault(testkit::fake::Fault {
        redirect_blobs_to: Some("http://169.254.169.254/presigned?sig=secret".into()),
        ..Default::default()
    });
    let d = Daemon::start(&registry_toml("docker.io", true, &[&dead, &fake.url()]), "").await;
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let body = r.text().await.unwrap();
    for leak in ["http://", "127.0.0.1", "/blobs/", "sig=", "169.254"] {
        assert!(!body.contains(leak), "{leak:?} in the error body: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrers_api_answers_404_so_clients_fall_back_to_the_tag_schema() {
    let fake = Fake::start().await;
    let d = Daemon::over(&[&fake]).await;
    let digest = testkit::fake::digest_of(b"x");
    let r = d.get(&format!("/v2/library/app/referrers/{digest}")).await;
    assert_eq!(r.status(), 404);
    assert!(fake.log().is_empty(), "nothing is asked upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_an_upstream_body_open() {
    let fake = Fake::start().await;
    let digest = fake.put_blob(random_bytes(64 << 20, 51));
    // Streamed through (the cache takes nothing), with a short stall timeout.
    let d = Daemon::over_in(
        std::env::temp_dir().join(format!("tender-stuck-client-{}", std::process::id())),
        &[&fake],
        "min_free_space = \"1000TiB\"\nstall_timeout = \"1s\"",
    )
    .await;
    let addr = d.running.as_ref().unwrap().addr;
    // A client that reads the response headers, then nothing, connection open.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(
        format!("GET /v2/library/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 512];
    let n = c.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        wait_for(|| fake.bodies_abandoned() >= 1).await,
        "tender must let go of the upstream body"
    );
    drop(c);
}

/// A fake upstream named by a public host name that does not resolve, so
/// only a proxy can reach it; the proxy (on localhost) forwards to `fake`.
#[test]
fn a_proxy_from_the_environment_is_trusted_like_a_configured_one() {
    let rt = testkit::daemon::runtime();
    let fake = rt.block_on(Fake::start());
    let digest = fake.put_blob(random_bytes(10_000, 52));
    let proxy = rt.block_on(testkit::fake::FakeProxy::start(fake.addr));
    let tmp = testkit::process::TempDir::new("tender-env-proxy");
    let port = testkit::process::free_port();
    let config = tmp.path().join("tender.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncache_dir = \"{}\"\n{}",
            tmp.path().join("cache").display(),
            registry_toml("docker.io", true, &["http://registry.example.invalid"])
        ),
    )
    .unwrap();
    let proxy_url = format!("http://localhost:{}", proxy.addr.port());
    let t = testkit::tender::TenderProcess::start_with_env(
        tmp.path(),
        &config,
        port,
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "")],
    );
    let r = testkit::http::http_get(&t.url(&format!("/v2/library/app/blobs/{digest}"))).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|u| u.starts_with("http://registry.example.invalid/v2/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_redirect_targets_named_by_host_are_the_proxys_to_resolve() {
    let fake = Fake::start().await;
    let data = random_bytes(10_000, 53);
    let digest = fake.put_blob(data.clone());
    let proxy = testkit::fake::FakeProxy::start(fake.addr).await;
    let upstream = |redirect: &str| {
        fake.set_fault(testkit::fake::Fault {
            redirect_blobs_to: Some(redirect.to_string()),
            ..Default::default()
        })
    };
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"http://registry.example.invalid\"\n  proxy = \"http://127.0.0.1:{}\"\n",
        proxy.addr.port()
    );
    let d = Daemon::start(&toml, "").await;
    // A link-local address literal is refused before the proxy sees it ...
    upstream("http://169.254.169.254");
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert!(r.status().is_server_error());
    assert!(!proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|u| u.contains("169.254")));
    // ... but a host name is resolved by the proxy, not by tender: the proxy's
    // own egress policy must keep it from internal addresses (README).
    upstream("http://metadata.internal.example");
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    assert!(proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|u| u.starts_with("http://metadata.internal.example/cdn/")));
}
