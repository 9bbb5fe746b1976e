//! A blocking HTTP client for readiness checks and simple assertions
//! (reqwest's blocking client: it runs its own runtime thread, so it works
//! from plain tests and from `block_in_place`).

use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An async client that ignores proxy settings of the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// The whole body of a 2xx answer to `GET url` (with `Range: range`, if
/// given); any other status, or a body that breaks, is an error.
pub async fn fetch(url: String, range: Option<String>) -> Result<Vec<u8>, String> {
    let mut req = client().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

fn blocking_client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a blocking HTTP client")
    })
}

/// One request; the whole body is read (nothing for HEAD).
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Result<HttpResponse> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut req = blocking_client().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes()?.to_vec();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

pub fn http_get(url: &str) -> reqwest::Result<HttpResponse> {
    http_request("GET", url, &[])
}
