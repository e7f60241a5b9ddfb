fn main() {
    eprintln!("edge-client: not implemented yet");
    std::process::exit(2);
}
