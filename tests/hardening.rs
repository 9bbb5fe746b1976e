//! Hardening: the background scrub finds a flipped bit, connection limits
//! hold, and the listener speaks TLS when configured.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_more_than_its_share_of_connections() {
    let fake = Fake::start().await;
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "max_connections_per_client = 2",
    )
    .await;
    let addr = d.running.as_ref().unwrap().addr;
    // Two idle connections (a slow or stuck client) ...
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... so a third from the same address is closed at once.
    let mut third = std::net::TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the over-limit connection must be closed without an answer"
    );
    assert!(d.metric("tender_connections_rejected_total") >= 1.0);
    // When one goes away, there is room again.
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
