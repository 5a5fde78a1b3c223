use super::*;
use blkpipe_format::digest::digest_of;
use std::io::Write;

fn image(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    (f, data)
}

#[test]
fn pieces_are_aligned_chunks_that_never_cross_a_range() {
    let ranges = [
        (4096 * 3, 3 * CHUNK_BYTES + 100),
        (5 * CHUNK_BYTES, 5 * CHUNK_BYTES + 4096),
    ];
    let mut p = Pieces {
        ranges: ranges.iter().map(|&r| Ok::<_, OpError>(r)),
        current: None,
        chunk: CHUNK_BYTES,
        next: 0,
    };
    let mut got = Vec::new();
    while let (k, Some(piece)) = p.claim() {
        assert_eq!(k, got.len() as u64);
        got.push(piece.unwrap());
    }
    assert_eq!(
        got,
        vec![
            (4096 * 3, CHUNK_BYTES - 4096 * 3),
            (CHUNK_BYTES, CHUNK_BYTES),
            (2 * CHUNK_BYTES, CHUNK_BYTES),
            (3 * CHUNK_BYTES, 100),
            (5 * CHUNK_BYTES, 4096),
        ]
    );
}

#[test]
fn scan_ranges_reads_only_the_ranges() {
    let len = 3 * CHUNK_BYTES as usize + 5000;
    let (f, data) = image(len);
    let dev = Device::open_source(f.path(), false).unwrap();
    let ranges = [
        (0u64, 8192u64),
        (CHUNK_BYTES - 4096, CHUNK_BYTES + 4096),
        (len as u64 - 904, len as u64),
    ];
    let mut got = Vec::new();
    scan_ranges(
        &dev,
        ranges.iter().map(|&r| Ok(r)),
        4096,
        &BlockHasher::Xxh3 { seed: 5 },
        &ScanOptions::default(),
        |c| {
            got.push((c.offset, c.data.to_vec(), c.hashes.len()));
            Ok(())
        },
    )
    .unwrap();
    let want: Vec<(u64, Vec<u8>, usize)> = [
        (0u64, 8192usize),
        (CHUNK_BYTES - 4096, 4096),
        (CHUNK_BYTES, 4096),
        (len as u64 - 904, 904),
    ]
    .iter()
    .map(|&(o, l)| {
        (
            o,
            data[o as usize..o as usize + l].to_vec(),
            l.div_ceil(4096),
        )
    })
    .collect();
    assert_eq!(got, want);
    // An error from the range source stops the scan.
    let r = scan_ranges(
        &dev,
        [Ok((0, 4096)), Err(OpError::Refused("bad list".into()))].into_iter(),
        4096,
        &BlockHasher::Xxh3 { seed: 5 },
        &ScanOptions::default(),
        |_| Ok(()),
    );
    assert!(matches!(r, Err(OpError::Refused(m)) if m == "bad list"));
}

#[test]
fn chunks_come_in_order_with_hashes_for_every_thread_count() {
    let len = 3 * CHUNK_BYTES as usize + 5000;
    let (f, data) = image(len);
    let dev = Device::open_source(f.path(), false).unwrap();
    for threads in [1, 2, 5] {
        let mut got = Vec::new();
        let mut hashes = Vec::new();
        let opts = ScanOptions {
            threads,
            ..ScanOptions::default()
        };
        scan(&dev, 8192, len as u64, 4096, 99, &opts, |c| {
            assert_eq!(c.offset, 8192 + got.len() as u64);
            got.extend_from_slice(c.data);
            hashes.extend_from_slice(c.hashes);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, &data[8192..]);
        let want: Vec<u128> = data[8192..]
            .chunks(4096)
            .map(|b| blkpipe_format::digest::block_hash(b, 99))
            .collect();
        assert_eq!(hashes, want);
    }
    let mut b = blkpipe_format::digest::DigestBuilder::new(4096, 3);
    scan(&dev, 0, len as u64, 4096, 3, &ScanOptions::default(), |c| {
        for (h, blk) in c.hashes.iter().zip(c.data.chunks(4096)) {
            b.push(*h, blk.len() as u64);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(b.finish(), digest_of(&data, 4096, 3));
}

#[test]
fn direct_reads_handle_an_unaligned_tail() {
    let len = CHUNK_BYTES as usize + 4096 * 3 + 333;
    let (f, data) = image(len);
    let Ok(dev) = Device::open_source(f.path(), true) else {
        return; // the file system does not support O_DIRECT
    };
    let opts = ScanOptions {
        direct: true,
        ..ScanOptions::default()
    };
    let mut got = Vec::new();
    match scan(&dev, 0, len as u64, 4096, 0, &opts, |c| {
        got.extend_from_slice(c.data);
        Ok(())
    }) {
        Ok(()) => assert_eq!(got, data),
        // tmpfs refuses O_DIRECT reads with EINVAL.
        Err(OpError::Dev(e)) if e.io_error().and_then(|e| e.raw_os_error()) == Some(22) => {}
        Err(e) => panic!("{e}"),
    }
}

/// A scan leaves the page cache as it found it: chunks it brought in are not kept, a
/// chunk that was cached before stays cached.
#[test]
fn scans_leave_the_page_cache_as_they_found_it() {
    let len = 3 * CHUNK_BYTES as usize + 4096 + 777;
    let (f, data) = image(len);
    f.as_file().sync_all().unwrap();
    let dev = Device::open_source(f.path(), false).unwrap();
    dev.fadvise_dontneed(0, len as u64);
    if dev.cached_pages(0, len as u64) != Some(0) {
        return; // no cachestat (Linux < 6.5), or the pages are pinned (tmpfs)
    }
    // Cache the second chunk only, as another reader would have.
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    dev.read_at(&mut buf, CHUNK_BYTES).unwrap();
    let mut got = Vec::new();
    scan(&dev, 0, len as u64, 4096, 5, &ScanOptions::default(), |c| {
        got.extend_from_slice(c.data);
        Ok(())
    })
    .unwrap();
    assert!(got == data, "data differs");
    let pages = CHUNK_BYTES / 4096;
    assert_eq!(dev.cached_pages(0, CHUNK_BYTES), Some(0), "first chunk");
    assert_eq!(dev.cached_pages(CHUNK_BYTES, CHUNK_BYTES), Some(pages));
    assert_eq!(
        dev.cached_pages(2 * CHUNK_BYTES, CHUNK_BYTES),
        Some(0),
        "third"
    );
    assert_eq!(dev.cached_pages(3 * CHUNK_BYTES, 8192), Some(0), "tail");
}

/// Holes are not read, and the chunks, hashes and digest are those of a full read: over a
/// device with whole-chunk holes, partial holes, data at odd places and a short tail, for
/// the seeded and the keyed hasher, through the page cache and as if direct.
#[test]
fn holes_are_hashed_as_zeros_without_reading_them() {
    use blkpipe_dev::mem::MemEngine;
    let len = 5 * CHUNK_BYTES as usize + 4096 * 3 + 100;
    let mut data = vec![0u8; len];
    let fill = |d: &mut [u8], at: usize, n: usize| {
        for (i, b) in d[at..at + n].iter_mut().enumerate() {
            *b = (i % 251 + 1) as u8;
        }
    };
    fill(&mut data, 4096 * 5, 4096 * 2); // inside the first chunk
    fill(&mut data, CHUNK_BYTES as usize - 4096, 8192); // across a chunk boundary
    fill(&mut data, 3 * CHUNK_BYTES as usize, CHUNK_BYTES as usize); // a whole chunk
    fill(&mut data, 4 * CHUNK_BYTES as usize + 12288, 8192); // then a partly sparse one
    fill(&mut data, len - 50, 50); // the short tail
    let extents = 6 * 4096 + CHUNK_BYTES + 100;
    let key = blkpipe_format::seal::SealKey::from_slice(&[7; 32]).unwrap();
    let hashers = [
        BlockHasher::Xxh3 { seed: 3 },
        BlockHasher::new(3, Some(&key)),
    ];
    // 64 KiB blocks: holes end inside blocks, which are hashed from the buffer.
    for (hasher, bs) in hashers.iter().flat_map(|h| [(h, 4096), (h, 65536)]) {
        for (direct, skip) in [(false, false), (false, true), (true, true)] {
            let mem = MemEngine::with_holes(data.clone());
            let dev = Device::from_engine(Box::new(mem.clone()), "mem".as_ref());
            let opts = ScanOptions {
                threads: 2,
                direct,
                skip_holes: skip,
                ..ScanOptions::default()
            };
            let (mut got, mut hashes) = (Vec::new(), Vec::new());
            let from = bs as u64;
            scan_with(&dev, from, len as u64, bs, hasher, &opts, |c| {
                assert_eq!(c.offset, from + got.len() as u64);
                got.extend_from_slice(c.data);
                hashes.extend_from_slice(c.hashes);
                Ok(())
            })
            .unwrap();
            let data = &data[from as usize..];
            assert!(got == data, "data, direct {direct} skip {skip} bs {bs}");
            let want: Vec<u128> = data.chunks(bs as usize).map(|b| hasher.hash(b)).collect();
            assert_eq!(hashes, want, "direct {direct} skip {skip} bs {bs}");
            let read = mem.bytes_read();
            if bs != 4096 {
                continue;
            }
            match (direct, skip) {
                (_, false) => assert_eq!(read, len as u64 - 4096),
                (false, true) => assert_eq!(read, extents),
                // Direct: chunks with any data are read whole, empty ones not at all.
                (true, true) => {
                    assert_eq!(read, 3 * CHUNK_BYTES + CHUNK_BYTES - 4096 + 4096 * 3 + 100)
                }
            }
        }
    }
}

/// One data extent (or hole) that spans many chunks is asked for once, not once a chunk
/// (`lseek(SEEK_HOLE)` walks the data after the offset on tmpfs).
#[test]
fn an_extent_spanning_chunks_is_asked_for_once() {
    use blkpipe_dev::mem::MemEngine;
    let chunks = 8;
    let len = chunks * CHUNK_BYTES as usize;
    let mut data = vec![0u8; len];
    // Data in chunks 0..3 and from the middle of chunk 5 to the end; holes between.
    data[..3 * CHUNK_BYTES as usize].fill(1);
    data[5 * CHUNK_BYTES as usize + 8192..].fill(2);
    let mem = MemEngine::with_holes(data.clone());
    let dev = Device::from_engine(Box::new(mem.clone()), "mem".as_ref());
    let opts = ScanOptions {
        threads: 2,
        ..ScanOptions::default()
    };
    let mut got = Vec::new();
    scan(&dev, 0, len as u64, 4096, 1, &opts, |c| {
        got.extend_from_slice(c.data);
        Ok(())
    })
    .unwrap();
    assert!(got == data);
    assert_eq!(mem.bytes_read(), (6 * CHUNK_BYTES - 8192));
    assert!(mem.seeks() <= 4, "{} calls of next_data", mem.seeks());
}

#[test]
fn consumer_error_stops_the_scan() {
    let len = 6 * CHUNK_BYTES as usize;
    let (f, _) = image(len);
    let dev = Device::open_source(f.path(), false).unwrap();
    let mut seen = 0;
    let r = scan(
        &dev,
        0,
        len as u64,
        4096,
        0,
        &ScanOptions::default(),
        |_| {
            seen += 1;
            if seen == 2 {
                Err(OpError::Refused("stop".into()))
            } else {
                Ok(())
            }
        },
    );
    assert!(matches!(r, Err(OpError::Refused(m)) if m == "stop"));
    assert_eq!(seen, 2);
}

#[test]
fn device_shorter_than_range_is_an_error() {
    let (f, _) = image(10_000);
    let dev = Device::open_source(f.path(), false).unwrap();
    let r = scan(
        &dev,
        0,
        20_000,
        4096,
        0,
        &ScanOptions::default(),
        |_| Ok(()),
    );
    assert!(matches!(r, Err(OpError::Refused(m)) if m.contains("device ended")));
}
