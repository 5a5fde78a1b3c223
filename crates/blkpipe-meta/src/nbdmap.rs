//! Changed and allocated extents of an NBD export as byte ranges: from the export's block
//! status (`qemu:dirty-bitmap:NAME`, `base:allocation`), or from `nbdinfo --map --json`.
//!
//! ```no_run
//! use blkpipe_meta::nbdmap::{self, MapKind};
//! let (size, ranges) =
//!     nbdmap::from_export("nbd+unix:///?socket=/run/vm.sock", MapKind::Dirty("b1".into())).unwrap();
//! assert!(ranges.iter().all(|r| r.end() <= size));
//! ```

use blkpipe_dev::nbd::Extent;
use blkpipe_dev::Device;
use blkpipe_format::range::Range;

use crate::MetaError;

/// Which extents to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapKind {
    /// The dirty extents of the qemu dirty bitmap of this name.
    Dirty(String),
    /// The extents that hold data (`base:allocation` extents not flagged as reading zeros).
    Data,
}

impl MapKind {
    fn context(&self) -> String {
        match self {
            MapKind::Dirty(n) => format!("qemu:dirty-bitmap:{n}"),
            MapKind::Data => "base:allocation".into(),
        }
    }

    /// Whether an extent with these flags is listed.
    fn selects(&self, flags: u64) -> bool {
        match self {
            MapKind::Dirty(_) => flags & 1 != 0,
            MapKind::Data => flags & 2 == 0, // NBD_STATE_ZERO clear
        }
    }
}

/// Append `r` to `out`, merging it with the last range when they touch.
fn push(out: &mut Vec<Range>, r: Range) {
    match out.last_mut() {
        Some(l) if l.end() == r.offset => l.length += r.length,
        _ => out.push(r),
    }
}

/// The export's size and the extents `kind` selects, sorted and merged. Block status is asked
/// for in steps of at most 1 GiB; every reply is checked (it must start where asked, and may
/// not run past the export's end).
pub fn from_export(uri: &str, kind: MapKind) -> Result<(u64, Vec<Range>), MetaError> {
    let ctx_name = kind.context();
    let dev = Device::open_nbd(uri, &[&ctx_name], false)?;
    let client = dev.nbd().expect("opened as NBD");
    let ctx = client.context(&ctx_name).expect("negotiated at open");
    let size = dev.size();
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let ext: Vec<Extent> = client
            .block_status(ctx, at, (size - at).min(1 << 30))
            .map_err(|source| blkpipe_dev::DevError::Nbd {
                uri: uri.to_owned(),
                source,
            })?;
        for e in ext {
            if kind.selects(e.flags) {
                push(
                    &mut out,
                    Range {
                        offset: at,
                        length: e.len,
                    },
                );
            }
            at += e.len;
        }
    }
    Ok((size, out))
}

/// A JSON syntax or content error at byte `at`.
fn bad(text: &str, at: usize, reason: impl Into<String>) -> MetaError {
    let at = at.min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let column = (at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)) as u64
        + 1;
    MetaError::Json {
        line,
        column,
        offset: at as u64,
        reason: reason.into(),
    }
}

/// One value of the flat objects nbdinfo writes.
#[derive(Debug, PartialEq)]
enum Value {
    Num(u64),
    Str(String),
}

/// A cursor over the JSON text.
struct Json<'a> {
    text: &'a str,
    at: usize,
}

impl Json<'_> {
    fn ws(&mut self) {
        let b = self.text.as_bytes();
        while self.at < b.len() && b[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.text.as_bytes().get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), MetaError> {
        if self.peek() != Some(c) {
            return Err(bad(self.text, self.at, format!("expected `{}`", c as char)));
        }
        self.at += 1;
        Ok(())
    }

    /// After a member of an object or array closed by `close`: `,` (more follow: `false`) or
    /// `close` (it ends here: `true`).
    fn comma_or_end(&mut self, close: u8) -> Result<bool, MetaError> {
        match self.peek() {
            Some(b',') => self.at += 1,
            Some(c) if c == close => {
                self.at += 1;
                return Ok(true);
            }
            _ => {
                let want = format!("expected `,` or `{}`", close as char);
                return Err(bad(self.text, self.at, want));
            }
        }
        Ok(false)
    }

    fn string(&mut self) -> Result<String, MetaError> {
        self.expect(b'"')?;
        let b = self.text.as_bytes();
        let mut s = String::new();
        loop {
            match b.get(self.at) {
                None => return Err(bad(self.text, self.at, "unterminated string")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(s);
                }
                Some(b'\\') => {
                    let c = match b.get(self.at + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        _ => return Err(bad(self.text, self.at, "unsupported escape in string")),
                    };
                    s.push(c);
                    self.at += 2;
                }
                Some(_) => {
                    let ch = self.text[self.at..].chars().next().expect("in bounds");
                    s.push(ch);
                    self.at += ch.len_utf8();
                }
            }
        }
    }

    fn value(&mut self) -> Result<Value, MetaError> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'0'..=b'9') => {
                let start = self.at;
                let b = self.text.as_bytes();
                while self.at < b.len() && b[self.at].is_ascii_digit() {
                    self.at += 1;
                }
                self.text[start..self.at]
                    .parse()
                    .map(Value::Num)
                    .map_err(|_| bad(self.text, start, "number out of range"))
            }
            _ => Err(bad(
                self.text,
                self.at,
                "expected a string or an unsigned integer",
            )),
        }
    }
}

/// Parse `nbdinfo --map --json` (or `--map=qemu:dirty-bitmap:NAME --json`) output: which
/// map it is (dirty bitmap when its descriptions say `clean`/`dirty`), the end of the last
/// extent, and the selected extents, sorted and merged. Extents must be contiguous from 0.
pub fn parse_nbdinfo_json(text: &str) -> Result<(u64, Vec<Range>), MetaError> {
    let mut j = Json { text, at: 0 };
    let mut extents: Vec<(u64, u64, u64, String)> = Vec::new();
    j.expect(b'[')?;
    if j.peek() == Some(b']') {
        j.at += 1;
    } else {
        loop {
            j.peek();
            let start = j.at;
            j.expect(b'{')?;
            let (mut off, mut len, mut ty, mut desc) = (None, None, None, String::new());
            loop {
                let key = j.string()?;
                j.expect(b':')?;
                let vat = j.at;
                match (key.as_str(), j.value()?) {
                    ("offset", Value::Num(n)) => off = Some(n),
                    ("length", Value::Num(n)) => len = Some(n),
                    ("type", Value::Num(n)) => ty = Some(n),
                    ("description", Value::Str(s)) => desc = s,
                    ("offset" | "length" | "type" | "description", _) => {
                        return Err(bad(text, vat, format!("`{key}` has the wrong type")))
                    }
                    _ => {}
                }
                if j.comma_or_end(b'}')? {
                    break;
                }
            }
            let (Some(o), Some(l), Some(t)) = (off, len, ty) else {
                return Err(bad(text, start, "extent without offset, length and type"));
            };
            let expected = extents.last().map_or(0, |e| e.0 + e.1);
            if o != expected {
                return Err(bad(
                    text,
                    start,
                    format!("extent at offset {o}, expected {expected} (extents must be contiguous from 0)"),
                ));
            }
            if l == 0 || o.checked_add(l).is_none() {
                return Err(bad(
                    text,
                    start,
                    format!("extent of length {l} at offset {o}"),
                ));
            }
            extents.push((o, l, t, desc));
            if j.comma_or_end(b']')? {
                break;
            }
        }
    }
    if j.peek().is_some() {
        return Err(bad(text, j.at, "text after the extent list"));
    }
    let dirty = extents.iter().any(|e| e.3 == "dirty" || e.3 == "clean");
    let kind = if dirty {
        MapKind::Dirty(String::new())
    } else {
        MapKind::Data
    };
    let mut out = Vec::new();
    let end = extents.last().map_or(0, |e| e.0 + e.1);
    for (o, l, t, _) in extents {
        if kind.selects(t) {
            push(
                &mut out,
                Range {
                    offset: o,
                    length: l,
                },
            );
        }
    }
    Ok((end, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_nbdinfo_output() {
        let t = r#"[
{ "offset": 0, "length": 1048576, "type": 0, "description": "clean"},
{ "offset": 1048576, "length": 65536, "type": 1, "description": "dirty"},
{ "offset": 1114112, "length": 100, "type": 1, "description": "dirty"},
{ "offset": 1114212, "length": 5, "type": 0, "description": "clean"}
]"#;
        let (end, r) = parse_nbdinfo_json(t).unwrap();
        assert_eq!(end, 1114217);
        assert_eq!(
            r,
            vec![Range {
                offset: 1048576,
                length: 65636
            }]
        );
        let t = r#"[{"offset":0,"length":512,"type":3,"description":"hole,zero"},
            {"offset":512,"length":512,"type":0,"description":"data"}]"#;
        assert_eq!(
            parse_nbdinfo_json(t).unwrap().1,
            vec![Range {
                offset: 512,
                length: 512
            }]
        );
    }

    #[test]
    fn errors_name_the_place() {
        let gap = "[\n{\"offset\": 0, \"length\": 5, \"type\": 0},\n{\"offset\": 6, \"length\": 5, \"type\": 0}]";
        let e = parse_nbdinfo_json(gap).unwrap_err().to_string();
        assert!(
            e.starts_with("line 3, column 1") && e.contains("contiguous"),
            "{e}"
        );
        for t in [
            "",
            "[",
            "[{}]",
            "[{\"offset\": -1}]",
            "[{\"offset\": \"x\", \"length\": 1, \"type\": 0}]",
            "[] x",
            "[{\"offset\": 99999999999999999999999}]",
        ] {
            assert!(parse_nbdinfo_json(t).is_err(), "{t}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "[\\[\\]{}\",: 0-9a-z\\\\\n]{0,200}") {
            let _ = parse_nbdinfo_json(&s);
        }

        /// Valid maps with bytes overwritten, inserted or cut: an error naming a place
        /// inside the text, or extents that are contiguous from 0 and end at the end given.
        #[test]
        fn mutated_maps(ext in proptest::collection::vec((1u64..1 << 40, 0u64..4), 1..20),
                        edits in proptest::collection::vec((0u8..3, any::<usize>(), any::<u8>()), 1..6)) {
            let mut t = String::from("[");
            let mut at = 0u64;
            for (i, (len, ty)) in ext.iter().enumerate() {
                if i > 0 { t.push(','); }
                t.push_str(&format!("{{\"offset\": {at}, \"length\": {len}, \"type\": {ty}, \"description\": \"dirty\"}}"));
                at += len;
            }
            t.push(']');
            let mut b = t.into_bytes();
            for (op, pos, byte) in edits {
                let pos = pos % b.len().max(1);
                match op {
                    0 if !b.is_empty() => b[pos] = byte,
                    1 => b.insert(pos, byte),
                    _ => b.truncate(pos),
                }
            }
            let Ok(text) = std::str::from_utf8(&b) else { return Ok(()) };
            match parse_nbdinfo_json(text) {
                Ok((end, ranges)) => {
                    prop_assert!(ranges.windows(2).all(|w| w[0].end() < w[1].offset));
                    prop_assert!(ranges.last().is_none_or(|r| r.end() <= end));
                }
                Err(MetaError::Json { offset, .. }) => prop_assert!(offset as usize <= text.len()),
                Err(e) => prop_assert!(false, "not a JSON error: {e}"),
            }
        }

        #[test]
        fn roundtrips_generated_maps(ext in proptest::collection::vec((1u64..1 << 40, 0u64..4), 0..50)) {
            let mut t = String::from("[");
            let mut at = 0u64;
            let mut want = Vec::new();
            for (i, (len, ty)) in ext.iter().enumerate() {
                if i > 0 { t.push(','); }
                t.push_str(&format!("{{ \"offset\": {at}, \"length\": {len}, \"type\": {ty}, \"description\": \"x\"}}\n"));
                if ty & 2 == 0 { push(&mut want, Range { offset: at, length: *len }); }
                at += len;
            }
            t.push(']');
            let (end, got) = parse_nbdinfo_json(&t).unwrap();
            prop_assert_eq!(end, at);
            prop_assert_eq!(got, want);
        }
    }
}
