//! TODO: filled in by its owner (see the module list in lib.rs).
