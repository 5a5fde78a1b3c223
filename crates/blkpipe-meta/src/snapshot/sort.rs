//! Sorting chunk numbers and finding repeats, in bounded memory.

/// Sort `v` (values below `bound`) ascending and return a value that occurs twice, if any.
/// When a bitmap of `bound` bits is no larger than `v` itself, the values are marked in it and
/// read back in order (no sort, and a repeat is seen as it is marked); otherwise
/// [`sort_chunks`]. Memory stays within twice `v`'s size either way.
pub fn sort_unique(v: &mut Vec<u64>, bound: u64) -> Option<u64> {
    let sorted = v.windows(2).all(|w| w[0] <= w[1]);
    if sorted {
        return v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    }
    if bound.div_ceil(64) <= v.len() as u64 {
        let mut bits = vec![0u64; bound.div_ceil(64) as usize];
        for &x in v.iter() {
            let (word, bit) = ((x / 64) as usize, 1u64 << (x % 64));
            if bits[word] & bit != 0 {
                return Some(x);
            }
            bits[word] |= bit;
        }
        v.clear();
        for (i, &word) in bits.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                v.push(i as u64 * 64 + w.trailing_zeros() as u64);
                w &= w - 1;
            }
        }
        return None;
    }
    sort_chunks(v);
    v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Sort `v` ascending. Radix sort for large unsorted inputs (the store's allocation order is
/// often random), so a million exceptions sort in a few milliseconds.
pub fn sort_chunks(v: &mut Vec<u64>) {
    if v.windows(2).all(|w| w[0] <= w[1]) {
        return;
    }
    if v.len() < 1 << 14 {
        v.sort_unstable();
        return;
    }
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    let max = v.iter().copied().max().unwrap_or(0);
    let passes = (64 - max.leading_zeros()).div_ceil(BITS);
    let mut counts = vec![[0usize; BUCKETS]; passes as usize];
    for &x in v.iter() {
        for (p, c) in counts.iter_mut().enumerate() {
            c[((x >> (p as u32 * BITS)) as usize) & (BUCKETS - 1)] += 1;
        }
    }
    let mut scratch = vec![0u64; v.len()];
    for (p, c) in counts.iter_mut().enumerate() {
        if c.contains(&v.len()) {
            continue; // every key has the same digit here
        }
        let mut sum = 0;
        for n in c.iter_mut() {
            let here = *n;
            *n = sum;
            sum += here;
        }
        let shift = p as u32 * BITS;
        for &x in v.iter() {
            let d = ((x >> shift) as usize) & (BUCKETS - 1);
            scratch[c[d]] = x;
            c[d] += 1;
        }
        std::mem::swap(v, &mut scratch);
    }
}
