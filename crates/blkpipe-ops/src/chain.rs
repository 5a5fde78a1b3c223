//! Backup chains (FORMAT.md 6.6): writing chained streams, and refusing dropped, reordered,
//! replayed, foreign or older ones where they are applied.
//!
//! Both sides keep a **chain position** in a one-line text file, replaced atomically (the same
//! guard as every written path):
//!
//! ```text
//! blkpipe-chain v1 key=7d0226af47f0c7ec chain=<32 hex> step=5 link=<64 hex> prev=<64 hex> [target=…]
//! ```
//!
//! - A producer's `--chain FILE` holds the last stream written: the next one is step + 1 of the
//!   same chain, its `prev` is `link`; `--new-chain STEP` starts a chain (a full image) with a
//!   new random id; `--chain-undo FILE` writes the undo stream of the step FILE holds.
//! - `blkpatch --chain-state FILE` holds what the target holds (and names the target, like
//!   `--state`): a forward stream must start at step + 1 with `prev` = `link`, in the same
//!   chain; a full image must be of the same chain and newer than the step held; an undo
//!   stream must undo exactly the step held; a redo (the undo of the undo of a full image)
//!   needs exactly the state that undo left. An older full image and any undo stream are
//!   rollbacks, refused unless `--accept-rollback`; a full image of another chain is refused
//!   unless `--accept-new-chain`. The file is updated only after the whole stream is applied
//!   and the target synced.
//!
//! Both are bound to the key (its id): a position made under another key is refused.

use std::path::{Path, PathBuf};

use blkpipe_dev::guard::{self, Avoid};
use blkpipe_dev::FileId;
use blkpipe_format::chain::{ChainBlock, ChainKind, Link, CHAIN_ID_LEN, NO_LINK};
use blkpipe_format::patch::PatchHeader;
use blkpipe_format::seal::{hex, SealKey, KEY_ID_LEN};

use crate::state::{load_line, store_line, TargetBinding};
use crate::OpError;

/// Where a chain stands: the last step written (producer) or held by a target (consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPos {
    /// Id of the key the chain is sealed with.
    pub key_id: [u8; KEY_ID_LEN],
    /// The chain.
    pub chain_id: [u8; CHAIN_ID_LEN],
    /// The step.
    pub step: u64,
    /// The link (header MAC) of the stream that brought the chain to `step`.
    pub link: Link,
    /// The link of step `step - 1` when known ([`NO_LINK`] otherwise): an undo of `step`
    /// leads back to it.
    pub prev: Link,
    /// The target (consumer side only).
    pub target: Option<TargetBinding>,
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl ChainPos {
    /// The position as its one line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "blkpipe-chain v1 key={} chain={} step={} link={} prev={}",
            hex(&self.key_id),
            hex(&self.chain_id),
            self.step,
            hex(&self.link),
            hex(&self.prev)
        );
        if let Some(t) = &self.target {
            s += &t.words();
        }
        s + "\n"
    }

    /// Parse a position line (`what` and `path` name the file in messages).
    pub fn parse(text: &str, what: &str, path: &Path) -> Result<Self, OpError> {
        let bad = || {
            OpError::Refused(format!(
                "{what} {}: not a chain position (expected one line `blkpipe-chain v1 key=HEX chain=HEX step=N link=HEX prev=HEX`)",
                path.display()
            ))
        };
        let mut words = text.split_ascii_whitespace();
        if words.next() != Some("blkpipe-chain") || words.next() != Some("v1") {
            return Err(bad());
        }
        let (mut key_id, mut chain_id, mut step, mut link, mut prev) =
            (None, None, None, None, None);
        let (mut target, mut size, mut incarnation) = (None, None, None);
        for w in words {
            match w.split_once('=') {
                Some(("key", v)) => key_id = parse_hex(v),
                Some(("chain", v)) => chain_id = parse_hex(v),
                Some(("step", v)) => step = v.parse().ok(),
                Some(("link", v)) => link = parse_hex(v),
                Some(("prev", v)) => prev = parse_hex(v),
                Some(("target", v)) => target = Some(FileId::from_text(v).ok_or_else(bad)?),
                Some(("target_size", v)) => size = Some(v.parse().map_err(|_| bad())?),
                Some(("incarnation", v)) => incarnation = Some(v.to_owned()),
                _ => return Err(bad()),
            }
        }
        match (key_id, chain_id, step, link, prev) {
            (Some(key_id), Some(chain_id), Some(step), Some(link), Some(prev)) => Ok(ChainPos {
                key_id,
                chain_id,
                step,
                link,
                prev,
                target: target.map(|id| TargetBinding {
                    id,
                    size,
                    incarnation,
                }),
            }),
            _ => Err(bad()),
        }
    }

    /// Read the position in `path` (`Ok(None)` if there is none yet) and refuse one made under
    /// another key than `key`.
    pub fn load(path: &Path, what: &'static str, key: &SealKey) -> Result<Option<Self>, OpError> {
        let pos = Self::load_any_key(path, what)?;
        if let Some(p) = &pos {
            p.check_key(path, what, key, "")?;
        }
        Ok(pos)
    }

    /// Read the position in `path` (`Ok(None)` if there is none yet), whatever its key.
    fn load_any_key(path: &Path, what: &'static str) -> Result<Option<Self>, OpError> {
        let Some(text) = load_line(path, what)? else {
            return Ok(None);
        };
        Self::parse(&text, what, path).map(Some)
    }

    /// Refuse a position made under another key than `key` (`hint` ends the message).
    fn check_key(&self, path: &Path, what: &str, key: &SealKey, hint: &str) -> Result<(), OpError> {
        if self.key_id == key.id() {
            return Ok(());
        }
        Err(OpError::Refused(format!(
            "{what} {} is for key id {}, but the key given has id {}: wrong key or wrong file{hint}",
            path.display(),
            hex(&self.key_id),
            hex(&key.id())
        )))
    }

    /// Replace `path` with this position, atomically and durably.
    pub fn store(&self, path: &Path, what: &'static str, avoid: &[Avoid]) -> Result<(), OpError> {
        store_line(path, &self.line(), what, avoid)
    }

    fn describe(&self) -> String {
        format!("step {} of chain {}", self.step, hex(&self.chain_id))
    }
}

/// What a producer's chain options ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainRequest {
    /// `--chain FILE`: the step after the one FILE holds; FILE is then advanced.
    Next(PathBuf),
    /// `--chain FILE --new-chain STEP`: a full image starting a new chain at STEP; FILE (new,
    /// or holding an older step) then holds it.
    Start(PathBuf, u64),
    /// `--chain-undo FILE`: the undo stream of the step FILE holds; FILE is not changed.
    UndoOf(PathBuf),
}

const PRODUCER_FILE: &str = "chain file";

/// A producer's chain binding: the block to write in the header, and the position to record
/// once the stream is complete.
#[derive(Debug)]
pub struct ChainProducer {
    block: ChainBlock,
    /// The file to advance after the stream is written, and what it held.
    advance: Option<PathBuf>,
    key_id: [u8; KEY_ID_LEN],
}

impl ChainProducer {
    /// Read the chain file and work out the block. `avoid`: files the chain file must not be
    /// (the source device, the output).
    pub fn prepare(req: &ChainRequest, key: &SealKey, avoid: &[Avoid]) -> Result<Self, OpError> {
        let (path, next) = match req {
            ChainRequest::Next(p) | ChainRequest::Start(p, _) => (p, true),
            ChainRequest::UndoOf(p) => (p, false),
        };
        if next {
            guard::check_replaceable(path, PRODUCER_FILE, avoid)?;
        }
        let pos = ChainPos::load(path, PRODUCER_FILE, key)?;
        let block = match (req, pos) {
            (ChainRequest::Start(_, step), pos) => {
                if let Some(p) = pos.filter(|p| p.step >= *step) {
                    return Err(OpError::Refused(format!(
                        "--new-chain {step}: {} {} holds {} already; a new chain starts at a higher step than every step before it",
                        PRODUCER_FILE,
                        path.display(),
                        p.describe()
                    )));
                }
                ChainBlock {
                    chain_id: crate::random_bytes(),
                    kind: ChainKind::Forward,
                    first: *step,
                    last: *step,
                    prev: NO_LINK,
                    head: NO_LINK,
                }
            }
            (_, None) => {
                return Err(OpError::Refused(format!(
                    "{} {} does not exist: start a chain with a full image and --new-chain STEP",
                    PRODUCER_FILE,
                    path.display()
                )))
            }
            (ChainRequest::Next(_), Some(p)) => ChainBlock {
                chain_id: p.chain_id,
                kind: ChainKind::Forward,
                first: p.step + 1,
                last: p.step + 1,
                prev: p.link,
                head: NO_LINK,
            },
            (ChainRequest::UndoOf(_), Some(p)) => ChainBlock {
                chain_id: p.chain_id,
                kind: ChainKind::Undo,
                first: p.step,
                last: p.step,
                prev: p.prev,
                head: p.link,
            },
        };
        Ok(ChainProducer {
            block,
            advance: next.then(|| path.clone()),
            key_id: key.id(),
        })
    }

    /// The chain block for the stream's header.
    pub fn block(&self) -> ChainBlock {
        self.block
    }

    /// The stream (whose header MAC is `link`) is written completely: record it in the chain
    /// file (for `--chain`; `--chain-undo` changes nothing).
    pub fn commit(&self, link: Link, avoid: &[Avoid]) -> Result<(), OpError> {
        let Some(path) = &self.advance else {
            return Ok(());
        };
        let pos = ChainPos {
            key_id: self.key_id,
            chain_id: self.block.chain_id,
            step: self.block.last,
            link,
            prev: self.block.prev,
            target: None,
        };
        pos.store(path, PRODUCER_FILE, avoid)
    }
}

const STATE_FILE: &str = "chain state file";

/// What `blkpatch --chain-state` accepts beyond the next step of the chain held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainAccept {
    /// `--accept-rollback`: an older (or same-step) full image, or the undo stream of the
    /// step held.
    pub rollback: bool,
    /// `--accept-new-chain`: a full image of another chain than the one held (the position
    /// held is dropped), or, with a state file made under another key, a full image sealed
    /// with the key given (a new chain after key rotation).
    pub new_chain: bool,
}

/// `blkpatch --chain-state FILE`: the checks before a chained stream touches the target, and
/// the update after it is applied.
#[derive(Debug)]
pub struct ChainGate {
    path: PathBuf,
    state: Option<ChainPos>,
    block: ChainBlock,
    link: Link,
    key_id: [u8; KEY_ID_LEN],
}

impl ChainGate {
    /// Load FILE and check the stream's chain block against it (no target needed: this runs
    /// before the target is opened). `link` is the stream's verified header MAC.
    pub fn open(
        path: &Path,
        header: &PatchHeader,
        link: Option<Link>,
        key: Option<&SealKey>,
        accept: ChainAccept,
    ) -> Result<Self, OpError> {
        let (Some(key), Some(link)) = (key, link) else {
            return Err(OpError::Refused(format!(
                "--chain-state {}: needs --key and a sealed stream (chain positions are authenticated)",
                path.display()
            )));
        };
        let Some(block) = header.chain else {
            return Err(OpError::Refused(format!(
                "--chain-state {}: the stream has no chain block (write chained streams with --chain or --new-chain)",
                path.display()
            )));
        };
        let state = ChainPos::load_any_key(path, STATE_FILE)?;
        match &state {
            // A state made under another key: only an explicit new chain replaces it.
            Some(st) if st.key_id != key.id() => {
                if !(accept.new_chain && block.is_base()) {
                    st.check_key(
                        path,
                        STATE_FILE,
                        key,
                        " (a full image of a new chain under this key is taken with --accept-new-chain)",
                    )?;
                }
            }
            st => check(path, st.as_ref(), &block, accept)?,
        }
        Ok(ChainGate {
            path: path.to_owned(),
            state,
            block,
            link,
            key_id: key.id(),
        })
    }

    /// Refuse a state made on another target than `target`.
    pub fn check_target(&self, target: &TargetBinding) -> Result<(), OpError> {
        match self.state.as_ref().and_then(|s| s.target.as_ref()) {
            Some(t) if t != target => Err(OpError::Refused(format!(
                "{STATE_FILE} {} describes another target ({}), not this one ({}): remove it to start over (that also forgets which steps this target has seen)",
                self.path.display(),
                t.describe(),
                target.describe()
            ))),
            _ => Ok(()),
        }
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The position the target holds once the stream is applied.
    pub fn after(&self, target: TargetBinding) -> ChainPos {
        let mut pos = advance(self.key_id, &self.block, &self.link);
        pos.target = Some(target);
        pos
    }

    /// Record that the target holds the stream's end state (call only after the whole stream
    /// is applied and the target synced).
    pub fn commit(&self, target: TargetBinding, avoid: &[Avoid]) -> Result<(), OpError> {
        guard::check_replaceable(&self.path, STATE_FILE, avoid)?;
        self.after(target).store(&self.path, STATE_FILE, avoid)
    }
}

/// The position a target holds after a stream with `block` and link `link` (sealed with the
/// key `key_id`) was applied to it (no target binding).
pub fn advance(key_id: [u8; KEY_ID_LEN], block: &ChainBlock, link: &Link) -> ChainPos {
    let (step, to, prev) = match block.kind {
        ChainKind::Forward | ChainKind::Redo => (
            block.last,
            block.head_link(link),
            if block.first == block.last {
                block.prev
            } else {
                NO_LINK
            },
        ),
        ChainKind::Undo => (block.first.saturating_sub(1), block.prev, NO_LINK),
    };
    ChainPos {
        key_id,
        chain_id: block.chain_id,
        step,
        link: to,
        prev,
        target: None,
    }
}

/// The chain rules (FORMAT.md 6.6) for a stream with `block` on a target that holds `state`.
pub fn check(
    path: &Path,
    state: Option<&ChainPos>,
    block: &ChainBlock,
    accept: ChainAccept,
) -> Result<(), OpError> {
    let file = format!("--chain-state {}", path.display());
    let what = block.describe();
    let refuse = |why: String| Err(OpError::Refused(format!("{what}: {why}")));
    let Some(st) = state else {
        if block.is_base() {
            return Ok(());
        }
        return refuse(format!(
            "{file} records no step yet: apply the chain's full image first"
        ));
    };
    let held = st.describe();
    let same_chain = st.chain_id == block.chain_id;
    match block.kind {
        ChainKind::Forward if block.is_base() => {
            if !same_chain && !accept.new_chain {
                return refuse(format!(
                    "a full image of another chain: the target holds {held} ({file}); give --accept-new-chain to replace it with this chain (that forgets chain {})",
                    hex(&st.chain_id)
                ));
            }
            if block.last > st.step || accept.rollback {
                return Ok(());
            }
            let older = if block.last == st.step {
                "the same step as"
            } else {
                "older than"
            };
            refuse(format!(
                "rollback refused: the target holds {held} ({file}), and this full image is {older} that; give --accept-rollback to apply it anyway"
            ))
        }
        ChainKind::Forward => {
            if !same_chain {
                return refuse(format!(
                    "foreign chain: the target holds {held} ({file}); this stream belongs to another chain"
                ));
            }
            if block.first <= st.step {
                return refuse(format!(
                    "replayed or older stream: the target holds step {} already ({file}); the next stream must start at step {}",
                    st.step,
                    st.step + 1
                ));
            }
            if block.first > st.step + 1 {
                let missing = if block.first == st.step + 2 {
                    format!("step {} is", st.step + 1)
                } else {
                    format!("steps {}..{} are", st.step + 1, block.first - 1)
                };
                return refuse(format!(
                    "dropped stream: the target holds step {} ({file}), so {missing} missing before this one",
                    st.step
                ));
            }
            if block.prev != st.link {
                return refuse(format!(
                    "out of order: it does not follow the stream of step {} the target holds ({file}): its previous link differs",
                    st.step
                ));
            }
            Ok(())
        }
        ChainKind::Redo => {
            if !same_chain {
                return refuse(format!(
                    "foreign chain: the target holds {held} ({file}); this redo belongs to another chain"
                ));
            }
            // The only state it applies to: the one the undo of the full image left (step
            // first - 1 of this chain, link zero).
            if st.link != NO_LINK || st.step != block.first.saturating_sub(1) {
                return refuse(format!(
                    "redo for another position: it holds only the blocks of step {}'s full image, so it applies only where that image's undo left the target, but the target holds {held} ({file})",
                    block.first
                ));
            }
            Ok(())
        }
        ChainKind::Undo => {
            if !same_chain {
                return refuse(format!(
                    "foreign chain: the target holds {held} ({file}); this undo stream belongs to another chain"
                ));
            }
            if block.last != st.step || block.head != st.link {
                return refuse(format!(
                    "undo stream for another position: it undoes step {}, but the target holds {held} ({file})",
                    block.last
                ));
            }
            if !accept.rollback {
                return refuse(format!(
                    "rollback refused: this undo stream takes the target back from step {} to step {}; give --accept-rollback to apply it",
                    block.last,
                    block.first.saturating_sub(1)
                ));
            }
            Ok(())
        }
    }
}

/// The chain block of the merge of `inputs` (oldest first, each with its header's block and
/// its link): every input chained, same chain and kind, each one following the one before.
/// `Ok(None)` when no input is chained.
pub fn merged(
    inputs: &[(String, Option<ChainBlock>, Option<Link>)],
) -> Result<Option<ChainBlock>, OpError> {
    if inputs.iter().all(|(_, b, _)| b.is_none()) {
        return Ok(None);
    }
    let mut out: Option<(ChainBlock, Link)> = None;
    for (name, block, link) in inputs {
        let (Some(b), Some(l)) = (block, link) else {
            return Err(OpError::Refused(format!(
                "{name}: not a chained stream, but other inputs are: blkmerge merges chained streams only with streams of the same chain"
            )));
        };
        let head = b.head_link(l);
        let Some((acc, acc_head)) = out else {
            out = Some((*b, head));
            continue;
        };
        let refuse = |why: String| {
            Err(OpError::Refused(format!(
                "{name} ({}): {why}",
                b.describe()
            )))
        };
        if b.chain_id != acc.chain_id {
            return refuse(format!(
                "foreign chain: the inputs before it belong to chain {}",
                hex(&acc.chain_id)
            ));
        }
        if b.kind != acc.kind {
            return refuse("mixes undo, redo and forward streams".into());
        }
        out = Some(match b.kind {
            // (a redo after the first input cannot follow: its prev is zero)
            ChainKind::Forward | ChainKind::Redo => {
                if b.first != acc.last + 1 {
                    return refuse(format!(
                        "not consecutive: the inputs before it end at step {}, so it must start at step {} ({})",
                        acc.last,
                        acc.last + 1,
                        if b.first <= acc.last { "replayed or reordered" } else { "a step is missing" }
                    ));
                }
                if b.prev != acc_head {
                    return refuse(format!(
                        "does not follow the stream of step {} before it: its previous link differs",
                        acc.last
                    ));
                }
                let next = ChainBlock {
                    last: b.last,
                    ..acc
                };
                (next, head)
            }
            ChainKind::Undo => {
                // Undo streams are merged in the order they apply: the newest step first.
                if b.last + 1 != acc.first {
                    return refuse(format!(
                        "not consecutive: the undo streams before it go back to step {}, so it must undo step {} ({})",
                        acc.first.saturating_sub(1),
                        acc.first.saturating_sub(1),
                        if b.last >= acc.first { "replayed or reordered" } else { "a step is missing" }
                    ));
                }
                if b.head != acc.prev {
                    return refuse(format!(
                        "does not undo the step the undo streams before it lead back to (step {}): its link differs",
                        b.last
                    ));
                }
                let next = ChainBlock {
                    first: b.first,
                    prev: b.prev,
                    ..acc
                };
                (next, acc_head)
            }
        });
    }
    Ok(out.map(|(b, h)| ChainBlock { head: h, ..b }))
}

/// The chain block of the undo stream written while applying a stream with `block` and link
/// `link`: the same steps, the other way. The undo of the undo of a full image is a redo
/// ([`ChainKind::Redo`]), not a forward stream: with its zero `prev` it would pass for a full
/// image, but it holds only the blocks the full image wrote.
pub fn undo_block(block: &ChainBlock, link: &Link) -> ChainBlock {
    ChainBlock {
        kind: match block.kind {
            ChainKind::Forward | ChainKind::Redo => ChainKind::Undo,
            ChainKind::Undo if block.prev == NO_LINK => ChainKind::Redo,
            ChainKind::Undo => ChainKind::Forward,
        },
        head: block.head_link(link),
        ..*block
    }
}

#[cfg(test)]
mod tests;
