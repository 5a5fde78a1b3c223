//! `cowlist`: not implemented yet (placeholder so the workspace builds).
fn main() {
    eprintln!("cowlist: not implemented yet");
    std::process::exit(70);
}
