//! `blkdiff`: not implemented yet (placeholder so the workspace builds).
fn main() {
    eprintln!("blkdiff: not implemented yet");
    std::process::exit(70);
}
