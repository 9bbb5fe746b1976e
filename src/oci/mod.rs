//! The OCI vocabulary: digests, repository names, tags and references, image
//! references, media types and the distribution spec's error codes.
//!
//! A leaf: it imports nothing of tender's, and everything else may import it.

pub mod code;
pub mod digest;
pub mod media;
pub mod name;
pub mod platform;
pub mod reference;

pub use code::ErrorCode;
pub use digest::{Digest, DigestError, Hasher};
pub use platform::node_platform;
pub use reference::{ImageRef, Reference};
