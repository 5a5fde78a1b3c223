//! Replays every input the fuzzers kept (fuzz/regressions/cow_store/) through the body of the
//! `cow_store` fuzz target, so a fixed finding stays fixed.

#[test]
fn cow_store_regressions() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/cow_store"
    );
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("regression directory") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        blkpipe_testkit::fuzz_cow_store(&data);
        n += 1;
    }
    assert!(n > 0, "no regression inputs found in {dir}");
}
