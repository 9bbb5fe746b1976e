//! Fuzzes the `WWW-Authenticate` challenge parser,
//! `tender::upstream::auth::parse_challenge`.
//!
//! The input is one header value as text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tender::upstream::auth::{parse_challenge, Challenge};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    check(v);
});

/// RFC 9110 quoted-string: backslash-escape `"` and `\`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A value that can be sent as a bare token (RFC 9110 tchar).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Serialises a Bearer challenge; `style` varies case, spacing and quoting.
fn serialise(realm: &str, service: Option<&str>, scope: Option<&str>, style: u8) -> String {
    let scheme = ["Bearer", "bearer", "BEARER"][(style % 3) as usize];
    let sep = if style & 4 != 0 { " , " } else { "," };
    let val = |s: &str| {
        if style & 8 != 0 && is_token(s) {
            s.to_string()
        } else {
            quote(s)
        }
    };
    let key = |k: &str| {
        if style & 16 != 0 {
            k.to_ascii_uppercase()
        } else {
            k.to_string()
        }
    };
    let mut params = vec![format!("{}={}", key("realm"), val(realm))];
    if let Some(s) = service {
        params.push(format!("{}={}", key("service"), val(s)));
    }
    if let Some(s) = scope {
        params.push(format!("{}={}", key("scope"), val(s)));
    }
    if style & 32 != 0 {
        // Parameter order does not matter.
        params.reverse();
    }
    format!("{scheme} {}", params.join(sep))
}

fn check(v: &str) {
    let got = parse_challenge(v);
    assert_eq!(got, parse_challenge(v), "deterministic: {v:?}");
    // Surrounding whitespace is insignificant.
    assert_eq!(got, parse_challenge(&format!("  {v}\t ")), "padding {v:?}");

    let first_word = v
        .trim()
        .split(|c: char| c.is_ascii_whitespace())
        .next()
        .unwrap_or("");
    match &got {
        None => {}
        Some(Challenge::Basic) => {
            assert!(first_word.eq_ignore_ascii_case("basic"), "{v:?}");
        }
        Some(Challenge::Bearer {
            realm,
            service,
            scope,
        }) => {
            assert!(first_word.eq_ignore_ascii_case("bearer"), "{v:?}");
            assert!(!realm.is_empty(), "{v:?}: empty realm accepted");
            // Two fixed styles and one that varies with the input.
            let varied = v.bytes().fold(v.len() as u8, |a, b| a.wrapping_mul(31) ^ b) & 63;
            for style in [0u8, 63, varied] {
                let text = serialise(realm, service.as_deref(), scope.as_deref(), style);
                assert_eq!(
                    parse_challenge(&text).as_ref(),
                    Some(got.as_ref().unwrap()),
                    "{v:?} re-serialised (style {style}) as {text:?}"
                );
            }
        }
    }
}
