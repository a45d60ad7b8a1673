fn main() {
    gst_plugin_version_helper::info();
    identical_code_folding();
}

/// Links the plugin with `--icf=all`: the linker keeps one copy of functions whose machine code
/// is identical (generic code instantiated for types of the same layout, above all), 0.22 MB of
/// the release `.so` (README, "Size"). Only functions are folded (read-only data keeps distinct
/// addresses); Rust promises no distinct addresses for distinct functions, and rustc already
/// merges identical functions within a crate.
///
/// Only where the linker is known to be LLD: x86-64 Linux (GNU), whose default linker is
/// rustc's own rust-lld, unless a linker or linker flavour is configured (GNU ld would refuse
/// the option). `KVSSINK_ICF=0` turns it off. No `rerun-if` line: one would stop cargo from
/// running this script again when the sources change, and the version helper above needs that
/// (commit id, date). So `KVSSINK_ICF` is read when the script runs anyway (first build, a
/// changed file, new RUSTFLAGS, `cargo clean -p gst-plugin-kvssink`).
fn identical_code_folding() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let linker_configured = std::env::var_os("RUSTC_LINKER").is_some()
        || ["linker", "link-self-contained", "fuse-ld"]
            .iter()
            .any(|flag| rustflags.contains(flag));
    if var("TARGET") == "x86_64-unknown-linux-gnu"
        && !linker_configured
        && var("KVSSINK_ICF") != "0"
    {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--icf=all");
    }
}
