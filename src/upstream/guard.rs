//! Where tender may connect on an upstream's behalf. Redirects, token realms
//! and what hostnames resolve to are held to the same rule: link-local
//! addresses (cloud metadata services) never, and internal addresses
//! (loopback, private, CGNAT) only for an upstream that is itself internal.

use std::net::IpAddr;
use std::sync::Arc;

/// Whether an address is one that a public registry must never send tender
/// to (metadata services, loopback, private networks).
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal_ip(IpAddr::V4(v4)))
        }
    }
}

fn is_link_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// A host written as a link-local IP: never a redirect or token target.
pub fn host_is_link_local(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>().is_ok_and(is_link_local_ip)
}

/// A host that is internal by its name or literal address.
pub fn host_is_internal(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.ends_with(".localhost")
        || h.parse::<IpAddr>().is_ok_and(is_internal_ip)
}

/// The redirect policy of an upstream's client: at most 5 hops, http(s)
/// only, never to link-local, and from a public upstream never to internal
/// hosts. reqwest drops `Authorization` when a redirect changes host.
pub fn redirect_policy(upstream_internal: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        let url = attempt.url().clone();
        if !matches!(url.scheme(), "http" | "https") {
            return attempt.error(format!("redirect to unsupported scheme {}", url.scheme()));
        }
        match url.host_str() {
            Some(h) if host_is_link_local(h) || (!upstream_internal && host_is_internal(h)) => {
                let msg = format!("redirect to internal address {h} refused");
                attempt.error(msg)
            }
            Some(_) => attempt.follow(),
            None => attempt.error("redirect without a host"),
        }
    })
}

/// Name resolution that applies the rule to what names resolve to, so a
/// hostname cannot smuggle tender to an internal address: link-local answers
/// are always dropped, and for a public upstream so are internal ones (its
/// egress proxy excepted, configured or from the environment).
pub struct GuardedResolver {
    pub public_upstream: bool,
    pub proxy_hosts: Vec<String>,
}

impl GuardedResolver {
    pub fn new(public_upstream: bool, proxy_hosts: Vec<String>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            public_upstream,
            proxy_hosts,
        })
    }
}

/// The hosts of the egress proxies an upstream's client may use: its
/// configured `proxy`, else those of the environment (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`, either case), which reqwest honours when no
/// proxy is configured. An operator's proxy may be internal: it is trusted.
pub fn proxy_hosts(configured: Option<&str>) -> Vec<String> {
    let from_env = || {
        [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .collect::<Vec<_>>()
    };
    let urls = match configured {
        Some(p) => vec![p.to_string()],
        None => from_env(),
    };
    urls.iter()
        .filter_map(|p| {
            // A proxy may be given without a scheme (`squid:3128`).
            let with_scheme = if p.contains("://") {
                p.clone()
            } else {
                format!("http://{p}")
            };
            reqwest::Url::parse(&with_scheme).ok()
        })
        .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
        .collect()
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let strict = self.public_upstream && !self.proxy_hosts.contains(&host);
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| {
                    let ip = a.ip();
                    !(is_link_local_ip(ip) || (strict && is_internal_ip(ip)))
                })
                .collect();
            if addrs.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to addresses tender may not connect to").into();
                return Err(e);
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_for_public_upstreams() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = || reqwest::dns::Name::from_str("localhost").unwrap();
        let public = GuardedResolver::new(true, vec![]);
        assert!(
            public.resolve(name()).await.is_err(),
            "localhost -> 127.0.0.1 must be refused"
        );
        let via_proxy = GuardedResolver::new(true, vec!["localhost".into()]);
        assert!(
            via_proxy.resolve(name()).await.is_ok(),
            "the configured proxy may be internal"
        );
        let internal = GuardedResolver::new(false, vec![]);
        assert!(internal.resolve(name()).await.is_ok());
    }

    #[test]
    fn link_local_is_refused_even_for_internal_upstreams() {
        assert!(host_is_link_local("169.254.169.254"));
        assert!(host_is_link_local("[fe80::1]"));
        assert!(!host_is_link_local("10.0.0.1"));
    }

    #[test]
    fn internal_addresses() {
        for h in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "192.168.0.1",
            "[::1]",
            "localhost",
            "100.64.0.1",
            "[fe80::1]",
        ] {
            assert!(host_is_internal(h), "{h}");
        }
        for h in ["8.8.8.8", "registry-1.docker.io", "[2606:4700::1]"] {
            assert!(!host_is_internal(h), "{h}");
        }
    }
}
