//! Framing and checksum costs: encoding a record (CRC32C + header + copy),
//! verifying a chain of records, and raw CRC32C throughput.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mirrorlog::format::{align_up, encode_record, scan_chain, ChainPos, FLAG_BATCH_END, RECORD_HEADER_LEN};

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_record");
    for size in [64usize, 1024, 16 << 10, 1 << 20] {
        let payload = vec![0xA5u8; size];
        let mut out = vec![0u8; RECORD_HEADER_LEN + size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| encode_record(black_box(&mut out), black_box(&payload), 42, 1, 7, 0))
        });
    }
    g.finish();
}

fn verify_chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_chain_256KiB_batch");
    for size in [128usize, 1024, 8192] {
        // one 256 KiB batch of records of `size` bytes, as the engine lays it out
        let n = (256 << 10) / (RECORD_HEADER_LEN + size);
        let mut buf = vec![0u8; 0];
        let mut prev = 99;
        for i in 0..n {
            let start = buf.len();
            buf.resize(start + RECORD_HEADER_LEN + size, 0);
            let flags = if i + 1 == n { FLAG_BATCH_END } else { 0 };
            prev = encode_record(&mut buf[start..], &vec![i as u8; size], 1 + i as u64, 1, prev, flags);
        }
        buf.resize(align_up(buf.len() as u64, 4096) as usize, 0);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let mut pos = ChainPos { off: 0, lsn: 1, prev_crc: 99 };
                let mut k = 0usize;
                scan_chain(black_box(&buf), &mut pos, 4096, 1 << 20, |_| {
                    k += 1;
                    true
                });
                assert_eq!(k, n);
            })
        });
    }
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [1024usize, 1 << 20] {
        let data = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| crc32c::crc32c(black_box(&data)))
        });
    }
    g.finish();
}

criterion_group!(benches, encode, verify_chain, crc);
criterion_main!(benches);
