//! `cargo run --release -p ota-common --example hash_speed [MiB]`: how fast
//! each SHA-2 implementation the agent could use hashes an image streamed in
//! 64 KiB chunks (the install's unit of work). Prints figures; asserts
//! nothing about time (the machine may be shared). Both implementations must
//! agree on every digest, which it does check.

use sha2::Digest as _;
use std::time::Instant;

const CHUNK: usize = 64 * 1024;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    // One chunk of pseudo-random bytes, hashed over and over: the data's
    // content does not change SHA-2's speed, and memory stays at one chunk.
    let mut chunk = vec![0u8; CHUNK];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let chunks = mib * 1024 * 1024 / CHUNK;
    let bytes = (chunks * CHUNK) as f64;
    println!("{mib} MiB in {CHUNK}-byte chunks, MB = 10^6 bytes");

    let rate = |name: &str, f: &mut dyn FnMut() -> Vec<u8>| -> Vec<u8> {
        let t = Instant::now();
        let out = f();
        let secs = t.elapsed().as_secs_f64();
        println!("{name:<28} {:>8.1} MB/s ({secs:.2} s)", bytes / secs / 1e6);
        out
    };

    let sha2_256 = rate("sha2 crate, sha256", &mut || {
        let mut h = sha2::Sha256::new();
        for _ in 0..chunks {
            h.update(&chunk);
        }
        h.finalize().to_vec()
    });
    let aws_256 = rate("aws-lc-rs, sha256", &mut || {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for _ in 0..chunks {
            h.update(&chunk);
        }
        h.finish().as_ref().to_vec()
    });
    let sha2_512 = rate("sha2 crate, sha512", &mut || {
        let mut h = sha2::Sha512::new();
        for _ in 0..chunks {
            h.update(&chunk);
        }
        h.finalize().to_vec()
    });
    let aws_512 = rate("aws-lc-rs, sha512", &mut || {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA512);
        for _ in 0..chunks {
            h.update(&chunk);
        }
        h.finish().as_ref().to_vec()
    });
    rate("sha2 crate, both, one pass", &mut || {
        let mut a = sha2::Sha256::new();
        let mut b = sha2::Sha512::new();
        for _ in 0..chunks {
            a.update(&chunk);
            b.update(&chunk);
        }
        a.finalize().to_vec()
    });
    rate("aws-lc-rs, both, one pass", &mut || {
        let mut a = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut b = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA512);
        for _ in 0..chunks {
            a.update(&chunk);
            b.update(&chunk);
        }
        a.finish().as_ref().to_vec()
    });
    if sha2_256 != aws_256 || sha2_512 != aws_512 {
        eprintln!("the two implementations disagree: a bug, not a benchmark");
        std::process::exit(1);
    }
}
