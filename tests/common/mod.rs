//! Helpers shared by the integration tests: real files, real O_DIRECT, real io_uring.
#![allow(dead_code)]

pub mod amq;
pub mod daemon;
pub mod wire;

use std::path::{Path, PathBuf};

use mirrorlog::Config;

/// Creates `n` zero-filled device files of `size` bytes in `dir`.
pub fn devices(dir: &Path, n: usize, size: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("mirror{i}.dev"));
            mirrorlog::io::create_device_file(&p, size).expect("create device file");
            p
        })
        .collect()
}

/// A small geometry so tests cross segment boundaries and fill the set quickly.
pub fn small_config(devs: &[PathBuf]) -> Config {
    let mut c = Config::new(devs.iter().cloned());
    c.segment_size = 256 << 10;
    c.max_record_size = 64 << 10;
    c.max_batch_bytes = 32 << 10;
    c.index_stride = 8 << 10;
    c
}

/// Two 16 MiB mirrors in `dir` with the small geometry, their I/O going
/// through a fault injector the test drives (below the engine, which runs
/// unchanged).
pub fn faulty_mirrors(dir: &Path) -> (Vec<PathBuf>, Config, std::sync::Arc<mirrorlog::FaultInjector>) {
    let devs = devices(dir, 2, 16 << 20);
    let mut cfg = small_config(&devs);
    let fault = mirrorlog::FaultInjector::new();
    cfg.storage = Some(fault.clone());
    (devs, cfg, fault)
}

/// Deterministic payload for (seed, len): every byte depends on both.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes naming their writer: client and sequence (8 bytes each,
/// little-endian), then filler derived from both.
pub fn tagged_payload(client: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&client.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend(payload(client * 1_000_003 + seq, len.saturating_sub(16)));
    p
}

/// A tiny deterministic RNG for sizes and choices.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Flips one bit of the byte at `off` in a file (through the page cache,
/// then flushed, so a later O_DIRECT read sees it).
pub fn flip_byte(path: &Path, off: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).expect("read");
    b[0] ^= 0x10;
    f.write_all_at(&b, off).expect("write");
    f.sync_all().expect("sync");
}

/// Reads `len` bytes at `off` from a file.
pub fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open");
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).expect("read");
    b
}

/// Writes bytes at `off` in a file and syncs.
pub fn write_at(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(data, off).expect("write");
    f.sync_all().expect("sync");
}
