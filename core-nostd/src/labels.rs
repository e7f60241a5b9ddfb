//! Names of the classes the bundled models predict, so every client (host CLI, board log) prints
//! the same words for a label.

/// Fashion-MNIST classes, by label (the output index of `mlp-sq`, `cryptonets-sq`, `minionn-sq`).
pub const FASHION_MNIST: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
