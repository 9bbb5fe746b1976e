//! Pinned images as `GET /pinned` reports them.

use super::*;
use crate::cache::pins::{PinnedImage, PinnedReport};

fn image(name: &str, pinned: bool, complete: bool, problem: Option<&str>) -> PinnedImage {
    PinnedImage {
        image: name.to_string(),
        pinned,
        complete,
        bytes: 3 << 20,
        objects_stored: if complete { 5 } else { 3 },
        objects: 5,
        missing: if complete {
            vec![]
        } else {
            vec!["blob sha256:ab".to_string(), "blob sha256:cd".to_string()]
        },
        problem: problem.map(str::to_string),
    }
}

fn with_pins(images: Vec<PinnedImage>) -> Inputs {
    let mut inputs = node(Some(CONTAINERD_1_7), Some("containerd 1.7.24"));
    inputs.pinned = Some(Ok(PinnedReport {
        pinned_bytes: 4 << 20,
        pinned_max_bytes: 64 << 20,
        images,
    }));
    inputs
}

#[test]
fn each_pinned_image_is_listed_with_whether_it_is_complete() {
    let findings = diagnose(&with_pins(vec![
        image("registry.k8s.io/pause:3.10", true, true, None),
        image(
            "docker.io/calico/cni:v3.28.0",
            true,
            false,
            Some("prefetch failed: HTTP 502"),
        ),
    ]));
    let ok = finding(&findings, "registry.k8s.io/pause:3.10");
    assert_eq!(ok.level, Level::Ok);
    says(ok, "complete on disk (3.0 MiB, 5/5 objects)");
    let partial = finding(&findings, "docker.io/calico/cni:v3.28.0");
    assert_eq!(partial.level, Level::Warn);
    says(partial, "not complete on disk");
    says(partial, "blob sha256:ab, blob sha256:cd");
    says(partial, "prefetch failed: HTTP 502");
    fix_says(partial, "tender prefetch docker.io/calico/cni:v3.28.0");
    says(
        finding(&findings, "pinned content takes"),
        "4.0 MiB of pinned_max_size 64.0 MiB",
    );
}

#[test]
fn a_refused_pin_is_a_problem_naming_the_cap() {
    let findings = diagnose(&with_pins(vec![image(
        "docker.io/library/big:1",
        false,
        true,
        Some("pinning docker.io/library/big:1 would take pinned content to 99 bytes, over pinned_max_size (64 bytes): not pinned"),
    )]));
    let f = finding(&findings, "docker.io/library/big:1 is not pinned");
    assert_eq!(f.level, Level::Problem);
    fix_says(f, "raise prefetch.pinned_max_size");
}

#[test]
fn no_pins_no_findings_and_an_unreadable_report_is_a_warning() {
    let findings = diagnose(&with_pins(vec![]));
    assert!(!findings.iter().any(|f| f.what.contains("pinned")));
    let mut inputs = node(Some(CONTAINERD_1_7), Some("containerd 1.7.24"));
    inputs.pinned = Some(Err(
        "GET http://127.0.0.1:5050/pinned answered 500".to_string()
    ));
    let findings = diagnose(&inputs);
    let f = finding(&findings, "cannot read tender's pinned images");
    assert_eq!(f.level, Level::Warn);
}
