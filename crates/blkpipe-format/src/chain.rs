//! Chain blocks: where a sealed patch stream stands in a backup chain (`docs/FORMAT.md` 6.6).
//!
//! A chain is a full image followed by incrementals, each numbered (`seq`) and bound to the one
//! before it by that stream's **link**: its header MAC (32 bytes, keyed, covering its header and
//! chain block). A [`ChainBlock`] in a sealed stream's header says which steps of which chain
//! the stream covers and which state the target must hold before it (and, for a merged or undo
//! stream, which state after): so a consumer can refuse a dropped, reordered, replayed or
//! foreign stream from its header, before a byte is written.
//!
//! The link is the header MAC rather than the end MAC because a header is written first: a
//! merged stream (blkmerge) or an undo stream (blkpatch --undo) must name the state it leads to
//! or comes from before the stream that ends in that state has been read to its end. The
//! header MAC identifies a stream's records as firmly: every record MAC and the end MAC are
//! keyed with a subkey derived from that header, and a stream is only ever accepted whole.

use crate::xxh3::xxh3_64_with_seed;

use crate::seal::MAC_LEN;
use crate::{le_u64, FormatError};

/// Bytes of a chain block on the wire.
pub const CHAIN_LEN: usize = 112;
/// Bytes of a chain id.
pub const CHAIN_ID_LEN: usize = 16;
/// A stream's link: its header MAC.
pub type Link = [u8; MAC_LEN];
/// The link of "no stream": the `prev` of a full image, which needs nothing on the target.
pub const NO_LINK: Link = [0u8; MAC_LEN];

/// Which way a chained stream moves the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// A full image, an incremental, or a merge of consecutive ones: takes the target from
    /// step `first - 1` (link `prev`; anything, when `prev` is [`NO_LINK`]) to step `last`.
    Forward,
    /// An undo stream: takes the target from step `last` (link `head`) back to step
    /// `first - 1` (link `prev`).
    Undo,
    /// The undo of the undo of a base (a full image, or a merge starting with one): `prev` is
    /// zero like a base's, but the stream holds only the blocks the base wrote, so it is no
    /// full image. It takes the target from the state that undo left (step `first - 1` of
    /// this chain, link zero) back to step `last` (link `head`, never zero), and nothing else.
    Redo,
}

/// The chain block of a sealed patch stream (header flag bit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBlock {
    /// Random id fixed at the chain's full image.
    pub chain_id: [u8; CHAIN_ID_LEN],
    /// Forward or undo.
    pub kind: ChainKind,
    /// The first step the stream covers.
    pub first: u64,
    /// The last step it covers (`first` for one stream, more for a merge).
    pub last: u64,
    /// The link of step `first - 1`: the state before a forward stream, after an undo stream.
    /// [`NO_LINK`] for a full image (a forward stream that needs nothing on the target).
    pub prev: Link,
    /// The link of step `last` when it is not this stream's own header MAC: a forward merge
    /// names the last stream it merged, an undo stream the stream it undoes. [`NO_LINK`] for a
    /// single forward stream, whose own header MAC is the link of step `last`.
    pub head: Link,
}

const KIND_FORWARD: u8 = 0;
const KIND_UNDO: u8 = 1;
const KIND_REDO: u8 = 2;

impl ChainBlock {
    /// Whether the stream is a full image: forward, needing nothing on the target.
    pub fn is_base(&self) -> bool {
        self.kind == ChainKind::Forward && self.prev == NO_LINK
    }

    /// The link of step `last` for a stream with this block and header MAC `own`.
    pub fn head_link(&self, own: &Link) -> Link {
        if self.head == NO_LINK {
            *own
        } else {
            self.head
        }
    }

    /// The 112 bytes on the wire, checksum included.
    pub fn to_bytes(&self) -> [u8; CHAIN_LEN] {
        let mut b = [0u8; CHAIN_LEN];
        b[..16].copy_from_slice(&self.chain_id);
        b[16] = match self.kind {
            ChainKind::Forward => KIND_FORWARD,
            ChainKind::Undo => KIND_UNDO,
            ChainKind::Redo => KIND_REDO,
        };
        b[24..32].copy_from_slice(&self.first.to_le_bytes());
        b[32..40].copy_from_slice(&self.last.to_le_bytes());
        b[40..72].copy_from_slice(&self.prev);
        b[72..104].copy_from_slice(&self.head);
        let sum = xxh3_64_with_seed(&b[..104], 0);
        b[104..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decode and check a chain block found at stream byte `at`.
    pub fn from_bytes(b: &[u8; CHAIN_LEN], at: u64) -> Result<Self, FormatError> {
        if xxh3_64_with_seed(&b[..104], 0) != le_u64(b, 104) {
            return Err(FormatError::Checksum {
                what: "chain block",
                record: 0,
                offset: at,
            });
        }
        let bad = |why: String| Err(FormatError::invalid(0, at, format!("chain block: {why}")));
        let kind = match b[16] {
            KIND_FORWARD => ChainKind::Forward,
            KIND_UNDO => ChainKind::Undo,
            KIND_REDO => ChainKind::Redo,
            k => return bad(format!("unknown kind {k}")),
        };
        if b[17..24].iter().any(|&x| x != 0) {
            return bad("reserved bytes are not zero".into());
        }
        let block = ChainBlock {
            chain_id: b[..16].try_into().expect("16 bytes"),
            kind,
            first: le_u64(b, 24),
            last: le_u64(b, 32),
            prev: b[40..72].try_into().expect("32 bytes"),
            head: b[72..104].try_into().expect("32 bytes"),
        };
        if block.first > block.last {
            return bad(format!(
                "first step {} is after last step {}",
                block.first, block.last
            ));
        }
        if block.first == 0 && block.prev != NO_LINK {
            return bad("step 0 names a step before it".into());
        }
        if block.kind == ChainKind::Undo && block.head == NO_LINK {
            return bad("an undo stream names no stream it undoes".into());
        }
        if block.kind == ChainKind::Redo && (block.prev != NO_LINK || block.head == NO_LINK) {
            return bad("a redo stream must have a zero prev link and a head link".into());
        }
        Ok(block)
    }

    /// Short text for messages: `chain ID steps A..B` (or `step A`).
    pub fn describe(&self) -> String {
        let steps = if self.first == self.last {
            format!("step {}", self.first)
        } else {
            format!("steps {}..{}", self.first, self.last)
        };
        let kind = match self.kind {
            ChainKind::Forward if self.is_base() => "full image",
            ChainKind::Forward => "incremental stream",
            ChainKind::Undo => "undo stream",
            ChainKind::Redo => "redo of a full image",
        };
        format!(
            "{kind} of chain {} {steps}",
            crate::seal::hex(&self.chain_id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b = ChainBlock {
            chain_id: [3; 16],
            kind: ChainKind::Undo,
            first: 4,
            last: 6,
            prev: [1; 32],
            head: [2; 32],
        };
        let bytes = b.to_bytes();
        assert_eq!(ChainBlock::from_bytes(&bytes, 0).unwrap(), b);
        let mut bad = bytes;
        bad[20] = 1;
        assert!(ChainBlock::from_bytes(&bad, 0).is_err());
        let mut c = b;
        (c.first, c.last) = (7, 6);
        assert!(ChainBlock::from_bytes(&c.to_bytes(), 0).is_err());
        let mut c = b;
        c.head = NO_LINK;
        assert!(ChainBlock::from_bytes(&c.to_bytes(), 0).is_err());
        c.kind = ChainKind::Redo;
        assert!(ChainBlock::from_bytes(&c.to_bytes(), 0).is_err());
        c.kind = ChainKind::Forward;
        assert!(ChainBlock::from_bytes(&c.to_bytes(), 0).is_ok());
        let redo = ChainBlock {
            kind: ChainKind::Redo,
            prev: NO_LINK,
            ..b
        };
        assert_eq!(ChainBlock::from_bytes(&redo.to_bytes(), 0).unwrap(), redo);
        assert!(!redo.is_base());
        let mut r = redo;
        r.prev = [1; 32];
        assert!(ChainBlock::from_bytes(&r.to_bytes(), 0).is_err());
        c.first = 0;
        assert!(ChainBlock::from_bytes(&c.to_bytes(), 0).is_err());
    }
}
