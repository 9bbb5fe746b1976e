//! The AlwaysVerify policy (`verify_client_credentials`): cached content goes
//! only to clients an upstream confirms, object by object, asked with the
//! client's own credentials or anonymously; refused clients are challenged,
//! and client credentials go only to upstreams that may see them.

use reqwest::StatusCode;
use testkit::daemon::Daemon;
use testkit::fake::{b64, Fake, Fault};
use testkit::http::client;
use testkit::rng::random_bytes;

fn basic(user_pass: &str) -> String {
    format!("Basic {}", b64(user_pass.as_bytes()))
}

/// tender over `fake` for registry `host`, with the node's credentials
/// `alice:pw`, checking clients; the fake may see client credentials.
async fn verifying(fake: &Fake, host: &str, forward: bool) -> (Daemon, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "tender-access-{}-{}",
        std::process::id(),
        fake.addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node"), "alice:pw\n").unwrap();
    let toml = format!(
        "[[registry]]\nhost = \"{host}\"\ndefault = true\nverify_client_credentials = true\n  \
         [[registry.upstream]]\n  url = \"{}\"\n  credentials_file = \"{}\"\n  forward_client_credentials = {forward}\n",
        fake.url(),
        dir.join("node").display()
    );
    (Daemon::start(&toml, "").await, dir)
}

async fn get(url: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

async fn code(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
    (
        status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// A registry whose every repository needs alice's credentials (anonymous
/// tokens are refused), holding `private/app:v1`.
async fn private_registry() -> (Fake, Vec<String>) {
    let fake = Fake::start().await;
    fake.set_fault(Fault {
        require_token: true,
        token_basic: Some("alice:pw".into()),
        ..Fault::default()
    });
    let (_, layers) = fake.put_image("private/app", "v1", &[random_bytes(2000, 14)]);
    (fake, layers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_is_served_only_to_clients_the_registry_accepts() {
    let (fake, layers) = private_registry().await;
    let (d, dir) = verifying(&fake, "docker.io", true).await;
    let manifest = d.url("/v2/private/app/manifests/v1");
    let blob = d.url(&format!("/v2/private/app/blobs/{}", layers[0]));
    // Without credentials: challenged, so that containerd retries with the
    // pod's pull-secret credentials.
    for url in [&manifest, &blob] {
        let r = get(url, None).await;
        assert_eq!(r.status(), 401, "{url}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        assert_eq!(code(r).await.1, "UNAUTHORIZED");
    }
    // The registry accepts alice: served (and cached).
    for url in [&manifest, &blob] {
        assert_eq!(
            get(url, Some(&basic("alice:pw"))).await.status(),
            200,
            "{url}"
        );
    }
    // Cached now, yet nothing for an anonymous client or refused credentials.
    for auth in [None, Some(basic("bob:guess"))] {
        for url in [&manifest, &blob] {
            let r = get(url, auth.as_deref()).await;
            assert_eq!(
                code(r).await,
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into()),
                "{url} {auth:?}"
            );
        }
    }
    assert_eq!(get(&blob, Some(&basic("alice:pw"))).await.status(), 200);
    assert_eq!(
        fake.count("GET", "/blobs/"),
        1,
        "verification never re-downloads content"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_repository_is_served_to_anonymous_clients() {
    let fake = Fake::start().await;
    // Tokens for anyone: every repository is public.
    fake.set_fault(Fault {
        require_token: true,
        ..Fault::default()
    });
    let (_, layers) = fake.put_image("library/app", "v1", &[random_bytes(2000, 15)]);
    let (d, dir) = verifying(&fake, "docker.io", true).await;
    assert_eq!(
        get(&d.url("/v2/library/app/manifests/v1"), None)
            .await
            .status(),
        200
    );
    let r = get(
        &d.url(&format!("/v2/library/app/blobs/{}", layers[0])),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 2000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_covers_one_object_not_the_whole_repository() {
    let (fake, layers) = private_registry().await;
    fake.put_image("public/app", "v1", &[random_bytes(1000, 16)]);
    // Like real registries, the fake keeps blobs apart by repository.
    fake.set_fault(Fault {
        require_token: true,
        token_basic: Some("alice:pw".into()),
        blob_repo: Some("private/app".into()),
        ..Fault::default()
    });
    let (d, dir) = verifying(&fake, "docker.io", true).await;
    let alice = basic("alice:pw");
    let private_blob = format!("blobs/{}", layers[0]);
    // alice caches the private blob through its own repository ...
    assert_eq!(
        get(
            &d.url(&format!("/v2/private/app/{private_blob}")),
            Some(&alice)
        )
        .await
        .status(),
        200
    );
    // ... is confirmed for the other repository's manifest ...
    assert_eq!(
        get(&d.url("/v2/public/app/manifests/v1"), Some(&alice))
            .await
            .status(),
        200
    );
    // ... but the private blob through that repository is not confirmed: the
    // registry does not have it there.
    let r = get(
        &d.url(&format!("/v2/public/app/{private_blob}")),
        Some(&alice),
    )
    .await;
    assert_eq!(
        code(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_are_checked_too() {
    let (fake, _) = private_registry().await;
    let (d, dir) = verifying(&fake, "docker.io", true).await;
    let url = d.url("/v2/private/app/tags/list");
    assert_eq!(get(&url, None).await.status(), 401);
    let r = get(&url, Some(&basic("alice:pw"))).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["tags"][0], "v1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_go_only_to_the_registrys_origin() {
    // A Harbor-like upstream first, then the registry's origin: the registry
    // is named by the origin's address.
    let harbor = Fake::start().await;
    let (origin, layers) = private_registry().await;
    harbor.put_image("private/app", "v1", &[random_bytes(2000, 14)]);
    let host = format!("127.0.0.1:{}", origin.addr.port());
    let dir = std::env::temp_dir().join(format!("tender-access-origin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node"), "alice:pw\n").unwrap();
    let toml = format!(
        "[[registry]]\nhost = \"{host}\"\nverify_client_credentials = true\n  \
         [[registry.upstream]]\n  url = \"{}\"\n  \
         [[registry.upstream]]\n  url = \"{}\"\n  credentials_file = \"{}\"\n",
        harbor.url(),
        origin.url(),
        dir.join("node").display()
    );
    let d = Daemon::start(&toml, "").await;
    let alice = basic("alice:pw");
    let url = d.url(&format!("/v2/private/app/blobs/{}?ns={host}", layers[0]));
    assert_eq!(get(&url, Some(&alice)).await.status(), 200);
    assert!(
        origin
            .log()
            .iter()
            .any(|l| l.path == "/token" && l.authorization.as_deref() == Some(alice.as_str())),
        "the origin checked alice's credentials"
    );
    assert!(
        harbor
            .log()
            .iter()
            .all(|l| l.authorization.as_deref() != Some(alice.as_str())),
        "a client's credentials never reach another upstream: {:?}",
        harbor.log()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
