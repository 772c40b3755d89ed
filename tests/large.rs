//! Large files through a live mount (real daemon, real model), at sizes CI can afford:
//! a 256 MiB file of random bytes, 48 MiB of compressible binary and a 1 GiB sparse
//! file. They are written, left to the compressor (which takes them a window at a
//! time), read back cold (new mount, caches dropped) sequentially and at random
//! offsets and compared byte for byte, and the daemon's peak RSS must stay under the
//! bound that docs/ARCHITECTURE.md states for the defaults, whatever the file sizes.

#[path = "common/mount.rs"]
mod mount;

use mount::{dirs, serial, Mount, Rng};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

/// The peak the defaults allow: the model, the 64 MiB cache, and a few copies of the
/// 8 MiB compression window on each of the compressors, with a file of any size.
const PEAK_BOUND_MIB: u64 = 400;

/// `n` MiB of xorshift bytes (incompressible: every frame is stored raw).
fn random(rng: &mut Rng, n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((n * MIB) as usize);
    while (v.len() as u64) < n * MIB {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v
}

/// `n` MiB of random nibbles, one per byte: half of every frame compresses away.
fn nibbles(rng: &mut Rng, n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((n * MIB) as usize);
    while (v.len() as u64) < n * MIB {
        let w = rng.next();
        v.extend((0..16).map(|i| b'@' + ((w >> (4 * i)) & 15) as u8 + 128));
    }
    v
}

/// 12 MiB, a frame each: every third compresses by half (stored zstd), the others are
/// stored raw.
fn mixed_frames(rng: &mut Rng) -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..12 {
        data.extend(if i % 3 == 0 {
            nibbles(rng, 1)
        } else {
            random(rng, 1)
        });
    }
    data
}

fn drop_caches() {
    // SAFETY: sync(2) takes nothing and cannot fail.
    unsafe { libc::sync() };
    // Best effort: without root the reads below still go through the daemon, which
    // was restarted and so holds nothing.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

#[test]
fn big_random_and_sparse_files_round_trip_in_bounded_memory() {
    let _g = serial();
    let d = dirs();
    let mut rng = Rng(0x1a2b_3c4d);
    let data = random(&mut rng, 256);
    let packed = nibbles(&mut rng, 48);
    let m = Mount::start(&d.backing, &d.mnt);
    std::fs::write(d.mnt.join("nibbles.bin"), &packed).unwrap();
    {
        let mut f = std::fs::File::create(d.mnt.join("random.bin")).unwrap();
        for piece in data.chunks(MIB as usize) {
            f.write_all(piece).unwrap();
        }
    }
    // 1 GiB, all hole but a few bytes near the end.
    {
        let f = std::fs::File::create(d.mnt.join("sparse.bin")).unwrap();
        f.write_all_at(b"the end of a sparse file\n", 1024 * MIB - 25)
            .unwrap();
    }
    m.wait();
    let status: serde_json::Value = serde_json::from_str(&m.status()).unwrap();
    // random.bin stays plaintext (raw frames and their tables would be larger);
    // nibbles.bin is stored at about half its size, sparse.bin in a few bytes (its
    // hole is a zero extent).
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(status["kept_plain"], 1, "{status}");
    assert_eq!(status["compressed"], 2, "{status}");
    let stored = |n: &str| std::fs::metadata(d.backing.join(n)).unwrap().len();
    assert!(stored("sparse.bin") < 4096, "{}", stored("sparse.bin"));
    assert!(
        stored("nibbles.bin") < 30 * MIB,
        "{}",
        stored("nibbles.bin")
    );
    let (_, peak_write) = m.rss_kib();
    m.stop();

    let m = Mount::start(&d.backing, &d.mnt);
    drop_caches();
    // Sequentially, in 1 MiB reads.
    let mut f = std::fs::File::open(d.mnt.join("random.bin")).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0usize;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n] == data[at..at + n], "random.bin differs near {at}");
        at += n;
    }
    assert_eq!(at, data.len());
    // (An open file would keep the lazily unmounted daemon serving it.)
    drop(f);
    // At random offsets, after another cold start.
    m.stop();
    let m = Mount::start(&d.backing, &d.mnt);
    drop_caches();
    let f = std::fs::File::open(d.mnt.join("random.bin")).unwrap();
    let mut b = vec![0u8; 4096];
    for _ in 0..200 {
        let off = rng.below(data.len() as u64 - 4096) as usize;
        f.read_exact_at(&mut b, off as u64).unwrap();
        assert!(
            b[..] == data[off..off + 4096],
            "random.bin differs at {off}"
        );
    }
    let f2 = std::fs::File::open(d.mnt.join("nibbles.bin")).unwrap();
    for _ in 0..100 {
        let off = rng.below(packed.len() as u64 - 4096) as usize;
        f2.read_exact_at(&mut b, off as u64).unwrap();
        assert!(
            b[..] == packed[off..off + 4096],
            "nibbles.bin differs at {off}"
        );
    }
    drop(f2);
    assert!(
        std::fs::read(d.mnt.join("nibbles.bin")).unwrap() == packed,
        "nibbles.bin differs"
    );
    let sparse = std::fs::File::open(d.mnt.join("sparse.bin")).unwrap();
    assert_eq!(sparse.metadata().unwrap().len(), 1024 * MIB);
    let mut tail = vec![0u8; 4096];
    sparse.read_exact_at(&mut tail, 1024 * MIB - 4096).unwrap();
    assert!(tail[..4096 - 25].iter().all(|&c| c == 0));
    assert_eq!(&tail[4096 - 25..], b"the end of a sparse file\n");
    let mut head = vec![1u8; 4096];
    sparse.read_exact_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|&c| c == 0));
    let (_, peak_read) = m.rss_kib();
    drop((f, sparse));
    m.stop();
    eprintln!(
        "large: daemon peak RSS {} MiB writing and compressing, {} MiB reading",
        peak_write / 1024,
        peak_read / 1024
    );
    assert!(
        peak_write / 1024 < PEAK_BOUND_MIB && peak_read / 1024 < PEAK_BOUND_MIB,
        "peak RSS {} / {} MiB over {PEAK_BOUND_MIB} MiB",
        peak_write / 1024,
        peak_read / 1024
    );
}

/// Raw frames are read straight from the blob's file, a read at a time, with each
/// frame's checksum checked on its first read: reads across frame ends and across
/// raw and zstd frames give the original bytes, and a raw frame damaged on disk reads
/// as EIO, never as wrong bytes, while its neighbours still read.
#[test]
fn raw_frames_read_in_place_and_are_checked() {
    let _g = serial();
    let d = dirs();
    let mut rng = Rng(0x5eed_f00d);
    let data = mixed_frames(&mut rng);
    let m = Mount::start(&d.backing, &d.mnt);
    std::fs::write(d.mnt.join("mixed.bin"), &data).unwrap();
    m.wait();
    m.stop();
    let blob = std::fs::read(d.backing.join("mixed.bin")).unwrap();
    assert!(blob.len() < data.len(), "mixed.bin was kept plaintext");

    let m = Mount::start(&d.backing, &d.mnt);
    drop_caches();
    let f = std::fs::File::open(d.mnt.join("mixed.bin")).unwrap();
    let mut b = vec![0u8; 3 * 4096 + 17];
    for k in 0..300u64 {
        // Every third read straddles the end of a frame.
        let off = if k % 3 == 0 {
            (1 + rng.below(10)) * MIB - 5000
        } else {
            rng.below(data.len() as u64 - b.len() as u64)
        } as usize;
        f.read_exact_at(&mut b, off as u64).unwrap();
        assert!(
            b[..] == data[off..off + b.len()],
            "mixed.bin differs at {off}"
        );
    }
    drop(f);
    assert!(std::fs::read(d.mnt.join("mixed.bin")).unwrap() == data);
    m.stop();

    // Damage one byte in the middle of frame 4 (raw: its bytes are in the blob as
    // they are), then read it and its neighbours on a fresh mount.
    let probe = &data[4 * MIB as usize + 4096..4 * MIB as usize + 4160];
    let at = blob
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("raw frame 4 in the blob");
    let mut bad = blob.clone();
    bad[at + 10] ^= 0x55;
    std::fs::write(d.backing.join("mixed.bin"), &bad).unwrap();
    let m = Mount::start(&d.backing, &d.mnt);
    drop_caches();
    let f = std::fs::File::open(d.mnt.join("mixed.bin")).unwrap();
    let mut b = vec![0u8; 4096];
    let e = f.read_exact_at(&mut b, 4 * MIB + 512 * 1024).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    for off in [3 * MIB + 100, 5 * MIB + 100, 6 * MIB + 100] {
        f.read_exact_at(&mut b, off).unwrap();
        let off = off as usize;
        assert!(b[..] == data[off..off + 4096], "mixed.bin differs at {off}");
    }
    drop(f);
    m.stop();
}

/// A large file changed in one place is compressed again with its other frames
/// copied from the old blob (`frames_reused` in the status), and reads back exactly,
/// the changed bytes included.
#[test]
fn a_changed_large_file_copies_its_unchanged_frames() {
    let _g = serial();
    let d = dirs();
    let mut rng = Rng(0x00f4_a3e5);
    // Past the 8 MiB window: compressed a window at a time.
    let mut data = mixed_frames(&mut rng);
    let m = Mount::start(&d.backing, &d.mnt);
    std::fs::write(d.mnt.join("big.bin"), &data).unwrap();
    m.wait();
    let frames_reused = |m: &Mount| {
        let s: serde_json::Value = serde_json::from_str(&m.status()).unwrap();
        s["frames_reused"].as_u64().unwrap()
    };
    assert_eq!(frames_reused(&m), 0);
    // 4 KiB into frame 6 (a nibble frame) and a write across the end of frame 7.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.mnt.join("big.bin"))
        .unwrap();
    let patch = random(&mut rng, 1);
    let at = 6 * MIB as usize + 1000;
    f.write_all_at(&patch[..4096], at as u64).unwrap();
    data[at..at + 4096].copy_from_slice(&patch[..4096]);
    let at = 8 * MIB as usize - 100;
    f.write_all_at(&patch[4096..4296], at as u64).unwrap();
    data[at..at + 200].copy_from_slice(&patch[4096..4296]);
    drop(f);
    m.wait();
    let status: serde_json::Value = serde_json::from_str(&m.status()).unwrap();
    assert_eq!(status["failed"], 0, "{status}");
    // Frames 6, 7 and 8 changed; the other 9 are copied.
    assert_eq!(frames_reused(&m), 9, "{status}");
    m.stop();
    let m = Mount::start(&d.backing, &d.mnt);
    drop_caches();
    assert!(
        std::fs::read(d.mnt.join("big.bin")).unwrap() == data,
        "big.bin differs"
    );
    m.stop();
}
