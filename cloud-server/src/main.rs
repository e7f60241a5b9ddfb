//! `cloud-server` command line.
fn main() -> std::process::ExitCode {
    cloud_server::cli::run()
}
