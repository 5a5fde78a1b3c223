//! The value parsers of the command lines: the one size grammar, numbers, stream ids.

/// Bytes in a sector, the unit of `s` (device-mapper tables count 512-byte sectors).
pub const SECTOR: u64 = 512;

/// Parse a size in bytes: decimal digits, then optionally one unit, powers of 1024:
/// `s` (512-byte sectors, as `dmsetup table` gives them), `K`, `M`, `G`, `T` (either case,
/// each also as `KiB`, `MiB`, `GiB`, `TiB`). `64K` = `64KiB` = `128s` = 65536. There is no `b`
/// unit: `dd` reads it as 512 bytes, others as 1.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "`{text}` is not a size (bytes, or with a unit: 128s, 64K, 1M, 2G, 1T)"
        ));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("`{text}` does not fit 64 bits"))?;
    let unit = &t[digits..];
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "s" => 9,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use s, K, M, G or T; KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` does not fit 64 bits"))
}

/// Parse an integer in decimal or `0x` hexadecimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("`{s}` is not a number (decimal or 0x hex)"))
}

/// Parse a stream id: 32 hex digits, as `blkpatch --print-state` prints it.
pub fn parse_stream_id(s: &str) -> Result<[u8; 16], String> {
    blkpipe_ops::state::parse_id(s).ok_or_else(|| "expected 32 hex digits".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(" 8192 "), Ok(8192));
        assert_eq!(parse_size("128s"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        for bad in ["", "K", "-1", "12q", "1b", "1.5M", "0x10", "1 K", "1KB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615K").is_err());
        assert!(parse_size("16777216T").is_err());
        assert_eq!(parse_size("16777215T"), Ok(16777215 << 40));
    }

    #[test]
    fn numbers_and_ids() {
        assert_eq!(parse_u64("0x10"), Ok(16));
        assert_eq!(parse_u64("10"), Ok(10));
        assert!(parse_u64("ten").is_err());
        assert!(parse_stream_id("00112233445566778899aabbccddeeff").is_ok());
        assert!(parse_stream_id("0011").is_err());
    }
}
