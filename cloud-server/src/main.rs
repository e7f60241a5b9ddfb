fn main() {
    eprintln!("cloud-server: not implemented yet");
    std::process::exit(2);
}
