//! The one seeded PRNG of the test suite: the same seed gives the same
//! bytes on every run and machine.

pub use fastrand::Rng;

/// A generator seeded with `seed`.
pub fn seeded(seed: u64) -> Rng {
    Rng::with_seed(seed)
}

/// `len` deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    seeded(seed).fill(&mut v);
    v
}

/// An endless reader of pseudo-random bytes (for large generated files).
pub struct RandomReader(pub Rng);

impl std::io::Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.fill(buf);
        Ok(buf.len())
    }
}
