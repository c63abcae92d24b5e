//! Link the binary with packed relative relocations (DT_RELR, glibc 2.36+,
//! which the runtime image has): the dynamic loader then reads a few KiB of
//! relocations at start instead of about a megabyte, which every process of
//! it (one credentials endpoint per pod) would otherwise keep resident.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
