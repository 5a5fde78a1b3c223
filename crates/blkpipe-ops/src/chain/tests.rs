use super::*;

fn block(kind: ChainKind, first: u64, last: u64, prev: u8, head: u8) -> ChainBlock {
    let l = |b: u8| if b == 0 { NO_LINK } else { [b; 32] };
    ChainBlock {
        chain_id: [1; 16],
        kind,
        first,
        last,
        prev: l(prev),
        head: l(head),
    }
}

fn pos(step: u64, link: u8) -> ChainPos {
    ChainPos {
        key_id: [0; 8],
        chain_id: [1; 16],
        step,
        link: [link; 32],
        prev: NO_LINK,
        target: None,
    }
}

#[test]
fn the_rules() {
    let p = Path::new("st");
    let fwd = ChainKind::Forward;
    let acc = |rollback: bool| ChainAccept {
        rollback,
        new_chain: false,
    };
    let ok = |st: Option<&ChainPos>, b: ChainBlock, a: bool| check(p, st, &b, acc(a)).is_ok();
    // A full image on a fresh target; an incremental needs one first.
    assert!(ok(None, block(fwd, 3, 3, 0, 0), false));
    assert!(!ok(None, block(fwd, 4, 4, 3, 0), false));
    let st = pos(5, 5);
    assert!(ok(Some(&st), block(fwd, 6, 6, 5, 0), false));
    for (b, want) in [
        (block(fwd, 7, 7, 6, 0), "dropped"),
        (block(fwd, 5, 5, 4, 0), "replayed or older"),
        (block(fwd, 6, 6, 9, 0), "out of order"),
        (block(fwd, 2, 2, 0, 0), "rollback refused"),
        (block(fwd, 5, 5, 0, 0), "rollback refused"),
        (block(ChainKind::Undo, 5, 5, 4, 5), "rollback refused"),
        (block(ChainKind::Undo, 4, 4, 3, 4), "another position"),
        (block(ChainKind::Undo, 5, 5, 4, 6), "another position"),
    ] {
        let e = check(p, Some(&st), &b, acc(false)).unwrap_err().to_string();
        assert!(e.contains(want), "{b:?}: {e}");
    }
    let mut foreign = block(fwd, 6, 6, 5, 0);
    foreign.chain_id = [2; 16];
    let e = check(p, Some(&st), &foreign, acc(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("foreign chain"), "{e}");
    // --accept-rollback: an older full image and a matching undo; never a stale incremental.
    assert!(ok(Some(&st), block(fwd, 2, 2, 0, 0), true));
    assert!(ok(Some(&st), block(ChainKind::Undo, 5, 5, 4, 5), true));
    assert!(!ok(Some(&st), block(fwd, 5, 5, 4, 0), true));
    // A full image of another chain, even a newer one, only with --accept-new-chain (and an
    // older one only with --accept-rollback too).
    let mut newer = block(fwd, 9, 9, 0, 0);
    newer.chain_id = [7; 16];
    let e = check(p, Some(&st), &newer, acc(true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another chain") && e.contains("--accept-new-chain"),
        "{e}"
    );
    let new_chain = |rollback| ChainAccept {
        rollback,
        new_chain: true,
    };
    assert!(check(p, Some(&st), &newer, new_chain(false)).is_ok());
    let mut older = block(fwd, 2, 2, 0, 0);
    older.chain_id = [7; 16];
    let e = check(p, Some(&st), &older, new_chain(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rollback refused"), "{e}");
    assert!(check(p, Some(&st), &older, new_chain(true)).is_ok());
    // --accept-new-chain takes nothing but full images of another chain.
    assert!(check(p, Some(&st), &foreign, new_chain(true)).is_err());
}

#[test]
fn a_redo_of_a_full_image_needs_the_state_its_undo_left() {
    let p = Path::new("st");
    let (fwd, undo) = (ChainKind::Forward, ChainKind::Undo);
    let full = block(fwd, 5, 5, 0, 0);
    let u = undo_block(&full, &[5; 32]);
    assert_eq!(u, block(undo, 5, 5, 0, 5));
    let redo = undo_block(&u, &[6; 32]);
    assert_eq!(redo.kind, ChainKind::Redo);
    assert!(!redo.is_base());
    assert_eq!(undo_block(&redo, &[7; 32]), u);
    // The undo of the full image leaves step 4 with link zero: only there is the redo taken,
    // and it leads to what the full image led to.
    let after_full = advance([0; 8], &full, &[5; 32]);
    let after_undo = advance([0; 8], &u, &[6; 32]);
    assert_eq!((after_undo.step, after_undo.link), (4, NO_LINK));
    let all = [
        ChainAccept::default(),
        ChainAccept {
            rollback: true,
            new_chain: true,
        },
    ];
    for a in all {
        assert!(check(p, Some(&after_undo), &redo, a).is_ok());
        assert_eq!(advance([0; 8], &redo, &[8; 32]), after_full);
        for (st, want) in [
            (None, "records no step yet"),
            (Some(&after_full), "redo for another position"),
            (Some(&pos(4, 4)), "redo for another position"),
            (Some(&pos(3, 0)), "redo for another position"),
        ] {
            let e = check(p, st, &redo, a).unwrap_err().to_string();
            assert!(e.contains(want), "{st:?}: {e}");
        }
        let mut other = after_undo.clone();
        other.chain_id = [9; 16];
        let e = check(p, Some(&other), &redo, a).unwrap_err().to_string();
        assert!(e.contains("foreign chain"), "{e}");
    }
    // A merge cannot hide one: a redo after another input never follows, and mixing kinds is
    // refused.
    let inp = |b: ChainBlock, link: u8| ("x".to_string(), Some(b), Some([link; 32]));
    assert!(merged(&[inp(block(fwd, 4, 4, 0, 0), 4), inp(redo, 6)]).is_err());
    assert!(merged(&[inp(redo, 6), inp(block(fwd, 6, 6, 5, 0), 7)]).is_err());
}

#[test]
fn merges_check_consecutive_links() {
    let fwd = ChainKind::Forward;
    let inp = |b: ChainBlock, link: u8| ("x".to_string(), Some(b), Some([link; 32]));
    let m = merged(&[
        inp(block(fwd, 3, 3, 0, 0), 3),
        inp(block(fwd, 4, 4, 3, 0), 4),
        inp(block(fwd, 5, 5, 4, 0), 5),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(m, block(fwd, 3, 5, 0, 5));
    for bad in [
        vec![
            inp(block(fwd, 3, 3, 0, 0), 3),
            inp(block(fwd, 5, 5, 4, 0), 5),
        ],
        vec![
            inp(block(fwd, 4, 4, 3, 0), 4),
            inp(block(fwd, 3, 3, 0, 0), 3),
        ],
        vec![
            inp(block(fwd, 3, 3, 0, 0), 3),
            inp(block(fwd, 4, 4, 9, 0), 4),
        ],
        vec![inp(block(fwd, 3, 3, 0, 0), 3), ("y".into(), None, None)],
    ] {
        assert!(merged(&bad).is_err());
    }
    // Undo streams, newest first: undo 5 then undo 4 take 5 back to 3.
    let u = ChainKind::Undo;
    let m = merged(&[inp(block(u, 5, 5, 4, 5), 50), inp(block(u, 4, 4, 3, 4), 40)])
        .unwrap()
        .unwrap();
    assert_eq!(m, block(u, 4, 5, 3, 5));
    assert!(merged(&[inp(block(u, 4, 4, 3, 4), 40), inp(block(u, 5, 5, 4, 5), 50)]).is_err());
    // The undo of a forward merge is its exact reverse, and back.
    let f = block(fwd, 3, 5, 2, 5);
    assert_eq!(undo_block(&f, &[9; 32]), block(u, 3, 5, 2, 5));
    assert_eq!(undo_block(&undo_block(&f, &[9; 32]), &[8; 32]), f);
    assert_eq!(
        undo_block(&block(fwd, 6, 6, 5, 0), &[6; 32]),
        block(u, 6, 6, 5, 6)
    );
}

#[test]
fn positions_round_trip() {
    let mut p = pos(5, 5);
    p.prev = [4; 32];
    let line = p.line();
    assert_eq!(ChainPos::parse(&line, "f", Path::new("f")).unwrap(), p);
    assert!(ChainPos::parse("blkpipe-chain v1 step=1", "f", Path::new("f")).is_err());
    assert!(ChainPos::parse("junk", "f", Path::new("f")).is_err());
}

proptest::proptest! {
    /// Any text: the position parser returns a position or a refusal, never panics; a position
    /// it returns prints back to a line that parses to the same.
    #[test]
    fn position_parser_takes_any_text(text in "\\PC{0,300}", words in proptest::collection::vec("(key|chain|step|link|prev|target|incarnation)=[0-9a-f:]{0,70}", 0..8)) {
        let p = Path::new("f");
        let _ = ChainPos::parse(&text, "f", p);
        let line = format!("blkpipe-chain v1 {}", words.join(" "));
        if let Ok(pos) = ChainPos::parse(&line, "f", p) {
            proptest::prop_assert_eq!(ChainPos::parse(&pos.line(), "f", p).unwrap(), pos);
        }
    }
}
