//! Fuzzes what upstreams and peers hand tender besides bodies: the pull
//! quota headers (`tender::upstream::ratelimit::parse`, e.g.
//! `100;w=21600`) and peer URLs as DNS or config give them
//! (`tender::config::normalize_peer_url`). Neither may panic; a parsed quota
//! must print back to something that parses to the same; a normalised URL
//! must be a fixed point.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tender::config::normalize_peer_url;
use tender::upstream::ratelimit;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(q) = ratelimit::parse(s) {
        let printed = match q.window_secs {
            Some(w) => format!("{};w={w}", q.count),
            None => q.count.to_string(),
        };
        assert_eq!(ratelimit::parse(&printed), Some(q), "{s:?}");
    }
    if let Some(u) = normalize_peer_url(s) {
        assert_eq!(normalize_peer_url(&u).as_deref(), Some(u.as_str()), "{s:?}");
        assert!(u.starts_with("http://") || u.starts_with("https://"), "{u:?}");
    }
});
