//! The example daemon configuration shipped in the repository parses and its models load.

use std::path::Path;

#[test]
fn shipped_server_toml_is_valid_and_its_models_load() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-server/server.toml");
    let config = cloud_server::config::ServerConfig::load(&path).expect("valid configuration");
    assert_eq!(config.models.len(), 3);
    let models =
        cloud_server::cli::load_served_models(&config).expect("models load with their committed parameters");
    assert_eq!(models.len(), 3);
}
