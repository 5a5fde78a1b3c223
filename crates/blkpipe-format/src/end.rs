//! The end of a hash or patch stream, the same in both formats (FORMAT.md 3.4, 4.4, 6): a
//! fixed-size end record whose last 8 bytes are the xxh3-64 (seed 0) of the bytes before
//! them, then, in a sealed stream, the end record's MAC, then nothing.

use std::io::{self, Read, Write};

use crate::seal::{mac_eq, Sealer, MAC_LEN};
use crate::xxh3::xxh3_64_with_seed;
use crate::{le_u64, read_full, FormatError};

/// Fill the last 8 bytes of `b` with the xxh3-64 (seed 0) of the bytes before them.
pub(crate) fn put_sum(b: &mut [u8]) {
    let n = b.len() - 8;
    let sum = xxh3_64_with_seed(&b[..n], 0);
    b[n..].copy_from_slice(&sum.to_le_bytes());
}

/// Whether the last 8 bytes of `b` are the xxh3-64 (seed 0) of the bytes before them.
pub(crate) fn sum_ok(b: &[u8]) -> bool {
    let n = b.len() - 8;
    xxh3_64_with_seed(&b[..n], 0) == le_u64(b, n)
}

/// Write the encoded end record `end`, then its MAC if the stream is sealed; flush.
pub(crate) fn write_end<W: Write>(
    out: &mut W,
    end: &[u8],
    seal: Option<&Sealer>,
) -> io::Result<()> {
    out.write_all(end)?;
    if let Some(seal) = seal {
        out.write_all(seal.end_mac(end).as_bytes())?;
    }
    out.flush()
}

/// How a format's messages name its end record.
pub(crate) struct EndRecord {
    /// The record ("hash end record").
    pub name: &'static str,
    /// Its MAC ("hash end record MAC").
    pub mac_name: &'static str,
}

/// The hash stream's end record.
pub(crate) const HASH_END: EndRecord = EndRecord {
    name: "hash end record",
    mac_name: "hash end record MAC",
};

/// The patch stream's end record.
pub(crate) const PATCH_END: EndRecord = EndRecord {
    name: "end record",
    mac_name: "end record MAC",
};

impl EndRecord {
    /// The checks of this end record read as record number `record` at stream byte `at`.
    pub(crate) fn at(&'static self, record: u64, at: u64) -> EndCheck {
        EndCheck {
            names: self,
            record,
            at,
        }
    }
}

/// The checks of one end record, each error naming it, its record number and position.
pub(crate) struct EndCheck {
    names: &'static EndRecord,
    record: u64,
    at: u64,
}

impl EndCheck {
    /// Check the checksum of the end record `b` and, in a sealed stream, read and check its
    /// MAC. Returns the bytes of the stream these take (`b` and the MAC).
    pub(crate) fn verify<R: Read>(
        &self,
        input: &mut R,
        b: &[u8],
        seal: Option<&Sealer>,
    ) -> Result<u64, FormatError> {
        let (record, at) = (self.record, self.at);
        if !sum_ok(b) {
            return Err(FormatError::Checksum {
                what: self.names.name,
                record,
                offset: at,
            });
        }
        let Some(seal) = seal else {
            return Ok(b.len() as u64);
        };
        let mut mac = [0u8; MAC_LEN];
        let got = read_full(input, &mut mac)?;
        if got < MAC_LEN {
            return Err(FormatError::Truncated {
                what: self.names.mac_name,
                record,
                at: at + (b.len() + got) as u64,
            });
        }
        if !mac_eq(&seal.end_mac(b), &mac) {
            return Err(FormatError::Mac {
                what: self.names.name,
                record,
                offset: at,
            });
        }
        Ok((b.len() + MAC_LEN) as u64)
    }

    /// Check a count the end record holds against the one counted while reading (`what`
    /// names it in the message: "blocks", "records").
    pub(crate) fn count(&self, what: &str, found: u64, counted: u64) -> Result<(), FormatError> {
        self.check(found == counted, || {
            format!(
                "{} says {found} {what} but the stream held {counted}",
                self.names.name
            )
        })
    }

    /// Check the stream digest the end record holds against the one counted while reading
    /// (`what` names it in the message).
    pub(crate) fn digest(&self, what: &str, found: u128, counted: u128) -> Result<(), FormatError> {
        self.check(found == counted, || {
            format!("{}: {what} mismatch", self.names.name)
        })
    }

    /// `Ok` if `ok`, else the record is invalid for the reason `why` gives.
    pub(crate) fn check(&self, ok: bool, why: impl FnOnce() -> String) -> Result<(), FormatError> {
        match ok {
            true => Ok(()),
            false => Err(FormatError::invalid(self.record, self.at, why())),
        }
    }

    /// Check that the input ends here, at stream byte `pos`, after the end record (and MAC).
    pub(crate) fn expect_eof<R: Read>(&self, input: &mut R, pos: u64) -> Result<(), FormatError> {
        let mut extra = [0u8; 1];
        match read_full(input, &mut extra)? {
            0 => Ok(()),
            _ => Err(FormatError::invalid(
                self.record,
                pos,
                format!(
                    "unexpected data after the {} at byte {pos}",
                    self.names.name
                ),
            )),
        }
    }
}
