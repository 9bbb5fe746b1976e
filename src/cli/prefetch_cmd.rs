//! `tender prefetch`: pull images through a running tender, with progress.

use std::io::{IsTerminal, Write};

use super::{mib, runtime, CliError};
use crate::oci::ImageRef;
use crate::prefetch::Event;

pub fn run(images: &[String], base: &str, platform: Option<&str>) -> Result<i32, CliError> {
    let refs = images
        .iter()
        .map(|i| {
            i.parse::<ImageRef>()
                .map_err(|e| CliError::Usage(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let platform = match platform {
        None => {
            let (os, arch) = crate::prefetch::node_platform();
            (os.to_string(), arch.to_string())
        }
        Some(p) => match p.split_once('/') {
            Some((o, a)) if !o.is_empty() && !a.is_empty() => (o.to_string(), a.to_string()),
            _ => {
                return Err(CliError::Usage(format!(
                    "--platform {p:?}: expected os/arch"
                )))
            }
        },
    };
    let tty = std::io::stderr().is_terminal();
    let client =
        crate::prefetch::local_client(base).map_err(|e| CliError::Failed(e.to_string()))?;
    let mut failed = 0;
    runtime()?.block_on(async {
        for r in &refs {
            let started = std::time::Instant::now();
            let mut progress = |ev: Event<'_>| show(ev, tty);
            let platform = (platform.0.as_str(), platform.1.as_str());
            match crate::prefetch::prefetch(&client, base, r, platform, &mut progress).await {
                Ok(bytes) => println!(
                    "{r}: ok, {:.1} MiB in {:.1}s",
                    mib(bytes),
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    failed += 1;
                    println!("{r}: FAILED: {e}");
                }
            }
        }
    });
    Ok(i32::from(failed > 0))
}

/// Progress on stderr: a line per manifest and per blob, and on a terminal
/// a percentage updated in place.
fn show(ev: Event<'_>, tty: bool) {
    let mut err = std::io::stderr();
    match ev {
        Event::Manifest { image, digest } => {
            let _ = writeln!(err, "{image}: manifest {digest}");
        }
        Event::BlobProgress {
            index,
            count,
            digest,
            done,
            total,
        } if tty => {
            let pct = (done * 100).checked_div(total).unwrap_or(0);
            let _ = write!(
                err,
                "\r  [{}/{count}] {} {pct:>3}% {:.1}/{:.1} MiB   ",
                index + 1,
                short(digest),
                mib(done),
                mib(total)
            );
        }
        Event::BlobProgress { .. } => {}
        Event::BlobDone {
            index,
            count,
            digest,
            bytes,
        } => {
            if tty {
                let _ = write!(err, "\r");
            }
            let _ = writeln!(
                err,
                "  [{}/{count}] {} {:.1} MiB done          ",
                index + 1,
                short(digest),
                mib(bytes)
            );
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}
