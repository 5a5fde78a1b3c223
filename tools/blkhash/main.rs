//! `blkhash`: not implemented yet (placeholder so the workspace builds).
fn main() {
    eprintln!("blkhash: not implemented yet");
    std::process::exit(70);
}
